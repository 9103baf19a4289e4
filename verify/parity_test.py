import dataclasses

import numpy as np
import pytest

from verify import parity

VOCAB = 16
PAD = 3
LENGTHS = (8, 16)


def causal_model(seed: int = 0):
    """A causal toy logits function: position t sees only ids[:t+1] (a running mean of embeddings)."""
    table = np.random.default_rng(seed).normal(size=(VOCAB, VOCAB)).astype(np.float32) * 4

    def forward(ids):
        ids = np.asarray(ids)
        embedded = table[ids]  # [B, T, V]
        counts = np.arange(1, ids.shape[1] + 1, dtype=np.float32)[None, :, None]
        return (np.cumsum(embedded, axis=1) / counts).astype(np.float32)

    return forward


def greedy(forward, prompt, steps):
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(forward(np.array([ids], dtype=np.int32))[0, -1].argmax()))
    return ids[len(prompt) :]


PROMPTS = [[1, 5, 9], [1, 7], [1, 4, 4, 12, 6], [1, 8, 2, 11]]


def continuations(forward, steps=6):
    return [greedy(forward, p, steps) for p in PROMPTS]


def test_compare_logits_measures_difference_and_agreement():
    ref = np.zeros((1, 4, 3), dtype=np.float32)
    ref[0, :, 0] = 1.0
    got = ref.copy()
    got[0, 1, 2] = 1.5  # argmax flips at one of four positions, by 1.5
    comparison = parity.compare_logits(ref, got)
    assert comparison.max_abs_diff == pytest.approx(1.5)
    assert comparison.top1_agreement == pytest.approx(0.75)
    assert comparison.positions == 4
    assert comparison.top1_disagreement == pytest.approx(0.25) and comparison.near_ties == 0
    assert parity.compare_logits(ref, ref).max_abs_diff == 0.0


def test_compare_logits_leaves_near_ties_out_of_top1():
    ref = np.zeros((1, 4, 3), dtype=np.float32)
    ref[0, :, 0] = 1.0
    ref[0, 1, 1] = 0.99  # a near tie at position 1
    got = ref.copy()
    got[0, 1, 1] = 1.02  # flips within 0.03
    comparison = parity.compare_logits(ref, got, near_tie_margin=0.1)
    assert comparison.top1_agreement == 1.0
    assert comparison.top1_disagreement == pytest.approx(0.25)
    assert comparison.near_ties == 1
    assert parity.compare_logits(ref, got).top1_agreement == pytest.approx(0.75)


def test_compare_logits_rejects_shape_mismatch_and_nan():
    ref = np.zeros((1, 4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        parity.compare_logits(ref, np.zeros((1, 5, 3), dtype=np.float32))
    bad = ref.copy()
    bad[0, 2, 1] = np.nan
    assert parity.compare_logits(ref, bad).max_abs_diff == float("inf")


def test_rows_are_deterministic_and_padded_after():
    assert parity.smallest_length(8, LENGTHS) == 8
    assert parity.smallest_length(9, LENGTHS) == 16
    assert parity.smallest_length(17, LENGTHS) is None
    row = parity.pad_row([1, 2, 3], 6, PAD)
    assert row.dtype == np.int32 and row.tolist() == [[1, 2, 3, PAD, PAD, PAD]]
    with pytest.raises(ValueError):
        parity.pad_row([1] * 7, 6, PAD)
    a, b = parity.random_row(64, 512, seed=0), parity.random_row(64, 512, seed=0)
    assert a.shape == (1, 64) and np.array_equal(a, b)
    assert not np.array_equal(a, parity.random_row(64, 512, seed=1))
    text = parity.text_row([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 7, PAD)
    assert text.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    rows = parity.numeric_inputs(16, VOCAB, 0, [[1, 2]], PAD)
    assert [r.shape for r in rows] == [(1, 16), (1, 16)]
    assert rows[1].tolist() == [[1, 2] + [PAD] * 14]


def test_padding_after_does_not_change_earlier_logits():
    forward = causal_model()
    ids = [1, 5, 9, 2]
    short = forward(np.array([ids], dtype=np.int32))
    padded = forward(parity.pad_row(ids, 16, PAD))
    np.testing.assert_array_equal(short[0], padded[0, : len(ids)])


def test_identical_artifact_agrees_everywhere():
    eager = causal_model()
    result = parity.behaviour_check(eager, eager, PROMPTS, continuations(eager), LENGTHS, PAD, 0.1)
    assert result.ok
    assert result.questions == len(PROMPTS) and result.skipped == 0
    assert result.positions == 6 * len(PROMPTS) == result.agreed
    assert result.near_tie_flips == 0 and not result.mismatches


def test_artifact_gets_one_forward_per_question_at_the_smallest_length():
    eager = causal_model()
    shapes = []

    def artifact(ids):
        shapes.append(ids.shape)
        return eager(ids)

    conts = continuations(eager)
    conts[2] = conts[2] + [0] * 6  # 5 + 12 tokens: cut at the longest length, 16
    result = parity.behaviour_check(eager, artifact, PROMPTS, conts, LENGTHS, PAD, 0.1)
    # Sequence lengths 3+6, 2+6, 5+12 (cut to 16), 4+6.
    assert shapes == [(1, 16), (1, 8), (1, 16), (1, 16)]
    assert result.positions == 6 + 6 + 11 + 6
    shapes.clear()
    parity.behaviour_check(eager, artifact, [[1, 2]], [[3, 4]], LENGTHS, PAD, 0.1)
    assert shapes == [(1, 8)]


def test_a_batching_artifact_gets_rows_of_one_length_and_gives_the_same_result():
    eager, other = causal_model(), causal_model(seed=1)
    conts = continuations(eager)
    conts[2] = conts[2] + [0] * 6
    shapes = []

    def artifact(ids):
        shapes.append(ids.shape)
        return other(ids)

    one = parity.behaviour_check(eager, other, PROMPTS, conts, LENGTHS, PAD, 0.1)
    batched = parity.behaviour_check(eager, artifact, PROMPTS, conts, LENGTHS, PAD, 0.1, artifact_batch=2)
    # Lengths 16, 8, 16, 16 (PROMPTS' order): the 8 alone, the three 16s two at a time.
    assert shapes == [(1, 8), (2, 16), (1, 16)]
    assert dataclasses.replace(batched, seconds=0.0) == dataclasses.replace(one, seconds=0.0)
    assert batched.mismatches  # the other model's flips are found in batches too


def test_a_shared_replay_reference_gives_the_same_result_without_eager_forwards():
    eager, other = causal_model(), causal_model(seed=1)
    conts = continuations(eager)
    reference = parity.replay(eager, PROMPTS, conts, LENGTHS, PAD)
    calls = []

    def counted_eager(ids):
        calls.append(ids.shape)
        return eager(ids)

    alone = parity.behaviour_check(eager, other, PROMPTS, conts, LENGTHS, PAD, 0.1)
    shared = parity.behaviour_check(
        counted_eager, other, PROMPTS, conts, LENGTHS, PAD, 0.1, reference=reference
    )
    assert calls == []
    assert dataclasses.replace(shared, seconds=0.0) == dataclasses.replace(alone, seconds=0.0)
    assert shared.mismatches and shared.comparison == alone.comparison


def test_broken_artifact_fails():
    eager = causal_model()
    other = causal_model(seed=1)  # a different model: its argmax differs at clear margins
    result = parity.behaviour_check(eager, other, PROMPTS, continuations(eager), LENGTHS, PAD, 0.1)
    assert not result.ok
    assert result.mismatches
    mismatch = result.mismatches[0]
    assert mismatch.margin >= 0.1 and mismatch.expected != mismatch.got


def test_near_tie_flips_are_counted_not_failed():
    margin = 0.05

    def eager(ids):
        # Token 0 beats token 1 by 0.01 everywhere (a near tie), and both beat the rest by far.
        out = np.zeros((*np.shape(ids), VOCAB), dtype=np.float32)
        out[..., 0], out[..., 1] = 1.01, 1.0
        return out

    def artifact(ids):
        out = eager(ids)
        out[..., 1] += 0.02  # within tolerance, and the argmax flips
        return out

    result = parity.behaviour_check(eager, artifact, [[1, 2]], [[0, 0, 0]], LENGTHS, PAD, margin)
    assert result.ok
    assert result.positions == 3 and result.agreed == 0
    assert result.near_tie_positions == 3 and result.near_tie_flips == 3
    # The same flips with a margin below the tie are real mismatches.
    strict = parity.behaviour_check(eager, artifact, [[1, 2]], [[0, 0, 0]], LENGTHS, PAD, 0.001)
    assert not strict.ok and len(strict.mismatches) == 3


def test_long_sequences_are_cut_and_overlong_prompts_skipped():
    eager = causal_model()
    result = parity.behaviour_check(eager, eager, [[1] * 14, [1] * 20], [[2] * 5, [2]], LENGTHS, PAD, 0.1)
    assert result.questions == 1 and result.skipped == 1
    assert result.positions == 2  # 14 + 5 cut at 16


def test_wrong_artifact_shape_is_an_error():
    eager = causal_model()
    with pytest.raises(ValueError, match="shape"):
        parity.behaviour_check(eager, lambda ids: eager(ids)[:, :4], [[1, 2]], [[3]], LENGTHS, PAD, 0.1)
