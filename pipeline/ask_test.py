"""`ask --backend=torchscript` answers through the TorchScript decoder what eager greedy decoding answers.

Runs the ask binary as a user does, with the shipped decoder, for held-out questions (and with
sampling, one seed), and compares each printed reply with the eager checkpoint decoding the same
question through its own KV cache (training/decode.py, CachedSteps), with the same sampler and
draws. A question that leaves no room for a reply exits 2 and prints nothing.

Inputs from the environment (pipeline/BUILD.bazel sets them): M8B_ASK (the binary), M8B_WEIGHTS,
M8B_METADATA, M8B_DATASET, M8B_TOKENIZER, M8B_DECODER. Without them the tests are skipped with a
message, and fail under CI=true.
"""

import os
import subprocess

import pytest

from pipeline import shipped_env

ENV = ("M8B_ASK", "M8B_WEIGHTS", "M8B_METADATA", "M8B_DATASET", "M8B_TOKENIZER", "M8B_DECODER")
QUESTIONS = 4


@pytest.fixture(scope="module")
def shipped():
    env = shipped_env.require(ENV)
    from data import dataset

    tokenizer, model = shipped_env.student(env)
    heldout = sorted(dataset.read_dataset(env["M8B_DATASET"]).split("heldout"), key=lambda r: r.id)
    return env, tokenizer, model, [r.question for r in heldout[:QUESTIONS]]


def _ask(env, question: str, *flags: str) -> subprocess.CompletedProcess:
    command = [
        env["M8B_ASK"],
        "--backend=torchscript",
        f"--torchscript_decoder={env['M8B_DECODER']}",
        f"--tokenizer={env['M8B_TOKENIZER']}",
        f"--metadata={env['M8B_METADATA']}",
        *flags,
        "--",
        question,
    ]
    child_env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=child_env)


def _eager(tokenizer, model, question: str, sampler=None, seed: int = 0) -> str:
    from data import prompt
    from training import decode

    new = decode.generate(
        decode.CachedSteps(model),
        prompt.build_model_input(tokenizer, question),
        tokenizer.eos_id,
        max_new_tokens=32,
        sampler=sampler,
        seed=seed,
        max_length=model.cfg.max_seq_len,
    )
    return tokenizer.decode(new).strip()


def test_greedy_replies_equal_eager_greedy_decoding(shipped):
    env, tokenizer, model, questions = shipped
    for question in questions:
        result = _ask(env, question, "--greedy")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == _eager(tokenizer, model, question), question


def test_sampled_replies_equal_eager_with_the_same_draws(shipped):
    from training import sampling

    env, tokenizer, model, questions = shipped
    result = _ask(env, questions[0], "--seed=3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == _eager(tokenizer, model, questions[0], sampling.DEFAULT, seed=3)


def test_a_question_longer_than_the_context_exits_2(shipped):
    env, _, model, _ = shipped
    result = _ask(env, "Will it rain? " * model.cfg.max_seq_len, "--greedy")
    assert result.returncode == 2
    assert result.stdout == ""
    # The room kept for a reply is the longest canonical one (data/canonical_trie.py).
    assert "question:" in result.stderr and "fit the model's" in result.stderr
    assert f"{model.cfg.max_seq_len}-token context" in result.stderr
