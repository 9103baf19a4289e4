"""Decode parity: eager's KV cache as the reference, a step function per artifact, cache bugs caught."""

import numpy as np
import pytest
import torch

from conversion import kv_decoder
from training import decode
from training.model import ModelConfig, Student, init_weights
from verify import decode_parity
from verify.floors import floors

CFG = ModelConfig(
    vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=32
)
EOS = 2


@pytest.fixture(scope="module")
def model() -> Student:
    model = Student(CFG)
    init_weights(model, 4)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(8.0 if param.dim() > 1 else 1.0)  # attention patterns matter, replies vary
    return model.eval()


def _inputs(model):
    prompts = [[1, 5, 9], [1, 7], [1, 30, 12, 3], [1, 7]]
    continuations = decode.greedy_batch(model, prompts, EOS, max_new_tokens=10)
    long_rows = [np.arange(CFG.max_seq_len, dtype=np.int32)[None] % CFG.vocab_size]
    seqs, eager_tokens = decode_parity.sequences(prompts, continuations, long_rows)
    return seqs, eager_tokens, decode_parity.forced_logits(model, seqs, batch_size=2)


def test_forced_logits_are_the_full_forward_along_each_sequence(model):
    seqs, _, reference = _inputs(model)
    for prompt, fed, logits in zip(seqs.prompts, seqs.fed, reference, strict=True):
        with torch.no_grad():
            full = model(torch.tensor([prompt + fed]))[0, len(prompt) - 1 :].double().numpy()
        assert logits.shape == full.shape
        np.testing.assert_allclose(logits, full, atol=1e-4)


def test_the_decoder_decodes_as_eager_does_to_the_last_slot(model):
    seqs, eager_tokens, reference = _inputs(model)
    decoder = kv_decoder.trace(model)
    result = decode_parity.check(
        lambda: kv_decoder.TorchScriptSteps(decoder, CFG), reference, seqs, eager_tokens, EOS
    )
    assert result.token_mismatches == ()
    assert result.comparison.max_abs_diff < 1e-4 and result.comparison.top1_disagreement == 0
    assert result.longest == CFG.max_seq_len  # the long row filled every slot
    assert result.comparison.positions == sum(len(r) for r in reference)
    assert 0 <= result.worst_position < CFG.max_seq_len


class _OffByOne(kv_decoder.TorchScriptSteps):
    """Decode steps one slot (and one position) late: the slot before is never written."""

    def decode(self, token):
        self.pos += 1
        return super().decode(token)


class _NotReset(kv_decoder.TorchScriptSteps):
    """A new sequence continues after the previous one instead of at position 0."""

    def prefill(self, prompt_ids):
        return self._run(prompt_ids)


@pytest.mark.parametrize("faulty", [_OffByOne, _NotReset])
def test_cache_bugs_show_in_tokens_logits_or_errors(model, faulty):
    seqs, eager_tokens, reference = _inputs(model)
    decoder = kv_decoder.trace(model)
    result = decode_parity.check(lambda: faulty(decoder, CFG), reference, seqs, eager_tokens, EOS)
    # Both run out of cache on the long row (slot 32 does not exist) and are still compared elsewhere.
    assert any("at most 32" in error for error in result.errors)
    assert result.comparison.max_abs_diff > 1e-2


def test_other_tokens_are_counted_as_mismatches(model):
    seqs, eager_tokens, reference = _inputs(model)
    other = Student(CFG)
    init_weights(other, 11)
    result = decode_parity.check(lambda: decode.CachedSteps(other), reference, seqs, eager_tokens, EOS)
    assert result.token_mismatches and result.token_mismatches[0].startswith("question 0 step 0: eager")
    assert result.errors == ()


@pytest.mark.parametrize("precision", ["f32", "fp16", "kv_f16", "w_f16"])
def test_every_emulation_runs_through_the_cache(model, precision):
    # The floors of the "decode" scope come from these (verify/floors/floors.py).
    seqs, _, reference = _inputs(model)
    emulated = decode_parity.forced_logits(floors.emulation(model, precision), seqs)
    error = max(float(np.abs(a - b).max()) for a, b in zip(emulated, reference, strict=True))
    assert 0 < error < (1e-4 if precision == "f32" else 0.5)


class _SwapsFirstReply(decode.CachedSteps):
    """Eager's cached steps, but the first reply's first token picks eager's second choice."""

    def __init__(self, model):
        super().__init__(model)
        self.swapped = False

    def prefill(self, prompt_ids):
        logits = super().prefill(prompt_ids).clone()
        if not self.swapped:
            self.swapped = True
            first, second = torch.topk(logits, 2).indices
            logits[first], logits[second] = logits[second].item(), logits[first].item()
        return logits


def test_a_reply_parting_at_a_near_tie_is_counted_apart(model):
    seqs, eager_tokens, reference = _inputs(model)
    top2 = np.sort(reference[0][0])[-2:]
    margin = float(top2[1] - top2[0])
    decisive = decode_parity.check(lambda: _SwapsFirstReply(model), reference, seqs, eager_tokens, EOS)
    assert len(decisive.token_mismatches) == 1 and decisive.near_tie_partings == ()
    assert decisive.token_mismatches[0].startswith("question 0 step 0")
    tie = decode_parity.check(lambda: _SwapsFirstReply(model), reference, seqs, eager_tokens, EOS, 2 * margin)
    assert tie.token_mismatches == () and len(tie.near_tie_partings) == 1
