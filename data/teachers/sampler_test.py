import numpy as np
import pytest

from data.teachers import sampler, source
from training import sampling


class _Draw:
    """A generator stand-in that hands out one chosen uniform number."""

    def __init__(self, u: float):
        self.u = u

    def random(self) -> float:
        return self.u


def test_greedy_takes_the_highest_score_and_ties_go_to_the_lowest_id():
    scores = np.array([0.5, 2.0, -1.0, 2.0])
    greedy = source.Sampling()
    assert sampler.record_rng(greedy, 7) is None
    assert sampler.choose(scores, greedy, None) == 1


def test_top_ids_are_sorted_highest_first_with_ties_to_the_lower_id():
    scores = np.array([1.0, 3.0, 3.0, -2.0, 3.0, 0.0])
    assert sampler.top_ids(scores, 2).tolist() == [1, 2]
    assert sampler.top_ids(scores, 4).tolist() == [1, 2, 4, 0]
    assert sampler.top_ids(scores, 10).tolist() == [1, 2, 4, 0, 5, 3]
    rng = np.random.default_rng(0)
    wide = np.round(rng.normal(size=5000), 1)  # many equal values, so the cut falls inside ties
    for count in (1, 7, 64):
        expected = sorted(range(wide.size), key=lambda i: (-wide[i], i))[:count]
        assert sampler.top_ids(wide, count).tolist() == expected


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 0, 1.0), (0.7, 40, 0.9), (1.5, 5, 1.0), (0.3, 0, 0.5), (1.0, 1, 1.0), (2.0, 0, 0.999)],
)
def test_sampling_picks_what_the_runtime_sampler_picks_for_the_same_draw(temperature, top_k, top_p):
    """training/sampling.py (what `ask` and llama.cpp's chain do) at min_p 0 is the reference."""
    settings = source.Sampling("sample", temperature, top_k, top_p, seed=0)
    reference = sampling.Settings(temperature=temperature, top_k=top_k, top_p=top_p, min_p=0.0)
    rng = np.random.default_rng(1)
    picked = set()
    for _ in range(300):
        logits = rng.normal(scale=3.0, size=64)
        u = float(rng.random())
        token = sampler.choose(logits, settings, _Draw(u))
        assert token == sampling.sample(logits, u, reference)
        picked.add(token)
    assert len(picked) > (1 if top_k == 1 else 10)


def test_each_record_has_its_own_stream_whatever_the_order():
    sampled = source.Sampling("sample", seed=3)
    first = [sampler.record_rng(sampled, record).random() for record in (0, 1, 2)]
    again = [sampler.record_rng(sampled, record).random() for record in (2, 1, 0)][::-1]
    assert first == again and len(set(first)) == 3
    other_seed = source.Sampling("sample", seed=4)
    assert sampler.record_rng(other_seed, 0).random() != first[0]
