"""An independent NumPy reference of the Core ML int8 and int4 weight compression the variants ship.

Written from the definition of linear symmetric quantization in coremltools' documentation
(linear_quantize_weights, mode "linear_symmetric") and the MIL ops that hold the result
(constexpr_affine_dequantize, constexpr_blockwise_shift_scale: value = scale * (quantized - offset)),
not from coremltools' quantizer (conversion/coreml_compress.py calls that one): verify/floors/floors.py
computes the variants' quality reference with these weights, so a change in what the exporter asks
coremltools for (a block size, a granularity, a matrix left out) moves the artifact away from it.

For a weight matrix [out, in] in float16, each group of values shares one scale:

  int8  per output channel: a group is one row. Quantized range [-127, 127] (the documented
        symmetric range: -128 is never used, so the zero point is 0).
  int4  per block of BLOCK = 32 input columns within a row. Quantized range [-7, 7].

  R = the group's largest magnitude, scale = R / qmax (qmax 127 or 7),
  q = clip(round(w / scale), -qmax, qmax) with round half to even, value = scale * q,
  every step in float16, the weights' own dtype (the scale is stored in float16 too). A group of
  zeros has scale 0 and every q 0.

Halves and the precision of each step are a quantizer's choice, not part of the format; this one
computes in the weights' dtype, and coreml_reference_test compares the result with coremltools'
on a trained student's matrices.
"""

import numpy as np

BLOCK = 32  # int4's block of input columns (conversion/coreml_compress.py asks coremltools for 32)
QMAX = {"int8": 127, "int4": 7}


def group_size(compression: str, row_length: int) -> int | None:
    """Values that share one scale along a row: the whole row for int8, BLOCK for int4; None when
    int4's rows are not whole blocks (coremltools then leaves the matrix uncompressed, float16)."""
    if compression not in QMAX:
        raise ValueError(f"compression {compression!r}; expected one of {sorted(QMAX)}")
    if compression == "int8":
        return row_length
    return BLOCK if row_length % BLOCK == 0 else None


def quantize(weight: np.ndarray, compression: str, group: int | None = None) -> np.ndarray:
    """The float16 matrix `weight` [out, in] as the `compression` variant holds it, decompressed to
    float16 (module docstring). `group`: values per scale along a row (default group_size's; a
    test plants another). A matrix whose rows are not whole groups is returned unchanged."""
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.dtype != np.float16:
        raise ValueError(f"a float16 matrix [out, in], got {weight.dtype} {weight.shape}")
    group = group or group_size(compression, weight.shape[1])
    if group is None or weight.shape[1] % group:
        return weight.copy()
    qmax = np.float16(QMAX[compression])
    groups = weight.reshape(weight.shape[0], -1, group)
    scale = np.abs(groups).max(axis=-1, keepdims=True) / qmax
    ratio = np.divide(groups, scale, out=np.zeros_like(groups), where=scale != 0)
    q = np.clip(np.rint(ratio), -qmax, qmax)
    return (q * scale).reshape(weight.shape)
