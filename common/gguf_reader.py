"""Opening a GGUF file that may be damaged or crafted, before llama.cpp ever sees it.

llama.cpp's loader can abort the whole process on a damaged file. Here the header is checked
first (size, magic, a version llama.cpp reads), then the gguf package's reader parses the file
(it memory-maps it: every array element it visits occupies at least one byte of the file, so a
crafted count costs at most a pass over the file), and every tensor's data must lie inside the
file. Any failure is the caller's InputError, never a crash. Both readers of GGUF files use it:
the teacher's (data/teachers/gguf_file.py) and verification's (verify/gguf_files/gguf_check.py).
"""

import os
import struct
from collections.abc import Callable

from common.errors import InputError

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # the GGUF versions llama.cpp reads; gguf 0.19 writes 3
HEADER_BYTES = 24  # magic, uint32 version, uint64 tensor count, uint64 key/value count


def open_checked(path: str, unreadable: Callable[[str], InputError]):
    """The gguf.GGUFReader of the existing file `path`, its header and tensor extents checked.
    `unreadable(why)` makes the caller's error for a file that is not a readable GGUF file."""
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise unreadable(f"{size} bytes is shorter than the {HEADER_BYTES}-byte header")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head[:4] != MAGIC:
        raise unreadable(f"magic is {head[:4]!r}, expected {MAGIC!r}")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in VERSIONS:
        raise unreadable(f"GGUF version {version}; llama.cpp reads {VERSIONS}")

    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
        for tensor in reader.tensors:
            end = int(tensor.data_offset) + int(tensor.n_bytes)
            if end > size or tensor.data.nbytes != int(tensor.n_bytes):
                raise ValueError(f"tensor {tensor.name} runs past the end of the file")
    except Exception as error:  # any failure to parse is a damaged file, never a crash
        raise unreadable(f"{type(error).__name__}: {str(error)[:200]}") from None
    return reader
