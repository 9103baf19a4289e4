"""Token sampling as the runtimes users know it: top-k, top-p and min-p, then temperature.

Pure NumPy over one position's logits, so every backend (eager, TorchScript, llama.cpp's logits)
goes through the same code: equal logits and equal draws give the same token everywhere. The draw
is a uniform number in [0, 1) passed in, not a generator held inside, so a reply can be replayed.

The chain, in the order llama.cpp applies it (common/common.h, common_params_sampling::samplers:
penalties, dry, top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature; the ones not listed
here are off at their defaults):

1. top_k    keep the k highest logits (ties: the lower id); k = 0 keeps every token.
2. top_p    softmax of what is left (temperature 1), sorted by probability; keep the shortest
            prefix whose cumulative probability reaches p (the token that crosses p stays);
            p = 1 keeps every token.
3. min_p    keep the tokens whose probability is at least min_p times the largest one;
            min_p = 0 keeps every token.
4. temperature  softmax(logits / temperature) over what is left, then the draw u picks the token
            whose cumulative probability interval holds u (candidates in the order above).

Defaults are Ollama's documented ones (its docs/modelfile.mdx, "Valid Parameters and Values":
temperature 0.8, top_k 40, top_p 0.9, min_p 0.0), so `ask` and the Modelfile that ships beside the
GGUF file (conversion/modelfile.py writes these values) sample the same way. llama.cpp's own CLI
defaults differ (top_p 0.95, min_p 0.05); the Modelfile states every value, so either runtime
reading it uses these.

Seed rule (`draws`): the uniform draws for one reply come from a NumPy PCG64 generator seeded with
(seed, sha256 of the prompt ids). A fixed seed gives the same reply to the same question, and
different questions get different draws: the same seed no longer reuses one draw for every
question, which made a tail token win everywhere at one unlucky seed.
"""

import dataclasses
import hashlib
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sampling parameters; ValueError (naming the parameter and its allowed range) if out of range."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0

    def __post_init__(self):
        for problem in problems(self.temperature, self.top_k, self.top_p, self.min_p):
            raise ValueError(problem)


def problems(temperature: float, top_k: int, top_p: float, min_p: float) -> list[str]:
    """What is wrong with these values, one line per parameter (empty when all are in range)."""
    out = []
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        out.append(f"temperature: {temperature}; must be > 0 (finite)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        out.append(f"top_k: {top_k}; must be an integer >= 0 (0 keeps every token)")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):  # NaN fails both comparisons
        out.append(f"top_p: {top_p}; must be in (0, 1] (1 keeps every token)")
    if not (isinstance(min_p, (int, float)) and 0 <= min_p < 1):
        out.append(f"min_p: {min_p}; must be in [0, 1) (0 keeps every token)")
    return out


DEFAULT = Settings()
# Plain temperature sampling over the whole vocabulary: what `ask` did before these filters.
UNTRUNCATED = Settings(temperature=DEFAULT.temperature, top_k=0, top_p=1.0, min_p=0.0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _descending(logits: np.ndarray, top_k: int) -> np.ndarray:
    """The first top_k ids (all when top_k is 0) of np.argsort(-logits, kind="stable"): highest
    logit first, equal logits lower id first. logits: float64 [V], no NaN.

    With top_k below V, sorting the whole vocabulary is most of the cost, and only a few ids are
    needed. Let t be the top_k-th highest logit (with repeats). At least top_k ids have a logit
    >= t and every other id is below all of them, so the full sort's first top_k ids all lie in
    the pool of ids with logit >= t. np.flatnonzero lists the pool in id order, so a stable sort
    of the pool orders it exactly as the full sort orders those ids (ties by lower id): its first
    top_k ids are the full sort's, ties at t included.
    """
    if 0 < top_k < logits.size:
        threshold = np.partition(logits, logits.size - top_k)[logits.size - top_k]
        pool = np.flatnonzero(logits >= threshold)
        return pool[np.argsort(-logits[pool], kind="stable")[:top_k]]
    return np.argsort(-logits, kind="stable")


def candidates(logits, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, probabilities) that survive the chain, most likely first; probabilities sum to 1.

    logits: one position, [V]. ValueError if it holds NaN or no finite value.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    # max() is NaN when any logit is NaN (numpy propagates it), so one test refuses NaN, +inf and
    # logits with no finite value.
    if logits.size == 0 or not np.isfinite(logits.max()):
        raise ValueError("logits: empty, NaN, or no finite value; the model output is broken")
    order = _descending(logits, settings.top_k)
    kept = logits[order]
    if settings.top_p < 1:
        cumulative = np.cumsum(_softmax(kept))
        count = int(np.searchsorted(cumulative, settings.top_p, side="left")) + 1
        order, kept = order[:count], kept[:count]
    if settings.min_p > 0:
        # p_i >= min_p * p_max  <=>  logit_i >= max logit + log(min_p); the softmax's sum cancels.
        keep = kept >= kept[0] + math.log(settings.min_p)
        order, kept = order[keep], kept[keep]
    return order, _softmax(kept / settings.temperature)


def sample(logits, u: float, settings: Settings) -> int:
    """The token the draw u in [0, 1) picks from candidates(logits, settings)."""
    if not 0 <= u < 1:
        raise ValueError(f"u: {u}; a draw must be in [0, 1)")
    ids, probs = candidates(logits, settings)
    return pick(ids, np.cumsum(probs), u)


def pick(ids: np.ndarray, cumulative: np.ndarray, u: float) -> int:
    """The token the draw u picks from candidates' ids and the cumulative sum of their probabilities
    (sample() in two steps, for a caller that draws several times from one position's logits)."""
    if not 0 <= u < 1:
        raise ValueError(f"u: {u}; a draw must be in [0, 1)")
    index = int(np.searchsorted(cumulative, u, side="right"))
    return int(ids[min(index, len(ids) - 1)])  # rounding can leave the last sum a hair below u


def prompt_digest(prompt_ids: Sequence[int]) -> int:
    """The first 128 bits of sha256 over the prompt ids as little-endian int64, as an integer."""
    data = np.asarray(list(prompt_ids), dtype="<i8").tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:16], "little")


def draws(seed: int, prompt_ids: Sequence[int], count: int) -> np.ndarray:
    """float64 [count] uniform draws in [0, 1) for one reply: step i of the reply uses draws[i].

    Seeded with (seed, prompt_digest(prompt_ids)); seed must be >= 0. A longer count extends the
    same sequence, so --max_new_tokens never changes the earlier draws.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: {seed}; must be an integer >= 0")
    sequence = np.random.SeedSequence([seed, prompt_digest(prompt_ids)])
    return np.random.Generator(np.random.PCG64(sequence)).random(count)
