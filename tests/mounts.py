"""A small tmpfs for one command: a full disk (ENOSPC) or a read-only directory, even as root.

As root, `chmod 0555` does not stop a write, and filling a real disk is not an option, so both
faults need a filesystem of our own. Mounting one needs privileges; in order we try
  1. `mount -t tmpfs` directly (root, or a Bazel sandbox that kept CAP_SYS_ADMIN), mounted in
     this process and unmounted afterwards;
  2. an unprivileged user namespace (`unshare --user --map-root-user --mount`): the tmpfs exists
     only inside it, so the command runs there and lists what it left before the namespace ends.
If neither works, unavailable() says why and the caller skips with that reason.
"""

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile

import pytest

from tests import harness

# In the namespace: mount, run the command, then list what is left on the tmpfs (it vanishes after).
_IN_NAMESPACE = (
    'mount -t tmpfs -o "$1" m8b-test "$2" || exit 97; where="$2"; listing="$3"; shift 3; '
    '"$@"; status=$?; find "$where" -mindepth 1 > "$listing"; exit $status'
)


def _options(size: str, readonly: bool) -> str:
    return f"size={size},mode=0777" + (",ro" if readonly else "")


def _try(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def mode() -> str:
    """ "direct", "namespace" or "" (no way to mount here)."""
    probe = tempfile.mkdtemp(prefix="m8b-mount-probe-")
    try:
        if shutil.which("mount") and _try(
            ["mount", "-t", "tmpfs", "-o", _options("64k", False), "m8b-test", probe]
        ):
            _try(["umount", probe])
            return "direct"
        script = f'mount -t tmpfs -o size=64k m8b-test "{probe}"'
        if shutil.which("unshare") and _try(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script]
        ):
            return "namespace"
        return ""
    finally:
        os.rmdir(probe)


def unavailable() -> str | None:
    if mode():
        return None
    return (
        "cannot mount a tmpfs here: `mount -t tmpfs` needs root (or CAP_SYS_ADMIN), and "
        "`unshare --user --map-root-user --mount` needs unprivileged user namespaces "
        "(kernel.unprivileged_userns_clone=1); run the suite as root or enable user namespaces"
    )


def require() -> None:
    """Skips the calling test when no tmpfs can be mounted, naming why; under CI=true it fails
    instead (CI must have a tmpfs: a skip there would read as a pass)."""
    reason = unavailable()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def _mounted(where: str, size: str, readonly: bool):
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", _options(size, readonly), "m8b-test", where],
        check=True,
        capture_output=True,
    )
    try:
        yield
    finally:
        # A lazy unmount cannot fail on a busy mount; the tmpfs and its contents go with it.
        subprocess.run(["umount", "--lazy", where], check=False, capture_output=True)


def run_on_tmpfs(cmd: list[str], where: str, size: str = "1m", readonly: bool = False):
    """Runs cmd with a fresh tmpfs at `where`; returns (CompletedProcess, files left on the tmpfs)."""
    os.makedirs(where, exist_ok=True)
    common = dict(capture_output=True, text=True, errors="replace", env=harness.binary_env(), check=False)
    if mode() == "direct":
        with _mounted(where, size, readonly):
            result = subprocess.run(cmd, timeout=harness.TIMEOUT_S, **common)
            left = harness.leftovers(where)
        return result, left
    if mode() == "namespace":
        listing = where.rstrip("/") + ".left"
        wrapper = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _IN_NAMESPACE, "sh"]
        result = subprocess.run(
            [*wrapper, _options(size, readonly), where, listing, *cmd], timeout=harness.TIMEOUT_S, **common
        )
        assert result.returncode != 97, f"mounting the tmpfs failed: {result.stderr}"
        with open(listing, encoding="utf-8") as handle:
            return result, sorted(line for line in handle.read().splitlines() if line)
    raise RuntimeError(unavailable())
