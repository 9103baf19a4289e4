"""Scale-out rows: data-parallel training, torch.compile against eager, sharded dataset generation.

    ./bazelw run //bench:scale_out -- [--repeats=3] [--compile_repeats=1] [--steps=60]

Every trial runs the real binaries as users do, in subprocesses (the trainer, --nproc=2 for
torchrun with gloo, make_toy_kd and merge_kd_shards), on make_toy_kd's default dataset; trials of
a group alternate. Training rates are the trainer's own count of non-padding input tokens over
its training loop's wall time (its "trained ... tokens" log line), so start-up is left out:
- world size 1 (2 threads, and 1 thread) against 2 ranks of 1 thread; scaling efficiency is
  rate(2 ranks) / (2 * rate(1 process, 1 thread));
- eager against --compile (Inductor's caches off, so every compiled trial compiles from cold):
  the steady rate is the second half of the steps; compile time is a trial's loop time minus what
  its steady rate would take for all its tokens, compiled minus eager; both ends to end too;
- the dataset stage: one make_toy_kd against the tokenizer run and N shard runs at once, then
  the merge (what Bazel runs, with the actions' start-up), wall time.
Prints the table, then whether the compiled trials wrote identical weights. Not a test.
"""

import concurrent.futures
import hashlib
import os
import re
import subprocess
import tempfile
import time

from absl import flags, logging

from bench import table
from common import child_python, cli
from common.errors import InputError
from training import parallel

flags.DEFINE_integer("repeats", 3, "Trials per training and dataset row; the median is reported.")
flags.DEFINE_integer("compile_repeats", 1, "Trials per compile row (each compiles from cold: slow).")
flags.DEFINE_integer("steps", 60, "Optimizer steps per training trial (batch 64).")
flags.DEFINE_integer("shards", 3, "Dataset shards for the sharded row.")
flags.DEFINE_list("skip", [], "Row groups to leave out: any of dataset, training, compile.")
FLAGS = flags.FLAGS

_TRAINED = re.compile(r"trained (\d+) tokens in ([\d.]+) s; second half (\d+) tokens in ([\d.]+) s")
DATASET_FLAGS = ["--n=6000", "--seed=0", "--heldout_fraction=0.2", "--topk=8"]


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    result = child_python.run_module(args[0], args[1:], timeout=None, **{"OMP_NUM_THREADS": "1", **env})
    if result.returncode != 0:
        raise RuntimeError(f"python -m {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result


def _make_dataset(directory: str) -> list[str]:
    kd, tok = os.path.join(directory, "kd.jsonl"), os.path.join(directory, "tokenizer.json")
    _run(["data.make_toy_kd", f"--out={kd}", f"--tokenizer_out={tok}", *DATASET_FLAGS])
    return [f"--in={kd}", f"--tokenizer={tok}"]


def _train(inputs: list[str], directory: str, extra: list[str], **env) -> dict:
    """One trainer run: tokens, loop seconds, second-half tokens and seconds, wall seconds, weights sha."""
    weights = os.path.join(directory, "w.safetensors")
    flags_ = [f"--out_weights={weights}", f"--out_metadata={os.path.join(directory, 'm.json')}"]
    flags_ += [f"--steps={FLAGS.steps}", "--batch_size=64", "--heldout_every=0", "--verbosity=0", *extra]
    start = time.perf_counter()
    result = _run(["training.run_toy_distill", *inputs, *flags_], **env)
    wall = time.perf_counter() - start
    found = _TRAINED.findall(result.stderr)
    if len(found) != 1:
        raise RuntimeError(f"expected one 'trained ... tokens' line from rank 0, got {len(found)}")
    tokens, seconds, half_tokens, half_seconds = (float(v) for v in found[0])
    with open(weights, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return {"tokens": tokens, "s": seconds, "half_tokens": half_tokens, "half_s": half_seconds}, wall, digest


def training_rows(inputs: list[str], work: str) -> list[table.Row]:
    configs = {
        "training: world size 1, 2 threads": ["--threads=2"],
        "training: world size 1, 1 thread": ["--threads=1"],
        "training: world size 2 (gloo), 1 thread each": ["--threads=1", "--nproc=2"],
    }
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for repeat in range(FLAGS.repeats):
        order = list(configs) if repeat % 2 == 0 else list(configs)[::-1]
        for name in order:
            run, _, _ = _train(inputs, work, configs[name])
            rates[name].append(run["tokens"] / run["s"])
            logging.info("repeat %d %s: %.0f tokens/s", repeat + 1, name, rates[name][-1])
    one, two, wide = list(configs)
    efficiency = [b / (2 * a) for a, b in zip(rates[two], rates[wide], strict=True)]
    return [
        table.Row(two, "tokens/s", tuple(rates[two])),
        table.Row(one, "tokens/s", tuple(rates[one]), two),
        table.Row(wide, "tokens/s", tuple(rates[wide]), two),
        table.Row("training: scaling efficiency, 2 ranks vs 2 x 1 thread", "ratio", tuple(efficiency)),
    ]


def compile_rows(inputs: list[str], work: str) -> tuple[list[table.Row], bool]:
    results: dict[str, list] = {"eager": [], "compiled": []}
    digests = set()
    for repeat in range(FLAGS.compile_repeats):
        for name in ("eager", "compiled") if repeat % 2 == 0 else ("compiled", "eager"):
            extra = ["--threads=2"] + (["--compile"] if name == "compiled" else [])
            env = {"TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"} if name == "compiled" else {}
            run, wall, digest = _train(inputs, work, extra, **env)
            results[name].append((run, wall))
            if name == "compiled":
                digests.add(digest)
            logging.info("repeat %d %s: %.1f s loop, %.1f s wall", repeat + 1, name, run["s"], wall)

    def steady(run: dict) -> float:
        return run["half_tokens"] / run["half_s"]

    def overhead(run: dict) -> float:  # loop time beyond what the steady rate needs
        return run["s"] - run["tokens"] / steady(run)

    eager, compiled = results["eager"], results["compiled"]
    compile_s = [overhead(c) - overhead(e) for (c, _), (e, _) in zip(compiled, eager, strict=True)]
    rows = [
        table.Row("training: eager, steady", "tokens/s", tuple(steady(r) for r, _ in eager)),
        table.Row(
            "training: --compile, steady",
            "tokens/s",
            tuple(steady(r) for r, _ in compiled),
            "training: eager, steady",
        ),
        table.Row("training: --compile, compile time (cold cache)", "s", tuple(compile_s)),
        table.Row("training: eager, whole run", "s", tuple(w for _, w in eager)),
        table.Row(
            "training: --compile, whole run (cold cache)",
            "s",
            tuple(w for _, w in compiled),
            "training: eager, whole run",
        ),
    ]
    return rows, len(digests) == 1


def _sharded(directory: str) -> None:
    tok = os.path.join(directory, "tokenizer.json")
    jobs = [["data.make_toy_kd", f"--tokenizer_out={tok}"]]
    shards = [os.path.join(directory, f"s{i}.jsonl") for i in range(FLAGS.shards)]
    for i, path in enumerate(shards):
        jobs.append(
            [
                "data.make_toy_kd",
                f"--out={path}",
                f"--shard={i}",
                f"--num_shards={FLAGS.shards}",
                *DATASET_FLAGS,
            ]
        )
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(_run, jobs))
    out = os.path.join(directory, "kd.jsonl")
    _run(["data.merge_kd_shards", *[f"--shard={p}" for p in shards], f"--tokenizer={tok}", f"--out={out}"])


def dataset_rows(work: str) -> list[table.Row]:
    names = (
        "dataset: one make_toy_kd action",
        f"dataset: {FLAGS.shards} shard actions + tokenizer, then merge",
    )
    times: dict[str, list[float]] = {name: [] for name in names}
    digests = {}
    for repeat in range(FLAGS.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            directory = tempfile.mkdtemp(dir=work)
            start = time.perf_counter()
            if name == names[0]:
                _make_dataset(directory)
            else:
                _sharded(directory)
            times[name].append(time.perf_counter() - start)
            with open(os.path.join(directory, "kd.jsonl"), "rb") as handle:
                digests[name] = hashlib.sha256(handle.read()).hexdigest()
    if len(set(digests.values())) != 1:
        raise RuntimeError(f"sharded and unsharded datasets differ: {digests}")
    return [
        table.Row(names[0], "s", tuple(times[names[0]])),
        table.Row(names[1], "s", tuple(times[names[1]]), names[0]),
    ]


def main(argv: list[str]) -> None:
    del argv
    if min(FLAGS.repeats, FLAGS.compile_repeats, FLAGS.steps, FLAGS.shards) < 1:
        raise InputError("--repeats, --compile_repeats, --steps and --shards must be >= 1")
    rows, notes = [], [f"cpus: {os.cpu_count()}"]
    with tempfile.TemporaryDirectory() as work:
        if "dataset" not in FLAGS.skip:
            logging.info("dataset rows")
            rows += dataset_rows(work)
        inputs = _make_dataset(work)
        if "training" not in FLAGS.skip:
            logging.info("training rows (%d steps)", FLAGS.steps)
            rows += training_rows(inputs, work)
        blocker = parallel.compile_blocker()
        if "compile" in FLAGS.skip:
            pass
        elif blocker:
            notes.append(f"compile rows left out: {blocker}")
        else:
            logging.info("compile rows")
            compiled, deterministic = compile_rows(inputs, work)
            rows += compiled
            notes.append(f"compiled trials wrote identical weights: {deterministic}")
    print(table.format_table(rows))
    print("; ".join(notes))


if __name__ == "__main__":
    cli.run(main)
