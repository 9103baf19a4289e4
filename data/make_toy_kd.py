"""Writes the toy knowledge-distillation dataset and its tokenizer.

    make_toy_kd --out=kd.jsonl --tokenizer_out=tokenizer.json [--n=6000 --seed=0
                --heldout_fraction=0.2 --topk=8 --noise_fraction=0.5]

Sharded, as parallel actions (pipeline/BUILD.bazel): the tokenizer alone, then each shard of the
records, then //data:merge_kd_shards, which writes exactly the bytes of the unsharded --out:

    make_toy_kd --tokenizer_out=tokenizer.json
    make_toy_kd --out=kd.shard-I.jsonl --shard=I --num_shards=N [same --n, --seed, ...]

Any model can teach (--teacher; data/teachers/source.py): `rules` (the default) is the rule-based
teacher and writes the version-1 dataset, byte for byte as it always has; `gguf:PATH` runs a GGUF
model in process through llama.cpp (data/teachers/gguf_teacher.py) and `openai:URL` asks an
OpenAI-compatible server (data/remote/openai_teacher.py). Both write a version-2 dataset
(data/dataset.py) of their replies to the same questions the rules dataset of the same --n,
--seed, --heldout_fraction and --noise_fraction asks:

    make_toy_kd --teacher=gguf:teacher.gguf --out=kd.jsonl --tokenizer_out=tokenizer.json
    make_toy_kd --teacher=gguf:teacher.gguf --out=kd.jsonl --tokenizer=tokenizer.json
    make_toy_kd --teacher=openai:http://127.0.0.1:8080/v1 --model=NAME --kd=sequence --out=kd.jsonl ...

The student tokenizer is trained here, as for the rules dataset, and written to --tokenizer_out
(the same bytes a tokenizer-only run writes, so a pipeline action needs the teacher file alone), or
read from an existing file with --tokenizer. --kd=logits (the default) compares the teacher's
vocabulary with it before the first record and stores top-k soft targets; --kd=sequence stores the
reply text alone, re-encoded with the student tokenizer, and works with any teacher. Sharding is
for the rules teacher only.

Same flags -> byte-identical files. Bad flags or files, a missing output directory, a vocabulary
the student does not share, a reply that does not end within --max_reply_tokens: "error: ..." and
exit status 2, with nothing written.
"""

import os
import time

from absl import flags, logging

from common import atomic, cli, quiet
from common.errors import InputError
from data import dataset, generate
from data import tokenizer as tokenizer_lib
from data.teachers import source

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
flags.DEFINE_integer("num_shards", 0, "Split the records into this many shards (0: unsharded; rules only).")
flags.DEFINE_integer("shard", 0, "With --num_shards: which shard --out gets, 0..num_shards-1.")
flags.DEFINE_string(
    "tokenizer", None, "Input: an existing student tokenizer file, instead of training it (--tokenizer_out)."
)

# The teacher (data/teachers/source.py).
flags.DEFINE_string("teacher", "rules", "rules | gguf:PATH (a GGUF file) | openai:URL (the API base).")
flags.DEFINE_string("kd", "logits", "logits (top-k soft targets) | sequence (the reply text only).")
flags.DEFINE_string("teacher_sampling", "greedy", "How the teacher writes its reply: greedy | sample.")
flags.DEFINE_float("sample_temperature", 1.0, "--teacher_sampling=sample: temperature, > 0.")
flags.DEFINE_integer("sample_top_k", 0, "--teacher_sampling=sample: keep the k most likely tokens (0: all).")
flags.DEFINE_float("sample_top_p", 1.0, "--teacher_sampling=sample: nucleus mass, in (0, 1].")
flags.DEFINE_integer("sample_seed", 0, "--teacher_sampling=sample: seed of the draws (with each record id).")
flags.DEFINE_integer("max_reply_tokens", 32, "Longest teacher reply, eos included; a longer one is refused.")
flags.DEFINE_string(
    "model", None, "openai: the model name sent in requests; gguf: a display name (default the file name)."
)
flags.DEFINE_string("api", "completions", "openai: completions (the raw prompt) | chat (one user message).")
flags.DEFINE_string(
    "api_key_env", "", "openai: the NAME of an environment variable holding the API key (empty: no key)."
)
flags.DEFINE_integer("concurrency", 4, "openai: requests in flight at once.")
flags.DEFINE_string("cache_dir", None, "openai: the response cache directory (default <out>.cache/).")
flags.DEFINE_float("request_timeout", 60.0, "openai: seconds to wait for one response.")
flags.DEFINE_integer("max_retries", 8, "openai: retries of a failed request.")

# The flags each kind of teacher reads; any other teacher flag set away from its default is refused.
_GENERATION_FLAGS = (
    "kd",
    "teacher_sampling",
    "sample_temperature",
    "sample_top_k",
    "sample_top_p",
    "sample_seed",
    "max_reply_tokens",
    "model",
)
_OPENAI_FLAGS = ("api", "api_key_env", "concurrency", "cache_dir", "request_timeout", "max_retries")
_TEACHER_FLAGS = {"rules": (), "gguf": _GENERATION_FLAGS, "openai": _GENERATION_FLAGS + _OPENAI_FLAGS}


def _check_teacher_flags(spec: source.Spec) -> None:
    """Refuses a teacher flag the chosen teacher does not read (it would be silently ignored)."""
    for name in _GENERATION_FLAGS + _OPENAI_FLAGS:
        flag = FLAGS[name]
        if name not in _TEACHER_FLAGS[spec.kind] and flag.value != flag.default:
            readers = [kind for kind, names in _TEACHER_FLAGS.items() if name in names]
            raise InputError(
                f"--{name}: applies to --teacher={' and '.join(f'{kind}:...' for kind in readers)} only, "
                f"not --teacher={spec.kind}; leave it out"
            )


def _check_mode(spec: source.Spec) -> None:
    """Which files this run writes: dataset and tokenizer, the tokenizer alone, or one shard."""
    if FLAGS.tokenizer and FLAGS.tokenizer_out:
        raise InputError(
            "--tokenizer and --tokenizer_out: give one (--tokenizer reads an existing tokenizer, "
            "--tokenizer_out writes the one trained here)"
        )
    if spec.kind != "rules" and (FLAGS.num_shards or FLAGS.shard):
        raise InputError(
            f"--num_shards: sharding is for --teacher=rules; run --teacher={spec.kind}:... unsharded"
        )
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
        if not FLAGS.tokenizer:
            cli.require_flag(FLAGS.tokenizer_out, "tokenizer_out")
    elif spec.kind != "rules":
        raise InputError(f"--out is required: --teacher={spec.kind}:... writes a dataset")
    else:
        cli.require_flag(FLAGS.tokenizer_out, "tokenizer_out")  # the tokenizer alone


_SAMPLE_FLAGS = ("sample_temperature", "sample_top_k", "sample_top_p", "sample_seed")


def _sampling() -> source.Sampling:
    if FLAGS.teacher_sampling == "greedy":
        for name in _SAMPLE_FLAGS:  # a greedy reply would silently ignore them
            if FLAGS[name].value != FLAGS[name].default:
                raise InputError(
                    f"--{name}: applies to --teacher_sampling=sample only; the reply is greedy, so "
                    "leave it out or add --teacher_sampling=sample"
                )
    return source.Sampling(
        mode=FLAGS.teacher_sampling,
        temperature=FLAGS.sample_temperature,
        top_k=FLAGS.sample_top_k,
        top_p=FLAGS.sample_top_p,
        seed=FLAGS.sample_seed,
        max_tokens=FLAGS.max_reply_tokens,
    ).check()


def _warn_if_topk_uninformative(topk: int, summary: dataset.TopkSummary) -> None:
    """--topk=1 leaves the KL term one id and the tail to compare; a k above every position's number
    of possible next tokens adds nothing over that number. Both are legal, and both deserve a word."""
    coverage = f"the top-k lists hold {summary.coverage:.1%} of the teacher's mass on average"
    if summary.kl_is_zero():
        logging.warning(
            "--topk=%d: every position's list holds one id, so the distillation KL only weighs that id "
            "against the rest of the mass (%s); use --topk=2 or more to distil how the teacher ranks "
            "the tokens it considers.",
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


def _api_key() -> str | None:
    """The key from the environment variable --api_key_env names; never echoed anywhere."""
    name = FLAGS.api_key_env
    if not name:
        return None
    key = os.environ.get(name, "")
    if not key:
        raise InputError(
            f"--api_key_env: the environment variable {name} is not set or empty; set it to the API key, "
            "or leave --api_key_env empty for a server without keys"
        )
    return key


def _check_openai_flags() -> None:
    if FLAGS.api not in ("completions", "chat"):
        raise InputError(f"--api is {FLAGS.api!r}; use completions or chat")
    if FLAGS.concurrency < 1:
        raise InputError(f"--concurrency is {FLAGS.concurrency}; use 1 or more")
    if not FLAGS.request_timeout > 0:
        raise InputError(f"--request_timeout is {FLAGS.request_timeout}; use seconds > 0")
    if FLAGS.max_retries < 0:
        raise InputError(f"--max_retries is {FLAGS.max_retries}; use 0 or more")


def _teacher(spec: source.Spec, sampling: source.Sampling, tok: tokenizer_lib.Tokenizer):
    """The source.Teacher --teacher names. Each kind's code is imported only when used: a GGUF run
    never imports the HTTP client, a server run never imports llama.cpp."""
    if spec.kind == "gguf":
        from data.teachers import gguf_teacher

        return gguf_teacher.GGUFTeacher(
            spec.location, model=FLAGS.model, sampling=sampling, topk=FLAGS.topk, kd=FLAGS.kd, tokenizer=tok
        )
    from data.remote import openai_teacher

    return openai_teacher.OpenAITeacher(
        spec.location,
        model=FLAGS.model or "",
        api=FLAGS.api,
        sampling=sampling,
        topk=FLAGS.topk,
        kd=FLAGS.kd,
        tokenizer=tok,
        api_key=_api_key(),
        cache_dir=FLAGS.cache_dir or FLAGS.out + ".cache",
        concurrency=FLAGS.concurrency,
        timeout=FLAGS.request_timeout,
        max_retries=FLAGS.max_retries,
    )


def _write_teacher_dataset(spec: source.Spec, tok: tokenizer_lib.Tokenizer) -> None:
    """--teacher=gguf:... or openai:...: the version-2 dataset (data/teachers/teacher_dataset.py)."""
    from data.teachers import teacher_dataset

    options = teacher_dataset.Options(
        n=FLAGS.n,
        seed=FLAGS.seed,
        heldout_fraction=FLAGS.heldout_fraction,
        noise_fraction=FLAGS.noise_fraction,
        topk=FLAGS.topk,
        kd=FLAGS.kd,
        sampling=_sampling(),
    )
    teacher = _teacher(spec, options.sampling, tok)
    # The teacher is named by its header object: --teacher's URL could hold credentials.
    described = teacher.describe()
    logging.info(
        "asking the %s teacher %s %d questions, --kd=%s", spec.kind, described["model"], FLAGS.n, FLAGS.kd
    )
    start = time.monotonic()
    header, records = teacher_dataset.build(teacher, tok, options)
    seconds = time.monotonic() - start
    if FLAGS.tokenizer_out:
        # The dataset is written while the tokenizer file is still pending, so a failure leaves neither.
        with atomic.output_file(FLAGS.tokenizer_out) as handle:
            handle.write(tok.to_bytes())
            teacher_dataset.write(FLAGS.out, header, records)
    else:
        teacher_dataset.write(FLAGS.out, header, records)
    if options.kd == "logits":
        _warn_if_topk_uninformative(FLAGS.topk, dataset.topk_summary(records))
    logging.info(
        "wrote %s (%d records, %d held out; %.1f s, %.1f records/s)",
        FLAGS.out,
        len(records),
        header["num_heldout"],
        seconds,
        len(records) / max(seconds, 1e-9),
    )


def main(argv: list[str]) -> None:
    del argv
    spec = source.parse_spec(FLAGS.teacher)
    if spec.kind != "openai":
        # A pipeline stage prints nothing on success (common/quiet.py); --verbosity=0 brings the
        # log back. A capture from a server runs by hand, outside the graph, for minutes to hours:
        # it keeps its progress line, retries and cache hits.
        quiet.own_logs()
    _check_teacher_flags(spec)
    _check_mode(spec)
    outputs = {"out": FLAGS.out, "tokenizer_out": FLAGS.tokenizer_out}
    cli.check_distinct_outputs(outputs)
    for name, path in outputs.items():
        if path:
            cli.check_output_path(path, name)
    generate.check_options(FLAGS.n, FLAGS.seed, FLAGS.heldout_fraction, FLAGS.topk, FLAGS.noise_fraction)
    if spec.kind != "rules":
        source.check_kd(FLAGS.kd)
        _sampling()
        if spec.kind == "openai":
            _check_openai_flags()
            _api_key()

    if FLAGS.tokenizer:
        tok = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
        logging.info("read the tokenizer %s (%s)", FLAGS.tokenizer, tok.digest[:12])
    else:
        logging.info("training the tokenizer on every string the dataset can produce")
        tok = generate.train_tokenizer()
    if not FLAGS.out:
        tok.save(FLAGS.tokenizer_out)
        logging.info("wrote %s (tokenizer %s)", FLAGS.tokenizer_out, tok.digest[:12])
        return
    if spec.kind != "rules":
        _write_teacher_dataset(spec, tok)
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
    if FLAGS.tokenizer_out:
        # The dataset is written while the tokenizer file is still pending, so a failure leaves neither.
        with atomic.output_file(FLAGS.tokenizer_out) as handle:
            handle.write(tok.to_bytes())
            dataset.write_dataset(FLAGS.out, header, records)
    else:
        dataset.write_dataset(FLAGS.out, header, records)
    _warn_if_topk_uninformative(FLAGS.topk, dataset.topk_summary(records))
    logging.info(
        "wrote %s (%d records, %d held out) and %s (tokenizer %s)",
        FLAGS.out,
        len(records),
        header["num_heldout"],
        FLAGS.tokenizer_out or "no tokenizer",
        tok.digest[:12],
    )


if __name__ == "__main__":
    cli.run(main)
