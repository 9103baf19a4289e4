"""Verifies every exported artifact against the contract and fp32 eager PyTorch; writes the report.

    verify_contracts --contract=contract.json --weights=student.safetensors --metadata=student.json \\
        --tokenizer=tokenizer.json --dataset=kd.jsonl --torchscript=model.pt \\
        --torchscript_decoder=model.decode.pt \\
        --mlpackage=student.mlpackage --gguf=student.gguf --out_report=report.json

Every artifact the contract names is checked at every contract length against bounds derived from
measured floors (verify/verification.py says what is checked; conversion/gates.py how the bounds
are made). An artifact the contract names but the flags omit is bad input.

Exit status: 0 when every gate passes, 1 when any gate fails (the report is still written and
says which), 2 for bad input (missing or unreadable files, digests that tie the inputs together
do not match). Timings go to the log (--verbosity=0 shows it), never to the report, which is
byte-deterministic.

On the terminal: nothing when every gate passes (the pipeline runs this as a Bazel action, which
prints whatever an action prints; every check is in report.json and report.html). When a gate
fails: one line per failed check, then one line with the verdict.
"""

import os

# Before NumPy loads OpenBLAS: one BLAS thread. The Core ML executor's matmuls are small, and on a
# busy 2-core machine OpenBLAS's spinning threads made each forward 5-20x slower (0.13-0.5 s
# instead of 0.03 s at T64). An explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import gc
import sys
import time

from absl import flags, logging

from common import cli, quiet
from common.errors import InputError
from verify import verification

# torch, coremltools and llama.cpp are imported inside verification after check_inputs(): a bad
# flag or file then fails in well under a second, not after ten seconds of imports.

flags.DEFINE_string("contract", None, "contract.json written by the export step (required).")
flags.DEFINE_string(
    "weights", None, "The student checkpoint weights the contract was exported from (required)."
)
flags.DEFINE_string("metadata", None, "The student checkpoint metadata JSON (required).")
flags.DEFINE_string("tokenizer", None, "Tokenizer JSON; its sha256 must be the contract's tokenizer_sha256.")
flags.DEFINE_string("dataset", None, "KD dataset JSONL; its held-out questions drive the behaviour checks.")
flags.DEFINE_string("torchscript", None, "TorchScript archive from the export step.")
flags.DEFINE_string(
    "torchscript_decoder",
    None,
    "TorchScript KV-cache decoder from the export step (conversion/kv_decoder.py).",
)
flags.DEFINE_string(
    "torch_export", None, "torch.export program from the export step (conversion/export_program.py)."
)
flags.DEFINE_string(
    "aoti_decoder",
    None,
    "AOTInductor KV-cache decoder package from the export step (conversion/aoti_decoder.py).",
)
flags.DEFINE_string("mlpackage", None, "Core ML .mlpackage directory.")
flags.DEFINE_string("gguf", None, "GGUF file, checked through llama.cpp with an f32 and an f16 KV cache.")
flags.DEFINE_string("mlpackage_fp32", None, "Core ML .mlpackage computing in fp32.")
flags.DEFINE_string("gguf_f16", None, "GGUF file with f16 weights.")
flags.DEFINE_string("gguf_q8_0", None, "GGUF file with Q8_0 weights (conversion/gguf_quant.py).")
flags.DEFINE_string("gguf_q4_0", None, "GGUF file with Q4_0 weights (conversion/gguf_quant.py).")
flags.DEFINE_string("mlpackage_int8", None, "Core ML .mlpackage with int8 weights (per channel).")
flags.DEFINE_string("mlpackage_int4", None, "Core ML .mlpackage with int4 weights (per block, iOS18).")
flags.DEFINE_string(
    "mlpackage_stateful", None, "Core ML .mlpackage with a KV cache held as state (iOS18, fp16)."
)
flags.DEFINE_string("out_report", None, "Output report JSON (required).")
flags.DEFINE_bool(
    "exit_nonzero_on_failed_gates",
    True,
    "Exit 1 when a gate fails. The pipeline turns this off so the report of a failed run is still "
    "built and cached; //pipeline:gates_test then fails on it.",
)

flags.DEFINE_float(
    "sampled_min_canonical_rate",
    None,
    "Share of `ask`'s sampled replies (TorchScript, GGUF) that must be canonical, in [0, 1]; "
    "default the product target 0.995. The tests lower it for untrained students, whose replies "
    "are not Magic 8 Ball answers.",
)

flags.DEFINE_integer(
    "workers",
    None,
    "Processes that check the backends side by side (default: one per core, at most two); the "
    "report is the same bytes whatever the count.",
    lower_bound=1,
)

FLAGS = flags.FLAGS

# Failed checks printed at most; the rest are in report.json and report.html.
FAILED_LINES = 40


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def failed_checks(results: dict) -> list[str]:
    """One line per failed check of report.json's "results": artifact, scope, check, value, bound."""
    lines = []
    for artifact, scopes in results.items():
        for scope, checks in scopes.items():
            for name, entry in checks.items():
                if entry.get("ok") is not False:
                    continue
                if "error" in entry:
                    measured = "error: " + entry["error"]
                else:
                    measured = f"{_format(entry['value'])}, bound {entry['op']} {_format(entry['bound'])}"
                    if "floor" in entry:
                        measured += f" (floor {_format(entry['floor'])})"
                lines.append(f"FAIL {artifact} {scope} {name}: {measured}")
    return lines


def print_failures(report: dict, out_report: str) -> None:
    """The failed checks (at most FAILED_LINES) and the verdict; nothing when every gate passed."""
    if report["gates_ok"]:
        return
    lines = failed_checks(report["results"])
    shown = lines[:FAILED_LINES]
    if len(lines) > len(shown):
        shown.append(f"... and {len(lines) - len(shown)} more failed checks")
    print("\n".join(shown))
    print(f"gates_ok: false: {len(lines)} failed checks; every check is in {out_report}")


def main(argv: list[str]) -> None:
    del argv
    # No collector passes, as in measure_floors: the run holds hundreds of thousands of long-lived
    # objects (torch, coremltools, the dataset) and makes little cyclic garbage, so full passes over
    # that heap cost CPU and free almost nothing (peak memory grew by ~2-3% without them).
    gc.disable()
    quiet.stage()
    for name in ("contract", "weights", "metadata", "tokenizer", "dataset", "out_report"):
        cli.require_flag(FLAGS[name].value, name)
    cli.check_output_path(FLAGS.out_report, "out_report")  # before minutes of checks, not after
    rate = FLAGS.sampled_min_canonical_rate
    if rate is not None and not 0 <= rate <= 1:
        raise InputError(f"--sampled_min_canonical_rate: {rate}; must be in [0, 1]")
    started = time.monotonic()
    paths = verification.Paths(
        contract=FLAGS.contract,
        weights=FLAGS.weights,
        metadata=FLAGS.metadata,
        tokenizer=FLAGS.tokenizer,
        dataset=FLAGS.dataset,
        torchscript=FLAGS.torchscript,
        torchscript_decoder=FLAGS.torchscript_decoder,
        torch_export=FLAGS.torch_export,
        aoti_decoder=FLAGS.aoti_decoder,
        mlpackage=FLAGS.mlpackage,
        gguf=FLAGS.gguf,
        mlpackage_fp32=FLAGS.mlpackage_fp32,
        gguf_f16=FLAGS.gguf_f16,
        gguf_q8_0=FLAGS.gguf_q8_0,
        gguf_q4_0=FLAGS.gguf_q4_0,
        mlpackage_int8=FLAGS.mlpackage_int8,
        mlpackage_int4=FLAGS.mlpackage_int4,
        mlpackage_stateful=FLAGS.mlpackage_stateful,
    )
    inputs = verification.check_inputs(paths)
    # The artifacts before the model (the Core ML packages first): a damaged or hostile one is
    # refused before anything else loads.
    backends = verification.load_backends(inputs)
    model = verification.load_model(inputs)
    workers = FLAGS.workers or verification.default_workers()
    report = verification.verify_all(model, inputs, backends, rate, workers)
    report.save(FLAGS.out_report)
    print_failures(report.to_dict(), FLAGS.out_report)
    logging.info("verification took %.2f s; report %s", time.monotonic() - started, FLAGS.out_report)
    if not report.gates_ok and FLAGS.exit_nonzero_on_failed_gates:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
