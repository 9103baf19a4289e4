"""Numeric parity and behaviour checks over logits functions, whatever the backend.

A logits function maps input ids, NumPy int [B, T], to logits, NumPy float [B, T, vocab]. Eager
PyTorch, TorchScript, the Core ML program (verify/coreml/mil_executor.py) and llama.cpp all provide one,
so every artifact is checked by the same code against the same fp32 eager reference.

Behaviour without re-generating on each backend: eager greedy decoding gives each question a
continuation; prompt + continuation, padded after the end with the pad id to the smallest contract
length that fits, goes through the artifact once, and its argmax must match eager's at every
generated position. Attention is causal, so padding after a sequence never changes the logits
before it, and one forward per question checks every decoding step (a Core ML executor forward at
T64 costs ~0.16 s; re-generating token by token would cost ~20x that). Packing several questions
into one row is not valid: attention would cross from one question into the next.

Near ties: where eager's top-1 logit beats its top-2 by less than the contract's near_tie_margin,
an argmax flip is within numeric tolerance (an error of d per logit flips only margins below 2d),
so it is counted and reported, not failed.
"""

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

LogitsFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How far an artifact's logits are from the reference's, in the style of llama.cpp's
    perplexity tool (--kl-divergence): KL of the next-token distributions, "same top p", RMS dp."""

    max_abs_diff: float  # largest |logit difference|; inf if the artifact produced a NaN or inf
    rms_abs_diff: float  # root mean square logit difference: sees small systematic errors max hides
    kl_mean: float  # mean over positions of KL(reference || artifact), nats
    kl_max: float  # largest per-position KL
    top1_disagreement: float  # share of positions whose argmax differs ("same top p" = 1 - this)
    rms_dp: float  # RMS over positions of p_ref(top) - p_artifact(ref's top): probability error
    top1_agreement: float  # argmax matches at positions that are not near ties (1.0 if there are none)
    positions: int
    near_ties: int  # positions where the reference's top-1 beats its top-2 by less than the margin

    # The metrics a bound from a floor applies to (verify/floors/floors.py); the rest are context.
    GATED = ("max_abs_diff", "rms_abs_diff", "kl_mean", "kl_max", "top1_disagreement", "rms_dp")

    def gated(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.GATED}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare_logits(ref: np.ndarray, got: np.ndarray, near_tie_margin: float = 0.0) -> Comparison:
    """ref and got: [..., vocab] of the same shape (ValueError otherwise), compared in float64.

    Top-1 agreement leaves out near ties (see the module docstring): on random ids a trained model
    has many positions without a clear favourite, where fp16 rounding may pick either token.
    """
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"logits shape {got.shape}, expected {ref.shape}")
    if ref.ndim < 1 or ref.size == 0:
        raise ValueError(f"logits shape {ref.shape} holds no positions")
    ref = ref.reshape(-1, ref.shape[-1])
    got = got.reshape(-1, got.shape[-1])
    agree = ref.argmax(-1) == got.argmax(-1)
    decisive = _margins(ref) >= near_tie_margin
    top1_agreement = float(agree[decisive].mean()) if decisive.any() else 1.0
    if not np.isfinite(got).all():
        inf = float("inf")
        return Comparison(inf, inf, inf, inf, float(1 - agree.mean()), inf, top1_agreement, len(agree), 0)
    diff = got - ref
    log_p, log_q = _log_softmax(ref), _log_softmax(got)
    p = np.exp(log_p)
    # Clipped at 0: for near-identical distributions rounding can leave a KL of -1e-17.
    kl = np.maximum((p * (log_p - log_q)).sum(-1), 0.0)
    top = ref.argmax(-1)
    rows = np.arange(len(top))
    dp = p[rows, top] - np.exp(log_q[rows, top])
    return Comparison(
        max_abs_diff=float(np.abs(diff).max()),
        rms_abs_diff=float(np.sqrt(np.mean(diff**2))),
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
        top1_disagreement=float(1.0 - agree.mean()),
        rms_dp=float(np.sqrt(np.mean(dp**2))),
        top1_agreement=top1_agreement,
        positions=int(agree.size),
        near_ties=int((~decisive).sum()),
    )


def smallest_length(n: int, lengths: Sequence[int]) -> int | None:
    """The smallest of `lengths` that holds n tokens, or None if none does."""
    fitting = [t for t in sorted(lengths) if t >= n]
    return fitting[0] if fitting else None


def pad_row(ids: Sequence[int], length: int, pad_id: int) -> np.ndarray:
    """[1, length] int32: ids, then pad_id up to length (ValueError if ids are longer)."""
    if len(ids) > length:
        raise ValueError(f"{len(ids)} ids do not fit in length {length}")
    row = np.full((1, length), pad_id, dtype=np.int32)
    row[0, : len(ids)] = np.asarray(ids, dtype=np.int32)
    return row


def random_row(length: int, vocab_size: int, seed: int) -> np.ndarray:
    """[1, length] int32 ids drawn uniformly; the same (length, vocab_size, seed) gives the same row."""
    rng = np.random.default_rng([seed, length])
    return rng.integers(0, vocab_size, size=(1, length), dtype=np.int32)


def text_row(sequences: Sequence[Sequence[int]], length: int, pad_id: int) -> np.ndarray:
    """[1, length] int32: real token sequences one after another, cut at length (padded if too few).

    For numeric parity only: attention crosses sequence boundaries here, which is fine because
    both sides compute the same thing, and it fills every position with realistic text.
    """
    ids: list[int] = []
    for sequence in sequences:
        if len(ids) >= length:
            break
        ids.extend(sequence)
    return pad_row(ids[:length], length, pad_id)


def numeric_inputs(
    length: int, vocab_size: int, seed: int, sequences: Sequence[Sequence[int]], pad_id: int
) -> list[np.ndarray]:
    """The rows every artifact is compared on at one length: seeded random ids, then real text."""
    rows = [random_row(length, vocab_size, seed)]
    if sequences:
        rows.append(text_row(sequences, length, pad_id))
    return rows


@dataclasses.dataclass(frozen=True)
class Mismatch:
    question: int  # index into the prompts given to behaviour_check
    position: int  # index of the generated token within the continuation
    expected: int  # eager's argmax
    got: int  # the artifact's argmax
    margin: float  # eager's top-1 minus top-2 logit there


@dataclasses.dataclass(frozen=True)
class BehaviourResult:
    questions: int  # questions checked
    skipped: int  # questions whose prompt alone does not fit the longest length
    positions: int  # generated positions compared
    agreed: int  # positions where the artifact's argmax is eager's
    near_tie_positions: int  # positions where eager's margin is below near_tie_margin
    near_tie_flips: int  # disagreements at near ties: counted, not failed
    mismatches: tuple[Mismatch, ...]  # disagreements outside near ties: each one fails the check
    seconds: float  # wall time of the artifact's forwards (for logs, not for reports)
    comparison: Comparison | None  # distribution metrics over every compared position (None: none)

    @property
    def ok(self) -> bool:
        return self.questions > 0 and not self.mismatches

    @property
    def agreement(self) -> float:
        return self.agreed / self.positions if self.positions else 0.0


def _margins(logits: np.ndarray) -> np.ndarray:
    top2 = np.partition(logits.astype(np.float64), -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


@dataclasses.dataclass(frozen=True)
class Replay:
    """The behaviour replay's sequences and eager's logits at their compared positions: the same for
    every artifact, so computed once (replay()) and passed to each behaviour_check."""

    # (question, row length, sequence, first compared logit index, number of compared positions)
    items: tuple
    skipped: int  # questions whose prompt alone does not fit the longest length
    eager_logits: dict  # question -> eager's logits at its compared positions


def replay(
    eager_forward: LogitsFn,
    prompts_ids: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    lengths: Sequence[int],
    pad_id: int,
    eager_batch: int = 64,
) -> Replay:
    """Eager's side of behaviour_check: each question's padded sequence and eager's logits along
    it, eager_batch rows of one length per forward (eager_forward takes a batch [B, T])."""
    if len(prompts_ids) != len(continuations):
        raise ValueError(f"{len(prompts_ids)} prompts but {len(continuations)} continuations")
    longest = max(lengths)
    items = []
    skipped = 0
    for q, (prompt, continuation) in enumerate(zip(prompts_ids, continuations, strict=True)):
        sequence = list(prompt) + list(continuation)
        sequence = sequence[:longest]
        count = len(sequence) - len(prompt)
        if not prompt or count <= 0:
            skipped += 1
            continue
        items.append((q, smallest_length(len(sequence), lengths), sequence, len(prompt) - 1, count))

    eager_logits: dict[int, np.ndarray] = {}
    for length, group in sorted(_by_length(items).items()):
        for start in range(0, len(group), eager_batch):
            chunk = group[start : start + eager_batch]
            batch = np.concatenate([pad_row(item[2], length, pad_id) for item in chunk])
            out = np.asarray(eager_forward(batch))
            for row, item in enumerate(chunk):
                first, count = item[3], item[4]
                # A copy: a view would keep the whole batch's logits alive for as long as the Replay.
                eager_logits[item[0]] = out[row, first : first + count].copy()
    return Replay(tuple(items), skipped, eager_logits)


def _by_length(items) -> dict[int, list]:
    by_length: dict[int, list] = {}
    for item in items:
        by_length.setdefault(item[1], []).append(item)
    return by_length


def behaviour_check(
    eager_forward: LogitsFn,
    artifact_forward: LogitsFn,
    prompts_ids: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    lengths: Sequence[int],
    pad_id: int,
    near_tie_margin: float,
    eager_batch: int = 64,
    artifact_batch: int = 1,
    reference: Replay | None = None,
) -> BehaviourResult:
    """Argmax agreement with eager on eager's own greedy continuations, one artifact forward each.

    eager_forward may take a batch [B, T]; artifact_forward gets [1, T] (the contract's shape),
    or up to artifact_batch rows of one length at once when it takes a batch (an eager emulation,
    verify/floors/floors.py: its rows come out bit for bit as one at a time, and one forward per row was
    most of the floors' time). A sequence longer than the longest length is cut there
    (continuation positions past it are not checked). `reference`: replay() of the same eager
    forward, prompts, continuations, lengths and pad id, when several artifacts are checked (eager's
    logits are then computed once, not once per artifact); eager_forward is not called then.
    """
    if reference is None:
        reference = replay(eager_forward, prompts_ids, continuations, lengths, pad_id, eager_batch)
    elif len(prompts_ids) != len(continuations):
        raise ValueError(f"{len(prompts_ids)} prompts but {len(continuations)} continuations")
    items, skipped, eager_logits = list(reference.items), reference.skipped, reference.eager_logits
    by_length = _by_length(items)

    elapsed = 0.0
    artifact_logits: dict[int, np.ndarray] = {}
    # Rows of one length in items' order, artifact_batch at a time (1: each row alone).
    runs = [[item] for item in items] if artifact_batch <= 1 else []
    if artifact_batch > 1:
        for _, group in sorted(by_length.items()):
            runs.extend(
                group[start : start + artifact_batch] for start in range(0, len(group), artifact_batch)
            )
    for run in runs:
        batch = np.concatenate([pad_row(item[2], item[1], pad_id) for item in run])
        began = time.monotonic()
        got_logits = np.asarray(artifact_forward(batch))
        elapsed += time.monotonic() - began
        if got_logits.ndim != 3 or got_logits.shape[:2] != batch.shape:
            raise ValueError(f"artifact logits shape {got_logits.shape} for input {batch.shape}")
        for row, item in enumerate(run):
            artifact_logits[item[0]] = got_logits[row, item[3] : item[3] + item[4]]

    positions = agreed = near_ties = near_flips = 0
    mismatches = []
    refs, gots = [], []
    for q, _, _, _, count in items:
        ref = eager_logits[q]
        expected = ref.argmax(-1)
        refs.append(ref)
        gots.append(artifact_logits[q])
        got = gots[-1].argmax(-1)
        margins = _margins(ref)
        tie = margins < near_tie_margin
        positions += count
        agreed += int((expected == got).sum())
        near_ties += int(tie.sum())
        for i in np.flatnonzero(expected != got):
            if tie[i]:
                near_flips += 1
            else:
                mismatches.append(Mismatch(q, int(i), int(expected[i]), int(got[i]), float(margins[i])))
    return BehaviourResult(
        questions=len(items),
        skipped=skipped,
        positions=positions,
        agreed=agreed,
        near_tie_positions=near_ties,
        near_tie_flips=near_flips,
        mismatches=tuple(mismatches),
        seconds=elapsed,
        comparison=compare_logits(np.concatenate(refs), np.concatenate(gots)) if refs else None,
    )
