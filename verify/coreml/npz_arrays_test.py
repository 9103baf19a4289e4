import io
import zipfile

import numpy as np
import pytest

from common.errors import InputError
from verify.coreml import npz_arrays


def _accept(name, shape, dtype):
    pass


def test_reads_every_array_after_checking_each_header(tmp_path):
    path = str(tmp_path / "a.npz")
    np.savez(path, k=np.zeros((2, 3), np.float16), ids=np.arange(4, dtype=np.int32))
    seen = []
    arrays = npz_arrays.read(path, lambda name, shape, dtype: seen.append((name, shape, dtype)))
    assert sorted(seen) == [("ids", (4,), np.dtype(np.int32)), ("k", (2, 3), np.dtype(np.float16))]
    np.testing.assert_array_equal(arrays["ids"], np.arange(4))
    assert arrays["k"].dtype == np.float16


def test_a_huge_declared_array_is_refused_by_its_header_before_anything_is_allocated(tmp_path):
    # A header that declares 8 TB of float32 and carries no data: the check sees the declared shape.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 41,)}
    )
    path = str(tmp_path / "huge.npz")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("k_cache.npy", header.getvalue())  # magic and header, no data

    def check(name, shape, dtype):
        raise InputError(f"state {name!r} is {dtype} {shape}")

    with pytest.raises(InputError, match=r"'k_cache' is float32 \(2199023255552,\)"):
        npz_arrays.read(path, check)


def _truncated(path):
    """A sound header for ten float32 values, followed by only five of them."""
    array = io.BytesIO()
    np.lib.format.write_array(array, np.zeros(10, np.float32))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("k.npy", array.getvalue()[:-20])


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: np.savez(p, o=np.array([{"a": 1}], dtype=object)), "Python objects"),
        (lambda p: zipfile.ZipFile(p, "w").writestr("notes.txt", "hi"), "unexpected member notes.txt"),
        (lambda p: zipfile.ZipFile(p, "w").writestr("k.npy", b"not an array"), "k.npy is not a NumPy array"),
        (lambda p: open(p, "wb").write(b"plain bytes"), "not an .npz file"),
        (_truncated, "an array's data is damaged"),
    ],
    ids=["object array", "not .npy", "bad header", "not a zip", "truncated data"],
)
def test_damaged_or_unsafe_files_are_refused(tmp_path, write, message):
    path = str(tmp_path / "bad.npz")
    write(path)
    with pytest.raises(InputError, match=message):
        npz_arrays.read(path, _accept)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        npz_arrays.read(str(tmp_path / "absent.npz"), _accept)


def test_check_headers_refuses_what_read_refuses_by_its_headers_and_reads_no_data(tmp_path):
    path = str(tmp_path / "objects.npz")
    np.savez(path, o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="Python objects"):
        npz_arrays.check_headers(path)
    # A truncated array's data is read (and refused) by read() alone: check_headers reads headers.
    _truncated(str(tmp_path / "cut.npz"))
    npz_arrays.check_headers(str(tmp_path / "cut.npz"))
