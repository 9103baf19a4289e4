"""The quantized-GGUF floors emulate exactly the weights the file holds, and cost what they should."""

import gguf
import numpy as np
import pytest
import torch

from conversion import gguf_export, gguf_quant
from data import generate
from training.model import ModelConfig, Student, init_weights
from verify import floors, parity

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    tok, _, _ = generate.generate(n=40, seed=0, heldout_fraction=0.5, topk=4)
    return tok


@pytest.fixture(scope="module")
def model():
    student = Student(ModelConfig())
    init_weights(student, seed=0)
    with torch.no_grad():
        for param in student.parameters():
            if param.ndim == 2:
                param.mul_(8.0)  # sharp logits, like a trained student's (gguf_export_test)
    return student.eval()


@pytest.mark.parametrize("precision, variant", sorted(floors.QUANTIZED_GGUF.items()))
def test_the_emulation_computes_with_the_files_weights(tmp_path, model, tokenizer, precision, variant):
    path = str(tmp_path / f"{variant}.gguf")
    gguf_export.export(model, tokenizer, path, dtype=variant, permute_qk=False)
    stored = {t.name: t for t in gguf.GGUFReader(path, "r").tensors}
    twin = floors.emulation(model, precision)
    state = dict(twin.named_parameters())
    for state_name, name in gguf_export.tensor_names(model.cfg).items():
        tensor = stored[name]
        expected = gguf_quant.decode(tensor.data, tensor.tensor_type).reshape(state[state_name].shape)
        assert state[state_name].dtype == torch.float64
        np.testing.assert_array_equal(state[state_name].detach().numpy(), expected.astype(np.float64))


def test_q4_0_sits_further_from_eager_than_q8_0(model):
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, size=(1, 64))
    eager = floors.torch_forward(model)(ids)
    kl = {
        precision: parity.compare_logits(
            eager, floors.torch_forward(floors.emulation(model, precision))(ids)
        ).kl_mean
        for precision in ("f32", "w_f16", "w_q8_0", "w_q4_0")
    }
    assert kl["f32"] < kl["w_f16"] < kl["w_q8_0"] < kl["w_q4_0"]


def test_every_quantized_precision_has_a_method():
    assert set(floors.QUANTIZED_GGUF) <= set(floors.METHODS)
    assert set(floors.QUANTIZED_GGUF.values()) == set(gguf_quant.QUANTIZED)
