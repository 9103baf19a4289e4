"""Every benchmark in one table: medians, and ratios measured side by side in this run.

    ./bazelw run //bench:all -- [--repeats=3] [--rows=pipeline_rows.tsv] [--skip=stages]

Rows (bench/table.py): training tokens/s of our trainer against a bare PyTorch loop; forward
latency of the shipped TorchScript against eager PyTorch at T64/T128/T256; greedy generation
tokens/s through TorchScript and llama.cpp, and with llama.cpp's KV cache for every GGUF variant
(f16, Q8_0, Q4_0) against the f32 file; the MIL executor's decode per token with the stateful
package's KV cache against its full recompute (bench/executor_decode.py); conversion and
verification stage times against start-up; and the pipeline wall-time rows that
bench/pipeline_times.sh measured (--rows), since those run Bazel itself and cannot run inside
`bazel run`. bench/all.sh runs everything.
The pipeline's own artifacts are the inputs (set by bench/BUILD.bazel). Not a test: timings vary.
"""

import os

# Before NumPy loads OpenBLAS: one BLAS thread, as verification runs the MIL executor
# (verify/verify_contracts.py); its spinning threads made the executor rows 5-20x slower on this
# busy 2-core machine. An explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from absl import flags, logging

from bench import stages, table
from common import cli
from common.errors import InputError
from data import tokenizer as tokenizer_lib
from training import checkpoint

# torch, coremltools and the row modules that import them are imported in main(), after the flags
# and the checkpoint are checked: a bad checkpoint fails in well under a second, not after their
# seconds of imports (as every loader does: conversion/export_gguf.py).

GROUPS = ("training", "forward", "generation", "executor", "stages")

flags.DEFINE_string("weights", None, "Pipeline student weights (set by the BUILD file).")
flags.DEFINE_string("metadata", None, "Pipeline student metadata JSON (set by the BUILD file).")
flags.DEFINE_string("tokenizer", None, "Pipeline tokenizer JSON (set by the BUILD file).")
flags.DEFINE_string("dataset", None, "Pipeline KD dataset JSONL (set by the BUILD file).")
flags.DEFINE_string("torchscript", None, "Pipeline TorchScript artifact (set by the BUILD file).")
flags.DEFINE_string("mlpackage", None, "Pipeline fp16 Core ML package (set by the BUILD file).")
flags.DEFINE_string("mlpackage_stateful", None, "Pipeline stateful Core ML package (set by the BUILD file).")
flags.DEFINE_string("artifacts", "pipeline", "Runfiles directory holding the pipeline artifacts.")
flags.DEFINE_multi_string("tool", [], "name=path of a stage binary (set by the BUILD file).")
flags.DEFINE_integer("repeats", 3, "Trials per row; the median is reported.")
flags.DEFINE_integer("train_steps", 30, "Optimizer steps per training trial.")
flags.DEFINE_integer("train_threads", 2, "torch threads for the training rows.")
flags.DEFINE_list("lengths", ["64", "128", "256"], "Sequence lengths of the forward-latency rows.")
flags.DEFINE_integer("forward_calls", 20, "Forwards per forward-latency trial.")
flags.DEFINE_integer("new_tokens", 32, "New tokens per prompt in the generation rows.")
flags.DEFINE_list("skip", [], f"Row groups to leave out: any of {', '.join(GROUPS)}.")
flags.DEFINE_string("rows", None, "TSV rows measured elsewhere (bench/pipeline_times.sh), appended.")
FLAGS = flags.FLAGS


def _extra_rows(path: str) -> list[table.Row]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"--rows: {path} not found") from None
    return [table.from_tsv(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]


def main(argv: list[str]) -> None:
    del argv
    for name in ("weights", "metadata", "tokenizer", "dataset", "torchscript"):
        cli.require_flag(FLAGS[name].value, name)
    unknown = set(FLAGS.skip) - set(GROUPS)
    if unknown or FLAGS.repeats < 1:
        raise InputError(f"--skip takes {', '.join(GROUPS)} (got {sorted(unknown)}); --repeats must be >= 1")
    try:
        lengths = [int(n) for n in FLAGS.lengths]
    except ValueError:
        raise InputError(f"--lengths: {FLAGS.lengths} must be whole numbers") from None
    extra = _extra_rows(FLAGS.rows) if FLAGS.rows else []
    tokenizer = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
    checkpoint.check(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)

    import torch

    from bench import decode_bound, executor_decode, forward_latency, generation_speed, training_speed
    from conversion import torchscript

    model, _ = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    rows: list[table.Row] = []
    if "training" not in FLAGS.skip:
        logging.info("training rows: %d threads", FLAGS.train_threads)
        torch.set_num_threads(FLAGS.train_threads)
        records, vocab_size = training_speed.training_records(FLAGS.dataset)
        rows += training_speed.measure(records, vocab_size, FLAGS.train_steps, FLAGS.repeats, 64)
    # Inference rows on one thread: how the pipeline's verification and llama.cpp's bench run.
    torch.set_num_threads(1)
    if "forward" not in FLAGS.skip:
        logging.info("forward latency rows")
        scripted = torchscript.load(FLAGS.torchscript)
        rows += forward_latency.measure(
            model, scripted, tokenizer.vocab_size, lengths, FLAGS.repeats, FLAGS.forward_calls
        )
    if "generation" not in FLAGS.skip:
        logging.info("generation rows")
        rows += generation_speed.measure(model, tokenizer, 8, FLAGS.new_tokens, FLAGS.repeats, threads=1)
        rows += decode_bound.measure(model, tokenizer, 8, FLAGS.new_tokens, FLAGS.repeats)
        rows += generation_speed.measure_long_context(model, FLAGS.new_tokens, FLAGS.repeats)
    if "executor" not in FLAGS.skip:
        logging.info("MIL executor decode rows")
        for name in ("mlpackage", "mlpackage_stateful"):
            cli.require_flag(FLAGS[name].value, name)
        rows += executor_decode.measure(
            FLAGS.mlpackage,
            FLAGS.mlpackage_stateful,
            tokenizer.vocab_size,
            FLAGS.new_tokens,
            FLAGS.repeats,
            tokenizer.pad_id,
        )
    if "stages" not in FLAGS.skip:
        logging.info("stage time rows")
        rows += stages.measure(
            dict(spec.split("=", 1) for spec in FLAGS.tool), FLAGS.artifacts, FLAGS.repeats
        )
    print(table.format_table(rows + extra))


if __name__ == "__main__":
    cli.run(main)
