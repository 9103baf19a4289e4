"""Runs the make_toy_kd binary as a user would: a subprocess, flags, exit status, files."""

import hashlib
import os
import re
import subprocess
import sys

import pytest

from data import dataset
from data import tokenizer as tk

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)  # works in the source tree and in Bazel runfiles alike
BINARY = os.path.join(HERE, "make_toy_kd.py")


def run(*flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, BINARY, *flags], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_writes_a_valid_dataset_and_tokenizer_twice_byte_identical(tmp_path):
    outputs = []
    for name in ("a", "b"):
        kd, tok = str(tmp_path / f"{name}.jsonl"), str(tmp_path / f"{name}.tok.json")
        result = run(f"--out={kd}", f"--tokenizer_out={tok}", "--n=40", "--seed=5", "--topk=3")
        assert result.returncode == 0, result.stderr
        outputs.append((open(kd, "rb").read(), open(tok, "rb").read()))
    assert outputs[0] == outputs[1]

    data = dataset.read_dataset(str(tmp_path / "a.jsonl"))
    tokenizer = tk.Tokenizer.load(str(tmp_path / "a.tok.json"))
    assert data.header["tokenizer_sha256"] == tokenizer.digest == hashlib.sha256(outputs[0][1]).hexdigest()
    assert (data.header["topk"], data.header["seed"], len(data.records)) == (3, 5, 40)
    assert sum(r.split == "heldout" for r in data.records) == 8
    assert all(len(row) <= 3 for r in data.records for row in r.topk_ids)
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "a.tok.json", "b.jsonl", "b.tok.json"]


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


@pytest.mark.parametrize(
    "topk, warning",
    [
        (
            "1",
            r"--topk=1: every position's list holds one id, so the distillation KL term is identically zero",
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
