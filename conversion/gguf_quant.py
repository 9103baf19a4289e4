"""Which GGUF tensor is stored in which type, for each variant, and the check that a file holds it.

The variants (DTYPES) and their tensor types follow llama.cpp's own quantizer (llama-quantize):

  f32   every tensor f32.
  f16   every matrix f16; norm weights f32.
  Q8_0  every matrix Q8_0 (token_embd and output included); norm weights f32.
  Q4_0  every matrix Q4_0, token_embd included; output.weight Q8_0. llama-quantize stores the output
        projection one step up (Q6_K); Q6_K needs rows of 256 values, and for shorter rows llama.cpp
        falls back to Q8_0, so Q8_0 is what llama.cpp itself would write for this student.

Norm weights stay f32 in every variant: they are 1-D (llama.cpp keeps 1-D tensors in f32) and tiny.

Q8_0 and Q4_0 quantize blocks of BLOCK = 32 values along a row (ggml's ne[0], the matrix's input
dimension), each block with its own f16 scale, so every quantized row must be a multiple of 32
(InputError otherwise, naming the tensor). The writer is the locked `gguf` package's
gguf.quants.quantize: deterministic NumPy, so the same weights give the same bytes.

K-quants (Q4_K_M, Q6_K, ...) are refused with an InputError: they group 256 values per super-block,
the student's rows are shorter (128 by default), the `gguf` package has no K-quant writer, and
llama-quantize would silently store fallback types (Q5_0, Q8_0, ...) in a file whose name claims a
K-quant. check_types() reads a written file back and fails on any tensor whose type differs from
the plan, so no file ships under a type it does not hold.
"""

import gguf
import numpy as np

from common.errors import InputError

BLOCK = 32  # values per Q8_0 / Q4_0 block (gguf.GGML_QUANT_SIZES[...][0])
K_BLOCK = 256  # values per K-quant super-block (gguf.QK_K)
DTYPES = ("f32", "f16", "Q8_0", "Q4_0")
QUANTIZED = ("Q8_0", "Q4_0")
# Names people ask for that this exporter does not write (llama.cpp's K-quant file types).
K_QUANTS = (
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
)
T = gguf.GGMLQuantizationType
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
_MATRIX_TYPE = {"f32": T.F32, "f16": T.F16, "Q8_0": T.Q8_0, "Q4_0": T.Q4_0}
# Per-tensor exceptions to a variant's matrix type (module docstring).
_OVERRIDES = {"Q4_0": {"output.weight": T.Q8_0}}


def check_dtype(dtype: str, row_lengths: dict[str, int] | None = None) -> None:
    """InputError for a variant this exporter does not write, listing the ones it does."""
    if dtype in DTYPES:
        return
    allowed = ", ".join(DTYPES)
    if dtype.upper() in K_QUANTS:
        rows = ""
        if row_lengths:
            short = sorted({n for n in row_lengths.values() if n % K_BLOCK})
            rows = f"; this student's rows are {', '.join(map(str, short))} values long"
        raise InputError(
            f"dtype: {dtype!r} is a K-quant; K-quants need every row to be a multiple of {K_BLOCK} "
            f"values{rows}, and llama.cpp would silently store other types under its name. "
            f"Choose one of {allowed}"
        )
    raise InputError(f"dtype: {dtype!r}; choose one of {allowed}")


def tensor_type(dtype: str, name: str, array: np.ndarray) -> "gguf.GGMLQuantizationType":
    """The type tensor `name` is stored in for variant `dtype`: 1-D tensors f32, matrices per plan."""
    if array.ndim < 2:
        return T.F32
    return _OVERRIDES.get(dtype, {}).get(name, _MATRIX_TYPE[dtype])


def plan(dtype: str, tensors) -> dict[str, "gguf.GGMLQuantizationType"]:
    """{GGUF name: type} for (name, float32 array) pairs; InputError for a row that is not whole blocks."""
    check_dtype(dtype)
    types = {}
    for name, array in tensors:
        qtype = tensor_type(dtype, name, array)
        if qtype in (T.Q8_0, T.Q4_0) and array.shape[-1] % BLOCK:
            raise InputError(
                f"model: tensor {name} has rows of {array.shape[-1]} values; {qtype.name} stores blocks "
                f"of {BLOCK}, so rows must be a multiple of {BLOCK}; export --dtype=f16 or f32 instead"
            )
        types[name] = qtype
    return types


def encode(array: np.ndarray, qtype) -> np.ndarray:
    """The tensor's bytes as the file stores them (for quantized types, uint8 blocks per row)."""
    if qtype == T.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == T.F16:
        return np.ascontiguousarray(array.astype(np.float16))
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def decode(data: np.ndarray, qtype) -> np.ndarray:
    """float32 values of what `encode` wrote: exactly the weights llama.cpp computes with."""
    if qtype in (T.F32, T.F16):
        return np.asarray(data, dtype=np.float32)
    return gguf.quants.dequantize(np.asarray(data), qtype).astype(np.float32)


def round_trip(array: np.ndarray, qtype) -> np.ndarray:
    """The array as stored in `qtype` and read back (verify/floors/floors.py emulates the file with it)."""
    return decode(encode(array, qtype), qtype).reshape(array.shape)


def check_types(path: str, expected: dict[str, "gguf.GGMLQuantizationType"]) -> None:
    """RuntimeError unless the file at `path` holds exactly `expected` tensors, each in its type."""
    reader = gguf.GGUFReader(path, "r")
    found = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    if sorted(found) != sorted(expected):
        raise RuntimeError(f"written GGUF has tensors {sorted(found)}, expected {sorted(expected)}")
    wrong = [
        f"{n}: {found[n].name} (expected {t.name})" for n, t in sorted(expected.items()) if found[n] != t
    ]
    if wrong:
        raise RuntimeError(f"written GGUF stores other types than its name claims: {'; '.join(wrong)}")
