"""Benchmark: greedy generation through llama.cpp (the GGUF artifact) beside TorchScript.

    ./bazelw run //bench:gguf_bench -- [--weights=student.safetensors --metadata=student.json \\
        --tokenizer=tokenizer.json] [--new_tokens=32] [--repeats=3] [--threads=1]

Without a checkpoint it uses a freshly initialised student (seed 0) and make_toy_kd's tokenizer
of a small generated dataset: speed does not depend on the weights' values. Prints median new
tokens/s of each way to decode (bench/generation_speed.py) and its ratio to TorchScript.
Not a test: timings vary.
"""

import torch
from absl import flags

from bench import generation_speed, table
from common import cli
from conversion import gguf_export
from data import generate as make_data
from data import tokenizer as tokenizer_lib
from training import checkpoint
from training.model import ModelConfig, Student, init_weights

flags.DEFINE_string("weights", None, "Student weights (safetensors); default: a fresh seed-0 student.")
flags.DEFINE_string("metadata", None, "Student metadata JSON (with --weights).")
flags.DEFINE_string("tokenizer", None, "Tokenizer JSON (with --weights); default: a generated one.")
flags.DEFINE_enum("dtype", "f32", list(gguf_export.DTYPES), "GGUF matrix storage type.")
flags.DEFINE_integer("new_tokens", 32, "New tokens per prompt (eos ignored).")
flags.DEFINE_integer("prompts", 8, "Number of prompts.")
flags.DEFINE_integer("repeats", 3, "Trials per method (alternating).")
flags.DEFINE_integer("threads", 1, "Threads for torch and llama.cpp.")
FLAGS = flags.FLAGS


def _inputs():
    if FLAGS.weights:
        for name in ("metadata", "tokenizer"):
            cli.require_flag(FLAGS[name].value, name)
        tokenizer = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
        model, _ = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
        return model, tokenizer
    tokenizer, _, _ = make_data.generate(n=200, seed=0, heldout_fraction=0.5, topk=4)
    model = Student(ModelConfig(vocab_size=tokenizer.vocab_size))
    init_weights(model, seed=0)
    return model.eval(), tokenizer


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads)
    model, tokenizer = _inputs()
    rows = generation_speed.measure(
        model, tokenizer, FLAGS.prompts, FLAGS.new_tokens, FLAGS.repeats, FLAGS.threads, FLAGS.dtype
    )
    print(
        f"greedy decoding, {FLAGS.prompts} prompts x {FLAGS.new_tokens} new tokens, {FLAGS.threads} thread(s)"
    )
    print(table.format_table(rows))


if __name__ == "__main__":
    cli.run(main)
