"""The student as a torch.export program (magic-8-ball.pt2), saved with torch.export.save.

    program.module()(input_ids int32 [1, T]) -> logits float32 [1, T, vocab], T in 1..max_seq_len

One export with a Dim for the length (1..max_seq_len), the call conversion/torchscript.py's
guard_dynamic_length makes: an exported program is checked against its shapes when it runs, so a
length outside the range is refused rather than computed wrong. export() then runs the program at
every contract length against eager before it is written. The archive is written byte-reproducibly
(conversion/pt2_files.py: no node metadata, whose stack traces hold absolute paths; no example
inputs, a pickle; records in a fixed order). load() holds a file to what export writes
(conversion/pt2_archive.py) before torch.export.load reads it: loading deserialises operator names
and symbolic expressions from the archive's JSON, and a guard's code, and could unpickle.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from common.errors import InputError
from conversion import contract, pt2_archive, pt2_files
from conversion.torchscript import FrozenLengthError, probe_ids

TOLERANCE = 1e-4  # largest logit difference to eager the export accepts, as conversion/torchscript.py


def export(model: torch.nn.Module, lengths: Sequence[int], max_seq_len: int, default_length: int):
    """The ExportedProgram of eval-mode `model`, exported at [1, default_length] with the length
    dynamic in 1..max_seq_len; FrozenLengthError (an InputError) when the model fixes the length."""
    import torch._dynamo.exc

    lengths = contract.check_lengths(lengths, default_length, max_seq_len)
    example = torch.zeros(1, default_length, dtype=torch.int32)
    length = torch.export.Dim("T", min=1, max=max_seq_len)
    try:
        with torch.no_grad():
            return torch.export.export(model.eval(), (example,), dynamic_shapes=({1: length},), strict=False)
    except torch._dynamo.exc.UserError as error:
        lines = [line.strip(" -") for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "specialized" in line), lines[0] if lines else "")
        raise FrozenLengthError(
            f"the model freezes the sequence length: torch.export with a dynamic length 1..{max_seq_len} "
            f"refused it ({reason}); build masks and positions from the input's runtime length"
        ) from None


def check_lengths_match(
    module: Callable, model: torch.nn.Module, lengths: Sequence[int], tolerance: float = TOLERANCE
) -> dict[int, float]:
    """Runs `module` (a program's module()) at every length against eager; {length: max abs diff}.
    FrozenLengthError when a shape or the logits are wrong."""
    diffs = {}
    with torch.no_grad():
        for length in lengths:
            ids = probe_ids(length, model.cfg.vocab_size)
            got, expected = module(ids), model(ids)
            if got.shape != expected.shape or got.dtype != torch.float32:
                raise FrozenLengthError(
                    f"the exported program gives {tuple(got.shape)} {got.dtype} at length {length}, "
                    f"expected {tuple(expected.shape)} torch.float32"
                )
            diffs[length] = float((got - expected).abs().max())
            if not diffs[length] <= tolerance:
                raise FrozenLengthError(
                    f"the exported program's logits at length {length} differ from eager by "
                    f"{diffs[length]:.3g} (bound {tolerance:g})"
                )
    return diffs


def to_bytes(program) -> bytes:
    """The saved archive (conversion/pt2_files.py, program_bytes); equal programs give equal bytes."""
    return pt2_files.program_bytes(program)


def load(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The program's module, for verification and ask; InputError if the file is missing, damaged or
    not what export writes (checked by conversion/pt2_archive.py before torch reads it)."""
    pt2_archive.check_export_file(path)
    try:
        program = torch.export.load(path)
    except Exception as error:  # torch.export.load raises many types on a file it cannot read
        raise InputError(
            f"{path}: not a loadable torch.export program ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''}); re-run the export"
        ) from None
    return program.module()


def numpy_forward(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    """The program's module as a logits function: ids [1, T] -> logits [1, T, V], both NumPy."""

    def forward(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int32))).numpy()

    return forward
