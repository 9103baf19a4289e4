"""Capture speed of each teacher source: records/s over the same prompts, measured in one run.

    ./bazelw run //bench:teacher_capture -- [--n=48] [--repeats=3]

Rows (bench/table.py), each the median of --repeats trials over the same --n prompts (the questions
make_toy_kd asks for --seed=1), greedy, --kd=logits, top-8:

    rules                    the rule-based teacher (data/teachers/rules_teacher.py)       baseline
    gguf in process          the wide GGUF through llama.cpp in this process
                             (data/teachers/gguf_teacher.py; model load included)          baseline
    openai c1                the same GGUF behind llama-cpp-python's server on localhost
                             (data/remote/local_server.py's settings), --concurrency=1,
                             a fresh response cache each trial                             vs gguf in process
    openai c4                the same with --concurrency=4                                 vs openai c1
    openai from cache        the c1 capture again from its cache (no request at all)       vs openai c1

The trials take turns source by source, so machine load hits every row alike. The server is started
once, before the first trial, and always stopped at the end. Not a test: timings vary.
"""

import os
import shutil
import tempfile
import time

from absl import flags, logging

from bench import table
from common import cli
from common.errors import InputError
from data import generate
from data import tokenizer as tokenizer_lib
from data.remote import local_server, openai_teacher
from data.teachers import gguf_teacher, rules_teacher, source, teacher_dataset

flags.DEFINE_string("gguf", None, "The teacher GGUF (set by the BUILD file: the wide configuration's).")
flags.DEFINE_string("tokenizer", None, "The student tokenizer JSON (set by the BUILD file).")
flags.DEFINE_integer("n", 48, "Prompts per trial.")
flags.DEFINE_integer("repeats", 3, "Trials per row; the median is reported.")
FLAGS = flags.FLAGS

SEED, HELDOUT, NOISE, TOPK = 1, 0.2, 0.5, 8


def _timed(teacher, prompts) -> float:
    """records/s of one full capture."""
    start = time.perf_counter()
    replies = list(teacher.replies(prompts))
    seconds = time.perf_counter() - start
    if len(replies) != len(prompts):
        raise RuntimeError(f"{len(replies)} replies to {len(prompts)} prompts")
    return len(prompts) / seconds


def main(argv: list[str]) -> None:
    del argv
    cli.require_flag(FLAGS.gguf, "gguf")
    cli.require_flag(FLAGS.tokenizer, "tokenizer")
    if FLAGS.n < 5 or FLAGS.repeats < 1:
        raise InputError("--n must be at least 5 (both splits need a record) and --repeats at least 1")
    tok = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
    questions = generate.questions(FLAGS.n, SEED, HELDOUT, NOISE)
    prompts = teacher_dataset.prompts(questions, tok)
    greedy = source.Sampling()
    work = tempfile.mkdtemp(prefix="teacher_capture.")
    server = local_server.LlamaServer(FLAGS.gguf, os.path.join(work, "server.log"), alias="wide")
    try:
        server.start()
        caches = iter(range(10**9))

        def served(concurrency: int, cache: str | None = None):
            return openai_teacher.OpenAITeacher(
                server.url,
                model="",
                api="completions",
                sampling=greedy,
                topk=TOPK,
                kd="logits",
                tokenizer=tok,
                api_key=None,
                cache_dir=cache or os.path.join(work, f"cache{next(caches)}"),
                concurrency=concurrency,
                timeout=60.0,
                max_retries=2,
            )

        runs: dict[str, list[float]] = {
            name: [] for name in ("rules", "gguf in process", "openai c1", "openai c4", "openai from cache")
        }
        for repeat in range(FLAGS.repeats):
            logging.info("trial %d of %d", repeat + 1, FLAGS.repeats)
            runs["rules"].append(
                _timed(rules_teacher.RulesTeacher(FLAGS.n, SEED, HELDOUT, TOPK, tok), prompts)
            )
            local = gguf_teacher.GGUFTeacher(
                FLAGS.gguf, model=None, sampling=greedy, topk=TOPK, kd="logits", tokenizer=tok
            )
            runs["gguf in process"].append(_timed(local, prompts))
            first = served(1)
            runs["openai c1"].append(_timed(first, prompts))
            runs["openai c4"].append(_timed(served(4), prompts))
            again = served(1, first.cache.directory)
            runs["openai from cache"].append(_timed(again, prompts))
            if again.endpoint.sent:
                raise RuntimeError(f"the replay from the cache sent {again.endpoint.sent} requests")
    finally:
        server.stop()
    shutil.rmtree(work, ignore_errors=True)
    baselines = {
        "rules": None,
        "gguf in process": None,
        "openai c1": "gguf in process",
        "openai c4": "openai c1",
        "openai from cache": "openai c1",
    }
    rows = [table.Row(name, "records/s", tuple(values), baselines[name]) for name, values in runs.items()]
    print(f"{FLAGS.n} prompts, greedy, top-{TOPK}; {os.path.basename(FLAGS.gguf)}")
    print(table.format_table(rows))


if __name__ == "__main__":
    cli.run(main)
