"""Writes the student as a llama-architecture GGUF file that llama.cpp (and so Ollama) runs.

Layout: llama.cpp's "llama" architecture with GQA, SwiGLU, RMSNorm and RoPE, and the tokenizer as
tokenizer.ggml.model = "llama" (SPM; data/tokenizer.py reproduces its ids exactly).

RoPE. The student rotates HF-style: the two halves of each head form the rotation pairs
(training/model.py rope). llama.cpp's llama architecture rotates adjacent pairs (0,1), (2,3),
... So the rows of the Q and K projections are permuted, per head, from [half 0 | half 1] to
interleaved order, exactly as llama.cpp's own HF converter does. Attention scores are dot products
over a head's dimensions, so the same permutation on Q and K leaves them unchanged; V and the output
projection keep their order. `permute_qk=False` writes the unpermuted (wrong) layout: it exists so a
test can show that the parity check catches it.

Precision. Matrices are f32 by default (dtype="f32"): the file is small and llama.cpp then
differs from PyTorch only by summation order and its KV cache. dtype="f16" stores the matrices in
f16, "Q8_0" and "Q4_0" quantize them (conversion/gguf_quant.py says which tensor gets which type).
Norm weights are always f32 (llama.cpp expects 1-D tensors in f32). After writing, the file is read
back and every tensor's type compared with the plan, so a file never claims a type it does not hold.

Same model, tokenizer and options -> byte-identical file (GGUFWriter writes no timestamps; the
quantizers are deterministic NumPy).
"""

import logging
import os
import tempfile

import gguf
import numpy as np
import torch

from common import atomic
from common.errors import InputError
from conversion import gguf_quant
from training.config import MODEL_TYPE
from training.model import Student

ARCH = "llama"
MODEL_NAME = MODEL_TYPE  # "magic-8-ball"
# Our own key: the sha256 of the tokenizer JSON the weights were trained with, so a GGUF file can be
# matched to its tokenizer without unpacking the vocabulary.
TOKENIZER_SHA256_KEY = "magic_8_ball.tokenizer_sha256"
DTYPES = gguf_quant.DTYPES

_F32, _F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16

# GGUFWriter logs the temporary file name it writes to at INFO; that is noise in a build log.
logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)


def permute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Per head, rows [x0..x(h/2-1) | y0..y(h/2-1)] -> [x0, y0, x1, y1, ...] (llama.cpp's converter)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def tensor_names(cfg) -> dict[str, str]:
    """{PyTorch state_dict name: GGUF tensor name}, in file order."""
    names = {"embed.weight": "token_embd.weight"}
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        names.update(
            {
                p + "attn_norm.weight": f"blk.{i}.attn_norm.weight",
                p + "attn.q_proj.weight": f"blk.{i}.attn_q.weight",
                p + "attn.k_proj.weight": f"blk.{i}.attn_k.weight",
                p + "attn.v_proj.weight": f"blk.{i}.attn_v.weight",
                p + "attn.o_proj.weight": f"blk.{i}.attn_output.weight",
                p + "ffn_norm.weight": f"blk.{i}.ffn_norm.weight",
                p + "ffn.gate_proj.weight": f"blk.{i}.ffn_gate.weight",
                p + "ffn.up_proj.weight": f"blk.{i}.ffn_up.weight",
                p + "ffn.down_proj.weight": f"blk.{i}.ffn_down.weight",
            }
        )
    names.update({"norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"})
    return names


def gguf_tensors(model: Student, permute_qk: bool = True) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in PyTorch [out, in] layout) for every tensor, in file order."""
    cfg = model.cfg
    state = {
        name: t.detach().to(torch.float32).contiguous().numpy() for name, t in model.state_dict().items()
    }
    tensors = []
    for state_name, name in tensor_names(cfg).items():
        array = state[state_name]
        if permute_qk and name.endswith((".attn_q.weight", ".attn_k.weight")):
            array = permute_rows(array, cfg.n_heads if name.endswith("attn_q.weight") else cfg.n_kv_heads)
        tensors.append((name, array))
    return tensors


def _check(model: Student, tokenizer, dtype: str) -> None:
    cfg = model.cfg
    gguf_quant.check_dtype(dtype)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise InputError(
            f"tokenizer: {tokenizer.vocab_size} tokens, but the model's vocab_size is {cfg.vocab_size}"
        )
    if cfg.head_dim % 2 or cfg.n_heads % cfg.n_kv_heads:
        raise InputError(
            f"model: head_dim {cfg.head_dim} / heads {cfg.n_heads}/{cfg.n_kv_heads} not llama-shaped"
        )


def to_bytes(
    model: Student,
    tokenizer,
    dtype: str = "f32",
    permute_qk: bool = True,
    tokenizer_sha256: str | None = None,
) -> bytes:
    """The GGUF file's bytes. tokenizer_sha256 defaults to tokenizer.digest."""
    _check(model, tokenizer, dtype)
    cfg = model.cfg
    tensors = gguf_tensors(model, permute_qk)
    types = gguf_quant.plan(dtype, tensors)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.gguf")
        writer = gguf.GGUFWriter(path, ARCH)
        writer.add_name(MODEL_NAME)
        writer.add_file_type(gguf_quant.FILE_TYPES[dtype])
        # The context is the checkpoint's: llama.cpp (gguf_check) and Ollama size their KV cache from it.
        writer.add_context_length(cfg.max_seq_len)
        writer.add_embedding_length(cfg.d_model)
        writer.add_block_count(cfg.n_layers)
        writer.add_feed_forward_length(cfg.ffn_hidden)
        writer.add_head_count(cfg.n_heads)
        writer.add_head_count_kv(cfg.n_kv_heads)
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_vocab_size(cfg.vocab_size)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokenizer.pieces)
        writer.add_token_scores(tokenizer.scores)
        writer.add_token_types(tokenizer.token_types)
        writer.add_bos_token_id(tokenizer.bos_id)
        writer.add_eos_token_id(tokenizer.eos_id)
        writer.add_unk_token_id(tokenizer.unk_id)
        writer.add_pad_token_id(tokenizer.pad_id)
        # The prompt is [bos] + encode("Q: ...\nA:"), and the model stops itself at eos.
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
        writer.add_string(TOKENIZER_SHA256_KEY, tokenizer_sha256 or tokenizer.digest)

        for name, array in tensors:
            qtype = types[name]
            data = gguf_quant.encode(array, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype if qtype not in (_F32, _F16) else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        gguf_quant.check_types(path, types)
        with open(path, "rb") as handle:
            return handle.read()


def export(
    model: Student,
    tokenizer,
    path: str,
    dtype: str = "f32",
    permute_qk: bool = True,
    tokenizer_sha256: str | None = None,
) -> None:
    """Writes the GGUF file to `path` atomically (complete or absent)."""
    atomic.write_bytes(path, to_bytes(model, tokenizer, dtype, permute_qk, tokenizer_sha256))
