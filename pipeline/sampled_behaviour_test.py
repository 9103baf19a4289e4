"""`ask`'s sampling on the shipped artifacts: the defaults pass the sampled-behaviour gate, and a
sampler that lets the tail in fails it.

The gate (verify/behaviour/sampled_behaviour.py, also run by verify_contracts into report.json): for the
first 200 held-out questions and seeds 0..4, at least 99.5% of sampled replies are canonical.

Regression: before the sampler had top-k/top-p/min-p, `ask` sampled from the full softmax with a
torch generator seeded by --seed alone, so at the default seed 0 every question reused one draw,
and that draw landed in the tail on the same rare token (" good.") for most questions. Whether that
decoder leaks depends on the student (a default student trained on an AVX-512 machine gave 199 of
200 canonical replies at seed 0, and 200 at seeds 1 to 4), so no test replays it any more: the
seed rule is training/sampling_test.py's, the tail cut's too, and a sampler that lets the tail in
fails the gate below.

Inputs from the environment (pipeline/BUILD.bazel sets them): M8B_WEIGHTS, M8B_METADATA,
M8B_DATASET, M8B_TOKENIZER, M8B_TORCHSCRIPT, M8B_GGUF. Without them the tests are skipped with a
message, and fail under CI=true.
"""

import pytest

from pipeline import shipped_env

ENV = ("M8B_WEIGHTS", "M8B_METADATA", "M8B_DATASET", "M8B_TOKENIZER", "M8B_TORCHSCRIPT", "M8B_GGUF")
QUESTIONS = 200
MAX_NEW_TOKENS = 32


@pytest.fixture(scope="module")
def shipped():
    env = shipped_env.require(ENV)
    from conversion import torchscript
    from data import dataset
    from verify.gguf_files import gguf_check

    tokenizer, model = shipped_env.student(env)
    heldout = sorted(dataset.read_dataset(env["M8B_DATASET"]).split("heldout"), key=lambda r: r.id)
    assert len(heldout) >= QUESTIONS, f"{len(heldout)} held-out records, need {QUESTIONS}"
    prompts = [[tokenizer.bos_id, *r.prompt_ids] for r in heldout[:QUESTIONS]]
    llama = gguf_check.load(env["M8B_GGUF"])
    backends = {
        "torchscript": torchscript.numpy_forward(torchscript.load(env["M8B_TORCHSCRIPT"])),
        "gguf": lambda ids: gguf_check.logits(llama, ids),
    }
    return tokenizer, model, prompts, backends


_PROPOSALS = {}  # settings -> eager's sampled replies, shared by the tests


def _gate(shipped, backend: str, settings):
    from verify.behaviour import sampled_behaviour

    tokenizer, model, prompts, backends = shipped
    seeds = sampled_behaviour.SEEDS
    if settings not in _PROPOSALS:
        _PROPOSALS[settings] = sampled_behaviour.proposals_from_eager(
            model, prompts, seeds, tokenizer.eos_id, MAX_NEW_TOKENS, settings
        )
    proposals = _PROPOSALS[settings]
    return sampled_behaviour.check(
        backends[backend],
        prompts,
        seeds,
        proposals,
        tokenizer,
        settings,
        MAX_NEW_TOKENS,
        model.cfg.max_seq_len,
    )


@pytest.mark.parametrize("backend", ["torchscript", "gguf"])
def test_asks_defaults_pass_the_gate(shipped, backend):
    from training import sampling
    from verify.behaviour import sampled_behaviour

    result = _gate(shipped, backend, sampling.DEFAULT)
    print(f"{backend}: {result.canonical} of {result.replies} sampled replies canonical")
    assert result.replies == QUESTIONS * len(sampled_behaviour.SEEDS)
    assert result.rate >= sampled_behaviour.MIN_CANONICAL_RATE, result.failures


# No top-k/top-p/min-p cut, and a temperature that flattens the distribution: the tail leaks in.
# (At ask's temperature 0.8 how much leaks without the cut depends on the student: since the loss
# matches the teacher's off-list mass (training/distill.py), 0.8 alone no longer leaks enough.)
LEAKY = (1.5, 0, 1.0, 0.0)


def test_sampling_that_lets_the_tail_in_fails_the_gate(shipped):
    from training import sampling
    from verify.behaviour import sampled_behaviour

    temperature, top_k, top_p, min_p = LEAKY
    leaky = sampling.Settings(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    result = _gate(shipped, "torchscript", leaky)
    print(f"leaky sampler: {result.canonical} of {result.replies} canonical; e.g. {result.failures[:3]}")
    assert result.rate < sampled_behaviour.MIN_CANONICAL_RATE
