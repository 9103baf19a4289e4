"""Test helpers for saved .mlpackage directories: their bytes, and a save repeated in another process."""

import os
import subprocess
import sys

from common import child_python


def tree(path: str) -> dict[str, bytes]:
    """Every file below the package directory `path`: relative path -> bytes."""
    files = {}
    for directory, _, names in os.walk(path):
        for name in names:
            full = os.path.join(directory, name)
            with open(full, "rb") as handle:
                files[os.path.relpath(full, path)] = handle.read()
    return files


def assert_saved_alike_in_another_process(package: str, save_script: str, path: str) -> None:
    """Runs `save_script` (Python source, given `path` as argv[1]) in a child process and asserts the
    package it writes there has exactly `package`'s files and bytes. Another process, because
    protobuf's map order and coremltools' name counters are per process."""
    proc = subprocess.run(
        [sys.executable, "-c", save_script, path],
        env=child_python.child_env(),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    expected, got = tree(package), tree(path)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], f"{name} differs between saves"
