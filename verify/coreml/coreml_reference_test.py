"""verify/coreml/coreml_reference.py on groups worked out by hand, and against coremltools' own quantizer.

The two were written apart (the reference from the documented definition of linear symmetric
quantization, conversion/coreml_compress.py through coremltools), so agreement on real-sized
matrices is evidence for both; the hand-worked rows pin the definition itself.
"""

import numpy as np
import pytest

from verify.coreml import coreml_reference as ref


def _row(values: list[float], length: int = 32) -> np.ndarray:
    row = np.zeros((1, length), dtype=np.float16)
    row[0, : len(values)] = values
    return row


def test_int8_scales_each_row_by_its_largest_magnitude_over_127():
    # R = 2.54 -> scale = 0.02 in float16 (0.0200042...); 1.0 / scale = 49.99 -> 50; -2.54 -> -127.
    weight = np.concatenate([_row([2.54, 1.0, -2.54, 0.0]), _row([0.5, -0.25])])
    held = ref.quantize(weight, "int8")
    scale = np.float16(np.float16(2.54) / np.float16(127))
    assert held[0, :4].tolist() == [float(np.float16(127 * scale)), float(np.float16(50 * scale)),
                                    float(np.float16(-127 * scale)), 0.0]  # fmt: skip
    # The second row has a scale of its own (0.5 / 127): -0.25 is -63.5 steps, a half, to even -> -64.
    second = np.float16(np.float16(0.5) / np.float16(127))
    assert held[1, 1] == np.float16(-64 * second)


def test_int4_scales_each_block_of_32_by_its_largest_magnitude_over_7():
    # Two blocks in one row: [7, 3.5, ...] (scale 1: 3.5 is a half, to even -> 4) and [0.7, ...]
    # (scale 0.1: 0.7 -> 7 steps). The 4-bit range is -7..7: -8 is never used.
    weight = np.zeros((1, 64), dtype=np.float16)
    weight[0, :3] = [7.0, 3.5, -7.0]
    weight[0, 32:34] = [0.7, 0.35]
    held = ref.quantize(weight, "int4")
    assert held[0, :3].tolist() == [7.0, 4.0, -7.0]
    scale = np.float16(np.float16(0.7) / np.float16(7))
    assert held[0, 32] == np.float16(7 * scale) and held[0, 33] == np.float16(
        np.rint(np.float16(0.35) / scale) * scale
    )


def test_a_group_of_zeros_stays_zero_and_a_ragged_int4_matrix_is_left_alone():
    assert not ref.quantize(np.zeros((2, 64), dtype=np.float16), "int4").any()
    ragged = np.random.default_rng(0).normal(size=(4, 48)).astype(np.float16)
    np.testing.assert_array_equal(ref.quantize(ragged, "int4"), ragged)
    assert ref.group_size("int4", 48) is None and ref.group_size("int8", 48) == 48


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="float16 matrix"):
        ref.quantize(np.zeros((2, 32), dtype=np.float32), "int8")
    with pytest.raises(ValueError, match="compression"):
        ref.group_size("int2", 32)


@pytest.mark.parametrize("compression", sorted(ref.QMAX))
def test_the_reference_is_what_coremltools_stores(compression):
    """Matrices shaped and scaled like the student's (and a planted coarser block differs)."""
    from conversion import coreml_compress

    rng = np.random.default_rng(1)
    for shape in ((128, 128), (512, 128), (128, 512), (64, 128)):
        weight = (rng.standard_t(4, size=shape) * 0.05).astype(np.float16)
        np.testing.assert_array_equal(
            ref.quantize(weight, compression), coreml_compress.quantize_like_package(weight, compression)
        )
    if compression == "int4":
        coarse = ref.quantize(weight, "int4", group=128)
        assert (coarse != coreml_compress.quantize_like_package(weight, "int4")).mean() > 0.1
