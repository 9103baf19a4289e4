"""The teacher-agreement gate on the from_wide chain's real artifacts: the student distilled from the
wide GGUF passes it, with the numbers its stage wrote, and an untrained student fails it.

The untrained student has the trained one's config and a seeded initialisation (training/model.py
init_weights), as training starts from. Both are compared with the teacher's distributions computed
once (llama.cpp, f32 KV cache) on the held-out prompts of the dataset the student was trained on.

Inputs from the environment (pipeline/BUILD.bazel sets them; without them the tests are skipped,
and fail under CI=true): M8B_WEIGHTS, M8B_METADATA, M8B_TOKENIZER, M8B_DATASET (the chain's
checkpoint, tokenizer and captured dataset), M8B_TEACHER_GGUF (the teacher) and M8B_AGREEMENT (the
chain's teacher_agreement.json).
"""

import json

import pytest

from pipeline import shipped_env

NAMES = ("M8B_WEIGHTS", "M8B_METADATA", "M8B_TOKENIZER", "M8B_DATASET", "M8B_TEACHER_GGUF", "M8B_AGREEMENT")


@pytest.fixture(scope="module")
def compared():
    env = shipped_env.require(NAMES)
    from data import dataset
    from verify.behaviour import teacher_agreement
    from verify.gguf_files import gguf_check

    tokenizer, model = shipped_env.student(env)
    heldout = sorted(dataset.read_dataset(env["M8B_DATASET"]).split("heldout"), key=lambda r: r.id)
    replies = teacher_agreement.heldout_replies(heldout, tokenizer.bos_id)
    llama = gguf_check.load_llama(env["M8B_TEACHER_GGUF"], f32_kv_cache=True, n_threads=1)
    teacher = teacher_agreement.teacher_logprobs(llama, replies)
    with open(env["M8B_AGREEMENT"], encoding="utf-8") as handle:
        staged = json.load(handle)
    return env, model, replies, teacher, staged


def test_the_gates_teacher_rows_are_the_captured_soft_targets(compared):
    """The teacher the gate runs gives, at every held-out reply position, the log-probabilities the
    capture stored for its top-k ids (rounded there to 6 decimals; llama.cpp in f32 both times, a
    prompt at once here and a token per call there), with the list's first id on top: the gate
    compares the student with the very distributions it was distilled from, position for position.
    (The reply's own token need not be the top one: from_wide's replies are sampled.)"""
    import numpy as np

    from data import dataset

    env, _, replies, teacher, _ = compared
    heldout = sorted(dataset.read_dataset(env["M8B_DATASET"]).split("heldout"), key=lambda r: r.id)
    assert heldout[0].topk_ids, "the from_wide capture has soft targets (--kd=logits)"
    worst, row = 0.0, 0
    for record in heldout:
        for position, (ids, logprobs) in enumerate(zip(record.topk_ids, record.topk_logprobs, strict=True)):
            worst = max(worst, float(np.abs(teacher[row + position, ids] - np.asarray(logprobs)).max()))
            assert int(teacher[row + position].argmax()) == ids[0]
        row += len(record.completion_ids)
    assert row == replies.positions
    print(f"\nlargest difference from the captured top-k log-probabilities: {worst:.3g}")
    assert worst < 1e-4  # 6-decimal rounding (5e-7) plus f32 evaluation-order noise, with a wide margin


def test_the_trained_student_passes_with_the_stages_numbers(compared):
    from verify.behaviour import teacher_agreement

    _, model, replies, teacher, staged = compared
    result = teacher_agreement.agreement(teacher, teacher_agreement.student_logprobs(model, replies), replies)
    print("\ntrained student (from_wide):\n" + teacher_agreement.format_result(result))
    assert result["ok"], teacher_agreement.failures(result)
    for key in ("questions", "positions", "student", "baseline", "bound", "ok", "per_kind", "per_position"):
        assert result[key] == staged[key], key


def test_an_untrained_student_of_the_same_config_fails(compared):
    import torch

    from training.model import Student, init_weights
    from verify.behaviour import teacher_agreement

    _, model, replies, teacher, _ = compared
    untrained = Student(model.cfg)
    init_weights(untrained, seed=0)
    result = teacher_agreement.agreement(
        teacher, teacher_agreement.student_logprobs(untrained.eval(), replies), replies
    )
    print("\nuntrained student, same config:\n" + teacher_agreement.format_result(result))
    assert not result["ok"]
    assert teacher_agreement.failures(result)
    assert result["student"]["mean_kl"] > result["bound"]
    assert torch.get_num_threads() == 1  # the numbers above are the stage's single-thread ones
