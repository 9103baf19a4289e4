import hashlib

import gguf
import numpy as np
import pytest
import torch

from common.errors import InputError
from conversion import gguf_export
from data import generate
from training.model import ModelConfig, Student, init_weights, rope
from verify.gguf_files import gguf_check

torch.set_num_threads(1)
LENGTHS = (64, 128, 256)


@pytest.fixture(scope="module")
def tokenizer():
    tok, _, _ = generate.generate(n=40, seed=0, heldout_fraction=0.5, topk=4)
    return tok


@pytest.fixture(scope="module")
def model():
    """init_weights(seed 0) with every matrix scaled up 8x.

    At the 0.02 init scale, attention is almost uniform and logits almost equal, so a wrong RoPE
    layout would hardly change anything and argmax would sit on near-ties. Scaled, attention is
    sharp and logits spread over a few units, like a trained student's.
    """
    student = Student(ModelConfig())
    init_weights(student, seed=0)
    with torch.no_grad():
        for param in student.parameters():
            if param.ndim == 2:
                param.mul_(8.0)
    return student.eval()


def _rows(vocab_size):
    rng = np.random.default_rng(0)
    return {length: rng.integers(0, vocab_size, size=(1, length)).astype(np.int32) for length in LENGTHS}


def _compare(model, llama, near_tie_margin=0.0):
    """{length: (max abs diff, argmax agreement)} of llama.cpp against eager PyTorch.

    Agreement counts only positions whose eager top-2 logits differ by at least near_tie_margin:
    where two tokens are within rounding error of each other, either is a correct argmax.
    """
    out = {}
    for length, ids in _rows(model.cfg.vocab_size).items():
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)).numpy()
        got = gguf_check.gguf_logits(llama, ids)
        assert got.shape == ref.shape == (1, length, model.cfg.vocab_size) and got.dtype == np.float32
        top2 = np.sort(ref[0], axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] >= near_tie_margin
        assert clear.mean() > 0.5  # most positions still count
        agree = got[0].argmax(-1)[clear] == ref[0].argmax(-1)[clear]
        out[length] = (float(np.abs(got - ref).max()), float(agree.mean()))
    return out


def _export(model, tokenizer, path, **kwargs):
    gguf_export.export(model, tokenizer, str(path), **kwargs)
    return str(path)


def test_permute_rows_turns_half_rotation_into_llama_cpp_pair_rotation():
    """Rotating HF halves then permuting == permuting then rotating llama.cpp's adjacent pairs."""
    heads, head_dim = 2, 8
    x = torch.randn(heads * head_dim, generator=torch.Generator().manual_seed(0))
    angle = torch.linspace(0.1, 1.3, head_dim // 2)
    # The tables as training/model.py's Rotary holds them (its sin carries rope's signs).
    cos, sin = torch.cat((angle.cos(), angle.cos())), torch.cat((-angle.sin(), angle.sin()))
    hf = rope(x.view(heads, head_dim), cos, sin).reshape(-1)
    # llama.cpp (rope type NORM): pair (2i, 2i+1) rotates by angle i.
    pairs = torch.from_numpy(gguf_export.permute_rows(x.numpy()[:, None], heads)[:, 0]).view(heads, -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    ggml = torch.stack((a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()), -1).reshape(-1)
    expected = gguf_export.permute_rows(hf.numpy()[:, None], heads)[:, 0]
    np.testing.assert_allclose(ggml.numpy(), expected, atol=1e-6)


def test_f32_gguf_reproduces_pytorch_at_every_length(model, tokenizer, tmp_path):
    path = _export(model, tokenizer, tmp_path / "m.gguf")
    results = _compare(model, gguf_check.load_llama(path))
    for length, (max_abs, agreement) in results.items():
        # Measured 2e-5..9e-5 with logits spread over several units (f32 weights, f32 KV cache).
        assert max_abs < 1e-3, (length, max_abs)
        assert agreement >= 0.999, (length, agreement)
    # llama.cpp's default f16 KV cache (what Ollama runs): measured ~1.5e-2.
    for length, (max_abs, _) in _compare(model, gguf_check.load_llama(path, f32_kv_cache=False)).items():
        assert max_abs < 0.1, (length, max_abs)


def test_f16_gguf_stays_close(model, tokenizer, tmp_path):
    path = _export(model, tokenizer, tmp_path / "m16.gguf", dtype="f16")
    # Measured ~3e-2, and 1-2 positions per length are near-ties that flip. An error below 0.05
    # cannot flip a position whose top-2 margin is at least 0.1, so those must all agree.
    results = _compare(model, gguf_check.load_llama(path), near_tie_margin=0.1)
    for length, (max_abs, agreement) in results.items():
        assert max_abs < 0.05, (length, max_abs)
        assert agreement == 1.0, (length, agreement)


def test_unpermuted_qk_layout_is_caught_by_the_same_comparison(model, tokenizer, tmp_path):
    path = _export(model, tokenizer, tmp_path / "wrong.gguf", permute_qk=False)
    for length, (max_abs, agreement) in _compare(model, gguf_check.load_llama(path)).items():
        assert max_abs > 0.5, (length, max_abs)
        assert agreement < 0.95, (length, agreement)


def test_same_inputs_give_the_same_bytes(model, tokenizer, tmp_path):
    a = _export(model, tokenizer, tmp_path / "a.gguf")
    b = _export(model, tokenizer, tmp_path / "b.gguf")
    c = _export(model, tokenizer, tmp_path / "c.gguf", dtype="f16")

    def sha(path):
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()

    assert sha(a) == sha(b) != sha(c)


def test_keys_and_tensors(model, tokenizer, tmp_path):
    path = _export(model, tokenizer, tmp_path / "m.gguf", dtype="f16", tokenizer_sha256="ab" * 32)
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    cfg = model.cfg
    expected = {
        "general.architecture": "llama",
        "general.name": "magic-8-ball",
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
        "llama.context_length": cfg.max_seq_len,
        "llama.embedding_length": cfg.d_model,
        "llama.block_count": cfg.n_layers,
        "llama.feed_forward_length": cfg.ffn_hidden,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": cfg.head_dim,
        "llama.vocab_size": tokenizer.vocab_size,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokenizer.pieces,
        "tokenizer.ggml.scores": tokenizer.scores,
        "tokenizer.ggml.token_type": tokenizer.token_types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 3,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
        gguf_export.TOKENIZER_SHA256_KEY: "ab" * 32,
    }
    for key, value in expected.items():
        assert fields[key] == value, key
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)
    assert fields["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert gguf_export.TOKENIZER_SHA256_KEY == gguf_check.TOKENIZER_SHA256_KEY

    tensors = {t.name: t for t in reader.tensors}
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up"]
    names = ["token_embd", "output_norm", "output"] + [
        f"blk.{i}.{n}" for i in range(cfg.n_layers) for n in [*per_block, "ffn_down"]
    ]
    assert sorted(tensors) == sorted(n + ".weight" for n in names)
    for name, tensor in tensors.items():
        want = gguf.GGMLQuantizationType.F32 if "norm" in name else gguf.GGMLQuantizationType.F16
        assert tensor.tensor_type == want, name
    # GGUF lists dimensions innermost first: [in, out].
    assert list(tensors["blk.0.attn_k.weight"].shape) == [cfg.d_model, cfg.n_kv_heads * cfg.head_dim]
    assert list(tensors["output.weight"].shape) == [cfg.d_model, cfg.vocab_size]


def test_the_context_length_is_the_models(tokenizer, tmp_path):
    student = Student(ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=512))
    path = _export(student, tokenizer, tmp_path / "m.gguf")
    assert gguf_check.read_gguf(path)["context_length"] == 512


def test_bad_arguments_write_nothing(model, tokenizer, tmp_path):
    path = tmp_path / "m.gguf"
    with pytest.raises(InputError, match="dtype"):
        gguf_export.export(model, tokenizer, str(path), dtype="q4_0")
    small = Student(ModelConfig(vocab_size=300))
    with pytest.raises(InputError, match="vocab_size is 300"):
        gguf_export.export(small, tokenizer, str(path))
    assert list(tmp_path.iterdir()) == []
