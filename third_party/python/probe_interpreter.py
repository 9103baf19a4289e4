"""Run by interpreter.bzl with the candidate interpreter: prints its identity as JSON.

Runs under any Python 3 (it must report a wrong version, not crash on one). Its one argument is the
path the rule found the interpreter at (on PATH, or $PYTHON_BIN).
"""

import hashlib
import json
import os
import platform
import sys
import sysconfig


def sha256_of(path):
    if not path or not os.path.isfile(path):
        return "none"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shared_libpython():
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    name = sysconfig.get_config_var("LDLIBRARY") or ""
    directory = sysconfig.get_config_var("LIBDIR") or ""
    return os.path.join(directory, name)


def stable_path(found, executable):
    """The path the build's scripts start Python by: `found` when it is a chain of symlinks to this
    very binary (Homebrew's /opt/homebrew/bin/python3.11, which `brew upgrade` repoints at the new
    Cellar directory), else the binary itself (pyenv's shims are scripts that pick a Python by the
    working directory, so they are never used)."""
    if found and os.path.islink(found) and os.path.realpath(found) == executable:
        return found
    return executable


executable = os.path.realpath(sys.executable)
print(
    json.dumps(
        {
            "version": platform.python_version(),
            "major_minor": "%d.%d" % sys.version_info[:2],
            "implementation": platform.python_implementation(),
            "executable": executable,
            "stable_path": stable_path(sys.argv[1] if len(sys.argv) > 1 else "", executable),
            "executable_sha256": sha256_of(executable),
            "libpython_sha256": sha256_of(shared_libpython()),
        }
    )
)
