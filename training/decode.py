"""Decoding: greedy or seeded sampling (training/sampling.py), one token at a time or batched.

`generate` works with every backend through a `Steps` object: `prefill(prompt ids)` then
`decode(token)`, each returning the next-token logits. `Recompute` turns any
forward(ids LongTensor [1, T]) -> logits [1, T, V] (torch or NumPy: eager, TorchScript, Core ML via
the MIL executor, llama.cpp) into Steps that re-run the whole sequence each step; `CachedSteps` runs
the eager Student with its KV cache (training/model.py), and conversion/kv_decoder.py has the
TorchScript decoder's. `greedy_batch` and `sampled_batch` decode many prompts through the eager
Student's KV cache at once.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from training import sampling
from training.model import KVCache, Student

Forward = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


def _as_tensor(logits) -> torch.Tensor:
    return logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))


class Steps:
    """One sequence, token by token. prefill starts a new sequence (forgetting any earlier one)."""

    def prefill(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        """Logits [V] for the token after prompt_ids."""
        raise NotImplementedError

    def decode(self, token: int) -> torch.Tensor:
        """Appends token; logits [V] for the token after it."""
        raise NotImplementedError


class Recompute(Steps):
    """Steps over a whole-sequence forward: every call re-runs the sequence so far."""

    def __init__(self, forward: Forward):
        self.forward = forward
        self.ids: list[int] = []

    def _last(self) -> torch.Tensor:
        return _as_tensor(self.forward(torch.tensor([self.ids], dtype=torch.long)))[0, -1]

    def prefill(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        self.ids = list(prompt_ids)
        return self._last()

    def decode(self, token: int) -> torch.Tensor:
        self.ids.append(token)
        return self._last()


class CachedSteps(Steps):
    """The eager Student with its growing KV cache: the prompt runs once, then one token per call."""

    def __init__(self, model: Student):
        self.model = model.eval()
        self.cache = KVCache()

    @torch.no_grad()
    def prefill(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        self.cache = KVCache()
        return self.model(torch.tensor([list(prompt_ids)]), self.cache)[0, -1]

    @torch.no_grad()
    def decode(self, token: int) -> torch.Tensor:
        return self.model(torch.tensor([[token]]), self.cache)[0, -1]


def generate(
    model: "Forward | Steps",
    prompt_ids: Sequence[int],
    eos_id: int,
    max_new_tokens: int,
    sampler: sampling.Settings | None = None,
    seed: int = 0,
    max_length: int | None = None,
    draws: Sequence[float] | None = None,
) -> list[int]:
    """The new token ids after `prompt_ids`, ending with eos_id if the model produced it.

    model is Steps, or a whole-sequence forward (run through Recompute). sampler None is greedy
    (argmax; ties go to the lowest id). Otherwise each step samples with sampling.sample(logits,
    draws[step], sampler), draws being sampling.draws(seed, prompt_ids, max_new_tokens) unless given
    (a replay passes its own), so the same seed gives the same reply to the same question. Stops at
    eos, after max_new_tokens, or when the whole sequence reaches max_length (e.g. the longest
    input an exported artifact accepts).
    """
    steps = model if isinstance(model, Steps) else Recompute(model)
    if sampler is not None and draws is None:
        draws = sampling.draws(seed, prompt_ids, max_new_tokens)
    if sampler is not None and len(draws) < max_new_tokens:
        raise ValueError(f"{len(draws)} draws for up to {max_new_tokens} new tokens")
    length = len(prompt_ids)
    new: list[int] = []
    logits = None
    while len(new) < max_new_tokens and (max_length is None or length < max_length):
        logits = _as_tensor(steps.prefill(prompt_ids) if logits is None else steps.decode(new[-1])).double()
        if sampler is None:
            token = int(torch.argmax(logits))
        else:
            token = sampling.sample(logits.numpy(), float(draws[len(new)]), sampler)
        new.append(token)
        length += 1
        if token == eos_id:
            break
    return new


def group_by_length(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of `prompts` in groups of equal length (at most batch_size each), in a fixed order."""
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(index)
    return [
        group[start : start + batch_size]
        for _, group in sorted(by_length.items())
        for start in range(0, len(group), batch_size)
    ]


@torch.no_grad()
def _decode_batch(
    model: Student,
    prompts: Sequence[Sequence[int]],
    eos_id: int,
    max_new_tokens: int,
    pick: Callable[[list[int], torch.Tensor, int], torch.Tensor],
    batch_size: int,
) -> list[list[int]]:
    """Replies of the eager Student, pick(rows, last logits [len(rows), V], step) -> next ids.

    Prompts of equal length run together with a KV cache (training/model.py): the prompt runs
    once and each new token costs one position, so a thousand replies take seconds. Rows leave the
    batch when they produce eos.
    """
    replies: list[list[int]] = [[] for _ in prompts]
    for group in group_by_length(prompts, batch_size):
        cache = KVCache()
        logits = model(torch.tensor([list(prompts[i]) for i in group]), cache)[:, -1]
        rows = list(group)
        for step in range(max_new_tokens):
            next_ids = pick(rows, logits, step)
            for row, token in zip(rows, next_ids.tolist(), strict=True):
                replies[row].append(token)
            keep = torch.tensor([t != eos_id for t in next_ids.tolist()])
            if not bool(keep.any()) or len(replies[rows[0]]) == max_new_tokens:
                break
            if not bool(keep.all()):
                cache = cache.select(keep)
                next_ids = next_ids[keep]
                rows = [r for r, k in zip(rows, keep.tolist(), strict=True) if k]
            logits = model(next_ids[:, None], cache)[:, -1]
    return replies


def greedy_batch(
    model: Student,
    prompts: Sequence[Sequence[int]],
    eos_id: int,
    max_new_tokens: int,
    batch_size: int = 256,
) -> list[list[int]]:
    """Greedy replies of the eager Student for many prompts; same as `generate` on each prompt alone."""
    return _decode_batch(
        model, prompts, eos_id, max_new_tokens, lambda rows, logits, step: logits.argmax(-1), batch_size
    )


def sampled_batch(
    model: Student,
    prompts: Sequence[Sequence[int]],
    draws: Sequence[Sequence[float]],
    eos_id: int,
    max_new_tokens: int,
    sampler: sampling.Settings,
    batch_size: int = 256,
) -> list[list[int]]:
    """Sampled replies of the eager Student, prompt i using draws[i] (at least max_new_tokens each).

    Row i is what generate(model, prompts[i], ..., sampler, draws=draws[i]) returns, a few rows at
    a time through the KV cache.
    """
    if len(draws) != len(prompts) or any(len(d) < max_new_tokens for d in draws):
        raise ValueError(f"need {len(prompts)} rows of at least {max_new_tokens} draws")

    def pick(rows: list[int], logits: torch.Tensor, step: int) -> torch.Tensor:
        last = logits.double().numpy()
        tokens = [sampling.sample(last[j], float(draws[r][step]), sampler) for j, r in enumerate(rows)]
        return torch.tensor(tokens, dtype=torch.long)

    return _decode_batch(model, prompts, eos_id, max_new_tokens, pick, batch_size)
