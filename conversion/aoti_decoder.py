"""The AOTInductor KV-cache decoder: the student's prefill and decode step, compiled ahead of time.

    package(input_ids int32 [1, S], pos int64 [1], keys_0..keys_{L-1}, values_0..values_{L-1})
        -> logits float32 [1, S, vocab]
    keys_i, values_i: float32 [1, n_kv_heads, max_seq_len, head_dim], updated in place

One exported method with a dynamic new-token length S (torch.export.Dim, 1..max_seq_len), not two
methods (prefill and decode): one compile instead of two (the stage's compile time is the test
suite's too), one shared object holding the weights once, and a decode step compiled for S = 1
alone measured no faster than the dynamic one. pos is a tensor, so one program serves every
position.

The cache is passed in and updated in place (an input mutation), not held as a buffer of the
package and not returned: the caller owns it, a new sequence needs only pos = 0 (slots at or after
pos are never read before they are written, docs/architecture.md, "KV cache"), and AOTInductor's
known bugs with mutated buffers (one folded into a constant, one rewritten with the same value on
every call) cannot apply. The cache is one tensor per layer and per keys/values, written with
index_put_ (`cache[:, :, slots] = k`): Inductor turns that into a write straight into the caller's
tensor. Slices of one 5-D cache (the TorchScript decoder's layout) come out of functionalisation as
a copy of the whole cache per layer and a copy back at the end of every step (measured in the
generated code; the probe this replaces paid it). LayerCache computes what IndexedKVCache does,
so in eager PyTorch the two give the same logits bit for bit (//conversion:aoti_decoder_test).

The compiled program trusts its shapes (AOTInductor checks none by default: a program exported
at [1, 1] and fed 12 tokens gave silently wrong logits), so AOTISteps checks before each call S and
pos + S against max_seq_len, and every input it makes for the call (dtype, shape, layout) against
the interface; a decode step's own inputs, made once and rewritten in place, are checked once.

The package is compiled in a child process (conversion/aoti_compile.py says why, and what is pinned
for byte-reproducible builds: ISA, threads, compile cache, paths). Before anything loads it,
conversion/pt2_archive.py holds the archive to its layout and the .so to the sha256 the contract
pins: loading a package runs its shared object's code.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence

import numpy as np
import torch

from common.errors import InputError
from training.decode import Steps
from training.model import Student

TOLERANCE = 1e-4  # largest logit difference to eager the export accepts, as conversion/kv_decoder.py
ISA, THREADS = "avx2", 1  # what the pipeline compiles for (conversion/aoti_compile.py, ISAS)
_EXAMPLE_LENGTH, _EXAMPLE_POS = 3, 2  # exported at these; S is dynamic, pos a tensor
MODEL_NAME = "model"  # the package's one model (data/aotinductor/model/)
COMPILE_TIMEOUT = 1800  # seconds; a compile on a busy 2-core machine took minutes, not an hour


@dataclasses.dataclass(frozen=True)
class Interface:
    """The package's inputs, from the checkpoint's config (which the contract pins by digest)."""

    n_layers: int
    n_kv_heads: int
    max_seq_len: int
    head_dim: int

    @classmethod
    def of(cls, cfg) -> "Interface":
        return cls(cfg.n_layers, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)

    @property
    def cache_shape(self) -> tuple[int, int, int, int]:
        return (1, self.n_kv_heads, self.max_seq_len, self.head_dim)

    @property
    def inputs(self) -> int:
        return 2 + 2 * self.n_layers

    def empty_cache(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Zeroed (keys, values), one tensor per layer each."""
        return (
            [torch.zeros(self.cache_shape) for _ in range(self.n_layers)],
            [torch.zeros(self.cache_shape) for _ in range(self.n_layers)],
        )


class LayerCache:
    """IndexedKVCache's positions, mask and attention over per-layer tensors, written with index_put_
    (the module docstring says why per layer). keys, values: lists of [B, n_kv_heads, max_seq_len,
    head_dim]; pos: int64 [1], the first new token's position."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], pos: torch.Tensor):
        self.keys, self.values, self.pos = keys, values, pos

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.written = self.pos + torch.arange(input_ids.shape[-1])  # [S]: the slots this call writes
        return self.written

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        # Additive, made once per call, as IndexedKVCache's: 0 where slot <= position, else -inf.
        allowed = torch.arange(self.keys[0].shape[2]) <= positions.unsqueeze(1)
        dtype = self.keys[0].dtype
        return torch.where(allowed, torch.zeros((), dtype=dtype), torch.full((), float("-inf"), dtype=dtype))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.written] = k
        values[:, :, self.written] = v
        return keys, values


class Decoder(torch.nn.Module):
    """The module docstring's signature around Student.forward with a LayerCache."""

    def __init__(self, model: Student):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        pos: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
    ) -> torch.Tensor:
        return self.model(input_ids, LayerCache(keys, values, pos))


def export_program(model: Student) -> "torch.export.ExportedProgram":
    """The decoder as a torch.export program: S dynamic (1..max_seq_len), everything else static."""
    interface = Interface.of(model.cfg)
    keys, values = interface.empty_cache()
    example = (torch.zeros(1, _EXAMPLE_LENGTH, dtype=torch.int32), torch.tensor([_EXAMPLE_POS]), keys, values)
    length = torch.export.Dim("S", min=1, max=interface.max_seq_len)
    static = [None] * interface.n_layers
    with torch.no_grad():
        return torch.export.export(
            Decoder(model.eval()),
            example,
            dynamic_shapes=({1: length}, None, static, static),
            strict=False,
        )


def _repository_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torch_site() -> str:
    """The directory torch is installed in, symlinks resolved: under Bazel, the pip repository's
    directory rather than the runfiles tree (conversion/aoti_compile.py says why)."""
    return os.path.dirname(os.path.dirname(os.path.realpath(torch.__file__)))


_SAVE_LOCK = threading.Lock()


def compile_package(program, threads: int = THREADS, isa: str = ISA) -> tuple[bytes, dict]:
    """(the AOTInductor package of `program` (export_program's), what its compile pinned), compiled
    in a child process with a compile cache of its own (conversion/aoti_compile.py). The child gets
    the program through torch.export.save with its example inputs, which AOTInductor requires: a file
    this process writes for it, never one from elsewhere."""
    with tempfile.TemporaryDirectory(prefix="m8b-aoti-") as tmp:
        cache = os.path.join(tmp, "cache")
        os.makedirs(cache)
        paths = {name: os.path.join(tmp, name) for name in ("program.pt2", "decoder.pt2", "build.json")}
        # torch.export.save swaps a reducer into the process-wide copyreg table while it writes and
        # refuses to start while another save holds it: two compiles in threads would collide.
        with _SAVE_LOCK:
            torch.export.save(program, paths["program.pt2"])
        env = dict(
            os.environ,
            # A pipeline action's environment has no PATH (pipeline/defs.bzl sets its env), and gcc
            # finds its linker through PATH: the system's default directories then.
            PATH=os.environ.get("PATH") or os.defpath,
            PYTHONPATH=os.pathsep.join((_repository_root(), _torch_site())),
            TORCHINDUCTOR_CACHE_DIR=cache,
            TMPDIR=tmp,
            PYTHONHASHSEED="0",
            OMP_NUM_THREADS=str(threads),
        )
        command = [
            sys.executable,
            "-m",
            "conversion.aoti_compile",
            f"--program={paths['program.pt2']}",
            f"--out={paths['decoder.pt2']}",
            f"--build_info={paths['build.json']}",
            f"--threads={threads}",
            f"--isa={isa}",
        ]
        result = subprocess.run(
            command, env=env, cwd=tmp, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False
        )
        if result.returncode != 0:
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            # The compiler's own "error:" line says more than the last line ("compilation terminated").
            first = next((line for line in lines if "error:" in line), lines[-1] if lines else "")
            raise InputError(f"AOTInductor compile failed (exit {result.returncode}): {first}"[:600])
        with open(paths["decoder.pt2"], "rb") as handle:
            package = handle.read()
        with open(paths["build.json"], encoding="utf-8") as handle:
            return package, json.load(handle)


def runtime_blocker(build: dict) -> str | None:
    """Why a package compiled as `build` (conversion/aoti_compile.py's build info) cannot run in this
    process (None: it can): another machine type, a CPU without its vector ISA, another torch."""
    import platform

    if build.get("machine") != platform.machine():
        return f"compiled for {build.get('machine')}, this machine is {platform.machine()}"
    capability = torch.backends.cpu.get_cpu_capability()  # "DEFAULT", "AVX2", "AVX512", ...
    supported = {"avx2": ("AVX2", "AVX512")}.get(build.get("isa"), ())
    if capability not in supported:
        return f"compiled for {build.get('isa')}, this CPU offers {capability.lower()}"
    if build.get("torch") != torch.__version__:
        return f"compiled against torch {build.get('torch')}, this is torch {torch.__version__}"
    return None


def load(path: str, so_sha256: str):
    """The package's loader (torch._C._aoti.AOTIModelPackageLoader), after pt2_archive.check_aoti_file
    (layout, the .so's sha256) passed; InputError if it is refused or torch cannot load it.

    The loader itself, not torch._inductor.aoti_load_package: that first asks Inductor which vector
    ISA this machine has, by compiling a test program through torch.utils.cpp_extension (which
    imports setuptools, absent from Bazel's runfiles, and needs a C++ compiler on a machine that
    only runs the package), merely to warn on a mismatch. runtime_blocker() is that check, from the
    contract's record and torch's CPU capability."""
    from conversion import pt2_archive

    pt2_archive.check_aoti_file(path, so_sha256)
    # The loader unpacks the package into an aotinductor_* folder under TMPDIR and removes it when it
    # is destroyed, but leaves it behind when it refuses the package (one per failed `ask`). So it
    # unpacks into a folder of ours, removed once it returns: the shared object is mapped by then and
    # the loader reads nothing more from the folder (conversion/aoti_decoder_test.py runs it after).
    scratch = tempfile.mkdtemp(prefix="m8b-aoti-")
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = scratch
    try:
        # run_single_threaded: one caller thread at a time (AOTISteps), so no runner pool or locks.
        return torch._C._aoti.AOTIModelPackageLoader(path, MODEL_NAME, True, 1, -1)
    except RuntimeError as error:
        raise InputError(
            f"{path}: AOTInductor cannot load it ({str(error).splitlines()[0][:200]}); "
            "re-run the export on this machine"
        ) from None
    finally:
        if previous is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = previous
        shutil.rmtree(scratch, ignore_errors=True)


class AOTISteps(Steps):
    """training.decode.Steps through the package (load()'s loader, or an eager Decoder), the cache
    owned here and handed to every call."""

    def __init__(self, runner, cfg):
        self.interface = Interface.of(cfg)
        if isinstance(runner, torch._C._aoti.AOTIModelPackageLoader):
            # The loader's run over the flat inputs, not AOTICompiledModel.__call__: that parses the
            # call spec from JSON and flattens the inputs again on every call, a share of a step.
            self._run = runner.run
        else:
            self._run = lambda inputs: self._eager(runner, inputs)
        # Tuples: the package writes into these very tensors, which the decode inputs below hold.
        keys, values = self.interface.empty_cache()
        self.keys, self.values = tuple(keys), tuple(values)
        self.pos = 0
        # A decode step's inputs, made once and rewritten in place through NumPy views; checked once,
        # here: only their values change between calls.
        self._token, self._at = torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, dtype=torch.int64)
        self._token_view, self._at_view = self._token.numpy(), self._at.numpy()
        self._decode_inputs = [self._token, self._at, *self.keys, *self.values]
        self.check_inputs(self._decode_inputs)

    def _eager(self, decoder, inputs):
        n = self.interface.n_layers
        with torch.inference_mode():
            return [decoder(inputs[0], inputs[1], list(inputs[2 : 2 + n]), list(inputs[2 + n :]))]

    def _check_range(self, length: int, start: int) -> None:
        if not 1 <= length or start < 0 or start + length > self.interface.max_seq_len:
            raise InputError(
                f"sequence: {start + length} tokens; the decoder's cache holds at most "
                f"{self.interface.max_seq_len} (max_seq_len)"
            )

    def check_inputs(self, inputs: Sequence[torch.Tensor]) -> None:
        """InputError unless `inputs` are exactly what the package was compiled for: it checks none."""
        interface = self.interface
        if len(inputs) != interface.inputs:
            raise InputError(f"decoder inputs: {len(inputs)} tensors, expected {interface.inputs}")
        ids, pos = inputs[0], inputs[1]
        if ids.dtype != torch.int32 or ids.dim() != 2 or ids.shape[0] != 1 or not ids.is_contiguous():
            raise InputError(
                f"decoder input_ids: {ids.dtype} {tuple(ids.shape)}, expected contiguous int32 [1, S]"
            )
        if pos.dtype != torch.int64 or tuple(pos.shape) != (1,):
            raise InputError(f"decoder pos: {pos.dtype} {tuple(pos.shape)}, expected int64 [1]")
        self._check_range(ids.shape[1], int(pos[0]))
        for cache in inputs[2:]:
            if (
                cache.dtype != torch.float32
                or tuple(cache.shape) != interface.cache_shape
                or not cache.is_contiguous()
            ):
                raise InputError(
                    f"decoder cache: {cache.dtype} {tuple(cache.shape)}, expected contiguous float32 "
                    f"{list(interface.cache_shape)}"
                )

    def forward(self, ids: Sequence[int], pos: int) -> torch.Tensor:
        """Logits [1, S, V] for ids at positions pos.., against the cache. Before the call, S and pos
        are checked against the cache, and the inputs made for it against the interface (check_inputs;
        a decode step's own inputs were checked when this object was made)."""
        self._check_range(len(ids), pos)
        if len(ids) == 1:
            self._token_view[0, 0], self._at_view[0] = ids[0], pos
            return self._run(self._decode_inputs)[0]
        inputs = [torch.tensor([list(ids)], dtype=torch.int32), torch.tensor([pos]), *self.keys, *self.values]
        self.check_inputs(inputs)
        return self._run(inputs)[0]

    def _advance(self, ids: Sequence[int]) -> torch.Tensor:
        logits = self.forward(ids, self.pos)
        self.pos += len(ids)
        # One token: its row without Python indexing's general path (a view, [V]).
        return logits.view(-1) if len(ids) == 1 else logits[0, -1]

    def prefill(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        self.pos = 0  # a new sequence: slots at or after pos are never read before they are written
        return self._advance(prompt_ids)

    def decode(self, token: int) -> torch.Tensor:
        return self._advance([token])


def check_against_eager(
    runner, model: Student, lengths: Sequence[int], tolerance: float = TOLERANCE
) -> float:
    """Largest logit difference between the package (through AOTISteps) and eager over a prefill at
    every length and a one-token decode through every slot; InputError beyond `tolerance`."""
    from conversion import torchscript

    cfg = model.cfg
    worst = 0.0

    def compare(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        nonlocal worst
        if got.shape != expected.shape or got.dtype != torch.float32:
            raise InputError(
                f"the AOTInductor decoder gives {tuple(got.shape)} {got.dtype} for {what}, expected "
                f"{tuple(expected.shape)} torch.float32"
            )
        diff = float((got - expected).abs().max())
        worst = max(worst, diff)
        if not diff <= tolerance:
            raise InputError(
                f"the AOTInductor decoder's logits for {what} differ from eager by {diff:.3g} "
                f"(bound {tolerance:g})"
            )

    with torch.no_grad():
        for length in lengths:
            ids = torchscript.probe_ids(length, cfg.vocab_size)
            steps = AOTISteps(runner, cfg)
            compare(steps.forward(ids[0].tolist(), 0), model(ids), f"a prefill of {length} tokens")
        ids = torchscript.probe_ids(cfg.max_seq_len, cfg.vocab_size)
        expected = model(ids)
        steps = AOTISteps(runner, cfg)
        compare(steps.prefill(ids[0, :1].tolist()), expected[0, 0], "position 0")
        for pos in range(1, cfg.max_seq_len):
            compare(steps.decode(int(ids[0, pos])), expected[0, pos], f"a decode step at position {pos}")
    return worst


def prefill_forward(runner, cfg, steps: type = None):
    """The package as a whole-sequence logits function: ids [1, T] (NumPy) -> logits [1, T, V]
    (NumPy), each call a fresh cache and a prefill from position 0 (through `steps`, AOTISteps or a
    subclass: //tests:gate_power's runtime faults)."""
    make = steps or AOTISteps

    def forward(ids) -> np.ndarray:
        steps = make(runner, cfg)
        return steps.forward(np.asarray(ids).reshape(-1).tolist(), 0).numpy()

    return forward
