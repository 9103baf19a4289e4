"""Outputs are complete or absent: write to a temporary name in the same directory, then rename."""

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator

from common.errors import InputError


def _check_parent(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"{path}: output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{path}: output directory {parent} is not writable")
    return parent


def _raise_os_error(path: str, error: OSError) -> None:
    if error.errno == errno.ENOSPC:
        raise InputError(f"{path}: no space left on device while writing; nothing was written") from None
    raise InputError(f"{path}: cannot write: {error.strerror}") from None


@contextlib.contextmanager
def output_file(path: str, mode: str = "wb") -> Iterator:
    """Yields a handle; the file appears at `path` only if the block finishes without error."""
    parent = _check_parent(path)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        _raise_os_error(path, error)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    with output_file(path, "wb") as handle:
        handle.write(data)


def write_text(path: str, text: str) -> None:
    with output_file(path, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def output_dir(path: str) -> Iterator[str]:
    """Yields a temporary directory that replaces `path` only if the block succeeds."""
    parent = _check_parent(path)
    tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_os_error(path, error)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
