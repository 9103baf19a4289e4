"""Named arrays from an .npz file, each checked against what the caller expects before it is read.

np.load reads a member's header (shape, dtype) and then allocates shape x itemsize bytes, so a
crafted file that declares a huge array could exhaust memory before any later check. read() parses
every header first with the standard library's zipfile and numpy.lib.format, hands (name, shape,
dtype) to the caller's check, and loads the data only when every member passed. Pickled (object)
arrays are refused: loading them would run code.
"""

import zipfile
from collections.abc import Callable, Iterator

import numpy as np

from common.errors import InputError

Check = Callable[[str, tuple[int, ...], np.dtype], None]  # raises InputError naming the array


def _header(archive: zipfile.ZipFile, member: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with archive.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"format version {version}")
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(
            f"{where}: {member} is not a NumPy array ({error}); write it with np.savez"
        ) from None
    if dtype.hasobject:
        raise InputError(f"{where}: {member} holds Python objects; only numeric arrays are read")
    return tuple(shape), dtype


def _members(path: str) -> Iterator[tuple[str, tuple[int, ...], np.dtype]]:
    """(name, shape, dtype) of each member of the .npz at `path`, one header at a time; InputError
    for a damaged file or a member that is not a numeric array."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{path}: not an .npz file ({error}); write it with np.savez") from None
    with archive:
        members = archive.namelist()
        if len(set(members)) != len(members):
            raise InputError(f"{path}: an array name appears twice")
        for member in members:
            if not member.endswith(".npy"):
                raise InputError(f"{path}: unexpected member {member}; an .npz holds only .npy arrays")
            yield (member[: -len(".npy")], *_header(archive, member, path))


def check_headers(path: str) -> None:
    """InputError for a damaged file or a member that is not a numeric array; reads no array data.
    For a caller that has no `check` yet (run_mlpackage, before it loads the package)."""
    for _ in _members(path):
        pass


def read(path: str, check: Check) -> dict[str, np.ndarray]:
    """{name: array} of every member of the .npz at `path`; InputError for a damaged file, a member
    that is not a numeric array, or one `check` refuses (before any array data is read)."""
    for name, shape, dtype in _members(path):
        check(name, shape, dtype)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:  # data shorter than its header
        raise InputError(f"{path}: an array's data is damaged ({error}); write it with np.savez") from None
