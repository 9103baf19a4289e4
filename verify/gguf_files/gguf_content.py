"""Exact content check of a GGUF file: every tensor against the checkpoint as the variant must store it.

The GGUF exporter is deterministic, so a file holds exactly one right set of bytes. This check
computes them from the checkpoint without the exporter's code and counts every element stored
otherwise:

  f32    each value, bit for bit;
  f16    each value rounded to half (NumPy's round-to-nearest-even), bit for bit;
  Q8_0,  each block's scale and each quant, against the checkpoint quantized by ggml's reference
  Q4_0   semantics (verify/gguf_files/gguf_reference.py, not gguf.quants, which the exporter writes with).

Which type each tensor has is the variant's plan (conversion/gguf_quant.py plan: norms f32, Q4_0's
output projection Q8_0); a tensor the plan does not name, a missing one, or one stored in another
type or shape than the plan gives fails. The tensor layout is llama.cpp's, written here from
llama.cpp's tensor names and its HF converter's RoPE row order, apart from conversion/gguf_export.py.

Output metrics cannot see a small fault in a quantized file (every block scale of a matrix x1.003
moves the logits far less than the quantization noise the bounds allow: //tests:gate_power); this
check sees one changed bit. The file is read through the `gguf` package's memory-mapped reader, and
every tensor's type, shape and byte count is checked against the checkpoint before its data is
decoded, so a file declaring huge tensors allocates nothing.
"""

import dataclasses

import numpy as np

from common.errors import InputError
from conversion import gguf_quant
from verify.gguf_files import gguf_reference

# The unquantized GGUF types and the NumPy dtype each stores its values in (the quantized ones are
# gguf_reference's).
_SCALAR = {"F32": np.float32, "F16": np.float16}
_FILE_TYPE_KEY = "general.file_type"


@dataclasses.dataclass(frozen=True)
class Result:
    tensors: int  # tensors the checkpoint gives the file
    elements: int  # their elements
    mismatches: list[str]  # missing or extra tensors, other types or shapes than the plan, file type
    changed: int  # elements stored otherwise than the reference stores them (all of a mismatched tensor)
    changed_tensors: list[str]  # "name: n of m elements", in file order
    max_abs_difference: float  # largest |file - reference| over the compared tensors, dequantized


def llama_names(n_layers: int) -> dict[str, str]:
    """{checkpoint tensor name: llama.cpp tensor name} (llama.cpp's LLM_ARCH_LLAMA tensor names)."""
    names = {"embed.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}
    names["lm_head.weight"] = "output.weight"
    per_block = {
        "attn_norm.weight": "attn_norm.weight",
        "attn.q_proj.weight": "attn_q.weight",
        "attn.k_proj.weight": "attn_k.weight",
        "attn.v_proj.weight": "attn_v.weight",
        "attn.o_proj.weight": "attn_output.weight",
        "ffn_norm.weight": "ffn_norm.weight",
        "ffn.gate_proj.weight": "ffn_gate.weight",
        "ffn.up_proj.weight": "ffn_up.weight",
        "ffn.down_proj.weight": "ffn_down.weight",
    }
    for layer in range(n_layers):
        for ours, theirs in per_block.items():
            names[f"blocks.{layer}.{ours}"] = f"blk.{layer}.{theirs}"
    return names


def interleave_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Q/K projection rows in llama.cpp's order. The student rotates the two halves of each head
    against each other (row i with row i + head_dim/2); llama.cpp rotates adjacent rows, so each
    head's rows go i, i + half, i + 1, i + 1 + half, ... (what llama.cpp's HF converter does)."""
    head_dim = weight.shape[0] // n_heads
    half = head_dim // 2
    within = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)
    order = (np.arange(n_heads)[:, None] * head_dim + within[None, :]).reshape(-1)
    return weight[order]


def expected_tensors(model) -> dict[str, np.ndarray]:
    """{llama.cpp name: float32 array in PyTorch [out, in] layout}: what the file must hold."""
    cfg = model.cfg
    state = {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}
    names = llama_names(cfg.n_layers)
    missing = sorted(set(names) - set(state))
    if missing:
        raise InputError(f"checkpoint: no tensor {missing[0]}; pass the checkpoint the GGUF came from")
    tensors = {}
    for ours, theirs in names.items():
        array = np.ascontiguousarray(state[ours], dtype=np.float32)
        if theirs.endswith("attn_q.weight"):
            array = interleave_rope_rows(array, cfg.n_heads)
        elif theirs.endswith("attn_k.weight"):
            array = interleave_rope_rows(array, cfg.n_kv_heads)
        tensors[theirs] = array
    return tensors


def _stored_bytes(qtype: str, shape: tuple[int, ...]) -> int:
    elements = int(np.prod(shape))
    if qtype in _SCALAR:
        return elements * np.dtype(_SCALAR[qtype]).itemsize
    return elements // gguf_reference.BLOCK * gguf_reference.BLOCK_BYTES[qtype]


def _compare(qtype: str, data: np.ndarray, expected: np.ndarray) -> tuple[int, float]:
    """(elements stored otherwise, largest |difference| dequantized) of one tensor of the plan's
    type, shape and size."""
    if qtype in _SCALAR:
        kind = _SCALAR[qtype]
        stored = np.asarray(data, dtype=kind).reshape(expected.shape)
        want = expected.astype(kind)
        bits = np.uint32 if kind == np.float32 else np.uint16
        changed = int((stored.view(bits) != want.view(bits)).sum())
        difference = np.abs(stored.astype(np.float64) - want.astype(np.float64))
    else:
        row = expected.shape[-1]
        stored = gguf_reference.unpack(np.asarray(data).reshape(*expected.shape[:-1], -1), qtype, row)
        want = gguf_reference.QUANTIZERS[qtype](expected)
        # An element is changed when its quant or its block's scale (bit for bit) differs: together
        # they are exactly the block's bytes.
        scale_changed = stored.scales.view(np.uint16) != want.scales.view(np.uint16)
        changed = int(((stored.quants != want.quants) | scale_changed[..., None]).sum())
        difference = np.abs(
            gguf_reference.dequantize(stored).astype(np.float64)
            - gguf_reference.dequantize(want).astype(np.float64)
        )
    finite = difference[np.isfinite(difference)]
    largest = float(finite.max()) if finite.size else 0.0
    if finite.size != difference.size:
        largest = float("inf")
    return changed, largest


def check(path: str, model, dtype: str) -> Result:
    """The GGUF file at `path` against `model` (the checkpoint's Student) stored as variant `dtype`
    (conversion/gguf_quant.py DTYPES). InputError if the file cannot be read as GGUF."""
    import gguf

    expected = expected_tensors(model)
    plan = {name: qtype.name for name, qtype in gguf_quant.plan(dtype, list(expected.items())).items()}
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as error:  # any failure to parse is a damaged file, never a crash
        raise InputError(f"{path}: not a readable GGUF file ({type(error).__name__}: {error})") from None
    mismatches, changed_tensors = [], []
    changed, largest = 0, 0.0
    file_type = reader.fields.get(_FILE_TYPE_KEY)
    want_type = int(gguf_quant.FILE_TYPES[dtype])
    found_type = file_type.contents() if file_type is not None else None
    if found_type != want_type:
        mismatches.append(f"{_FILE_TYPE_KEY} is {found_type!r}, {dtype} is {want_type}")
    seen = set()
    for tensor in reader.tensors:
        name, qtype = tensor.name, tensor.tensor_type.name
        seen.add(name)
        if name not in expected:
            mismatches.append(f"{name}: not a tensor of the checkpoint")
            continue
        want = expected[name]
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # ggml's ne[] is innermost first
        problem = None
        if qtype != plan[name]:
            problem = f"{name}: stored as {qtype}, the {dtype} plan says {plan[name]}"
        elif shape != want.shape:
            problem = f"{name}: shape {list(shape)}, the checkpoint's is {list(want.shape)}"
        elif int(tensor.n_bytes) != _stored_bytes(qtype, want.shape) or tensor.data.nbytes != int(
            tensor.n_bytes
        ):
            problem = f"{name}: {tensor.data.nbytes} bytes, {qtype} {list(want.shape)} takes "
            problem += str(_stored_bytes(qtype, want.shape))
        if problem:
            mismatches.append(problem)
            changed += want.size
            changed_tensors.append(f"{name}: {want.size} of {want.size} elements")
            continue
        count, difference = _compare(qtype, tensor.data, want)
        largest = max(largest, difference)
        if count:
            changed += count
            changed_tensors.append(f"{name}: {count} of {want.size} elements")
    for name in expected:
        if name not in seen:
            mismatches.append(f"{name}: missing")
            changed += expected[name].size
    del reader  # closes the memory map
    return Result(
        tensors=len(expected),
        elements=sum(array.size for array in expected.values()),
        mismatches=mismatches,
        changed=changed,
        changed_tensors=changed_tensors,
        max_abs_difference=largest,
    )
