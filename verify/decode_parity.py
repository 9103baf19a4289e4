"""Multi-step decode parity: a KV-cache artifact decodes, step by step, what eager decodes.

The behaviour replay (verify/parity.py) runs each whole sequence through an artifact in one
forward, so a KV-cache artifact's cache is never exercised there. A cache bug (a slot off by one, a
stale entry, a cache not reset between sequences) shows only when the artifact decodes token by
token, and often only after many steps. So each KV-cache artifact plugs in as a step function
(training/decode.py, Steps: prefill, then one token per call), and here it

- answers every held-out question of the replay greedily, for the whole reply: its tokens must be
  eager's (eager greedy decoding through the model's KV cache: the replay's continuations), and its
  logits at every step are compared with eager's at the same step;
- is driven to the longest contract length: the numeric rows of that length (seeded random ids,
  held-out text) are fed one token per call from position 0, filling every slot up to the last.

All the compared steps form one set of logits, measured by the six metrics of every other scope
(parity.compare_logits) against the contract's "decode" bounds: a floor measured by running each
precision's emulation through the same steps (verify/floors/floors.py, `decode_floor_inputs`) times the
factor. The position whose logits differ most from eager's is reported.
"""

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from training import decode
from training.model import KVCache
from verify import parity


@dataclasses.dataclass(frozen=True)
class Sequences:
    """What is decoded: prompts[i], then fed[i] one token per call (logits after each)."""

    prompts: list[list[int]]
    fed: list[list[int]]
    greedy: list[bool]  # True: the artifact picks its own tokens, which must equal fed[i] + the last


def sequences(prompts, continuations, long_rows: Sequence[np.ndarray]) -> tuple[Sequences, list[list[int]]]:
    """(the decoded sequences, eager's tokens per question). A question's fed tokens are eager's reply
    without its last token (that one is only predicted); a long row is fed whole after its first token."""
    rows = [np.asarray(row).reshape(-1).tolist() for row in long_rows]
    return (
        Sequences(
            prompts=[list(p) for p in prompts] + [row[:1] for row in rows],
            fed=[list(c[:-1]) for c in continuations] + [row[1:] for row in rows],
            greedy=[True] * len(prompts) + [False] * len(rows),
        ),
        [list(c) for c in continuations],
    )


@torch.no_grad()
def forced_logits(model, seqs: Sequences, batch_size: int = 64) -> list[np.ndarray]:
    """Logits [1 + len(fed[i]), V] float64 of `model` (eager, or an emulation) along each sequence,
    through its KV cache: the prompt once, then one fed token per call; equal prompts lengths run
    as one batch, and rows leave it when their tokens run out."""
    out: list[np.ndarray] = [None] * len(seqs.prompts)
    for group in decode.group_by_length(seqs.prompts, batch_size):
        cache = KVCache()
        logits = model(torch.tensor([seqs.prompts[i] for i in group]), cache)[:, -1]
        rows, collected, step = list(group), {i: [] for i in group}, 0
        while True:
            step_logits = logits.double().numpy()  # one cast per step, not one per row
            for r, row in enumerate(rows):
                collected[row].append(step_logits[r])
            keep = [len(seqs.fed[i]) > step for i in rows]
            if not any(keep):
                break
            if not all(keep):
                cache = cache.select(torch.tensor(keep))
                rows = [i for i, k in zip(rows, keep, strict=True) if k]
            logits = model(torch.tensor([[seqs.fed[i][step]] for i in rows]), cache)[:, -1]
            step += 1
        for i in group:
            out[i] = np.stack(collected[i])
    return out


def run_steps(steps: decode.Steps, prompt, fed, greedy: bool, eos_id: int) -> tuple[list[int], np.ndarray]:
    """(tokens, logits [n, V] float64) through an artifact's Steps. greedy: it picks each token
    itself (argmax) for as many steps as eager's reply has, stopping at eos; otherwise `fed` is fed."""
    logits = [steps.prefill(prompt)]
    tokens: list[int] = []
    for step in range(len(fed) + 1):
        last = torch.as_tensor(np.asarray(logits[-1]))
        token = int(torch.argmax(last)) if greedy else None
        if greedy:
            tokens.append(token)
        if step == len(fed) or (greedy and token == eos_id):
            break
        logits.append(steps.decode(token if greedy else fed[step]))
    return tokens, np.stack([np.asarray(x, dtype=np.float64) for x in logits])


@dataclasses.dataclass(frozen=True)
class Result:
    comparison: parity.Comparison | None  # every compared step of every sequence (None: none ran)
    sequences: int
    token_mismatches: tuple[str, ...]  # "question i step s: eager t, artifact u"
    errors: tuple[str, ...]  # "sequence i: <error>" for each sequence the artifact failed to decode
    worst_position: int  # position of the fed token after which the logits differ most
    worst_error: float  # that largest |logit difference|
    longest: int  # positions of the longest decoded sequence
    seconds: float
    # Replies that parted where eager's own top two logits are closer than near_tie_margin: an error
    # within the bounds may flip such a step, so these are counted apart (docs/architecture.md, "Gates").
    near_tie_partings: tuple[str, ...] = ()


def check(
    make_steps: Callable[[], decode.Steps],
    reference: list[np.ndarray],
    seqs: Sequences,
    eager_tokens: list[list[int]],
    eos_id: int,
    near_tie_margin: float = 0.0,
) -> Result:
    """The artifact's Steps (one object, reused for every sequence as a runtime would) against
    `reference` = forced_logits(eager, seqs). A sequence the artifact fails to decode (it raises)
    is an error, and the others are still compared. A reply that parts from eager's at a step where
    eager's top two logits are closer than near_tie_margin is a near-tie parting, not a mismatch."""
    began = time.monotonic()
    steps = make_steps()
    refs, gots, positions, mismatches, errors, near_ties = [], [], [], [], [], []
    longest = 0
    for i, (prompt, fed, greedy) in enumerate(zip(seqs.prompts, seqs.fed, seqs.greedy, strict=True)):
        try:
            tokens, logits = run_steps(steps, prompt, fed, greedy, eos_id)
        except Exception as error:  # the artifact's failure is a finding, not a crash of the check
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            errors.append(f"sequence {i}: {type(error).__name__}: {lines[-1] if lines else ''}"[:300])
            continue
        compared = min(len(logits), len(reference[i]))
        if greedy and tokens != eager_tokens[i]:
            # Logits are comparable up to the first step that parted (the same history before it).
            pairs = zip(tokens, eager_tokens[i], strict=False)
            parted = next((s for s, (a, b) in enumerate(pairs) if a != b), compared - 1)
            compared = min(compared, parted + 1)
            theirs = tokens[parted] if parted < len(tokens) else "end"
            ours = eager_tokens[i][parted] if parted < len(eager_tokens[i]) else "end"
            top2 = np.sort(reference[i][parted])[-2:] if parted < len(reference[i]) else None
            tie = top2 is not None and top2[1] - top2[0] < near_tie_margin
            (near_ties if tie else mismatches).append(
                f"question {i} step {parted}: eager {ours}, artifact {theirs}"
            )
        refs.append(reference[i][:compared])
        gots.append(logits[:compared])
        positions.append(len(prompt) - 1 + np.arange(compared))
        longest = max(longest, len(prompt) + len(fed))
    if not refs:
        return Result(
            None,
            len(seqs.prompts),
            tuple(mismatches),
            tuple(errors),
            -1,
            float("inf"),
            0,
            0.0,
            tuple(near_ties),
        )
    ref, got, position = np.concatenate(refs), np.concatenate(gots), np.concatenate(positions)
    comparison = parity.compare_logits(ref[None], got[None])
    error = np.abs(got - ref).max(-1) if np.isfinite(got).all() else np.full(len(got), np.inf)
    worst = int(np.argmax(error))
    return Result(
        comparison=comparison,
        sequences=len(seqs.prompts),
        token_mismatches=tuple(mismatches),
        errors=tuple(errors),
        worst_position=int(position[worst]),
        worst_error=float(error[worst]),
        longest=longest,
        seconds=time.monotonic() - began,
        near_tie_partings=tuple(near_ties),
    )
