"""Greedy behaviour agreement on scripted backends: replies, near ties, and why it is information."""

import types

import numpy as np
import pytest

from conversion import gates as gates_lib
from data import generate, teacher
from verify import verification
from verify.behaviour import greedy_agreement
from verify.report import report as report_lib

LENGTHS = (16, 32)


@pytest.fixture(scope="module")
def tokenizer():
    tok, _, _ = generate.generate(n=40, seed=0, heldout_fraction=0.5, topk=4)
    return tok


def answer_ids(tokenizer, answer: int) -> list[int]:
    return tokenizer.encode(teacher.completion_text(answer)) + [tokenizer.eos_id]


def scripted(tokenizer, prompt: list[int], reply: list[int], tie: float = 5.0):
    """A logits function whose greedy reply to `prompt` is `reply`; the runner-up (token 1 above the
    chosen one) trails by `tie` logits."""

    def forward(ids):
        ids = np.asarray(ids)
        out = np.zeros((1, ids.shape[1], tokenizer.vocab_size), dtype=np.float32)
        for position in range(ids.shape[1]):
            step = position + 1 - len(prompt)
            token = reply[step] if 0 <= step < len(reply) else tokenizer.eos_id
            out[0, position, token] = tie
            out[0, position, (token + 1) % tokenizer.vocab_size] = 0.0 if tie > 0 else -1.0
        return out

    return forward


def test_same_reply_agrees_in_one_forward(tokenizer):
    prompt = [tokenizer.bos_id, *tokenizer.encode("Q: Will it rain?\nA:")]
    eager = answer_ids(tokenizer, 0)
    calls = []
    forward = scripted(tokenizer, prompt, eager)
    result = greedy_agreement.check(
        lambda ids: calls.append(1) or forward(ids), [prompt], [eager], tokenizer, 32, LENGTHS
    )
    assert (result.agreed, result.regenerated, result.rate) == (1, 0, 1.0)
    assert len(calls) == 1


def test_another_answer_disagrees_and_the_reply_is_the_artifacts_own(tokenizer):
    prompt = [tokenizer.bos_id, *tokenizer.encode("Q: Will it rain?\nA:")]
    eager, other = answer_ids(tokenizer, 0), answer_ids(tokenizer, 19)
    reply, held = greedy_agreement.artifact_reply(
        scripted(tokenizer, prompt, other), prompt, eager, tokenizer.eos_id, 32, LENGTHS, tokenizer.pad_id
    )
    assert reply == other and not held
    result = greedy_agreement.check(
        scripted(tokenizer, prompt, other), [prompt], [eager], tokenizer, 32, LENGTHS
    )
    assert result.agreed == 0 and result.rate == 0.0 and result.decisive_rate == 0.0
    assert result.disagreements[0][0] == 0


def test_a_disagreement_at_a_near_tie_is_counted_apart(tokenizer):
    prompt = [tokenizer.bos_id, *tokenizer.encode("Q: Will it rain?\nA:")]
    eager, other = answer_ids(tokenizer, 0), answer_ids(tokenizer, 19)
    artifact = scripted(tokenizer, prompt, other)
    # eager's own choice wins by 0.01 logits: within a margin of 0.1 it is a near tie ...
    tied = greedy_agreement.check(
        artifact, [prompt], [eager], tokenizer, 32, LENGTHS, scripted(tokenizer, prompt, eager, 0.01), 0.1
    )
    assert (tied.agreed, tied.near_tie_disagreements, tied.rate, tied.decisive_rate) == (0, 1, 0.0, 1.0)
    # ... and by 5 logits it is not.
    clear = greedy_agreement.check(
        artifact, [prompt], [eager], tokenizer, 32, LENGTHS, scripted(tokenizer, prompt, eager, 5.0), 0.1
    )
    assert (clear.near_tie_disagreements, clear.decisive_rate) == (0, 0.0)


def test_a_decisive_disagreement_is_information_and_fails_the_replay_max_abs_gate(tokenizer):
    """behaviour_agreement_decisive is a note implied by replay_max_abs_diff: a reply that parts
    outside a near tie makes the behaviour replay's largest logit error exceed half the near-tie
    margin, so the replay's max_abs gate fails in the same report."""
    prompt = [tokenizer.bos_id, *tokenizer.encode("Q: Will it rain?\nA:")]
    eager, other = answer_ids(tokenizer, 0), answer_ids(tokenizer, 19)
    entry = {"floor": 2.5e-4, "factor": 4.0, "bound": 1e-3}
    scopes = {
        where: {metric: dict(entry) for metric in gates_lib.METRICS} for where in ("T16", "T32", "replay")
    }
    contract = types.SimpleNamespace(
        lengths=LENGTHS,
        gates={"backends": {"gguf_q8_0": "w_q8_0"}, "bounds": {"w_q8_0": scopes}, "quality": {}},
    )
    settings = types.SimpleNamespace(max_new_tokens=32)
    paths = verification.Paths("c", "w", "m", "t", "d")
    eager_forward = scripted(tokenizer, prompt, eager)
    report = report_lib.Report("m", "0" * 64)
    backend = verification.Backend("gguf_q8_0", "x.gguf", scripted(tokenizer, prompt, other))
    verification.check_behaviour(
        report, backend, eager_forward, contract, [prompt], [eager], tokenizer.pad_id, paths
    )
    verification.check_greedy_agreement(
        report, backend, eager_forward, [prompt], [eager], contract, tokenizer, settings, paths
    )
    checks = report.results["gguf_q8_0"][report_lib.ALL]
    assert checks["behaviour_agreement_decisive"] == {"value": 0.0, "implied_by": "replay_max_abs_diff"}
    assert checks["behaviour_mismatches"]["implied_by"] == "replay_max_abs_diff"
    assert checks["behaviour_mismatches"]["value"] > 0
    assert checks["replay_max_abs_diff"]["ok"] is False and not report.gates_ok
    margin = gates_lib.near_tie_margin(contract.gates, "gguf_q8_0")
    assert checks["replay_max_abs_diff"]["value"] >= margin / 2
