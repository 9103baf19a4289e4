"""Test support: a crafted AOTInductor package whose shared object runs code the moment it is loaded.

The package has exactly the layout conversion/aoti_compile.py writes, so only the pin of its shared
object can stand in the way; the shared object's initialiser creates the file named by the
environment variable MARKER, so a test can show whether anything loaded it.
"""

import json
import os
import shutil
import subprocess
import zipfile

from conversion import pt2_archive

MARKER = "M8B_MARKER"
_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void loaded(void) {
  const char *path = getenv("M8B_MARKER");
  FILE *f = path ? fopen(path, "w") : NULL;
  if (f) fclose(f);
}
"""
LOAD_IN_CHILD = (
    "import sys, torch\n"
    "try:\n"
    " torch._C._aoti.AOTIModelPackageLoader(sys.argv[1], 'model', False, 1, -1)\n"
    "except Exception:\n"
    " pass\n"
)  # torch's own loader, as a control: it dlopens the package's shared object


def hostile_so(directory: str) -> bytes:
    """A shared object whose initialiser creates $M8B_MARKER, built with the C compiler (the
    AOTInductor stage needs one too)."""
    source, target = os.path.join(directory, "loaded.c"), os.path.join(directory, "loaded.so")
    with open(source, "w", encoding="utf-8") as handle:
        handle.write(_SOURCE)
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise AssertionError("no C compiler (gcc or cc) on PATH; the AOTInductor stage needs one too")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", target, source], check=True)
    with open(target, "rb") as handle:
        return handle.read()


def package_records(so: bytes, **replace) -> list[tuple[str, bytes]]:
    """(name, bytes) of a package with `so` as its shared object; `replace` swaps or, with None,
    drops records (names without the archive's prefix)."""
    metadata = json.dumps({"AOTI_DEVICE_KEY": "cpu", "AOTI_PLATFORM": "linux", "AOTI_MACHINE": "x86_64"})
    records = {
        "archive_format": b"pt2",
        "archive_version": b"0",
        "byteorder": b"little",
        ".data/version": b"6\n",
        ".data/serialization_id": b"0" * 40,
        pt2_archive.AOTI_SO: so,
        "data/aotinductor/model/decoder.wrapper.cpp": b"// wrapper",
        "data/aotinductor/model/decoder.kernel.cpp": b"// kernels",
        "data/aotinductor/model/decoder.wrapper_metadata.json": metadata.encode(),
        "data/aotinductor/model/decoder.kernel_metadata.json": metadata.encode(),
    }
    records.update(replace)
    return [("archive/" + name, data) for name, data in sorted(records.items()) if data is not None]


def write_zip(path: str, entries: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> str:
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path
