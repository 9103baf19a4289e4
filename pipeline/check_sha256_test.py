"""The pin check of a dataset made outside the graph, run as the chain's stage runs it: a subprocess."""

import hashlib
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)  # the source tree and Bazel runfiles alike
BINARY = os.path.join(HERE, "check_sha256.py")
PINNED_BY = 'dataset_sha256 of student_chain(name = "mine") in pipeline/BUILD.bazel'


def run(*flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, BINARY, *flags], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.fixture
def capture(tmp_path):
    path = tmp_path / "capture.kd.jsonl"
    path.write_bytes(b'{"format":"m8b-kd"}\n' + b"x" * (3 << 20))  # spans several read chunks
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_pinned_file_is_copied_byte_for_byte(tmp_path, capture):
    path, digest = capture
    out = tmp_path / "chain.kd.jsonl"
    result = run(f"--in={path}", f"--sha256={digest}", f"--out={out}", f"--pinned_by={PINNED_BY}")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == path.read_bytes()


def test_a_changed_file_stops_the_chain_with_both_digests(tmp_path, capture):
    path, digest = capture
    pinned = digest
    path.write_bytes(path.read_bytes() + b"one more record\n")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "chain.kd.jsonl"
    result = run(f"--in={path}", f"--sha256={pinned}", f"--out={out}", f"--pinned_by={PINNED_BY}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    message = lines[0]
    assert message.startswith(f"error: --in: {path}: sha256 is {actual}, but {PINNED_BY} expects {pinned}; ")
    assert f"`sha256sum {path}`" in message  # what to do
    assert sorted(os.listdir(tmp_path)) == ["capture.kd.jsonl"]  # no output, no temporary left


@pytest.mark.parametrize(
    "pin, message",
    [
        ("ABC", "error: --sha256: 'ABC' is not a sha256; give 64 lower-case hex digits"),
        ("A" * 64, "error: --sha256: '" + "A" * 64 + "' is not a sha256"),
    ],
)
def test_a_malformed_pin_is_refused(tmp_path, capture, pin, message):
    path, _ = capture
    result = run(f"--in={path}", f"--sha256={pin}", f"--out={tmp_path / 'out.jsonl'}")
    assert (result.returncode, result.stderr.startswith(message)) == (2, True), result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_missing_file_names_its_pin(tmp_path):
    missing = tmp_path / "gone.kd.jsonl"
    result = run(
        f"--in={missing}",
        "--sha256=" + "0" * 64,
        f"--out={tmp_path / 'out.jsonl'}",
        f"--pinned_by={PINNED_BY}",
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --in: {missing}: file not found; it is the file {PINNED_BY} pins"
    assert sorted(os.listdir(tmp_path)) == []


def test_every_flag_is_required(tmp_path, capture):
    path, digest = capture
    result = run(f"--in={path}", f"--sha256={digest}")
    assert (result.returncode, result.stderr.strip()) == (2, "error: --out is required")
