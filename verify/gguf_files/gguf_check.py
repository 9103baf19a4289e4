"""Reads a GGUF artifact safely and runs it through llama.cpp (llama-cpp-python).

read_gguf validates the file in Python before llama.cpp ever opens it: llama.cpp's loader can
abort the whole process on a damaged file, while here a damaged file is an InputError naming it.
load_llama / gguf_logits give the same logits interface as every other backend:
ids int [1, T] -> float32 logits [1, T, V], one full forward from an empty KV cache.
"""

import os

import numpy as np

from common import gguf_reader, quiet
from common.errors import InputError
from training.config import MAX_SEQ_LEN

REQUIRED_KEYS = (
    "general.architecture",
    "llama.context_length",
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.dimension_count",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
)
TOKENIZER_SHA256_KEY = "magic_8_ball.tokenizer_sha256"  # = conversion.gguf_export.TOKENIZER_SHA256_KEY


def _unreadable(path: str, why: str) -> InputError:
    return InputError(f"{path}: not a readable GGUF file ({why}); re-export it")


def read_gguf(path: str) -> dict:
    """Validates `path` as a llama GGUF file and returns its key facts. InputError if anything is off.

    Returns {"architecture", "name", "version", "context_length", "embedding_length", "block_count",
    "feed_forward_length", "head_count", "head_count_kv", "vocab_size", "tokenizer_model",
    "tokenizer_sha256" (None if absent), "tensors" {name: (shape, type name)}, "size"}.
    """
    if not os.path.isfile(path):
        raise InputError(f"{path}: GGUF file not found")
    reader = gguf_reader.open_checked(path, lambda why: _unreadable(path, why))
    size = os.path.getsize(path)
    try:
        fields = {name: field.contents() for name, field in reader.fields.items()}
    except Exception as error:  # any failure to parse is a damaged file, never a crash
        raise _unreadable(path, f"{type(error).__name__}: {error}") from None
    tensors = {
        tensor.name: (tuple(int(n) for n in tensor.shape), tensor.tensor_type.name)
        for tensor in reader.tensors
    }
    version = fields["GGUF.version"]  # the gguf reader's own field, checked by open_reader

    arch = fields.get("general.architecture")
    if arch != "llama":
        raise InputError(f"{path}: general.architecture is {arch!r}, expected 'llama'; re-export it")
    missing = [key for key in REQUIRED_KEYS if key not in fields]
    if missing:
        raise InputError(f"{path}: missing GGUF key {missing[0]}; re-export it")
    context = fields["llama.context_length"]
    # llama.cpp sizes its KV cache from it (load_llama): a hostile value must not reach it.
    if type(context) is not int or not 1 <= context <= MAX_SEQ_LEN:
        raise InputError(
            f"{path}: llama.context_length: is {context!r}; must be an integer in 1..{MAX_SEQ_LEN}; "
            "re-export it"
        )
    if "token_embd.weight" not in tensors or "output_norm.weight" not in tensors:
        raise InputError(f"{path}: missing tensor token_embd.weight or output_norm.weight; re-export it")
    return {
        "architecture": arch,
        "name": fields.get("general.name"),
        "version": version,
        "context_length": fields["llama.context_length"],
        "embedding_length": fields["llama.embedding_length"],
        "block_count": fields["llama.block_count"],
        "feed_forward_length": fields["llama.feed_forward_length"],
        "head_count": fields["llama.attention.head_count"],
        "head_count_kv": fields["llama.attention.head_count_kv"],
        "vocab_size": len(fields["tokenizer.ggml.tokens"]),
        "tokenizer_model": fields["tokenizer.ggml.model"],
        "tokenizer_sha256": fields.get(TOKENIZER_SHA256_KEY),
        "tensors": tensors,
        "size": size,
    }


def load_llama(path: str, f32_kv_cache: bool = True, n_threads: int = 2):
    """llama_cpp.Llama over a validated GGUF file, returning logits for every position.

    f32_kv_cache: llama.cpp keeps K and V in f16 by default (as Ollama does). With an f32 cache an
    f32 GGUF reproduces PyTorch to ~2e-5 instead of ~7e-3, so parity measures the file itself and
    even a small layout error stands out; pass False to measure what the default runtime does.
    n_threads: threads for single- and multi-token evaluation alike. llama-cpp-python's default for
    the latter is every core, and a pool spinning on every core of a busy machine made full-sequence
    evaluation 10-100x slower.
    """
    # The context, and so the KV cache, is the model's own (the checkpoint's max_seq_len, written
    # by the export): every contract length fits, and a longer student gets a longer cache.
    n_ctx = read_gguf(path)["context_length"]
    import llama_cpp

    quiet.silence_llama_cpp()
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_kv_cache else {}
    try:
        return llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            logits_all=True,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            verbose=False,
            **cache,
        )
    except (ValueError, RuntimeError) as error:
        raise InputError(f"{path}: llama.cpp cannot load it ({error}); re-export it") from None


def gguf_logits(llama, ids) -> np.ndarray:
    """ids int [1, T] (T <= the model's context) -> float32 logits [1, T, V] from a fresh KV cache."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ValueError(f"ids must have shape [1, T], got {ids.shape}")
    length = ids.shape[1]
    if not 1 <= length <= llama.n_ctx():
        raise ValueError(f"ids: length {length}; llama.cpp context holds 1..{llama.n_ctx()}")
    llama.reset()
    llama.eval([int(i) for i in ids[0]])
    return np.array(llama.scores[:length], dtype=np.float32)[None]


def tokenize_mismatches(
    llama, tokenizer, strings, ours_by_text=None
) -> list[tuple[str, list[int], list[int]]]:
    """(text, llama.cpp ids, our ids) for every string the two tokenizers encode differently.
    ours_by_text: our tokenizer's ids of the strings, when several files are checked against them."""
    out = []
    for text in strings:
        theirs = llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        ours = ours_by_text[text] if ours_by_text is not None else tokenizer.encode(text)
        if list(theirs) != list(ours):
            out.append((text, list(theirs), list(ours)))
    return out


# The names verify/verify_contracts.py uses. One thread: verification runs thousands of short
# forwards, and with two threads on a busy 2-core machine each waited on the other at every op
# (a 30-token forward took many times longer than with one; on an idle machine they are close).
def load(path: str, f32_kv_cache: bool = True):
    return load_llama(path, f32_kv_cache, n_threads=1)


def logits(llama, ids) -> np.ndarray:
    return gguf_logits(llama, ids)
