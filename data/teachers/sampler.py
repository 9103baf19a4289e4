"""How an in-process teacher picks its next token from raw scores: greedy, or sampled.

Greedy takes the highest score, ties to the lowest id. Sampling follows llama.cpp's own order (its
sampler chain and server; training/sampling.py does the same for `ask`): keep the top_k highest
scores (0: all; ties at the cut to the lower ids), then the smallest run of those, most likely
first, whose probability reaches top_p, then divide the scores by the temperature and draw from
their softmax with one uniform number, over the candidates in that order. All in float64.

The uniform numbers come from a NumPy generator seeded by (seed, record id), one per record
(record_rng), so a record's reply depends on its own id alone: the same in any order, shard or
process.
"""

import numpy as np

from data.teachers import source


def record_rng(sampling: source.Sampling, record_id: int) -> np.random.Generator | None:
    """The generator of one record's draws (None when greedy: nothing is drawn)."""
    if sampling.mode == "greedy":
        return None
    return np.random.default_rng([sampling.seed, record_id])


def _ranked(scores: np.ndarray, count: int) -> np.ndarray:
    """Ids of the `count` highest scores, highest first, equal scores lower id first."""
    if count < scores.size:
        # Every id scoring at least the count-th highest score, then an exact order among those.
        cut = np.partition(scores, scores.size - count)[scores.size - count]
        candidates = np.flatnonzero(scores >= cut)
    else:
        candidates = np.arange(scores.size)
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:count]]


def top_ids(scores: np.ndarray, count: int) -> np.ndarray:
    """The top-k list's ids (source.py's order: highest first, ties lower id first)."""
    return _ranked(scores, min(count, scores.size))


def _softmax(values: np.ndarray) -> np.ndarray:
    weights = np.exp(values - values.max())
    return weights / weights.sum()


def choose(scores: np.ndarray, sampling: source.Sampling, rng: np.random.Generator | None) -> int:
    """The next token id from float64 scores [V] (module docstring). With equal scores and draw it
    picks what training/sampling.py's sample() picks at min_p 0 (sampler_test holds it to that)."""
    if rng is None:
        return int(np.argmax(scores))  # the first maximum: ties go to the lowest id
    kept = _ranked(scores, min(sampling.top_k or scores.size, scores.size))
    if sampling.top_p < 1.0:
        mass = np.cumsum(_softmax(scores[kept]))
        kept = kept[: int(np.searchsorted(mass, sampling.top_p)) + 1]
    cumulative = np.cumsum(_softmax(scores[kept] / sampling.temperature))
    index = int(np.searchsorted(cumulative, rng.random(), side="right"))
    return int(kept[min(index, kept.size - 1)])  # rounding can leave the last sum a hair below the draw
