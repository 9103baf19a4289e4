"""Behaviour metrics of a student against the teacher, on held-out questions.

- canonical_rate: share of greedy replies that are canonical (data/teacher.canonical_reply: one
  of the 20 answers, its group's flair, then eos). A reply that does not reach eos within
  max_new_tokens is not.
- Answer distributions. For one question the student's distribution over the 20 answers is its
  probability of each full completion (teacher.completion_text(i) tokens + eos, after
  [bos] + prompt), normalised over the 20. Per question kind, the student's and the teacher's
  (teacher.answer_distribution) distributions are averaged over that kind's questions;
  tv = total variation between the two averages.
- mean_kl: KL(teacher || student) between the per-question 20-answer distributions, averaged over
  all questions (nats).
- baseline_kl: the same for the kind-only baseline, which gives every question its kind's average
  teacher distribution: what a student that reads nothing but the question's kind could reach.
  The student must beat it by a wide margin (quality_failures), or it has not learned the questions.
"""

import collections
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from data import teacher
from training.decode import greedy_batch, group_by_length
from training.model import KVCache


@torch.no_grad()
def completion_logprobs(
    model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], batch_size: int = 64
) -> np.ndarray:
    """log P(completion | prompt) for every (prompt, completion) pair: float64 [len(prompts), C].

    Each prompt already starts with bos; each completion includes its eos. Prompts of equal length
    run once (KV cache). All completions then run as one packed row after the prompt: token j of
    completion c sits at position len(prompt) + j and sees the prompt and c's tokens before it, so
    the row scores every completion at once with no padding.
    """
    owner = [c for c, comp in enumerate(completions) for _ in comp[:-1]]
    offsets = torch.tensor([j for comp in completions for j in range(len(comp) - 1)], dtype=torch.long)
    packed = torch.tensor([t for comp in completions for t in comp[:-1]], dtype=torch.long)
    targets = torch.tensor([t for comp in completions for t in comp[1:]], dtype=torch.long)
    same = torch.tensor(owner)[:, None] == torch.tensor(owner)[None, :]
    self_mask = same & (offsets[None, :] <= offsets[:, None])
    # [S, C] one-hot of each packed token's completion: sums its log-probs into that completion.
    to_completion = F.one_hot(torch.tensor(owner), len(completions)).double()
    first = torch.tensor([comp[0] for comp in completions], dtype=torch.long)

    out = np.zeros((len(prompts), len(completions)), dtype=np.float64)
    for group in group_by_length(prompts, batch_size):
        cache = KVCache()
        last = model(torch.tensor([list(prompts[i]) for i in group]), cache)[:, -1]
        scores = F.log_softmax(last.float(), dim=-1)[:, first].double()
        if len(packed):
            rows = packed.repeat(len(group), 1)
            logits = model(rows, cache.tree(offsets, self_mask))
            logp = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.expand(len(group), -1)[..., None])
            scores = scores + logp[..., 0].double() @ to_completion
        out[group] = scores.numpy()
    return out


def _normalise(logps: np.ndarray) -> np.ndarray:
    shifted = np.exp(logps - logps.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) along the last axis, with 0 log 0 = 0."""
    safe_p = np.where(p > 0, p, 1.0)
    return np.where(p > 0, p * (np.log(safe_p) - np.log(np.maximum(q, 1e-300))), 0.0).sum(-1)


def reply_checks(records: Sequence, replies: Sequence[Sequence[int]], tokenizer) -> tuple[int, list[dict]]:
    """(number of canonical replies, up to 5 examples of the others): data/teacher.canonical_reply."""
    canonical = 0
    bad = []
    for record, reply in zip(records, replies, strict=True):
        ended = bool(reply) and reply[-1] == tokenizer.eos_id
        text = tokenizer.decode(reply[:-1] if ended else reply)
        if teacher.canonical_reply(reply, tokenizer) is not None:
            canonical += 1
        elif len(bad) < 5:
            bad.append({"question": record.question, "reply": text, "ended": ended})
    return canonical, bad


def distribution_metrics(student: np.ndarray, reference: np.ndarray, kinds: Sequence[str]) -> dict:
    """Per-kind TV of the averaged distributions and KL per question; rows of [N, 20] arrays."""
    kls = _kl(reference, student)
    by_kind = collections.defaultdict(list)
    for index, kind in enumerate(kinds):
        by_kind[kind].append(index)
    per_kind = {}
    for kind in sorted(by_kind):
        rows = by_kind[kind]
        s = student[rows].mean(0)
        t = reference[rows].mean(0)
        per_kind[kind] = {
            "questions": len(rows),
            "tv": float(0.5 * np.abs(s - t).sum()),
            "mean_kl": float(kls[rows].mean()),
            "student": [float(x) for x in s],
            "teacher": [float(x) for x in t],
        }
    baseline = np.stack([np.asarray(per_kind[kind]["teacher"]) for kind in kinds])
    return {
        "mean_kl": float(kls.mean()),
        "baseline_kl": float(_kl(reference, baseline).mean()),
        "max_tv": max(k["tv"] for k in per_kind.values()),
        "per_kind": per_kind,
    }


# The student quality gates (training/student_quality_test.py applies them to the shipped checkpoint).
MIN_CANONICAL = 1.0  # every greedy reply to a held-out template question is canonical
MAX_TV = 0.1  # per kind, between the averaged student and teacher answer distributions
MAX_KL_VS_BASELINE = 0.1  # mean KL at most 1/10 of the kind-only baseline's


def quality_failures(metrics: dict) -> list[str]:
    """Every quality gate `metrics` (from evaluate) fails, as one line each; empty when all pass."""
    failures = []
    if metrics["canonical_rate"] < MIN_CANONICAL:
        failures.append(f"canonical greedy replies {metrics['canonical_rate']:.2%} < {MIN_CANONICAL:.0%}")
    for kind, row in metrics["per_kind"].items():
        if row["tv"] > MAX_TV:
            failures.append(f"kind {kind}: TV {row['tv']:.4f} > {MAX_TV}")
    bound = MAX_KL_VS_BASELINE * metrics["baseline_kl"]
    if not metrics["mean_kl"] <= bound:
        failures.append(
            f"mean KL(teacher || student) {metrics['mean_kl']:.4f} > {MAX_KL_VS_BASELINE} x the kind-only "
            f"baseline's {metrics['baseline_kl']:.4f} = {bound:.4f}"
        )
    return failures


def evaluate(model, tokenizer, records: Sequence, max_new_tokens: int = 32, batch_size: int = 256) -> dict:
    """Metrics of the module docstring for `records` (dataset records: question, kind, prompt_ids).

    Returns {"questions", "canonical_rate", "non_canonical" (up to 5 examples), "mean_kl",
    "max_tv", "per_kind": {kind: {"questions", "tv", "mean_kl", "student", "teacher"}}}.
    """
    if not records:
        raise ValueError("evaluate needs at least one record")
    model.eval()
    prompts = [[tokenizer.bos_id, *r.prompt_ids] for r in records]
    replies = greedy_batch(model, prompts, tokenizer.eos_id, max_new_tokens, batch_size)
    canonical, bad = reply_checks(records, replies, tokenizer)
    completions = [
        tokenizer.encode(teacher.completion_text(i)) + [tokenizer.eos_id] for i in range(len(teacher.ANSWERS))
    ]
    student = _normalise(completion_logprobs(model, prompts, completions))
    reference = np.stack([teacher.answer_distribution(r.question) for r in records]).astype(np.float64)
    return {
        "questions": len(records),
        "canonical_rate": canonical / len(records),
        "non_canonical": bad,
        **distribution_metrics(student, reference, [r.kind for r in records]),
        "teacher_rows": reference,  # [N, 20]: per-question teacher distributions (for baselines)
        "kinds": [r.kind for r in records],
    }


def format_report(metrics: dict) -> str:
    """A short human-readable table of `evaluate`'s result."""
    lines = [
        f"questions: {metrics['questions']}",
        f"canonical greedy replies: {metrics['canonical_rate']:.2%}",
        f"mean KL(teacher || student) over the 20 answers: {metrics['mean_kl']:.4f} nats "
        f"(kind-only baseline {metrics['baseline_kl']:.4f}, "
        f"ratio {metrics['mean_kl'] / max(metrics['baseline_kl'], 1e-300):.3f})",
        f"{'kind':<16} {'n':>5} {'TV':>7} {'KL':>7}  top answer student/teacher",
    ]
    for kind, row in metrics["per_kind"].items():
        top = int(np.argmax(row["teacher"]))
        lines.append(
            f"{kind:<16} {row['questions']:>5} {row['tv']:>7.4f} {row['mean_kl']:>7.4f}  "
            f"{teacher.ANSWERS[top]!r} {row['student'][top]:.3f}/{row['teacher'][top]:.3f}"
        )
    for example in metrics["non_canonical"]:
        lines.append(f"non-canonical: {example['question']!r} -> {example['reply']!r}")
    return "\n".join(lines)
