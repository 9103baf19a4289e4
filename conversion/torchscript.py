"""Student -> TorchScript with a dynamic sequence length, saved byte-reproducibly.

export() traces once at the default length, then proves the trace is not frozen to that length
(docs/architecture.md, "Why the reference pipeline passed only T128") in two independent ways:
  - torch.export with a Dim for the sequence length (1..max_seq_len) refuses code that specialises
    the length (int() on a shape, a size read from the input baked into the graph), for every
    length in the range at once, before any artifact is written;
  - the trace is run at every contract length and must give the contract shape and eager's logits.

Why the saved bytes need care (torch 2.13, measured): torch.jit.save already writes fixed zip
timestamps and record order, but
  - each `.debug_pkl` record holds source ranges with the absolute path of training/model.py and of
    torch's own files, which differ between checkouts, Bazel sandboxes and machines;
  - traced classes are named `___torch_mangle_<N>` from a process-wide counter, so tracing twice in
    one process gives different names (and bytes);
  - torch.jit.trace stores the example inputs in the archive unless told not to.
So we trace with fresh JIT type state, do not store inputs, and rewrite the archive without the
debug records (through torch's own archive writer, so the format, including its 64-byte record
alignment, is what torch.jit.load expects). The only loss: runtime errors inside the TorchScript
model no longer point at Python source lines.
"""

import contextlib
import io
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.jit._recursive
import torch.jit._state

from common import atomic
from common.errors import InputError
from conversion import contract, torchscript_archive

DEFAULT_LENGTH = 128
# A sanity bound for the trace against eager at export; verification holds the shipped file to the
# contract's floor-derived bounds (its "gates"), so this only has to catch a frozen or broken trace.
DEFAULT_TOLERANCE = 1e-4


class FrozenLengthError(InputError):
    """The model's traced graph depends on one sequence length; it would fail at the others."""


def guard_dynamic_length(model: torch.nn.Module, example_length: int, max_seq_len: int) -> None:
    """torch.export with Dim("T", 1..max_seq_len); FrozenLengthError if the model fixes T.

    Even though TorchScript is what ships, this is the check that covers every length in the range
    symbolically, instead of the few lengths we happen to run.
    """
    import torch._dynamo.exc  # heavy (~1.5 s): only the export step needs it

    example = torch.zeros(1, example_length, dtype=torch.int32)
    length = torch.export.Dim("T", min=1, max=max_seq_len)
    try:
        torch.export.export(model, (example,), dynamic_shapes=({1: length},), strict=False)
    except torch._dynamo.exc.UserError as error:
        # "Constraints violated (T)! ... your code specialized it to be a constant (128)".
        lines = [line.strip(" -") for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "specialized" in line), lines[0] if lines else "")
        raise FrozenLengthError(
            f"the model freezes the sequence length: torch.export with a dynamic length 1..{max_seq_len} "
            f"refused it ({reason}); build masks and positions from the input's runtime length and "
            "never call int() on a shape in traced code"
        ) from None


@contextlib.contextmanager
def fresh_jit_types() -> Iterator[None]:
    """Traced class names (___torch_mangle_N) then start from 0, whatever the process traced before."""
    saved = torch.jit._state._python_cu, torch.jit._recursive.concrete_type_store
    torch.jit._state._python_cu = torch._C.CompilationUnit()
    torch.jit._recursive.concrete_type_store = torch.jit._recursive.ConcreteTypeStore()
    try:
        yield
    finally:
        torch.jit._state._python_cu, torch.jit._recursive.concrete_type_store = saved


def trace(model: torch.nn.Module, length: int) -> torch.jit.ScriptModule:
    """torch.jit.trace at [1, length] int32. torch's own re-trace check is off: check_lengths_match runs
    the trace at every contract length against eager instead, which also checks the numbers."""
    example = torch.zeros(1, length, dtype=torch.int32)
    with fresh_jit_types(), torch.no_grad():
        return torch.jit.trace(model.eval(), example, check_trace=False, _store_inputs=False)


def probe_ids(length: int, vocab_size: int) -> torch.Tensor:
    """[1, length] int32 ids that differ at every position (a frozen constant cannot match them by luck)."""
    return (torch.arange(length, dtype=torch.int32) * 7 + 3).remainder(vocab_size)[None]


def check_lengths_match(
    traced: torch.jit.ScriptModule,
    model: torch.nn.Module,
    lengths: list[int],
    vocab_size: int,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[int, float]:
    """Runs the trace at every length against eager; {length: max abs diff}. FrozenLengthError if wrong."""
    diffs = {}
    with torch.no_grad():
        for length in lengths:
            ids = probe_ids(length, vocab_size)
            try:
                got = traced(ids)
            except RuntimeError as error:
                # TorchScript puts the interpreter's traceback first and the actual error last.
                lines = [line.strip() for line in str(error).splitlines() if line.strip()]
                raise FrozenLengthError(
                    f"the trace fails at length {length} ({lines[-1] if lines else 'RuntimeError'}); "
                    "a shape was frozen while tracing (no int() on shapes in traced code)"
                ) from None
            expected = model(ids)
            if got.shape != expected.shape or got.dtype != torch.float32:
                raise FrozenLengthError(
                    f"the trace gives {tuple(got.shape)} {got.dtype} at length {length}, expected "
                    f"{tuple(expected.shape)} torch.float32: a shape was frozen while tracing"
                )
            diffs[length] = float((got - expected).abs().max())
            if not diffs[length] <= tolerance:
                raise FrozenLengthError(
                    f"the trace's logits at length {length} differ from eager by {diffs[length]:.3g} "
                    f"(bound {tolerance:g}): the trace does not compute the model at this length"
                )
    return diffs


def export(
    model: torch.nn.Module,
    lengths,
    max_seq_len: int,
    default_length: int = DEFAULT_LENGTH,
    tolerance: float = DEFAULT_TOLERANCE,
) -> torch.jit.ScriptModule:
    """Eval-mode model -> ScriptModule that runs at every contract length.

    InputError for a length outside 1..max_seq_len; FrozenLengthError (an InputError) when the
    model fixes the sequence length.
    """
    lengths = contract.check_lengths(lengths, default_length, max_seq_len)
    model = model.eval()
    guard_dynamic_length(model, default_length, max_seq_len)
    traced = trace(model, default_length)
    check_lengths_match(traced, model, lengths, model.cfg.vocab_size, tolerance)
    return traced


def to_bytes(module: torch.jit.ScriptModule) -> bytes:
    """The saved archive, without absolute source paths; equal modules give equal bytes."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    reader = torch._C.PyTorchFileReader(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name in reader.get_all_records():
        # The writer adds its own serialization id (derived from the records it writes).
        if name.endswith(".debug_pkl") or name == ".data/serialization_id":
            continue
        data = reader.get_record(name)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


def save(module: torch.jit.ScriptModule, path: str) -> None:
    atomic.write_bytes(path, to_bytes(module))


def load(path: str) -> torch.jit.ScriptModule:
    """Loads a TorchScript archive for verification; InputError if it is missing, damaged or not ours.

    torch.jit.load compiles the archive's code and runs some of it while loading (a class's
    __setstate__), and TorchScript can call operators such as torch.save and torch.from_file: an
    archive from elsewhere could write files just by being loaded. So torchscript_archive first
    holds the archive to what export() writes (SECURITY.md); only then does torch.jit.load see it.
    """
    torchscript_archive.check_file(path)
    try:
        module = torch.jit.load(path, map_location="cpu")
    except RuntimeError as error:
        raise InputError(
            f"{path}: not a loadable TorchScript model ({str(error).splitlines()[0]}); re-run the export"
        ) from None
    return module.eval()


def numpy_forward(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    """Any torch module (eager or TorchScript) as a logits function: ids [B, T] -> logits, both NumPy.

    Ids go in as int32, the contract's input dtype; logits come back in the dtype the module gave
    (verification checks it is float32, so no cast here).
    """

    def forward(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int32))).numpy()

    return forward
