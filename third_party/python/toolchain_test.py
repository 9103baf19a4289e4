"""The tests run on the pinned toolchain's interpreter, and it is Python 3.11."""

import hashlib
import os
import sys

IDENTITY = "../python311/interpreter_identity.txt"  # runfiles path of @python311//:interpreter_identity.txt


def read_identity() -> dict:
    with open(IDENTITY, encoding="utf-8") as handle:
        return dict(line.strip().split("=", 1) for line in handle if line.strip())


def test_interpreter_is_python_311():
    assert sys.version_info[:2] == (3, 11), sys.version


def test_interpreter_is_the_toolchains():
    identity = read_identity()
    assert os.path.realpath(sys.executable) == identity["executable"]
    assert identity["version"] == ".".join(map(str, sys.version_info[:3]))


def test_identity_digest_matches_the_running_binary():
    identity = read_identity()
    with open(os.path.realpath(sys.executable), "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == identity["executable_sha256"]
