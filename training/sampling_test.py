import math

import numpy as np
import pytest

from training import sampling

S = sampling.Settings


def _logits(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64))


# Token ids 0..5 with probabilities (at temperature 1) in a shuffled order, so "most likely first"
# is not "lowest id first".
PROBS = [0.05, 0.4, 0.02, 0.3, 0.2, 0.03]  # by id; sorted: 1 (0.4), 3 (0.3), 4 (0.2), 0, 5, 2
LOGITS = _logits(PROBS)
OFF = S(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)


def _kept(settings) -> list[int]:
    return sampling.candidates(LOGITS, settings)[0].tolist()


def test_no_filter_keeps_every_token_most_likely_first_with_the_softmax():
    ids, probs = sampling.candidates(LOGITS, OFF)
    assert ids.tolist() == [1, 3, 4, 0, 5, 2]
    np.testing.assert_allclose(probs, np.sort(PROBS)[::-1])


def test_top_k_keeps_the_k_highest_and_zero_keeps_all():
    assert _kept(S(1.0, top_k=2, top_p=1.0)) == [1, 3]
    assert _kept(S(1.0, top_k=1, top_p=1.0)) == [1]
    assert _kept(S(1.0, top_k=100, top_p=1.0)) == [1, 3, 4, 0, 5, 2]
    ties = np.zeros(5)
    assert sampling.candidates(ties, S(1.0, top_k=3, top_p=1.0))[0].tolist() == [0, 1, 2]  # lower id wins


def test_top_p_keeps_the_token_that_crosses_p():
    # cumulative 0.4, 0.7, 0.9, 0.95: 0.7 reached exactly at the second token keeps two.
    assert _kept(S(1.0, top_k=0, top_p=0.7)) == [1, 3]
    assert _kept(S(1.0, top_k=0, top_p=0.71)) == [1, 3, 4]
    assert _kept(S(1.0, top_k=0, top_p=0.1)) == [1]
    assert _kept(S(1.0, top_k=0, top_p=1.0)) == [1, 3, 4, 0, 5, 2]


def test_min_p_drops_tokens_below_min_p_times_the_top_probability():
    # top 0.4: min_p 0.5 keeps p >= 0.2 (ids 1, 3, 4); 0.1 keeps p >= 0.04 (adds id 0).
    assert _kept(S(1.0, top_k=0, top_p=1.0, min_p=0.5)) == [1, 3, 4]
    assert _kept(S(1.0, top_k=0, top_p=1.0, min_p=0.1)) == [1, 3, 4, 0]
    assert _kept(S(1.0, top_k=0, top_p=1.0, min_p=0.99)) == [1]


def test_the_order_is_top_k_then_top_p_then_min_p_then_temperature():
    # top_p after top_k measures mass among the k kept: with k = 2 the two hold 0.4 and 0.3, renormalised
    # 0.571 and 0.429, so top_p 0.5 keeps one token. Before top_k it would need 0.4 + 0.3 > 0.5: two.
    assert _kept(S(1.0, top_k=2, top_p=0.5)) == [1]
    assert _kept(S(1.0, top_k=0, top_p=0.5)) == [1, 3]
    # min_p after top_p: top_p 0.95 keeps 4 tokens, then min_p 0.2 (p >= 0.08) drops id 0.
    assert _kept(S(1.0, top_k=0, top_p=0.95, min_p=0.2)) == [1, 3, 4]
    # Temperature does not move the cuts (they are measured at temperature 1), only the final softmax.
    hot = sampling.candidates(LOGITS, S(100.0, top_k=0, top_p=0.71))
    cold = sampling.candidates(LOGITS, S(0.01, top_k=0, top_p=0.71))
    assert hot[0].tolist() == cold[0].tolist() == [1, 3, 4]
    np.testing.assert_allclose(hot[1], [1 / 3] * 3, atol=0.01)
    np.testing.assert_allclose(cold[1], [1, 0, 0], atol=1e-9)
    warm = sampling.candidates(LOGITS, S(0.5, top_k=0, top_p=0.71))[1]
    np.testing.assert_allclose(warm, np.array([0.4, 0.3, 0.2]) ** 2 / np.sum(np.array([0.4, 0.3, 0.2]) ** 2))


def test_the_draw_picks_by_cumulative_probability():
    settings = S(1.0, top_k=3, top_p=1.0)  # 1: 4/9, 3: 3/9, 4: 2/9
    assert sampling.sample(LOGITS, 0.0, settings) == 1
    assert sampling.sample(LOGITS, 4 / 9 - 1e-9, settings) == 1
    assert sampling.sample(LOGITS, 4 / 9 + 1e-9, settings) == 3
    assert sampling.sample(LOGITS, 7 / 9 + 1e-9, settings) == 4
    assert sampling.sample(LOGITS, math.nextafter(1.0, 0.0), settings) == 4
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="draw"):
            sampling.sample(LOGITS, bad, settings)


def test_equal_logits_and_draws_give_the_same_token_in_any_precision():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=512) * 4
    for u in rng.random(50):
        assert sampling.sample(logits.astype(np.float32), u, sampling.DEFAULT) == sampling.sample(
            logits.astype(np.float32).astype(np.float64), u, sampling.DEFAULT
        )


def test_a_tail_token_is_never_drawn_with_the_defaults():
    # 99.9% on 20 tokens, 0.1% spread over the other 492: a draw near 1 lands in the tail
    # without truncation and never with the defaults.
    probs = np.full(512, 0.001 / 492)
    probs[:20] = 0.999 / 20
    logits = np.log(probs)
    assert sampling.sample(logits, 0.99999, sampling.UNTRUNCATED) >= 20
    assert all(sampling.sample(logits, u, sampling.DEFAULT) < 20 for u in np.linspace(0, 0.99999, 200))


def test_broken_logits_are_refused():
    for bad in ([], [np.nan, 1.0], [-np.inf, -np.inf]):
        with pytest.raises(ValueError, match="logits"):
            sampling.candidates(np.asarray(bad, dtype=np.float64), sampling.DEFAULT)
    assert sampling.sample([0.0, -np.inf, 1.0], 0.9, OFF) in (0, 2)  # a masked token is fine


def test_defaults_are_ollamas_documented_ones():
    assert sampling.DEFAULT == S(temperature=0.8, top_k=40, top_p=0.9, min_p=0.0)
    assert sampling.UNTRUNCATED == S(temperature=0.8, top_k=0, top_p=1.0, min_p=0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_p": 0.0}, r"top_p: 0.0; must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p: 1.5; must be in \(0, 1\]"),
        ({"top_p": float("nan")}, r"top_p: nan; must be in \(0, 1\]"),
        ({"top_k": -1}, r"top_k: -1; must be an integer >= 0"),
        ({"min_p": 1.0}, r"min_p: 1.0; must be in \[0, 1\)"),
        ({"min_p": -0.1}, r"min_p: -0.1; must be in \[0, 1\)"),
        ({"temperature": 0.0}, r"temperature: 0.0; must be > 0"),
        ({"temperature": float("inf")}, r"temperature: inf; must be > 0"),
    ],
)
def test_out_of_range_values_name_the_parameter_and_its_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        S(**kwargs)


def test_the_seed_rule_reproduces_per_question_and_differs_across_questions():
    questions = [[1, 7, 9], [1, 7, 10], [1, 10, 7], [1, 7, 9, 2], [2, 7, 9]] + [[1, n] for n in range(200)]
    first = [sampling.draws(0, q, 1)[0] for q in questions]
    assert len(set(first)) == len(questions)  # no two questions share the first draw at seed 0
    for q in questions[:5]:
        np.testing.assert_array_equal(sampling.draws(0, q, 8), sampling.draws(0, q, 8))
        assert sampling.draws(0, q, 1)[0] != sampling.draws(1, q, 1)[0]
        np.testing.assert_array_equal(sampling.draws(3, q, 32)[:8], sampling.draws(3, q, 8))
    all_draws = np.concatenate([sampling.draws(0, q, 32) for q in questions])
    assert all_draws.min() >= 0 and all_draws.max() < 1
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            sampling.draws(bad, [1], 1)
