"""The TorchScript decoder: saved, loaded, and run as Steps, it decodes what eager decodes."""

import io

import pytest
import torch

from common.errors import InputError
from conversion import kv_decoder, torchscript, torchscript_archive
from training import decode
from training.model import ModelConfig, Student, init_weights

CFG = ModelConfig(
    vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=48
)


def _model() -> Student:
    model = Student(CFG)
    init_weights(model, 5)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(8.0 if param.dim() > 1 else 1.0)  # attention patterns matter, replies vary
    return model.eval()


@pytest.fixture(scope="module")
def saved():
    """The exported decoder after a save/load round trip, as ask and verification get it."""
    model = _model()
    data = torchscript.to_bytes(kv_decoder.export(model, [16, 48]))
    assert torchscript.to_bytes(kv_decoder.export(model, [16, 48])) == data  # byte-reproducible
    torchscript_archive.check_archive(io.BytesIO(data))  # the loaders' allowlist admits it
    return model, torch.jit.load(io.BytesIO(data))


def test_the_saved_decoder_decodes_what_eager_decodes(saved):
    model, decoder = saved
    for prompt in ([1, 5, 9], [1, 30, 2, 2, 7, 11, 3]):
        expected = decode.generate(decode.CachedSteps(model), prompt, eos_id=-1, max_new_tokens=20)
        # One Steps object for both prompts: a second prefill starts over at position 0.
        assert decode.generate(kv_decoder.TorchScriptSteps(decoder, CFG), prompt, -1, 20) == expected
    steps = kv_decoder.TorchScriptSteps(decoder, CFG)
    for prompt in ([1, 5, 9], [1, 30, 2, 2, 7, 11, 3]):
        assert decode.generate(steps, prompt, -1, 20) == decode.generate(model_forward(model), prompt, -1, 20)


def model_forward(model):
    def forward(ids):
        with torch.no_grad():
            return model(ids)

    return forward


def test_the_whole_cache_matches_eager_to_the_last_slot(saved):
    model, decoder = saved
    assert kv_decoder.check_against_eager(decoder, model, [1, 16, 48]) <= kv_decoder.TOLERANCE


def test_a_wrong_decoder_is_refused():
    model = _model()
    other = _model()
    with torch.no_grad():
        other.blocks[1].attn.k_proj.weight.mul_(1.01)
    with pytest.raises(InputError, match="differ from eager"):
        kv_decoder.check_against_eager(kv_decoder.trace(other), model, [16])


def test_a_sequence_past_the_cache_is_refused(saved):
    _, decoder = saved
    steps = kv_decoder.TorchScriptSteps(decoder, CFG)
    with pytest.raises(InputError, match="at most 48"):
        steps.prefill([3] * 49)
    steps.prefill([3] * 47)
    steps.decode(3)  # slot 47, the last
    with pytest.raises(InputError, match="49 tokens; the decoder's cache holds at most 48"):
        steps.decode(3)
