import numpy as np
import pytest
import torch

from data import generate as make_data
from data import teacher
from training import evaluate
from training.model import ModelConfig, Student, init_weights


@pytest.fixture(scope="module")
def toy():
    tokenizer, _, records = make_data.generate(n=40, seed=0, heldout_fraction=0.25, topk=8)
    return tokenizer, records


def _model(tokenizer, seed: int = 0) -> Student:
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64
    )
    model = Student(cfg)
    init_weights(model, seed)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(5.0 if param.dim() > 1 else 1.0)  # sharper than the init, so scores differ
    return model.eval()


def _completions(tokenizer) -> list[list[int]]:
    return [
        tokenizer.encode(teacher.completion_text(i)) + [tokenizer.eos_id] for i in range(len(teacher.ANSWERS))
    ]


def test_completion_logprobs_match_scoring_each_sequence_alone(toy):
    tokenizer, records = toy
    model = _model(tokenizer)
    prompts = [[tokenizer.bos_id, *r.prompt_ids] for r in records[:5]]
    completions = _completions(tokenizer)
    got = evaluate.completion_logprobs(model, prompts, completions, batch_size=2)
    # Reference: every (prompt, completion) sequence in one right-padded full forward pass.
    pairs = [(prompt, comp) for prompt in prompts for comp in completions]
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (prompt, comp) in enumerate(pairs):
        ids[row, : len(prompt) + len(comp)] = torch.tensor([*prompt, *comp])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).double(), -1)
    expected = np.zeros_like(got)
    for row, (prompt, comp) in enumerate(pairs):
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(comp) - 1)
        score = logp[row, positions, torch.tensor(comp)].sum()
        expected[row // len(completions), row % len(completions)] = float(score)
    np.testing.assert_allclose(got, expected, atol=2e-4)
    assert np.ptp(got) > 1.0  # the scores really differ between completions


def test_reply_checks_accept_only_an_answer_its_flair_and_eos(toy):
    tokenizer, records = toy
    eos = tokenizer.eos_id
    replies = [
        tokenizer.encode(teacher.completion_text(3)) + [eos],  # answer + flair: canonical
        tokenizer.encode(" " + teacher.ANSWERS[12]) + [eos],  # answer without its flair: not
        tokenizer.encode(teacher.completion_text(5)),  # never ended
        tokenizer.encode(" It is certain") + [eos],  # no full stop: not an answer
    ]
    canonical, bad = evaluate.reply_checks(records[:4], replies, tokenizer)
    assert canonical == 1
    assert [b["ended"] for b in bad] == [True, False, True]
    assert bad[2]["reply"] == " It is certain"


def test_distribution_metrics_average_per_kind_then_compare():
    uniform = np.full(20, 0.05)
    peaked = np.zeros(20)
    peaked[0] = 1.0
    student = np.stack([uniform, peaked, uniform])
    reference = np.stack([uniform, uniform, peaked])
    metrics = evaluate.distribution_metrics(student, reference, ["will", "will", "can"])
    # "will": student average (uniform + peaked) / 2 against uniform: TV = 0.5 * 0.95 = 0.475.
    assert metrics["per_kind"]["will"]["tv"] == pytest.approx(0.475)
    # "can": uniform against peaked: TV = 0.95; KL(peaked || uniform) = log 20.
    assert metrics["per_kind"]["can"]["tv"] == pytest.approx(0.95)
    assert metrics["per_kind"]["can"]["mean_kl"] == pytest.approx(np.log(20))
    assert metrics["max_tv"] == pytest.approx(0.95)
    same = evaluate.distribution_metrics(reference, reference, ["will", "will", "can"])
    assert same["max_tv"] == 0.0 and same["mean_kl"] == pytest.approx(0.0, abs=1e-12)


def test_evaluate_an_untrained_model(toy):
    tokenizer, records = toy
    heldout = [r for r in records if r.split == "heldout"]
    metrics = evaluate.evaluate(_model(tokenizer, seed=1), tokenizer, heldout, max_new_tokens=6)
    assert metrics["questions"] == len(heldout)
    assert metrics["canonical_rate"] == 0.0  # random weights do not write Magic 8 Ball answers
    assert 0 < len(metrics["non_canonical"]) <= 5
    assert set(metrics["per_kind"]) == {r.kind for r in heldout}
    for row in metrics["per_kind"].values():
        assert sum(row["student"]) == pytest.approx(1.0)
        assert sum(row["teacher"]) == pytest.approx(1.0)
        assert 0.0 < row["tv"] <= 1.0
    assert metrics["mean_kl"] > 0.0
    report = evaluate.format_report(metrics)
    assert "canonical greedy replies: 0.00%" in report
    assert all(kind in report for kind in metrics["per_kind"])
