"""The teacher-agreement gate: does the distilled student predict what its teacher predicts?

A chain distilled from a GGUF teacher (student_chain's teacher_gguf, pipeline/defs.bzl) is held to
its teacher on the dataset's held-out prompts. At every position of the teacher's reply, as the
dataset captured it (teacher forcing on the teacher's own reply), both models give a next-token
distribution over the whole vocabulary:

  - the teacher through llama.cpp (llama-cpp-python) with an f32 KV cache, one prompt per call
    with logits at every position;
  - the student in eager PyTorch from its checkpoint, prompts of one length batched together.

Each is a log-softmax over the full vocabulary in float64. Per position:
KL(teacher || student) = sum_v p_t(v) (log p_t(v) - log p_s(v)), and whether the two top tokens
are the same. The metrics are the mean KL over every position of every held-out reply and the
same-top rate.

The bound follows how student quality is judged (training/evaluate.py, training/student_quality_test.py):
the student's mean KL must be at most FACTOR = MAX_KL_VS_BASELINE = 1/10 of the kind-only
baseline's. That baseline answers every question with what the question's kind alone tells: here,
at each reply position, the average of the teacher's distributions over the held-out prompts of
the same kind at the same reply position (only replies that long). A student that learned the
kinds but not the questions matches those averages and fails; one that learned nothing fails by
far more.

All of it needs the teacher and the student to share one vocabulary (the same token ids); the
binary (verify/behaviour/check_teacher_agreement.py) checks that before any of this runs.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from training.evaluate import MAX_KL_VS_BASELINE

FACTOR = MAX_KL_VS_BASELINE  # the student's mean KL at most this times the kind-only baseline's
FORMAT = "m8b-teacher-agreement"
VERSION = 1
PER_POSITION_ROWS = 8  # reply positions broken out in the result (later positions pooled in the last)


@dataclasses.dataclass(frozen=True)
class Replies:
    """The held-out prompts and the teacher's replies to them, in student token ids."""

    kinds: list[str]
    prompts: list[list[int]]  # [bos] + prompt_ids
    replies: list[list[int]]  # completion_ids: the teacher's reply, ending with eos

    def inputs(self, index: int) -> list[int]:
        """The tokens one forward reads: the prompt and every reply token but the last."""
        return self.prompts[index] + self.replies[index][:-1]

    @property
    def positions(self) -> int:
        return sum(len(reply) for reply in self.replies)


def heldout_replies(records: Sequence, bos_id: int) -> Replies:
    """Replies from dataset records (data/dataset.py Record), in the order given."""
    return Replies(
        kinds=[r.kind for r in records],
        prompts=[[bos_id, *r.prompt_ids] for r in records],
        replies=[list(r.completion_ids) for r in records],
    )


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    """Log-softmax along the last axis in float64, whatever the logits' dtype."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _reply_rows(logits: np.ndarray, prompt_length: int, reply_length: int) -> np.ndarray:
    """Logit rows [reply_length, V] that predict the reply's tokens: row j predicts token j + 1, so
    reply token i (at prompt_length + i) comes from row prompt_length - 1 + i."""
    start = prompt_length - 1
    return logits[start : start + reply_length]


def teacher_logprobs(llama, replies: Replies) -> np.ndarray:
    """The teacher's next-token log-probabilities at every reply position: float64 [positions, V].

    llama: a llama_cpp.Llama made with logits_all (verify/gguf_check.load_llama, f32 KV cache).
    """
    from verify.gguf_files import gguf_check

    rows = []
    for index, prompt in enumerate(replies.prompts):
        ids = np.asarray([replies.inputs(index)])
        logits = gguf_check.gguf_logits(llama, ids)[0]
        rows.append(log_softmax64(_reply_rows(logits, len(prompt), len(replies.replies[index]))))
    return np.concatenate(rows)


def student_logprobs(model, replies: Replies, batch_size: int = 128) -> np.ndarray:
    """The student's next-token log-probabilities at every reply position: float64 [positions, V].

    Sequences of one length run as one batch (no padding: every row's computation is its own)."""
    import torch

    from training.decode import group_by_length

    sequences = [replies.inputs(i) for i in range(len(replies.prompts))]
    per_record: list[np.ndarray | None] = [None] * len(sequences)
    model.eval()
    with torch.no_grad():
        for group in group_by_length(sequences, batch_size):
            logits = model(torch.tensor([sequences[i] for i in group])).numpy()
            for row, index in enumerate(group):
                rows = _reply_rows(logits[row], len(replies.prompts[index]), len(replies.replies[index]))
                per_record[index] = log_softmax64(rows)
    return np.concatenate(per_record)


def _position_keys(replies: Replies) -> tuple[np.ndarray, np.ndarray]:
    """(kind index, reply position) of every row of the [positions, V] arrays."""
    kind_names = sorted(set(replies.kinds))
    kind_of = {kind: k for k, kind in enumerate(kind_names)}
    kinds = np.concatenate(
        [[kind_of[kind]] * len(r) for kind, r in zip(replies.kinds, replies.replies, strict=True)]
    )
    steps = np.concatenate([np.arange(len(r)) for r in replies.replies])
    return kinds.astype(np.int64), steps.astype(np.int64)


def kind_baseline(teacher: np.ndarray, replies: Replies) -> np.ndarray:
    """The kind-only baseline's log-probabilities [positions, V]: at each row, the log of the mean
    teacher distribution over the rows of the same question kind at the same reply position."""
    kinds, steps = _position_keys(replies)
    probs = np.exp(teacher)
    baseline = np.empty_like(teacher)
    keys = kinds * (steps.max() + 1) + steps
    for key in np.unique(keys):
        rows = keys == key
        # Every row's own distribution is in its group's mean, so the mean is > 0 wherever p_t is.
        baseline[rows] = np.log(probs[rows].mean(axis=0))
    return baseline


def _kl_rows(teacher: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(teacher || other) per row, with 0 log 0 = 0."""
    probs = np.exp(teacher)
    return np.where(probs > 0, probs * (teacher - other), 0.0).sum(axis=-1)


def _round4(value: float) -> float:
    """4 significant digits, as report.json rounds: last-bit noise must not change the file."""
    return float(f"{value:.4g}")


def agreement(teacher: np.ndarray, student: np.ndarray, replies: Replies) -> dict:
    """The gate's result (module docstring) for log-probabilities [positions, V] of both models.

    The verdict ("ok") is taken on unrounded values; the numbers in the result are rounded to 4
    significant digits.
    """
    if teacher.shape != student.shape or teacher.shape[0] != replies.positions:
        raise ValueError(
            f"teacher {teacher.shape} and student {student.shape} must both be [{replies.positions}, V]"
        )
    baseline = kind_baseline(teacher, replies)
    kl = _kl_rows(teacher, student)
    kl_baseline = _kl_rows(teacher, baseline)
    top = teacher.argmax(axis=-1)
    same = student.argmax(axis=-1) == top
    same_baseline = baseline.argmax(axis=-1) == top
    bound = FACTOR * float(kl_baseline.mean())
    ok = bool(float(kl.mean()) <= bound)

    def summary(rows: np.ndarray) -> dict:
        return {
            "positions": int(rows.sum()),
            "mean_kl": _round4(float(kl[rows].mean())),
            "baseline_kl": _round4(float(kl_baseline[rows].mean())),
            "same_top_rate": _round4(float(same[rows].mean())),
        }

    kinds, steps = _position_keys(replies)
    kind_names = sorted(set(replies.kinds))
    per_position = []
    for step in range(min(PER_POSITION_ROWS, int(steps.max()) + 1)):
        last = step == PER_POSITION_ROWS - 1
        rows = steps >= step if last else steps == step
        per_position.append({"position": f"{step}+" if last else str(step), **summary(rows)})
    return {
        "format": FORMAT,
        "version": VERSION,
        "questions": len(replies.prompts),
        "positions": int(teacher.shape[0]),
        "vocab_size": int(teacher.shape[1]),
        "student": {
            "mean_kl": _round4(float(kl.mean())),
            "max_kl": _round4(float(kl.max())),
            "same_top_rate": _round4(float(same.mean())),
        },
        "baseline": {
            "what": "kind-only: at each reply position, the mean teacher distribution over the held-out "
            "prompts of the same kind at that position",
            "mean_kl": _round4(float(kl_baseline.mean())),
            "same_top_rate": _round4(float(same_baseline.mean())),
        },
        "factor": FACTOR,
        "factor_reason": "as student quality is judged: mean KL at most 1/10 of the kind-only baseline's "
        "(training/evaluate.py, MAX_KL_VS_BASELINE)",
        "bound": _round4(bound),
        "gate": "student.mean_kl <= factor x baseline.mean_kl",
        "ok": ok,
        "per_kind": {name: summary(kinds == k) for k, name in enumerate(kind_names)},
        "per_position": per_position,
    }


def failures(result: dict) -> list[str]:
    """One line per failed check of an agreement result; empty when the gate passed."""
    if result["ok"]:
        return []
    return [
        f"mean KL(teacher || student) {result['student']['mean_kl']} > {result['factor']} x the kind-only "
        f"baseline's {result['baseline']['mean_kl']} = {result['bound']} over {result['positions']} reply "
        f"positions of {result['questions']} held-out prompts"
    ]


def format_result(result: dict) -> str:
    """A short table of the result, for logs."""
    student, baseline = result["student"], result["baseline"]
    lines = [
        f"teacher agreement over {result['questions']} held-out prompts, "
        f"{result['positions']} reply positions:",
        f"  student  mean KL(teacher || student) {student['mean_kl']:.4g} nats, max {student['max_kl']:.4g}, "
        f"same top {student['same_top_rate']:.2%}",
        f"  baseline (kind-only) mean KL {baseline['mean_kl']:.4g} nats, "
        f"same top {baseline['same_top_rate']:.2%}",
        f"  bound {result['factor']} x {baseline['mean_kl']:.4g} = {result['bound']:.4g}: "
        + ("PASS" if result["ok"] else "FAIL"),
        f"  {'position':<9} {'n':>6} {'KL':>9} {'baseline':>9} {'same top':>9}",
    ]
    for row in result["per_position"]:
        lines.append(
            f"  {row['position']:<9} {row['positions']:>6} {row['mean_kl']:>9.4g} {row['baseline_kl']:>9.4g} "
            f"{row['same_top_rate']:>9.2%}"
        )
    return "\n".join(lines)
