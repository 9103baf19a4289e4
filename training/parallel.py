"""Data-parallel training with torch.distributed, and the optional torch.compile fast path.

A run under torchrun (or the trainer's --nproc, which starts torchrun) has WORLD_SIZE ranks. Every
rank reads the whole dataset and draws the same seeded global batches (distill.BatchOrder); rank r
trains on rows r, r + W, r + 2W, ... of each global batch. Its loss is scaled by W * (its completion
tokens / the global batch's), so DistributedDataParallel's gradient mean is the gradient of the
single-process loss, a per-token mean over the whole global batch, up to the order of the sums.
Gradient clipping and AdamW then see identical gradients on every rank, so the ranks' weights stay
identical and rank 0 alone writes the checkpoint.

Everything here that only reads the environment or flags imports no torch, so the trainer still
refuses bad flags in well under a second.
"""

import dataclasses
import os
import subprocess

from common.errors import InputError

BACKENDS = ("auto", "gloo", "nccl")


@dataclasses.dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    backend: str  # "gloo" or "nccl"

    @property
    def device(self) -> str:
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it; 1 outside torchrun."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise InputError(f"WORLD_SIZE={value!r} in the environment is not a whole number") from None
    if size < 1:
        raise InputError(f"WORLD_SIZE={value!r} in the environment must be >= 1")
    return size


def check_world_fits(world_size: int, batch_size: int, train_records: int | None, where: str) -> None:
    """InputError when a global batch has fewer rows than there are ranks (some rank would get none)."""
    rows = batch_size if train_records is None else min(batch_size, train_records)
    if world_size > rows:
        source = f"--batch_size={batch_size}" if rows == batch_size else f"{train_records} train records"
        raise InputError(
            f"{where}: world size {world_size} is above the {rows} records of a global batch ({source}); "
            "every rank needs at least one record: use fewer processes or a bigger batch"
        )


def resolve_backend(requested: str) -> str:
    """The torch.distributed backend for --backend (auto: nccl with CUDA, else gloo); imports torch."""
    import torch
    import torch.distributed as dist

    if requested == "auto":
        requested = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if requested == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise InputError(
            "--backend=nccl: not available here (NCCL needs CUDA GPUs and a CUDA build of torch; "
            f"this torch is {torch.__version__}, CUDA available: {torch.cuda.is_available()}); "
            "use --backend=gloo on CPU"
        )
    if requested == "gloo" and not dist.is_gloo_available():
        raise InputError("--backend=gloo: this torch build has no gloo; use --backend=nccl on GPUs")
    if requested == "nccl" and launched_world_size() > torch.cuda.device_count():
        raise InputError(
            f"--backend=nccl: {launched_world_size()} ranks but {torch.cuda.device_count()} GPUs; "
            "run one rank per GPU"
        )
    return requested


def init(backend: str) -> World:
    """Joins the process group torchrun set up (its env:// variables) and returns this rank's World."""
    import torch
    import torch.distributed as dist

    world = World(
        rank=int(os.environ["RANK"]),
        size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=backend,
    )
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend=backend)
    return world


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend (Inductor) would use, if it runs: $CXX or g++."""
    cxx = os.environ.get("CXX", "g++")
    try:
        subprocess.run([cxx, "--version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return cxx


def compile_blocker() -> str | None:
    """Why torch.compile cannot run here (None: it can), checked before torch is imported."""
    if cxx_compiler() is None:
        return f"no C++ compiler ({os.environ.get('CXX', 'g++')} --version failed; set CXX to one)"
    try:
        # Inductor builds its kernels through torch.utils.cpp_extension, which imports setuptools.
        # setuptools reads a vendored data file named "Lorem ipsum.txt"; Bazel runfiles cannot hold
        # a name with a space, so under `bazel run` the import fails.
        import setuptools  # noqa: F401
    except (ImportError, OSError) as error:
        return (
            f"torch.compile's C++ build helpers do not load here (setuptools: {error.__class__.__name__}: "
            f"{str(error)[-120:]}); outside Bazel's runfiles (python -m training.run_toy_distill) they do"
        )
    return None


def torchrun_command(python: str, nproc: int, module: str, args: list[str]) -> list[str]:
    """`python -m torch.distributed.run` for `nproc` local ranks of `python -m module args`.

    --standalone: a private rendezvous on a free local port, so parallel jobs never collide;
    --max-restarts=0: one failed rank ends the job instead of restarting every rank.
    """
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "-m",
        module,
        *args,
    ]


def without_flag(argv: list[str], name: str) -> list[str]:
    """argv without --name=value / --name value (the parent's --nproc is not the ranks' flag)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == f"--{name}":
            skip = True
        elif not arg.startswith(f"--{name}="):
            out.append(arg)
    return out
