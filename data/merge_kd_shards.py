"""Concatenates make_toy_kd's dataset shards into the one dataset file an unsharded run writes.

    merge_kd_shards --shard=kd.shard-0.jsonl --shard=kd.shard-1.jsonl ... \\
        --tokenizer=tokenizer.json --out=kd.jsonl

Shards may be given in any order; every shard of one setting must be there exactly once. The
output is byte for byte what `make_toy_kd --out` writes with the same --n, --seed, ... flags, so
every later stage (and its cache entry) sees the same file. Bad input exits 2, writing nothing.
"""

from absl import flags, logging

from common import atomic, cli, quiet
from common.errors import InputError
from data import dataset
from data.tokenizer import Tokenizer

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("shard", [], "A shard file written by make_toy_kd --shard (repeat for each).")
flags.DEFINE_string("tokenizer", None, "The tokenizer the shards were made with; its sha256 is checked.")
flags.DEFINE_string("out", None, "Output: the merged dataset JSONL.")


def main(argv: list[str]) -> None:
    del argv
    quiet.stage()  # prints nothing on success: common/quiet.py
    cli.require_flag(FLAGS.out, "out")
    cli.require_flag(FLAGS.tokenizer, "tokenizer")
    cli.check_output_path(FLAGS.out, "out")
    tokenizer = Tokenizer.load(FLAGS.tokenizer)
    header, data = dataset.merge_shards(FLAGS.shard)
    if header["tokenizer_sha256"] != tokenizer.digest:
        raise InputError(
            f"--tokenizer: {FLAGS.tokenizer} has sha256 {tokenizer.digest}, but the shards were made "
            f"with {header['tokenizer_sha256']}; pass the tokenizer they were made with"
        )
    atomic.write_bytes(FLAGS.out, data)
    logging.info("wrote %s: %d records from %d shards", FLAGS.out, header["num_records"], len(FLAGS.shard))


if __name__ == "__main__":
    cli.run(main)
