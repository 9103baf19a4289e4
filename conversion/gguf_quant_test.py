"""The quantized GGUF writer: every tensor in the type its variant claims, whole blocks, same bytes."""

import os

import gguf
import numpy as np
import pytest

from common.errors import InputError
from conversion import gguf_export, gguf_quant
from data import generate
from training.model import ModelConfig, Student, init_weights

T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tokenizer():
    tok, _, _ = generate.generate(n=40, seed=0, heldout_fraction=0.5, topk=4)
    return tok


@pytest.fixture(scope="module")
def model():
    student = Student(ModelConfig())
    init_weights(student, seed=0)
    return student.eval()


def _written(tmp_path, model, tokenizer, dtype):
    path = os.path.join(tmp_path, f"{dtype}.gguf")
    gguf_export.export(model, tokenizer, path, dtype=dtype)
    reader = gguf.GGUFReader(path, "r")
    return path, reader, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("dtype", gguf_quant.QUANTIZED)
def test_every_tensor_is_in_the_type_the_variant_claims(tmp_path, model, tokenizer, dtype):
    _, reader, tensors = _written(tmp_path, model, tokenizer, dtype)
    file_type = int(reader.fields["general.file_type"].contents())
    assert file_type == gguf_quant.FILE_TYPES[dtype]
    for name, tensor in tensors.items():
        if name.endswith("norm.weight"):
            assert tensor.tensor_type == T.F32, name
        elif dtype == "Q4_0" and name == "output.weight":
            assert tensor.tensor_type == T.Q8_0  # llama.cpp's Q6_K, fallen back for 128-value rows
        else:
            assert tensor.tensor_type.name == dtype, name


@pytest.mark.parametrize("dtype", gguf_quant.QUANTIZED)
def test_the_file_holds_the_weights_rounded_to_its_blocks(tmp_path, model, tokenizer, dtype):
    _, _, tensors = _written(tmp_path, model, tokenizer, dtype)
    for name, array in gguf_export.gguf_tensors(model):
        tensor = tensors[name]
        stored = gguf_quant.decode(tensor.data, tensor.tensor_type).reshape(array.shape)
        np.testing.assert_array_equal(stored, gguf_quant.round_trip(array, tensor.tensor_type))
        if tensor.tensor_type in (T.Q8_0, T.Q4_0):
            # per block, the error is at most half a step of its scale (amax/127, amax/8)
            steps = 127 if tensor.tensor_type == T.Q8_0 else 8
            blocks = array.reshape(-1, gguf_quant.BLOCK)
            bound = np.abs(blocks).max(axis=1, keepdims=True) / steps
            assert np.all(np.abs(stored.reshape(blocks.shape) - blocks) <= bound * 1.01 + 1e-12), name


@pytest.mark.parametrize("dtype", gguf_quant.QUANTIZED)
def test_same_model_gives_the_same_bytes(model, tokenizer, dtype):
    assert gguf_export.to_bytes(model, tokenizer, dtype) == gguf_export.to_bytes(model, tokenizer, dtype)


def test_quantized_files_are_smaller(model, tokenizer):
    sizes = {dtype: len(gguf_export.to_bytes(model, tokenizer, dtype)) for dtype in gguf_quant.DTYPES}
    assert sizes["f32"] > sizes["f16"] > sizes["Q8_0"] > sizes["Q4_0"]


@pytest.mark.parametrize("dtype", ["Q4_K_M", "Q6_K", "q5_k_s"])
def test_a_k_quant_is_refused_with_the_reason(dtype):
    with pytest.raises(InputError, match="K-quant.*256.*rows are 128.*f32, f16, Q8_0, Q4_0"):
        gguf_quant.check_dtype(dtype, {"d_model": 128, "ffn_hidden": 512})


def test_an_unknown_dtype_lists_the_allowed_ones():
    with pytest.raises(InputError, match="'q8'; choose one of f32, f16, Q8_0, Q4_0"):
        gguf_quant.check_dtype("q8")


def test_rows_that_are_not_whole_blocks_are_refused(tokenizer):
    student = Student(ModelConfig(d_model=48, n_heads=4, n_kv_heads=2, ffn_hidden=96)).eval()
    with pytest.raises(InputError, match="rows of 48 values; Q8_0 stores blocks of 32"):
        gguf_export.to_bytes(student, tokenizer, "Q8_0")


def test_a_file_whose_types_differ_from_the_plan_is_caught(tmp_path, model, tokenizer):
    path, _, tensors = _written(tmp_path, model, tokenizer, "Q8_0")
    claimed = {
        name: T.Q4_0 if name == "blk.0.attn_q.weight" else t.tensor_type for name, t in tensors.items()
    }
    with pytest.raises(RuntimeError, match=r"blk.0.attn_q.weight: Q8_0 \(expected Q4_0\)"):
        gguf_quant.check_types(path, claimed)


def test_the_exporter_writes_no_file_when_the_check_fails(tmp_path, model, tokenizer, monkeypatch):
    def wrong(path, expected):
        raise RuntimeError("types differ")

    monkeypatch.setattr(gguf_quant, "check_types", wrong)
    path = os.path.join(tmp_path, "never.gguf")
    with pytest.raises(RuntimeError):
        gguf_export.export(model, tokenizer, path, dtype="Q4_0")
    assert not os.path.exists(path)


def test_norms_stay_f32_and_matrices_follow_the_plan():
    weights = [
        ("token_embd.weight", np.zeros((4, 64), np.float32)),
        ("x.norm.weight", np.zeros(64, np.float32)),
    ]
    assert gguf_quant.plan("Q4_0", weights) == {"token_embd.weight": T.Q4_0, "x.norm.weight": T.F32}
