"""Wall time of the conversion and verification stages, each run as a fresh process on the pipeline's
artifacts, exactly as the build runs them.

Each time includes the launcher, interpreter start and imports (torch, coremltools, llama.cpp).
Each stage's baseline row is its start-up: the same launcher and interpreter importing every module
the stage imports, then exiting. The stages import their heavy frameworks lazily, after checking
their flags, so `--help` would leave them out; instead one traced run of the stage
(PYTHONPROFILEIMPORTTIME) lists the modules it imports, and a `sitecustomize` module put on the
stage's PYTHONPATH (Bazel's launcher keeps it) imports exactly those and exits before the stage's
own code runs. A stage's ratio is then how many times its bare start-up the whole stage takes. The
targets from the issues (conversion < 5 s, verification of every length < 30 s) are logged.
"""

import os
import subprocess
import tempfile
import time

from absl import logging

from bench.table import Row
from common.errors import InputError

TARGETS_S = {"export TorchScript + contract": 5.0, "convert Core ML": 5.0, "export GGUF + Modelfile": 5.0}
TARGETS_S["verify every artifact at T64/T128/T256"] = 30.0
# Measuring the floors is verification work done ahead (its output is the contract's bounds), so it
# shares verification's budget: the two rows together stay under 30 s.
TARGETS_S["measure floors (part of verification)"] = 30.0


# Runs at interpreter start-up when its directory is on PYTHONPATH: in the stage's own program (its
# main .py file; not Bazel's launcher, which is Python too and runs first), imports the modules
# listed in M8B_IMPORT_ONLY (comma-separated), then exits 0 before the program's own code runs.
_SITECUSTOMIZE = """import importlib, os, sys
_names = os.environ.get("M8B_IMPORT_ONLY")
if _names and sys.argv and sys.argv[0].endswith(".py"):
    for _name in _names.split(","):
        try:
            importlib.import_module(_name)
        except ImportError:  # tried and missed by the stage too (an optional module, another OS's)
            pass
    os._exit(0)
"""


def _timed(command: list[str], env: dict | None = None) -> float:
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - began
    if done.returncode != 0:
        raise InputError(f"{command[0]} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def imported_modules(command: list[str]) -> list[str]:
    """Every module `command` imports, in order: the outermost imports of one run traced with
    PYTHONPROFILEIMPORTTIME (each brings its own nested imports along when imported again). The
    trace covers Bazel's launcher and any Python child the stage starts too, so the start-up it
    gives is if anything too long, never too short."""
    done = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    )
    if done.returncode != 0:
        raise InputError(f"{command[0]} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    names = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or line.endswith("| package"):
            continue  # "import time: self [us] | cumulative | imported package" is the header
        name = line.rsplit("|", 1)[1]
        if not name.startswith("  ") and name.strip() not in names:  # nested imports are indented
            names.append(name.strip())
    if not names:
        raise InputError(f"{command[0]}: the traced run listed no imports")
    return names


def startup_env(hook_dir: str, modules: list[str]) -> dict:
    """The environment that makes a stage's launcher import `modules` and exit (_SITECUSTOMIZE)."""
    path = os.pathsep.join(p for p in (hook_dir, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, M8B_IMPORT_ONLY=",".join(modules))


def stage_commands(tools: dict[str, str], a: str, out: str) -> list[tuple[str, list[str]]]:
    """(row name, command) per stage; `a` holds the pipeline's artifacts, `out` takes the outputs."""
    checkpoint = [f"--weights={a}/student.safetensors", f"--metadata={a}/student.json"]
    names = list(TARGETS_S)
    return [
        (names[0], [tools["export_pytorch"], *checkpoint, f"--tokenizer={a}/tokenizer.json",
                    f"--floors={a}/floors.json",
                    f"--out_torchscript={out}/m.pt", f"--out_decoder={out}/m.decode.pt",
                    f"--out_contract={out}/contract.json"]),
        (names[1], [tools["convert_coreml"], *checkpoint, f"--contract={a}/contract.json",
                    f"--out={out}/m.mlpackage"]),
        (names[2], [tools["export_gguf"], *checkpoint, f"--tokenizer={a}/tokenizer.json",
                    f"--out={out}/m.gguf", f"--modelfile_out={out}/Modelfile"]),
        (names[3], [tools["verify_contracts"], *checkpoint, f"--contract={a}/contract.json",
                    f"--tokenizer={a}/tokenizer.json", f"--dataset={a}/kd.jsonl",
                    f"--torchscript={a}/magic-8-ball.pt", f"--torchscript_decoder={a}/magic-8-ball.decode.pt",
                    f"--torch_export={a}/magic-8-ball.pt2", f"--aoti_decoder={a}/magic-8-ball.decode.pt2",
                    f"--mlpackage={a}/magic-8-ball.mlpackage",
                    f"--mlpackage_fp32={a}/magic-8-ball.fp32.mlpackage",
                    f"--gguf_f16={a}/magic-8-ball.f16.gguf",
                    f"--gguf_q8_0={a}/magic-8-ball.Q8_0.gguf", f"--gguf_q4_0={a}/magic-8-ball.Q4_0.gguf",
                    f"--mlpackage_int8={a}/magic-8-ball.int8.mlpackage",
                    f"--mlpackage_int4={a}/magic-8-ball.int4.mlpackage",
                    f"--mlpackage_stateful={a}/magic-8-ball.stateful.mlpackage",
                    f"--gguf={a}/magic-8-ball.gguf", f"--out_report={out}/report.json"]),
        (names[4], [tools["measure_floors"], *checkpoint, f"--tokenizer={a}/tokenizer.json",
                    f"--dataset={a}/kd.jsonl", f"--out={out}/floors.json"]),
    ]  # fmt: skip


def measure(tools: dict[str, str], artifacts: str, repeats: int) -> list[Row]:
    """Per stage: its start-up (interpreter and every import it makes), then the stage itself, runs
    alternating."""
    missing = {"export_pytorch", "convert_coreml", "export_gguf", "verify_contracts", "measure_floors"} - set(
        tools
    )
    if missing:
        raise InputError(f"--tool: no path for {sorted(missing)}")
    # As in the build's actions (pipeline/defs.bzl): one BLAS/OpenMP thread per process.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as hook_dir:
        with open(os.path.join(hook_dir, "sitecustomize.py"), "w", encoding="utf-8") as handle:
            handle.write(_SITECUSTOMIZE)
        for name, command in stage_commands(tools, artifacts, out):
            env = startup_env(hook_dir, imported_modules(command))  # also the warm-up run
            startup, work = [], []
            for _ in range(repeats):
                startup.append(_timed(command, env))
                work.append(_timed(command))
            rows.append(Row(f"{name}: start-up (its imports)", "s", tuple(startup)))
            rows.append(Row(name, "s", tuple(work), rows[-1].name))
            logging.info("%s: median %.2f s (target %.1f s)", name, rows[-1].median, TARGETS_S[name])
    return rows
