"""Runs the project's binaries as a user would, and checks that bad input fails cleanly.

A clean failure (docs/architecture.md, "Bad input fails cleanly"): exit status 2, an `error: ...`
line that names the file or flag and the problem, no Python traceback, and no output left behind
(outputs are complete or absent).

The binaries are the py_binary launchers, taken as `data` of the test target, so the exit status and
stderr are exactly what a user sees. Bazel runs a test from its workspace's runfiles root; the
launchers find their Python dependencies in that same tree.
"""

import collections
import dataclasses
import os
import shutil
import subprocess

# Launchers, relative to the runfiles root (their `$(rootpath)`).
BINARIES = {
    "make_toy_kd": "data/make_toy_kd",
    "run_toy_distill": "training/run_toy_distill",
    "export_pytorch": "conversion/export_pytorch",
    "convert_coreml": "conversion/convert_coreml",
    "export_gguf": "conversion/export_gguf",
    "verify_contracts": "verify/verify_contracts",
    "ask": "pipeline/ask",
    "run_mlpackage": "verify/run_mlpackage",
}

# The pipeline's own artifacts (built by `bazel test` anyway): the good inputs every case spoils one of.
ARTIFACTS = {
    "dataset": "pipeline/kd.jsonl",
    "tokenizer": "pipeline/tokenizer.json",
    "weights": "pipeline/student.safetensors",
    "metadata": "pipeline/student.json",
    "torchscript": "pipeline/magic-8-ball.pt",
    "torchscript_decoder": "pipeline/magic-8-ball.decode.pt",
    "torch_export": "pipeline/magic-8-ball.pt2",
    "aoti_decoder": "pipeline/magic-8-ball.decode.pt2",
    "contract": "pipeline/contract.json",
    "mlpackage": "pipeline/magic-8-ball.mlpackage",
    "gguf": "pipeline/magic-8-ball.gguf",
    "floors": "pipeline/floors.json",
    "mlpackage_fp32": "pipeline/magic-8-ball.fp32.mlpackage",
    "gguf_f16": "pipeline/magic-8-ball.f16.gguf",
    "gguf_q8_0": "pipeline/magic-8-ball.Q8_0.gguf",
    "gguf_q4_0": "pipeline/magic-8-ball.Q4_0.gguf",
    "mlpackage_int8": "pipeline/magic-8-ball.int8.mlpackage",
    "mlpackage_int4": "pipeline/magic-8-ball.int4.mlpackage",
    "mlpackage_stateful": "pipeline/magic-8-ball.stateful.mlpackage",
}

TIMEOUT_S = 300

# Cases tried per binary in this process, and notes worth a line in the test log (what a fault test
# actually hit); the suite plugin prints both at the end of the run.
CASES_TRIED: collections.Counter = collections.Counter()
NOTES: list[str] = []


def runfiles_root() -> str:
    srcdir, workspace = os.environ.get("TEST_SRCDIR"), os.environ.get("TEST_WORKSPACE")
    if srcdir and workspace:
        return os.path.join(srcdir, workspace)
    return os.getcwd()


def runfile(rel: str) -> str:
    path = os.path.join(runfiles_root(), rel)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{rel} is not in the runfiles; add it to the test's data in tests/BUILD.bazel"
        )
    return path


def artifact(name: str) -> str:
    return runfile(ARTIFACTS[name])


def ask_flags() -> dict:
    """`ask`'s good inputs (the pipeline's artifacts), greedy so that a run is deterministic."""
    names = ("metadata", "tokenizer", "torchscript_decoder", "aoti_decoder", "contract", "gguf")
    return {**{name: artifact(name) for name in names}, "greedy": "true"}


def verify_contracts_flags(dataset: str) -> dict:
    """verify_contracts' good inputs: the pipeline's checkpoint, tokenizer, contract and every
    artifact it verifies (each flag named as its ARTIFACTS key), with `dataset` for the held-out
    questions (a small one keeps a run short)."""
    names = [name for name in ARTIFACTS if name not in ("dataset", "floors")]
    return {**{name: artifact(name) for name in names}, "dataset": dataset}


def binary_env() -> dict:
    env = dict(os.environ)
    # One thread per tool: the suite runs beside other builds on a small machine.
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def command(binary: str, flags: dict, argv: tuple = ()) -> list[str]:
    """[launcher, --flag=value ..., *argv]; a flag whose value is None is left out."""
    args = [f"--{name}={value}" for name, value in flags.items() if value is not None]
    return [runfile(BINARIES[binary]), *args, *argv]


def run(
    binary: str, flags: dict, argv: tuple = (), count: bool = True, env: dict | None = None, **kwargs
) -> subprocess.CompletedProcess:
    if count:
        CASES_TRIED[binary] += 1
    return subprocess.run(
        command(binary, flags, argv),
        capture_output=True,
        text=True,
        errors="replace",
        env=binary_env() if env is None else env,
        timeout=TIMEOUT_S,
        check=False,
        **kwargs,
    )


@dataclasses.dataclass(frozen=True)
class Outcome:
    returncode: int
    stderr: str
    left_behind: list[str]


def leftovers(*directories: str) -> list[str]:
    """Every file or directory under `directories` (outputs and temporary files alike)."""
    found = []
    for directory in directories:
        if os.path.isdir(directory):
            for parent, dirs, files in os.walk(directory):
                found += [os.path.join(parent, name) for name in dirs + files]
    return sorted(found)


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return lines[-1] if lines else ""


def assert_clean_failure(outcome: Outcome, must_mention: list[str], what: str) -> None:
    """Exit 2, one `error:` line mentioning every string in must_mention, no traceback, nothing written."""
    tail = "\n".join(outcome.stderr.strip().splitlines()[-15:])
    assert "Traceback (most recent call last)" not in outcome.stderr, f"{what}: traceback\n{outcome.stderr}"
    assert outcome.returncode == 2, f"{what}: exit status {outcome.returncode}, expected 2\n{tail}"
    line = error_line(outcome.stderr)
    assert line, f"{what}: no 'error: ' line on stderr\n{tail}"
    NOTES.append(f"{what}: {line}")
    for text in must_mention:
        assert text in line, f"{what}: the error line does not mention {text!r}:\n{line}"
    assert not outcome.left_behind, f"{what}: left {outcome.left_behind} behind\n{line}"


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path
