"""Wall time of the conversion and verification stages, each run as a fresh process on the pipeline's
artifacts, exactly as the build runs them.

Each time includes the launcher, interpreter start and imports (torch, coremltools, llama.cpp).
Each stage's baseline row is `<stage> --help`: the launcher, the interpreter and the light imports
that parsing flags needs. The stages import torch, coremltools and llama.cpp only after checking
their flags and inputs (bad input fails fast), so the baseline leaves those imports out, and a
stage's ratio says how many times a bare start-up the whole stage takes, heavy imports included.
The targets from the issues (conversion < 5 s, verification of every length < 30 s) are logged.
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


def _timed(command: list[str], check: bool = True) -> float:
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.monotonic() - began
    if check and done.returncode != 0:
        raise InputError(f"{command[0]} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


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
    """Per stage: its bare start-up (`<stage> --help`), then the stage itself, runs alternating."""
    missing = {"export_pytorch", "convert_coreml", "export_gguf", "verify_contracts", "measure_floors"} - set(
        tools
    )
    if missing:
        raise InputError(f"--tool: no path for {sorted(missing)}")
    # As in the build's actions (pipeline/defs.bzl): one BLAS/OpenMP thread per process.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for name, command in stage_commands(tools, artifacts, out):
            startup, work = [], []
            for _ in range(repeats):
                # --help exits non-zero by absl's convention; it is the start-up we time, not the status.
                startup.append(_timed([command[0], "--help"], check=False))
                work.append(_timed(command))
            rows.append(Row(f"{name}: start-up only", "s", tuple(startup)))
            rows.append(Row(name, "s", tuple(work), rows[-1].name))
            logging.info("%s: median %.2f s (target %.1f s)", name, rows[-1].median, TARGETS_S[name])
    return rows
