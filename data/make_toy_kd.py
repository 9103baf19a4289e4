"""Writes the toy knowledge-distillation dataset and its tokenizer.

    make_toy_kd --out=kd.jsonl --tokenizer_out=tokenizer.json [--n=6000 --seed=0
                --heldout_fraction=0.2 --topk=8 --noise_fraction=0.5]

Sharded, as parallel actions (pipeline/BUILD.bazel): the tokenizer alone, then each shard of the
records, then //data:merge_kd_shards, which writes exactly the bytes of the unsharded --out:

    make_toy_kd --tokenizer_out=tokenizer.json
    make_toy_kd --out=kd.shard-I.jsonl --shard=I --num_shards=N [same --n, --seed, ...]

Same flags -> byte-identical files. Bad flags or a missing output directory: "error: ..." and
exit status 2, with nothing written.
"""

from absl import flags, logging

from common import atomic, cli
from common.errors import InputError
from data import dataset, generate

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output: the dataset JSONL (header line, then one record per line).")
flags.DEFINE_string("tokenizer_out", None, "Output: the tokenizer JSON the dataset's ids belong to.")
flags.DEFINE_integer("n", 6000, "Number of records, train and held-out together (at least 2).")
flags.DEFINE_integer("seed", 0, "Seed for the held-out combinations, question order and sampled answers.")
flags.DEFINE_float(
    "heldout_fraction", 0.2, "Fraction of records, and of (template, subject) pairs, held out; in (0, 1)."
)
flags.DEFINE_integer("topk", 8, "Teacher log-probabilities kept per completion position, 1..32.")
flags.DEFINE_float(
    "noise_fraction",
    generate.NOISE_FRACTION,
    "Share of training records whose question is rewritten with noise (data/augment.py), in [0, 1].",
)
flags.DEFINE_integer("num_shards", 0, "Split the records into this many shards (0: unsharded).")
flags.DEFINE_integer("shard", 0, "With --num_shards: which shard --out gets, 0..num_shards-1.")


def _check_mode() -> None:
    """Which files this run writes: dataset and tokenizer, the tokenizer alone, or one shard."""
    if FLAGS.num_shards:
        cli.require_flag(FLAGS.out, "out")
        if FLAGS.tokenizer_out:
            raise InputError(
                "--tokenizer_out: a --num_shards run writes one shard; write the tokenizer in its own run"
            )
        generate.shard_range(FLAGS.n, FLAGS.shard, FLAGS.num_shards)
    elif FLAGS.shard:
        raise InputError(f"--shard {FLAGS.shard} needs --num_shards")
    elif FLAGS.out:
        cli.require_flag(FLAGS.tokenizer_out, "tokenizer_out")
    else:
        cli.require_flag(FLAGS.tokenizer_out, "tokenizer_out")  # the tokenizer alone


def _warn_if_topk_uninformative(topk: int, summary: dataset.TopkSummary) -> None:
    """--topk=1 gives the KL term nothing to compare; a k above every position's number of possible
    next tokens adds nothing over that number. Both are legal, and both deserve a word."""
    coverage = f"the top-k lists hold {summary.coverage:.1%} of the teacher's mass on average"
    if summary.kl_is_zero():
        logging.warning(
            "--topk=%d: every position's list holds one id, so the distillation KL term is identically "
            "zero (%s); the trainer refuses this dataset unless --kl_weight=0. Use --topk=2 or more.",
            topk,
            coverage,
        )
    elif topk > summary.longest:
        logging.warning(
            "--topk=%d is above the number of distinct next tokens at every position (at most %d): "
            "the lists hold %d ids at most, so k above %d carries no more information (%s)",
            topk,
            summary.longest,
            summary.longest,
            summary.longest,
            coverage,
        )


def main(argv: list[str]) -> None:
    del argv
    _check_mode()
    outputs = {"out": FLAGS.out, "tokenizer_out": FLAGS.tokenizer_out}
    cli.check_distinct_outputs(outputs)
    for name, path in outputs.items():
        if path:
            cli.check_output_path(path, name)
    generate.check_options(FLAGS.n, FLAGS.seed, FLAGS.heldout_fraction, FLAGS.topk, FLAGS.noise_fraction)

    logging.info("training the tokenizer on every string the dataset can produce")
    tok = generate.train_tokenizer()
    if not FLAGS.out:
        tok.save(FLAGS.tokenizer_out)
        logging.info("wrote %s (tokenizer %s)", FLAGS.tokenizer_out, tok.digest[:12])
        return
    if FLAGS.num_shards:
        ids = generate.shard_range(FLAGS.n, FLAGS.shard, FLAGS.num_shards)
        logging.info(
            "generating records %d..%d of %d (shard %d of %d)",
            ids.start,
            ids.stop - 1,
            FLAGS.n,
            FLAGS.shard,
            FLAGS.num_shards,
        )
        args = (FLAGS.n, FLAGS.seed, FLAGS.heldout_fraction, FLAGS.topk, tok)
        _, header, records = generate.generate(*args, ids=ids, noise_fraction=FLAGS.noise_fraction)
        dataset.write_shard(FLAGS.out, header, records, FLAGS.shard, FLAGS.num_shards, ids)
        return
    logging.info("generating %d records (seed %d)", FLAGS.n, FLAGS.seed)
    tok, header, records = generate.generate(
        FLAGS.n, FLAGS.seed, FLAGS.heldout_fraction, FLAGS.topk, tok, noise_fraction=FLAGS.noise_fraction
    )
    # The dataset is written while the tokenizer file is still pending, so a failure leaves neither.
    with atomic.output_file(FLAGS.tokenizer_out) as handle:
        handle.write(tok.to_bytes())
        dataset.write_dataset(FLAGS.out, header, records)
    _warn_if_topk_uninformative(FLAGS.topk, dataset.topk_summary(records))
    logging.info(
        "wrote %s (%d records, %d held out) and %s (tokenizer %s)",
        FLAGS.out,
        len(records),
        header["num_heldout"],
        FLAGS.tokenizer_out,
        tok.digest[:12],
    )


if __name__ == "__main__":
    cli.run(main)
