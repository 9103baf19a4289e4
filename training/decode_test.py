import numpy as np
import pytest
import torch

from training import decode, sampling
from training.model import ModelConfig, Student, init_weights

V, EOS = 10, 2


def counting_forward(ids: torch.Tensor) -> torch.Tensor:
    """A scripted model: after token x it predicts x + 1 (mod V) with a clear margin."""
    return torch.nn.functional.one_hot((ids + 1) % V, V).float()[None, 0] * 5.0


def test_greedy_follows_the_argmax_and_stops_after_eos():
    assert decode.generate(counting_forward, [5], EOS, max_new_tokens=20) == [6, 7, 8, 9, 0, 1, 2]
    assert decode.generate(counting_forward, [1], EOS, max_new_tokens=20) == [2]


def test_greedy_stops_at_max_new_tokens_and_max_length():
    assert decode.generate(counting_forward, [5], EOS, max_new_tokens=3) == [6, 7, 8]
    assert decode.generate(counting_forward, [4, 5], EOS, max_new_tokens=20, max_length=5) == [6, 7, 8]
    assert decode.generate(counting_forward, [5], EOS, max_new_tokens=0) == []


def test_numpy_logits_work_like_torch_logits():
    def numpy_forward(ids):
        return counting_forward(ids).numpy().astype(np.float32)

    assert decode.generate(numpy_forward, [7], EOS, 10) == decode.generate(counting_forward, [7], EOS, 10)


FLAT = sampling.Settings(temperature=1.0, top_k=0, top_p=1.0)


def flat_forward(ids):
    return torch.zeros(1, ids.shape[1], V)


def test_sampling_is_reproducible_per_seed_and_cold_sampling_is_greedy():
    first = decode.generate(flat_forward, [0], eos_id=-1, max_new_tokens=12, sampler=FLAT, seed=0)
    assert first == decode.generate(flat_forward, [0], eos_id=-1, max_new_tokens=12, sampler=FLAT, seed=0)
    assert first != decode.generate(flat_forward, [0], eos_id=-1, max_new_tokens=12, sampler=FLAT, seed=1)
    assert len(set(first)) > 3  # a uniform distribution really is sampled
    cold = sampling.Settings(temperature=0.01, top_k=0, top_p=1.0)
    assert decode.generate(counting_forward, [5], EOS, 20, cold, seed=3) == decode.generate(
        counting_forward, [5], EOS, 20
    )


def test_sampling_uses_the_seed_rule_and_given_draws():
    # Each step picks with the next draw of sampling.draws(seed, prompt): over 10 equal tokens, draw u
    # picks token floor(10 u).
    draws = sampling.draws(4, [0, 3], 6)
    assert decode.generate(flat_forward, [0, 3], -1, 6, FLAT, seed=4) == [int(10 * u) for u in draws]
    assert decode.generate(flat_forward, [0, 3], -1, 3, FLAT, draws=[0.0, 0.95, 0.5]) == [0, 9, 5]
    with pytest.raises(ValueError, match="draws"):
        decode.generate(flat_forward, [0, 3], -1, 3, FLAT, draws=[0.5])


def test_sampled_batch_matches_one_prompt_at_a_time():
    model = _peaky_model()
    prompts = [[1, 5, 6], [1, 5, 6], [1, 9], [1, 20, 21, 22], [1, 9]]
    draws = [sampling.draws(seed, p, 8) for seed, p in enumerate(prompts)]
    settings = sampling.Settings(temperature=1.5, top_k=5, top_p=0.95)

    def forward(ids):
        with torch.no_grad():
            return model(ids)

    eos = decode.generate(forward, prompts[0], eos_id=-1, max_new_tokens=2)[-1]
    expected = [
        decode.generate(forward, p, eos, 8, settings, draws=d) for p, d in zip(prompts, draws, strict=True)
    ]
    assert len({tuple(r) for r in expected}) > 2  # the draws matter
    assert decode.sampled_batch(model, prompts, draws, eos, 8, settings, batch_size=2) == expected


def _peaky_model() -> Student:
    cfg = ModelConfig(vocab_size=30, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64)
    model = Student(cfg)
    init_weights(model, 7)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(10.0 if param.dim() > 1 else 1.0)  # a peaky model: replies vary by prompt
    model.eval()
    return model


def test_greedy_batch_matches_one_prompt_at_a_time():
    model = _peaky_model()
    rng = np.random.default_rng(0)
    prompts = [[1, *rng.integers(4, 30, size=n).tolist()] for n in (2, 4, 4, 7, 4, 2)]

    def forward(ids):
        with torch.no_grad():
            return model(ids)

    # Use a token one prompt really produces as eos, so some rows stop early and others do not.
    eos = decode.generate(forward, prompts[3], eos_id=-1, max_new_tokens=3)[-1]
    expected = [decode.generate(forward, p, eos, max_new_tokens=8) for p in prompts]
    assert any(r[-1] == eos and len(r) < 8 for r in expected)
    assert decode.greedy_batch(model, prompts, eos, max_new_tokens=8, batch_size=2) == expected
    assert decode.greedy_batch(model, prompts, eos, max_new_tokens=8) == expected


def test_group_by_length_groups_equal_lengths_within_the_batch_size():
    prompts = [[1] * n for n in (3, 1, 3, 3, 2, 1)]
    assert decode.group_by_length(prompts, 2) == [[1, 5], [4], [0, 2], [3]]


def test_cached_steps_decode_what_recompute_decodes():
    model = _peaky_model()

    def forward(ids):
        with torch.no_grad():
            return model(ids)

    prompt = [1, 5, 9, 12]
    recompute, cached = decode.Recompute(forward), decode.CachedSteps(model)
    torch.testing.assert_close(cached.prefill(prompt), recompute.prefill(prompt), atol=1e-4, rtol=1e-4)
    for token in (3, 17, 4, 4, 29):
        torch.testing.assert_close(cached.decode(token), recompute.decode(token), atol=1e-4, rtol=1e-4)
    # A second prefill starts a new sequence: the first one's cache is gone.
    torch.testing.assert_close(
        cached.prefill([1, 7]), forward(torch.tensor([[1, 7]]))[0, -1], atol=1e-4, rtol=1e-4
    )
    settings = sampling.Settings(temperature=1.5, top_k=5, top_p=0.95)
    for sampler in (None, settings):
        expected = decode.generate(forward, prompt, -1, 12, sampler, seed=2)
        assert decode.generate(cached, prompt, -1, 12, sampler, seed=2) == expected
