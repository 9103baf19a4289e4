"""Benchmark: our trainer against a bare PyTorch loop on the same model (bench/training_speed.py).

    ./bazelw run //bench:train_bench -- [--in=kd.jsonl] [--steps=30] [--repeats=3] [--threads=2]

Without --in it builds make_toy_kd's default dataset in memory. Prints the median tokens/s of each
and their ratio; the trainer should reach >= 0.9 of the bare loop. Not a test: timings vary.
"""

import torch
from absl import flags

from bench import table, training_speed
from common import cli
from training import distill

flags.DEFINE_string("in", None, "KD dataset JSONL; default: make_toy_kd's default dataset, built in memory.")
flags.DEFINE_integer("steps", 30, "Timed optimizer steps per trial.")
flags.DEFINE_integer("repeats", 3, "Trials per loop (alternating).")
flags.DEFINE_integer("batch_size", distill.TrainConfig().batch_size, "Sequences per step.")
flags.DEFINE_integer("threads", 2, "torch threads.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    records, vocab_size = training_speed.training_records(FLAGS["in"].value)
    rows = training_speed.measure(records, vocab_size, FLAGS.steps, FLAGS.repeats, FLAGS.batch_size)
    print(f"{FLAGS.steps} steps x {FLAGS.batch_size} sequences per trial, {FLAGS.threads} threads")
    print(table.format_table(rows))


if __name__ == "__main__":
    cli.run(main)
