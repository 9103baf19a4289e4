"""verify/gguf_files/gguf_reference.py against ggml's Q8_0 / Q4_0 semantics, on blocks worked out by hand.

Every expected byte below follows from ggml's reference quantizers as verify/gguf_files/gguf_reference.py's
docstring states them; the comments show the arithmetic. A last test compares the reference with
the `gguf` package's quantizer (what the exporter writes with) on random rows: the two were
written apart, so agreement there is evidence for both.
"""

import gguf
import numpy as np
import pytest

from verify.gguf_files import gguf_reference as ref


def _block(values: dict[int, float]) -> np.ndarray:
    """One block of 32 float32 zeros with `values` at their indices."""
    block = np.zeros(ref.BLOCK, dtype=np.float32)
    for index, value in values.items():
        block[index] = value
    return block


def _half_bytes(value: float) -> list[int]:
    return list(np.array([value], dtype="<f2").view(np.uint8))


def test_block_sizes_are_ggml_s():
    # block_q8_0: ggml_half d + int8_t qs[32]; block_q4_0: ggml_half d + uint8_t qs[16].
    assert ref.BLOCK_BYTES == {"Q8_0": 34, "Q4_0": 18}


def test_q8_0_rounds_halves_away_from_zero():
    # amax 127 -> d = 127 / 127 = 1, id = 1: each quant is roundf(x). Banker's rounding (np.round)
    # would give 2, -2, 0, -0, 2, -2 for the halves.
    block = _block({0: 127.0, 1: 2.5, 2: -2.5, 3: 0.5, 4: -0.5, 5: 1.5, 6: -1.5, 7: 0.49999997})
    blocks = ref.quantize_q8_0(block)
    assert blocks.quants[0, :8].tolist() == [127, 3, -3, 1, -1, 2, -2, 0]
    data = ref.pack(blocks)
    assert data.shape == (34,)
    # d = 1.0 is 0x3C00 as a half, little-endian; int8 -3 is 0xFD.
    assert data[:10].tolist() == [0x00, 0x3C, 0x7F, 3, 0xFD, 1, 0xFF, 2, 0xFE, 0]
    assert not data[10:].any()


def test_q8_0_quantizes_with_the_unrounded_scale():
    # amax 1 -> d = 1/127 = 0.007874016 in float32, stored as the half 0.00787353515625 (0x2008).
    # 0.7913149 * (1 / 0.007874016) = 100.497 -> 100; with the stored half it would be
    # 100.503 -> 101. ggml quantizes with the float32 scale.
    blocks = ref.quantize_q8_0(_block({0: 1.0, 1: 0.7913149}))
    assert blocks.scales.view(np.uint16).tolist() == [0x2008]
    assert blocks.quants[0, :2].tolist() == [127, 100]
    assert ref.pack(blocks)[:4].tolist() == [0x08, 0x20, 127, 100]
    assert ref.dequantize(blocks)[1] == np.float32(100) * np.float32(np.float16(0.00787353515625))


def test_q8_0_all_zero_block_is_all_zero_bytes():
    # amax 0 -> d = 0, id = 0: every quant roundf(0) = 0, for +0.0 and -0.0 alike.
    for block in (_block({}), -_block({})):
        blocks = ref.quantize_q8_0(block)
        assert not ref.pack(blocks).any()
        assert not np.signbit(ref.dequantize(blocks)).any()


def test_q4_0_max_at_a_negative_value_rounds_half_up_and_packs_low_nibbles_first():
    # The first value of largest magnitude is -8 (index 1; the 8 at index 16 comes later), so
    # d = -8 / -8 = 1 and id = 1; q = min(15, trunc(x + 8.5)):
    #   1 -> 9.5 -> 9; -8 -> 0.5 -> 0; 0.5 -> 9; -0.5 -> 8; 1.5 -> 10; -1.5 -> 7; 8 -> 16.5 -> 16 -> 15;
    #   0 -> 8.5 -> 8. Halves go up (-0.5 -> 0 and -1.5 -> -1 once dequantized), never away from zero.
    block = _block({0: 1.0, 1: -8.0, 2: 0.5, 3: -0.5, 4: 1.5, 5: -1.5, 16: 8.0})
    blocks = ref.quantize_q4_0(block)
    assert blocks.scales.tolist() == [1.0]
    assert blocks.quants[0, :6].tolist() == [9, 0, 9, 8, 10, 7]
    assert blocks.quants[0, 16] == 15
    data = ref.pack(blocks)
    assert data.shape == (18,)
    # Byte j holds element j in its low nibble and element j + 16 in its high nibble.
    assert data[:8].tolist() == [0x00, 0x3C, 0xF9, 0x80, 0x89, 0x88, 0x8A, 0x87]
    assert data[8:].tolist() == [0x88] * 10
    values = ref.dequantize(blocks)
    assert values[:6].tolist() == [1.0, -8.0, 1.0, 0.0, 2.0, -1.0]
    assert values[16] == 7.0  # 8 at the positive end is clamped to level 15: (15 - 8) x 1


def test_q4_0_first_of_equal_magnitudes_sets_the_scale_sign():
    # 8 before -8: max = 8, d = 8 / -8 = -1 (0xBC00), id = -1: 8 -> -8 + 8.5 -> 0, -8 -> 16.5 -> 15.
    blocks = ref.quantize_q4_0(_block({0: 8.0, 1: -8.0}))
    assert blocks.scales.tolist() == [-1.0]
    assert ref.pack(blocks)[:4].tolist() == [0x00, 0xBC, 0x80, 0x8F]
    # -8 before 8: the mirror image, d = 1.
    blocks = ref.quantize_q4_0(_block({0: -8.0, 1: 8.0}))
    assert blocks.scales.tolist() == [1.0]
    assert ref.pack(blocks)[:4].tolist() == [0x00, 0x3C, 0x80, 0x8F]


def test_q4_0_all_zero_block_has_a_negative_zero_scale():
    # max stays 0.0 (a zero of either sign is never strictly larger), d = 0.0 / -8 = -0.0 (0x8000),
    # id = 0, every q = trunc(0 + 8.5) = 8: bytes 0x00 0x80 then 0x88, and every value -0.0.
    for block in (_block({}), -_block({})):
        blocks = ref.quantize_q4_0(block)
        data = ref.pack(blocks)
        assert data.tolist() == [0x00, 0x80] + [0x88] * 16
        values = ref.dequantize(blocks)
        assert not values.any() and np.signbit(values).all()


def test_unpack_reads_back_what_pack_wrote():
    rng = np.random.default_rng(0)
    rows = rng.normal(0.0, 0.1, size=(3, 4 * ref.BLOCK)).astype(np.float32)
    for qtype, quantize in ref.QUANTIZERS.items():
        blocks = quantize(rows)
        data = ref.pack(blocks)
        assert data.shape == (3, 4 * ref.BLOCK_BYTES[qtype])
        back = ref.unpack(data, qtype, rows.shape[1])
        assert back.scales.view(np.uint16).tolist() == blocks.scales.view(np.uint16).tolist()
        assert np.array_equal(back.quants, blocks.quants)
        assert ref.dequantize(back).shape == rows.shape


def test_dequantized_values_stay_within_half_a_level():
    rng = np.random.default_rng(1)
    rows = rng.normal(0.0, 0.05, size=(8, 128)).astype(np.float32)
    for qtype, levels in (("Q8_0", 127), ("Q4_0", 8)):
        blocks = ref.QUANTIZERS[qtype](rows)
        error = np.abs(ref.dequantize(blocks) - rows).reshape(8, -1, ref.BLOCK).max(axis=-1)
        amax = np.abs(rows).reshape(8, -1, ref.BLOCK).max(axis=-1)
        # Half a level (amax / levels / 2), plus the half rounding of the scale (2^-11 relative) and
        # for Q4_0 a whole level where the clamp at 15 bites.
        step = amax / levels
        assert (error <= step * (1.0 if qtype == "Q4_0" else 0.5) + amax * 2.0**-10).all()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.zeros(31, np.float32), "whole blocks"),
        (np.zeros(32, np.float64), "float32"),
        (np.full(32, np.nan, np.float32), "finite"),
    ],
)
def test_bad_rows_are_refused(values, message):
    for quantize in ref.QUANTIZERS.values():
        with pytest.raises(ValueError, match=message):
            quantize(values)


def test_unpack_refuses_rows_of_the_wrong_size():
    with pytest.raises(ValueError, match="take 34 bytes"):
        ref.unpack(np.zeros(33, np.uint8), "Q8_0", 32)


def test_the_reference_agrees_with_the_gguf_package_on_random_rows():
    rng = np.random.default_rng(2)
    rows = rng.normal(0.0, 0.1, size=(64, 256)).astype(np.float32)
    rows[0, :32] = 0.0  # an all-zero block
    rows[1, :32] = -rows[1, :32].max()  # a block of one repeated value
    rows[2, 5] = -np.abs(rows[2, :32]).max() * 1.5  # a block whose largest magnitude is negative
    for qtype, gtype in (("Q8_0", gguf.GGMLQuantizationType.Q8_0), ("Q4_0", gguf.GGMLQuantizationType.Q4_0)):
        ours = ref.pack(ref.QUANTIZERS[qtype](rows))
        theirs = gguf.quants.quantize(rows, gtype)
        assert np.array_equal(ours, theirs), qtype
