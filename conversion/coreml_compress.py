"""Core ML weight compression: the int8 and int4 variants users ship, through coremltools.optimize.

    int8  linear symmetric, per output channel (one fp16 scale per weight row), iOS16 or later:
          coremltools writes constexpr_affine_dequantize ops (constexpr_blockwise_shift_scale from
          an iOS18 program).
    int4  linear symmetric, per block of 32 input columns (one fp16 scale per block), iOS18 or
          later: the first opset with 4-bit constants (constexpr_blockwise_shift_scale).

Only the weights change: the program computes in fp16 as the uncompressed package does, and the
runtime decompresses each weight once when it loads the model.

What is compressed. coremltools compresses a constant with more elements than `weight_threshold`
(default 2048, sized for models thousands of times larger). WEIGHT_THRESHOLD lowers it to one
output row of this student, so every weight matrix is compressed whatever the configuration's
sizes; the quantizer itself leaves vectors (norm weights, zero biases) in fp16. The RoPE tables
are positions, not weights: at 4 bits a cos/sin entry moves by up to 1/14, which rotates every
query and key, so they stay in fp16 (UNCOMPRESSED). verify/mil_executor.compression_share counts
what the saved package holds.
"""

import coremltools as ct
import numpy as np
from coremltools.optimize import coreml as cto

from common.errors import InputError

# Variant name -> (dtype, granularity, block size or None, the oldest deployment target that runs it).
COMPRESSIONS = {
    "int8": ("int8", "per_channel", None, "iOS16"),
    "int4": ("int4", "per_block", 32, "iOS18"),
}
# Deployment targets convert_coreml accepts (its --target checks them), oldest first (ML Programs
# need iOS15; the opsets we execute start at iOS16).
TARGETS = {"iOS16": ct.target.iOS16, "iOS17": ct.target.iOS17, "iOS18": ct.target.iOS18}
WEIGHT_THRESHOLD = 64
MODE = "linear_symmetric"
# Const names (fp16 program) kept uncompressed: the RoPE tables (module docstring).
UNCOMPRESSED = ("rotary_cos_to_fp16", "rotary_sin_to_fp16")


def config(compression: str) -> cto.OptimizationConfig:
    dtype, granularity, block_size, _ = COMPRESSIONS[compression]
    op_config = cto.OpLinearQuantizerConfig(
        mode=MODE,
        dtype=dtype,
        granularity=granularity,
        block_size=block_size or 32,  # ignored per channel
        weight_threshold=WEIGHT_THRESHOLD,
    )
    return cto.OptimizationConfig(
        global_config=op_config, op_name_configs={name: None for name in UNCOMPRESSED}
    )


def compress(mlmodel: ct.models.MLModel, compression: str) -> ct.models.MLModel:
    """The fp16 ML Program with its weights compressed to `compression` (COMPRESSIONS)."""
    if compression not in COMPRESSIONS:
        raise InputError(f"compression {compression!r}; allowed: {', '.join(COMPRESSIONS)}")
    compressed = cto.linear_quantize_weights(mlmodel, config(compression))
    # linear_quantize_weights rebuilds the model: carry the metadata over and say what was done.
    compressed.user_defined_metadata["compression"] = compression
    return compressed


def _block_sizes(compression: str, shape: tuple[int, ...]) -> list[int]:
    """coremltools' block sizes for a weight matrix [out, in]: one scale per output row (a 0 spans
    the whole axis), or per block of `block_size` input columns."""
    _, granularity, block_size, _ = COMPRESSIONS[compression]
    if len(shape) != 2:
        raise ValueError(f"weight shape {shape}: only matrices are compressed")
    return [1, 0] if granularity == "per_channel" else [1, block_size]


def quantize_like_package(weight: np.ndarray, compression: str) -> np.ndarray | None:
    """The weight matrix `weight` (float16) as the `compression` package holds it, decompressed to
    float16: coremltools' own quantizer and decompression, for the floors (verify/floors/floors.py) and the
    exact weight check. None where the quantizer leaves the matrix uncompressed (a dimension not
    divisible by the block size)."""
    from coremltools.optimize.coreml import _quantization_passes

    dtype = COMPRESSIONS[compression][0]
    quantizer = _quantization_passes.linear_quantize_weights
    params = quantizer.blockwise_compress(
        np.asarray(weight, dtype=np.float16),
        nbits=int(dtype[3:]),
        mode=MODE.upper(),
        signed=True,
        block_sizes=_block_sizes(compression, weight.shape),
    )
    if params is None:
        return None
    return np.asarray(quantizer.decompress(params)).astype(np.float16)
