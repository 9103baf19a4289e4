"""Robustness: the shipped student answers questions no template produced (issue 17).

On the out-of-distribution question set (ood/questions.tsv, never used for training; docs/ood_questions.md)
the replies through eager PyTorch, the TorchScript artifact and the GGUF file (llama.cpp) must be
canonical (data/teacher.canonical_reply: one of the 20 answers, its group's flair, the end token):

  - greedy: at least MIN_GREEDY of the questions, per backend;
  - sampled with `ask`'s defaults (temperature 0.8, top-k 40, top-p 0.9; training/sampling.py),
    one reply per question with seed SEED: at least MIN_SAMPLED, per backend.

These are the product targets of issue 17, measured on the model as it is: no constrained
decoding (`ask --constrain` is a guarantee layered on top). It prints the canonical rate per
backend and per question style, the worst failures, and the student's answer distribution on the
OOD set against the teacher's for the same questions (total variation of the averages; reported,
not gated: the teacher reads any text, so on these questions it is a reference, not a target).
test_a_planted_hybrid_fails_the_gate shows the rate check catches hybrids, and
test_no_ood_question_was_trained_on checks the dataset the student was trained on.

Inputs from the environment (pipeline/BUILD.bazel sets them): M8B_WEIGHTS, M8B_METADATA,
M8B_DATASET, M8B_TOKENIZER, M8B_TORCHSCRIPT, M8B_GGUF. Without them the tests are skipped with a
message, and fail under CI=true.
"""

import collections
import os

import numpy as np
import pytest

from pipeline import shipped_env

ENV = ("M8B_WEIGHTS", "M8B_METADATA", "M8B_DATASET", "M8B_TOKENIZER", "M8B_TORCHSCRIPT", "M8B_GGUF")
MIN_GREEDY = 0.995  # issue 17: greedy replies to the OOD set
MIN_SAMPLED = 0.99  # issue 17: one sampled reply per question at temperature 0.8, fixed seed
SEED = 0
MAX_NEW_TOKENS = 32
BACKENDS = ("eager", "torchscript", "gguf")
WORST = 10  # failures printed per backend and mode


@pytest.fixture(scope="module")
def shipped():
    env = shipped_env.require(ENV)
    import torch

    from conversion import torchscript
    from data import prompt
    from ood import questions
    from verify.gguf_files import gguf_check

    tokenizer, model = shipped_env.student(env)
    ood = questions.load()
    prompts = [prompt.build_model_input(tokenizer, q.text) for q in ood]
    longest = max(len(p) for p in prompts)
    assert longest + MAX_NEW_TOKENS <= model.cfg.max_seq_len, f"an OOD prompt of {longest} tokens"
    ts = torchscript.numpy_forward(torchscript.load(env["M8B_TORCHSCRIPT"]))
    llama = gguf_check.load(env["M8B_GGUF"])

    @torch.no_grad()
    def eager(ids):
        return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).numpy()

    forwards = {"eager": eager, "torchscript": ts, "gguf": lambda ids: gguf_check.logits(llama, ids)}
    return tokenizer, model, ood, prompts, forwards


def _settings():
    from training import sampling

    return sampling.DEFAULT


def _proposals(shipped):
    """Eager's greedy and sampled replies from the KV-cached batch decoder: guesses to replay."""
    from training import decode, sampling

    tokenizer, model, _, prompts, _ = shipped
    greedy = decode.greedy_batch(model, prompts, tokenizer.eos_id, MAX_NEW_TOKENS)
    draws = [sampling.draws(SEED, p, MAX_NEW_TOKENS) for p in prompts]
    sampled = decode.sampled_batch(model, prompts, draws, tokenizer.eos_id, MAX_NEW_TOKENS, _settings())
    return {"greedy": greedy, "sampled": sampled}


def _pick(logits: np.ndarray, sampler, draw: float) -> int:
    from training import sampling

    if sampler is None:
        return int(np.argmax(np.asarray(logits, dtype=np.float64)))
    return sampling.sample(logits, draw, sampler)


def _reply(forward, prompt, proposal, sampler, draws, eos_id):
    """The backend's own reply: `proposal` replayed in one forward while the backend agrees with it,
    then token by token (verify/behaviour/sampled_behaviour.py explains why this equals generating)."""
    reply: list[int] = []
    logits = np.asarray(forward(np.asarray([[*prompt, *proposal]])))[0, len(prompt) - 1 :]
    for step, expected in enumerate(proposal):
        token = _pick(logits[step], sampler, float(draws[step]))
        reply.append(token)
        if token != expected or token == eos_id:
            break
    while reply[-1:] != [eos_id] and len(reply) < MAX_NEW_TOKENS:
        last = np.asarray(forward(np.asarray([[*prompt, *reply]])))[0, -1]
        reply.append(_pick(last, sampler, float(draws[len(reply)])))
    return reply


_RESULTS: dict = {}


def _replies(shipped, backend: str, mode: str) -> list[list[int]]:
    from training import sampling

    key = (backend, mode)
    if key not in _RESULTS:
        if "proposals" not in _RESULTS:
            _RESULTS["proposals"] = _proposals(shipped)
        tokenizer, _, _, prompts, forwards = shipped
        proposals = _RESULTS["proposals"][mode]
        sampler = None if mode == "greedy" else _settings()
        _RESULTS[key] = [
            _reply(
                forwards[backend],
                p,
                proposals[i],
                sampler,
                sampling.draws(SEED, p, MAX_NEW_TOKENS),
                tokenizer.eos_id,
            )
            for i, p in enumerate(prompts)
        ]
    return _RESULTS[key]


def _table(shipped, backend: str, mode: str, replies) -> float:
    from data import teacher

    tokenizer, _, ood, _, _ = shipped
    ok = [teacher.canonical_reply(r, tokenizer) is not None for r in replies]
    by_style = collections.defaultdict(list)
    for q, good in zip(ood, ok, strict=True):
        by_style[q.style].append(good)
    rate = sum(ok) / len(ok)
    print(f"\n{backend} {mode}: {rate:.2%} canonical ({sum(ok)}/{len(ok)})")
    for style, marks in sorted(by_style.items()):
        print(f"  {style:<12} {sum(marks) / len(marks):7.2%}  ({sum(marks)}/{len(marks)})")
    failures = [(q, r) for q, good, r in zip(ood, ok, replies, strict=True) if not good]
    for q, r in failures[:WORST]:
        print(f"  FAIL [{q.style}] {q.text!r} -> {tokenizer.decode(r)!r}")
    return rate


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_replies_are_canonical(shipped, backend):
    rate = _table(shipped, backend, "greedy", _replies(shipped, backend, "greedy"))
    assert rate >= MIN_GREEDY


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampled_replies_are_canonical(shipped, backend):
    rate = _table(shipped, backend, "sampled", _replies(shipped, backend, "sampled"))
    assert rate >= MIN_SAMPLED


def test_answer_distribution_against_the_teacher(shipped):
    """Reported, not gated (module docstring): TV of the averaged answer distributions, per style."""
    from data import teacher
    from training import evaluate

    tokenizer, model, ood, prompts, _ = shipped
    completions = [tokenizer.encode(teacher.completion_text(a)) + [tokenizer.eos_id] for a in range(20)]
    logps = evaluate.completion_logprobs(model, prompts, completions)
    student = np.exp(logps - logps.max(-1, keepdims=True))
    student /= student.sum(-1, keepdims=True)
    reference = np.stack([teacher.answer_distribution(q.text) for q in ood])
    styles = sorted({q.style for q in ood})
    print("\nanswer distribution on the OOD set, student vs teacher (TV of the averages):")
    for style in [*styles, "all"]:
        rows = [i for i, q in enumerate(ood) if style in (q.style, "all")]
        tv = 0.5 * np.abs(student[rows].mean(0) - reference[rows].mean(0)).sum()
        print(f"  {style:<12} n={len(rows):>4} TV {tv:.4f}")
    s, t = student.mean(0), reference.mean(0)
    for a in np.argsort(-t)[:5]:
        print(f"  {teacher.ANSWERS[a]!r:<32} student {s[a]:.3f} teacher {t[a]:.3f}")
    assert np.allclose(student.sum(-1), 1) and np.allclose(reference.sum(-1), 1)


def test_untruncated_sampling_is_reported(shipped):
    """Information, not a gate: plain temperature 0.8 over the whole vocabulary (no top-k/top-p,
    which `ask` and the Modelfile always apply), eager only, same seed."""
    from data import teacher
    from training import decode, sampling

    tokenizer, model, _, prompts, _ = shipped
    draws = [sampling.draws(SEED, p, MAX_NEW_TOKENS) for p in prompts]
    replies = decode.sampled_batch(
        model, prompts, draws, tokenizer.eos_id, MAX_NEW_TOKENS, sampling.UNTRUNCATED
    )
    ok = sum(teacher.canonical_reply(r, tokenizer) is not None for r in replies)
    print(f"\neager, temperature 0.8 without top-k/top-p (not gated): {ok / len(replies):.2%} canonical")
    assert len(replies) == len(prompts)


def test_a_planted_hybrid_fails_the_gate(shipped):
    """A fault that makes hybrids: after the reply's first token, the model is pushed toward
    another answer's ending (" no."). The same check must fail it."""
    from data import teacher

    tokenizer, _, _, prompts, forwards = shipped
    push = tokenizer.encode(" no.")[0]

    def faulty(prompt_length):
        def forward(ids):
            logits = np.array(forwards["torchscript"](ids), dtype=np.float32)
            logits[0, prompt_length:, push] += 30.0  # positions that predict the 2nd reply token on
            return logits

        return forward

    sample = list(range(0, len(prompts), 10))
    replies = [
        _reply(faulty(len(prompts[i])), prompts[i], [], None, np.zeros(MAX_NEW_TOKENS), tokenizer.eos_id)
        for i in sample
    ]
    rate = sum(teacher.canonical_reply(r, tokenizer) is not None for r in replies) / len(replies)
    print(f"\nplanted hybrid fault: {rate:.2%} canonical, e.g. {tokenizer.decode(replies[0])!r}")
    assert rate < MIN_GREEDY


def test_no_ood_question_was_trained_on(shipped):
    from data import dataset

    _, _, ood, _, _ = shipped
    trained = {r.question for r in dataset.read_dataset(os.environ["M8B_DATASET"]).records}
    assert not trained & {q.text for q in ood}
