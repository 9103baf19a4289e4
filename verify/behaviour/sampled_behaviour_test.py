import numpy as np
import pytest
import torch

from data import generate as make_data
from data import teacher
from training import decode, sampling
from training.model import ModelConfig, Student, init_weights
from verify.behaviour import sampled_behaviour

SETTINGS = sampling.Settings(temperature=1.5, top_k=8, top_p=0.95)


@pytest.fixture(scope="module")
def toy():
    tokenizer, _, records = make_data.generate(n=40, seed=0, heldout_fraction=0.5, topk=4)
    model = Student(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4,
                                n_kv_heads=2, ffn_hidden=64))  # fmt: skip
    init_weights(model, 3)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(6.0 if param.dim() > 1 else 1.0)  # peaky enough that eos comes up sometimes
    model.eval()
    prompts = [[tokenizer.bos_id, *r.prompt_ids] for r in records[:6]]
    return tokenizer, model, prompts


def _numpy_forward(model):
    def forward(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).numpy()

    return forward


def test_the_replayed_reply_is_the_backends_own_whatever_the_proposal(toy):
    tokenizer, model, prompts = toy
    forward = _numpy_forward(model)
    eos = tokenizer.eos_id
    for q, prompt in enumerate(prompts):
        for seed in range(3):
            draws = sampling.draws(seed, prompt, 12)
            own = decode.generate(lambda ids: forward(ids.numpy()), prompt, eos, 12, SETTINGS, draws=draws)
            for proposal, should_hold in [(own, True), ([], False), (own[:1] + [7, 7, 7], len(own) == 1)]:
                reply, held = sampled_behaviour.backend_reply(
                    forward, prompt, draws, proposal, eos, 12, SETTINGS, max_length=256
                )
                assert reply == own, (q, seed, proposal)
                assert held == should_hold
    # max_length caps the reply as generate does.
    draws = sampling.draws(0, prompts[0], 12)
    limit = len(prompts[0]) + 2
    capped = decode.generate(
        lambda ids: forward(ids.numpy()), prompts[0], eos, 12, SETTINGS, draws=draws, max_length=limit
    )
    reply, _ = sampled_behaviour.backend_reply(forward, prompts[0], draws, [], eos, 12, SETTINGS, limit)
    assert reply == capped and len(reply) <= 2


def test_one_chooser_shared_by_a_questions_seeds_gives_each_its_own_reply(toy):
    """check() shares the sorted candidates of a position between a question's seeds: every seed
    still gets the reply it generates with its own draws, whichever seed sorted them first."""
    tokenizer, model, prompts = toy
    forward = _numpy_forward(model)
    eos = tokenizer.eos_id
    for prompt in prompts:
        choose = sampled_behaviour._chooser(SETTINGS)
        own = {}
        for seed in range(6):
            draws = sampling.draws(seed, prompt, 12)
            own[seed] = decode.generate(
                lambda ids: forward(ids.numpy()), prompt, eos, 12, SETTINGS, draws=draws
            )
            proposal = own[0]  # seed 0's reply: the others replay it and part from it
            reply, _ = sampled_behaviour.backend_reply(
                forward, prompt, draws, proposal, eos, 12, SETTINGS, 256, choose
            )
            assert reply == own[seed], seed
    assert len({tuple(reply) for reply in own.values()}) > 1  # the seeds do part somewhere


def test_eager_proposals_hold_on_an_identical_backend(toy):
    tokenizer, model, prompts = toy
    proposals = sampled_behaviour.proposals_from_eager(model, prompts, (0, 1), tokenizer.eos_id, 12, SETTINGS)
    result = sampled_behaviour.check(
        _numpy_forward(model), prompts, (0, 1), proposals, tokenizer, SETTINGS, 12, 256
    )
    assert result.replies == len(prompts) * 2
    assert result.replayed == result.replies and result.regenerated == 0
    assert result.canonical == 0 and result.rate == 0.0  # random weights write no Magic 8 Ball answer
    assert len(result.failures) == 5 and result.failures[0].question == 0
    # A backend whose logits differ from eager's is judged on its own replies.
    shifted = lambda ids: _numpy_forward(model)(ids) + np.linspace(0, 3, tokenizer.vocab_size)  # noqa: E731
    other = sampled_behaviour.check(shifted, prompts, (0, 1), proposals, tokenizer, SETTINGS, 12, 256)
    assert other.regenerated > 0


def test_the_rate_counts_canonical_replies_only(toy):
    tokenizer, _, prompts = toy

    def scripted(script, prompt_length):
        """A backend that writes `script` after a prompt of prompt_length tokens, whatever the draws."""

        def forward(ids: np.ndarray) -> np.ndarray:
            out = np.zeros((1, np.shape(ids)[1], tokenizer.vocab_size), dtype=np.float32)
            for step, token in enumerate(script):
                if prompt_length - 1 + step < out.shape[1]:
                    out[0, prompt_length - 1 + step, token] = 50.0
            return out

        return forward

    good = tokenizer.encode(teacher.completion_text(3)) + [tokenizer.eos_id]
    wrong_flair = tokenizer.encode(" " + teacher.ANSWERS[3] + " 🎱") + [tokenizer.eos_id]
    for script, expected in [(good, 1), (wrong_flair, 0)]:
        for prompt in prompts:
            result = sampled_behaviour.check(
                scripted(script, len(prompt)), [prompt], (0, 1), {}, tokenizer, SETTINGS, 32, 256
            )
            assert (result.replies, result.canonical, result.rate) == (2, 2 * expected, float(expected))
    assert [f.seed for f in result.failures] == [0, 1]
    assert result.failures[0].reply == " " + teacher.ANSWERS[3] + " 🎱" and result.failures[0].ended
