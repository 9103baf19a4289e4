"""An independent NumPy reference of ggml's Q8_0 and Q4_0 block formats: quantize, pack, unpack, dequantize.

Written from ggml's reference quantizers (quantize_row_q8_0_ref / quantize_row_q4_0_ref in
ggml-quants.c, the code llama-quantize uses to create model files) and its block structs, not from
the exporter's quantizer (gguf.quants, conversion/gguf_quant.py): verify/gguf_files/gguf_content.py holds each
GGUF file to the checkpoint quantized here, so a quantizer bug, a corrupted scale or a moved quant
level shows as stored blocks that differ from these.

Both formats cut a row (ggml's ne[0], a matrix's input dimension) into blocks of BLOCK = 32 values.

  Q8_0  34 bytes a block: the scale d as a little-endian IEEE half, then 32 int8 quants.
        amax = max |x| over the block, d = amax / 127 in float32, id = 1/d (0 when d is 0),
        q = roundf(x * id): round half away from zero. Stored d is d rounded to half.
  Q4_0  18 bytes a block: the half scale d, then 16 bytes of 4-bit quants, element j in the low
        nibble of byte j and element j + 16 in its high nibble.
        max = the first value of largest magnitude (0.0 when every value is zero), d = max / -8,
        id = 1/d (0 when d is 0), q = min(15, trunc(x * id + 8.5)): x * id lies in [-8, 8], so the
        truncation rounds x * id + 8 half up, and the value of max's opposite sign at full magnitude
        (x * id = 8) is clamped to 15. An all-zero block has d = -0.0 (0.0 / -8) and every q 8.

The quants are computed with the unrounded float32 d; only the stored scale is rounded, so
dequantizing (q * d for Q8_0, (q - 8) * d for Q4_0, in float32) gives what ggml computes with. Every
step is one float32 operation, as the reference's separate statements are, with no fused
multiply-add. Half precision rounding is IEEE round-to-nearest-even (NumPy's float16 conversion and
ggml's GGML_FP32_TO_FP16 alike).
"""

import dataclasses

import numpy as np

BLOCK = 32
Q8_0, Q4_0 = "Q8_0", "Q4_0"
# One block as the file stores it (NumPy structured dtypes are packed: no padding between fields).
_LAYOUT = {
    Q8_0: np.dtype([("d", "<f2"), ("qs", "i1", (BLOCK,))]),
    Q4_0: np.dtype([("d", "<f2"), ("qs", "u1", (BLOCK // 2,))]),
}
BLOCK_BYTES = {qtype: layout.itemsize for qtype, layout in _LAYOUT.items()}  # 34 and 18


@dataclasses.dataclass(frozen=True)
class Blocks:
    """A tensor as blocks: `scales` float16 [..., n_blocks], `quants` [..., n_blocks, BLOCK] (int8 in
    -127..127 for Q8_0, uint8 in 0..15 for Q4_0, one per element in row order)."""

    qtype: str
    scales: np.ndarray
    quants: np.ndarray


def _blocks_of(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype != np.float32:
        raise ValueError(f"values must be float32 (the checkpoint's dtype), got {values.dtype}")
    if values.ndim < 1 or values.shape[-1] % BLOCK:
        raise ValueError(f"rows of {values.shape[-1:]} values are not whole blocks of {BLOCK}")
    if not np.isfinite(values).all():
        raise ValueError("values must be finite")
    return values.reshape(*values.shape[:-1], values.shape[-1] // BLOCK, BLOCK)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d in float32, 0 where d is (either sign of) zero: the reference's `d ? 1.0f/d : 0.0f`."""
    out = np.zeros_like(d)
    np.divide(np.float32(1.0), d, out=out, where=d != 0)
    return out


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf. x - trunc(x) is exact in binary floating point, so the comparison with 0.5 sees
    the true fraction (floor(x + 0.5) would not: 0.49999997 + 0.5 rounds to 1.0 in float32)."""
    whole = np.trunc(x)
    return whole + np.where(np.abs(x - whole) >= np.float32(0.5), np.sign(x), np.float32(0.0))


def quantize_q8_0(values: np.ndarray) -> Blocks:
    """float32 [..., n] (n a multiple of BLOCK) -> Q8_0 blocks, as ggml's reference quantizer."""
    blocks = _blocks_of(values)
    amax = np.abs(blocks).max(axis=-1)
    d = amax / np.float32(127)
    quants = _round_half_away(blocks * _inverse(d)[..., None])
    return Blocks(Q8_0, d.astype(np.float16), quants.astype(np.int8))


def quantize_q4_0(values: np.ndarray) -> Blocks:
    """float32 [..., n] (n a multiple of BLOCK) -> Q4_0 blocks, as ggml's reference quantizer."""
    blocks = _blocks_of(values)
    magnitude = np.abs(blocks)
    first = np.argmax(magnitude, axis=-1)[..., None]  # the first of equal magnitudes wins
    largest = np.take_along_axis(blocks, first, axis=-1)[..., 0]
    # The reference starts from max = 0.0f and replaces it only on a strictly larger magnitude, so
    # a block of zeros (of either sign) keeps +0.0.
    largest = np.where(magnitude.max(axis=-1) > 0, largest, np.float32(0.0))
    d = largest / np.float32(-8)
    shifted = blocks * _inverse(d)[..., None] + np.float32(8.5)
    quants = np.minimum(np.float32(15), np.trunc(shifted))
    if (quants < 0).any():  # x * id >= -8 up to rounding, so x * id + 8.5 stays positive
        raise ValueError("a Q4_0 quant below 0: the block's scale is not its largest magnitude / -8")
    return Blocks(Q4_0, d.astype(np.float16), quants.astype(np.uint8))


QUANTIZERS = {Q8_0: quantize_q8_0, Q4_0: quantize_q4_0}


def pack(blocks: Blocks) -> np.ndarray:
    """The blocks' bytes as a GGUF file stores them: uint8 [..., n_blocks * BLOCK_BYTES]."""
    layout = _LAYOUT[blocks.qtype]
    out = np.zeros(blocks.scales.shape, dtype=layout)
    out["d"] = blocks.scales
    if blocks.qtype == Q8_0:
        out["qs"] = blocks.quants
    else:
        half = BLOCK // 2
        low, high = blocks.quants[..., :half], blocks.quants[..., half:]
        out["qs"] = low | (high << 4)
    return out.view(np.uint8).reshape(*blocks.scales.shape[:-1], -1)


def unpack(data: np.ndarray, qtype: str, row_length: int) -> Blocks:
    """Stored bytes, uint8 [..., row_length / BLOCK * BLOCK_BYTES] -> Blocks (views where possible)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if row_length % BLOCK or data.shape[-1] != row_length // BLOCK * BLOCK_BYTES[qtype]:
        raise ValueError(
            f"{qtype} rows of {row_length} values take {row_length // BLOCK * BLOCK_BYTES[qtype]} "
            f"bytes, got {data.shape[-1]}"
        )
    blocks = data.view(_LAYOUT[qtype])
    scales, qs = blocks["d"], blocks["qs"]
    if qtype == Q4_0:
        qs = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    return Blocks(qtype, scales.astype(np.float16), qs)


def dequantize(blocks: Blocks) -> np.ndarray:
    """float32 [..., n]: what ggml computes with (q * d, or (q - 8) * d for Q4_0)."""
    quants = blocks.quants.astype(np.float32)
    if blocks.qtype == Q4_0:
        quants = quants - np.float32(8)
    values = quants * blocks.scales.astype(np.float32)[..., None]
    return values.reshape(*values.shape[:-2], -1)
