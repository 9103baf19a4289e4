"""Median wall time of the conversion and verification stages, run on the pipeline's artifacts.

    ./bazelw run //bench:stage_times -- --repeats=3

Each stage binary runs as a fresh process, as in the pipeline, so times include interpreter start
and imports; the targets from the issues are printed beside the medians (conversion < 5 s,
verification of every length < 30 s).
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from common import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 3, "Runs per stage; the median is reported.")
flags.DEFINE_string("artifacts", "pipeline", "Runfiles directory holding the pipeline artifacts.")
flags.DEFINE_multi_string("tool", [], "name=path of a stage binary (set by the BUILD file).")


def timed(command: list[str]) -> float:
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.monotonic() - began
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def stage_commands(tools: dict[str, str], out: str) -> list[tuple[str, list[str], float]]:
    a = FLAGS.artifacts
    checkpoint = [f"--weights={a}/student.safetensors", f"--metadata={a}/student.json"]
    return [
        (
            "export TorchScript + contract",
            [tools["export_pytorch"], *checkpoint, f"--tokenizer={a}/tokenizer.json",
             f"--out_torchscript={out}/m.pt", f"--out_contract={out}/contract.json"],
            5.0,
        ),
        (
            "convert Core ML",
            [tools["convert_coreml"], *checkpoint, f"--contract={a}/contract.json",
             f"--out={out}/m.mlpackage"],
            5.0,
        ),
        (
            "export GGUF + Modelfile",
            [tools["export_gguf"], *checkpoint, f"--tokenizer={a}/tokenizer.json",
             f"--out={out}/m.gguf", f"--modelfile_out={out}/Modelfile"],
            5.0,
        ),
        (
            "verify every artifact at T64/T128/T256",
            [tools["verify_contracts"], *checkpoint, f"--contract={a}/contract.json",
             f"--tokenizer={a}/tokenizer.json", f"--dataset={a}/kd.jsonl",
             f"--torchscript={a}/magic-8-ball.pt", f"--mlpackage={a}/magic-8-ball.mlpackage",
             f"--gguf={a}/magic-8-ball.gguf",
             f"--out_report={out}/report.json"],
            30.0,
        ),
    ]  # fmt: skip


def main(argv: list[str]) -> None:
    tools = dict(spec.split("=", 1) for spec in FLAGS.tool)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    print(f"{'stage':42s} {'median s':>9s} {'target s':>9s} {'ratio':>6s}   runs")
    with tempfile.TemporaryDirectory() as out:
        for name, command, target in stage_commands(tools, out):
            times = [timed(command) for _ in range(FLAGS.repeats)]
            median = statistics.median(times)
            runs = " ".join(f"{t:.2f}" for t in times)
            print(f"{name:42s} {median:9.2f} {target:9.1f} {median / target:6.2f}   {runs}")


if __name__ == "__main__":
    cli.run(main)
