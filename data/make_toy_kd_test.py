"""Runs the make_toy_kd binary as a user would: a subprocess, flags, exit status, files."""

import hashlib
import os
import re
import subprocess
import sys

import pytest

from data import dataset, generate
from data import tokenizer as tk

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)  # works in the source tree and in Bazel runfiles alike
BINARY = os.path.join(HERE, "make_toy_kd.py")
MERGE = os.path.join(HERE, "merge_kd_shards.py")


def run(*flags: str, binary: str = BINARY) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, binary, *flags], capture_output=True, text=True, env=env, timeout=120, check=False
    )


# Each run of the binary trains the tokenizer (most of its run time), so the runs several tests
# look at are made once per module: two default-teacher runs with these flags, and one run that
# writes the tokenizer alone.
DEFAULT_RUN = ("--n=40", "--seed=5", "--topk=3")


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory):
    """The directory holding a.jsonl/a.tok.json and b.jsonl/b.tok.json: two runs with DEFAULT_RUN
    and no --teacher (the default, rules), and nothing else."""
    directory = tmp_path_factory.mktemp("default_runs")
    for name in ("a", "b"):
        kd, tok = str(directory / f"{name}.jsonl"), str(directory / f"{name}.tok.json")
        result = run(f"--out={kd}", f"--tokenizer_out={tok}", *DEFAULT_RUN)
        assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture(scope="module")
def tokenizer_alone(tmp_path_factory):
    """The tokenizer written by a run given --tokenizer_out and no --out."""
    path = str(tmp_path_factory.mktemp("tokenizer_alone") / "alone.tok.json")
    result = run(f"--tokenizer_out={path}")
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """(tokenizer, header, path of the dataset file) of data/generate.py in-process, with the
    DEFAULT_RUN settings and the default held-out fraction."""
    tok, header, records = generate.generate(40, 5, 0.2, 3)
    path = str(tmp_path_factory.mktemp("generated") / "expected.jsonl")
    dataset.write_dataset(path, header, records)
    return tok, header, path


def test_writes_a_valid_dataset_and_tokenizer_twice_byte_identical(default_runs):
    outputs = [
        ((default_runs / f"{name}.jsonl").read_bytes(), (default_runs / f"{name}.tok.json").read_bytes())
        for name in ("a", "b")
    ]
    assert outputs[0] == outputs[1]

    data = dataset.read_dataset(str(default_runs / "a.jsonl"))
    tokenizer = tk.Tokenizer.load(str(default_runs / "a.tok.json"))
    assert data.header["tokenizer_sha256"] == tokenizer.digest == hashlib.sha256(outputs[0][1]).hexdigest()
    assert (data.header["topk"], data.header["seed"], len(data.records)) == (3, 5, 40)
    assert sum(r.split == "heldout" for r in data.records) == 8
    assert all(len(row) <= 3 for r in data.records for row in r.topk_ids)
    assert sorted(os.listdir(default_runs)) == ["a.jsonl", "a.tok.json", "b.jsonl", "b.tok.json"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--n=0"], "error: --n is 0; need at least 2 records"),
        (["--topk=0"], "error: --topk is 0; use 1..32"),
        (["--topk=40"], "error: --topk is 40; use 1..32"),
        (
            ["--heldout_fraction=0"],
            "error: --heldout_fraction is 0.0; use a fraction strictly between 0 and 1",
        ),
        (
            ["--heldout_fraction=1.5"],
            "error: --heldout_fraction is 1.5; use a fraction strictly between 0 and 1",
        ),
        (["--n=many"], "error: flag --n=many"),
        (["--bogus=1"], "error: Unknown command line flag 'bogus'"),
    ],
)
def test_bad_flags_exit_2_and_write_nothing(tmp_path, flags, message):
    result = run(f"--out={tmp_path / 'kd.jsonl'}", f"--tokenizer_out={tmp_path / 'tok.json'}", *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert os.listdir(tmp_path) == []


def test_missing_output_directory_or_flag_exits_2(tmp_path):
    result = run(f"--out={tmp_path / 'no' / 'kd.jsonl'}", f"--tokenizer_out={tmp_path / 'tok.json'}")
    assert result.returncode == 2
    assert f"error: --out: output directory {tmp_path / 'no'} does not exist" in result.stderr
    result = run(f"--out={tmp_path / 'kd.jsonl'}")
    assert result.returncode == 2 and "error: --tokenizer_out is required" in result.stderr
    result = run(f"--out={tmp_path / 'x.json'}", f"--tokenizer_out={tmp_path / 'x.json'}")
    assert result.returncode == 2 and "name the same file" in result.stderr
    assert os.listdir(tmp_path) == []


SMALL = ("--n=50", "--seed=3", "--topk=4")


def _shards(tmp_path, count: int) -> list[str]:
    paths = [str(tmp_path / f"s{i}.jsonl") for i in range(count)]
    for i, path in enumerate(paths):
        result = run(f"--out={path}", f"--shard={i}", f"--num_shards={count}", *SMALL)
        assert result.returncode == 0, result.stderr
    return paths


def test_merged_shards_are_the_unsharded_bytes_in_any_order(tmp_path, tokenizer_alone):
    kd, tok = str(tmp_path / "kd.jsonl"), str(tmp_path / "tok.json")
    assert run(f"--out={kd}", f"--tokenizer_out={tok}", *SMALL).returncode == 0
    alone = tokenizer_alone  # the tokenizer alone: the same file
    assert open(alone, "rb").read() == open(tok, "rb").read()
    shards = _shards(tmp_path, 3)
    merged = str(tmp_path / "merged.jsonl")
    flags = [f"--shard={p}" for p in (shards[2], shards[0], shards[1])]
    result = run(*flags, f"--tokenizer={alone}", f"--out={merged}", binary=MERGE)
    assert result.returncode == 0, result.stderr
    assert open(merged, "rb").read() == open(kd, "rb").read()
    # Each shard holds its contiguous third of the records, not the whole dataset.
    assert [len(open(p, "rb").read().splitlines()) - 1 for p in shards] == [16, 17, 17]


def test_bad_shards_exit_2_and_merge_writes_nothing(tmp_path, tokenizer_alone):
    shards = _shards(tmp_path, 2)
    tok = tokenizer_alone  # the shards' tokenizer (test_merged_shards_are_the_unsharded_bytes_in_any_order)
    merged = str(tmp_path / "merged.jsonl")
    cases = [
        ([shards[0]], "error: --shard: 1 of 2 shards given, records 0..24 of 50; pass every shard"),
        ([shards[0], shards[0]], "expected shard 1 starting at id 25; pass every shard exactly once"),
        ([tok], "format: is 'm8b-spm-bpe', expected 'm8b-kd-shard'"),
    ]
    for given, message in cases:
        result = run(*[f"--shard={p}" for p in given], f"--tokenizer={tok}", f"--out={merged}", binary=MERGE)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    other = str(tmp_path / "other.jsonl")
    assert run(f"--out={other}", "--shard=1", "--num_shards=2", "--n=50", "--seed=4").returncode == 0
    pair = [f"--shard={shards[0]}", f"--shard={other}"]
    result = run(*pair, f"--tokenizer={tok}", f"--out={merged}", binary=MERGE)
    assert result.returncode == 2 and "belongs to another dataset" in result.stderr
    for flags, message in [
        (["--shard=2", "--num_shards=2"], "error: --shard is 2; use 0..1"),
        (["--num_shards=51"], "error: --num_shards is 51; use 1..50"),
        (["--shard=1"], "error: --shard 1 needs --num_shards"),
        (
            ["--num_shards=2", f"--tokenizer_out={tmp_path / 't.json'}"],
            "error: --tokenizer_out: a --num_shards",
        ),
    ]:
        result = run(f"--out={tmp_path / 'x.jsonl'}", "--n=50", *flags)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not os.path.exists(merged) and not os.path.exists(tmp_path / "x.jsonl")


@pytest.mark.parametrize(
    "topk, warning",
    [
        (
            "1",
            r"--topk=1: every position's list holds one id, so the distillation KL only weighs that id",
        ),
        ("32", r"--topk=32 is above the number of distinct next tokens at every position \(at most \d+\)"),
    ],
)
def test_warns_when_the_top_k_carries_no_information(tmp_path, topk, warning):
    kd = str(tmp_path / "kd.jsonl")
    result = run(f"--out={kd}", f"--tokenizer_out={tmp_path / 'tok.json'}", "--n=40", f"--topk={topk}")
    assert result.returncode == 0, result.stderr
    assert re.search(warning, result.stderr), result.stderr
    summary = dataset.topk_summary(dataset.read_dataset(kd).records)
    coverage = re.search(r"hold (\d+\.\d)% of the teacher's mass", result.stderr)
    assert coverage and float(coverage.group(1)) == round(summary.coverage * 100, 1)
    assert (summary.multi == 0) == (topk == "1")


def test_no_warning_at_the_default_top_k(tmp_path):
    result = run(f"--out={tmp_path / 'kd.jsonl'}", f"--tokenizer_out={tmp_path / 'tok.json'}", "--n=40")
    assert result.returncode == 0 and "--topk=" not in result.stderr, result.stderr


def test_the_default_rules_teacher_writes_what_generate_writes(tmp_path, default_runs, generated):
    """--teacher=rules (the default, named or not) is the version-1 dataset of data/generate.py."""
    tok, header, expected = generated
    named = (str(tmp_path / "named.jsonl"), str(tmp_path / "named.tok.json"))
    result = run(f"--out={named[0]}", f"--tokenizer_out={named[1]}", *DEFAULT_RUN, "--teacher=rules")
    assert result.returncode == 0, result.stderr
    # The default: the module's run with the same flags and no --teacher.
    default = (str(default_runs / "a.jsonl"), str(default_runs / "a.tok.json"))
    for kd, tok_out in (default, named):
        assert open(kd, "rb").read() == open(expected, "rb").read()
        assert open(tok_out, "rb").read() == tok.to_bytes()
    assert header["version"] == 1


def test_an_existing_tokenizer_replaces_the_trained_one(tmp_path, tokenizer_alone, generated):
    kd = str(tmp_path / "kd.jsonl")
    result = run(f"--out={kd}", f"--tokenizer={tokenizer_alone}", *DEFAULT_RUN)
    assert result.returncode == 0, result.stderr
    assert open(kd, "rb").read() == open(generated[2], "rb").read()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--teacher=llama"], "error: --teacher is 'llama'; use rules, gguf:PATH"),
        (["--teacher=gguf:"], "error: --teacher is 'gguf:'; use rules, gguf:PATH"),
        (["--teacher=rules:x"], "error: --teacher is 'rules:...'; use rules"),
        (["--teacher=opneai:http://u:s3cr3t@h/v1"], "error: --teacher is 'opneai:...'; use rules"),
        (["--teacher=gguf:t.gguf", "--kd=soft"], "error: --kd is 'soft'; use logits"),
        (["--teacher=gguf:t.gguf", "--teacher_sampling=beam"], "error: --teacher_sampling is 'beam'"),
        (
            ["--teacher=gguf:t.gguf", "--teacher_sampling=sample", "--sample_temperature=0"],
            "error: --sample_temperature is 0.0; use a finite temperature > 0",
        ),
        (
            ["--teacher=gguf:t.gguf", "--teacher_sampling=sample", "--sample_top_p=1.5"],
            "error: --sample_top_p is 1.5",
        ),
        (
            ["--teacher=gguf:t.gguf", "--teacher_sampling=sample", "--sample_top_k=-1"],
            "error: --sample_top_k is -1",
        ),
        (
            ["--teacher=gguf:t.gguf", "--teacher_sampling=sample", "--sample_seed=-1"],
            "error: --sample_seed is -1",
        ),
        (
            ["--teacher=gguf:t.gguf", "--sample_top_k=5"],
            "error: --sample_top_k: applies to --teacher_sampling=sample only",
        ),
        (["--teacher=gguf:t.gguf", "--max_reply_tokens=0"], "error: --max_reply_tokens is 0"),
        (
            ["--kd=sequence"],
            "error: --kd: applies to --teacher=gguf:... and openai:... only, not --teacher=rules;",
        ),
        (["--model=x"], "error: --model: applies to --teacher=gguf:... and openai:... only"),
        (["--teacher=gguf:t.gguf", "--api=chat"], "error: --api: applies to --teacher=openai:... only"),
        (
            ["--teacher=gguf:t.gguf", "--concurrency=2"],
            "error: --concurrency: applies to --teacher=openai:...",
        ),
        (
            ["--teacher=openai:http://127.0.0.1:1/v1", "--api=rest"],
            "error: --api is 'rest'; use completions or chat",
        ),
        (["--teacher=openai:http://127.0.0.1:1/v1", "--concurrency=0"], "error: --concurrency is 0"),
        (
            ["--teacher=openai:http://127.0.0.1:1/v1", "--request_timeout=0"],
            "error: --request_timeout is 0.0",
        ),
        (["--teacher=openai:http://127.0.0.1:1/v1", "--max_retries=-1"], "error: --max_retries is -1"),
        (
            ["--teacher=openai:http://127.0.0.1:1/v1", "--api_key_env=M8B_SURELY_UNSET_KEY"],
            "error: --api_key_env: the environment variable M8B_SURELY_UNSET_KEY is not set or empty",
        ),
        (["--teacher=gguf:t.gguf", "--num_shards=2"], "error: --num_shards: sharding is for --teacher=rules"),
        (["--tokenizer=t.json"], "error: --tokenizer and --tokenizer_out: give one"),
    ],
)
def test_bad_teacher_flags_exit_2_and_write_nothing(tmp_path, flags, message):
    result = run(f"--out={tmp_path / 'kd.jsonl'}", f"--tokenizer_out={tmp_path / 'tok.json'}", *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert "s3cr3t" not in result.stderr  # a URL's credentials are never repeated
    assert os.listdir(tmp_path) == []


def test_a_missing_or_foreign_teacher_file_exits_2_and_writes_nothing(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("these are notes, not a model\n")
    outputs = tmp_path / "out"
    outputs.mkdir()
    for path, message in [
        (tmp_path / "absent.gguf", "teacher GGUF file not found"),
        (text, "not a readable GGUF file (magic is b'thes', expected b'GGUF')"),
    ]:
        result = run(
            f"--teacher=gguf:{path}", f"--out={outputs / 'kd.jsonl'}", f"--tokenizer_out={outputs / 't.json'}"
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path}: {message}"), result.stderr
        assert os.listdir(outputs) == []
    result = run(f"--teacher=gguf:{text}", f"--tokenizer_out={outputs / 't.json'}")
    assert result.returncode == 2 and "error: --out is required: --teacher=gguf:" in result.stderr
