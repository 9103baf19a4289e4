"""Realistic faults, each the smallest that would matter to a user, injected into copies of the
shipped artifacts (//tests:gate_power proves every one turns gates_ok false).

A fault returns the faulted backends (verify/verification.py Backend), each named like the
artifact it replaces, so the contract's bounds for that artifact apply. Weight faults change the
loaded artifact (TorchScript parameters, Core ML const values, GGUF tensor bytes in a copy of the
file); conversion faults (a frozen length, unpermuted Q/K rows) re-run our own exporters from the
shipped checkpoint with the mistake in place.
"""

import copy
import dataclasses
import os
import shutil
from collections.abc import Callable

import numpy as np
import torch

from conversion import aoti_decoder, coreml, coreml_stateful, gguf_export, kv_decoder, torchscript
from training import model as model_lib
from verify import frozen_students, verification
from verify.coreml import coreml_stateful_steps, mil_executor
from verify.gguf_files import gguf_check, gguf_reference

# The faulted tensor: a projection in the middle of the network, not the output head, so a fault
# must travel through later blocks to show.
WEIGHT = ("blocks.1.ffn.down_proj.weight", "blocks_1_ffn_down_proj_weight_to_fp16", "blk.1.ffn_down.weight")
SCALE = 1.003  # 0.3%
NOISE = 1e-4
ROPE_FACTOR = 1.03
EPS_FACTOR = 10.0
# A quantized GGUF's block scale: the f16 scale of the first block of this tensor x16, as one
# flipped exponent bit makes it (32 weights of an early projection, in a file of ~600k).
SCALE_BLOCK = ("blk.0.attn_v.weight", 16.0)


@dataclasses.dataclass(frozen=True)
class Shipped:
    """The shipped artifacts and the fp32 eager model they came from."""

    inputs: verification.Inputs
    model: model_lib.Student
    tmp: str  # where faulted copies go


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    what: str
    inject: dict[str, Callable[[Shipped], verification.Backend]]  # artifact -> faulted backend


def _noise(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, NOISE, size=shape)


# --- TorchScript -----------------------------------------------------------------------------


def _torchscript_with(shipped: Shipped, change: Callable[[torch.nn.Module], None]) -> verification.Backend:
    module = torchscript.load(shipped.inputs.paths.torchscript)
    with torch.no_grad():
        change(module)
    return verification.Backend(
        "torchscript", shipped.inputs.paths.torchscript, torchscript.numpy_forward(module)
    )


def _ts_param(module, name: str) -> torch.Tensor:
    return dict(module.named_parameters())[name]


def _ts_scale(shipped):
    return _torchscript_with(shipped, lambda m: _ts_param(m, WEIGHT[0]).mul_(SCALE))


def _ts_noise(shipped):
    def change(module):
        weight = _ts_param(module, WEIGHT[0])
        weight.add_(torch.from_numpy(_noise(tuple(weight.shape))).float())

    return _torchscript_with(shipped, change)


def _ts_rope(shipped):
    cfg = shipped.model.cfg
    table = model_lib.Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta * ROPE_FACTOR)

    def change(module):
        module.rotary.cos.copy_(table.cos)
        module.rotary.sin.copy_(table.sin)

    return _torchscript_with(shipped, change)


def _frozen_student(shipped: Shipped) -> model_lib.Student:
    """The shipped student with its RoPE slice frozen to int(T), as the reference pipeline wrote it."""
    student = copy.deepcopy(shipped.model)
    cfg = student.cfg
    student.rotary = frozen_students.FrozenRotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    return student.eval()


def _ts_frozen(shipped):
    traced = torchscript.trace(_frozen_student(shipped), shipped.inputs.contract.default_length)
    return verification.Backend(
        "torchscript", shipped.inputs.paths.torchscript, torchscript.numpy_forward(traced)
    )


# --- Core ML ---------------------------------------------------------------------------------


def _coreml_backend(program, path: str) -> verification.Backend:
    return verification.Backend(
        "coreml",
        path,
        lambda ids: mil_executor.run(program, ids),
        lambda report, contract, model: (
            verification.check_coreml_interface(report, contract, path),
            verification.check_coreml_weights(report, program, model),
        ),
    )


def _coreml_with(shipped: Shipped, change: Callable[[mil_executor.Program], None]) -> verification.Backend:
    program = mil_executor.load_mlpackage(shipped.inputs.paths.mlpackage)
    change(program)
    return _coreml_backend(program, shipped.inputs.paths.mlpackage)


def _cm_update(program, name: str, fn) -> None:
    value = np.asarray(mil_executor.consts(program)[name], dtype=np.float64)
    mil_executor.set_const(program, name, fn(value))


def _cm_scale(shipped):
    return _coreml_with(shipped, lambda p: _cm_update(p, WEIGHT[1], lambda w: w * SCALE))


def _cm_noise(shipped):
    return _coreml_with(shipped, lambda p: _cm_update(p, WEIGHT[1], lambda w: w + _noise(w.shape)))


def _cm_rope(shipped):
    cfg = shipped.model.cfg
    table = model_lib.Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta * ROPE_FACTOR)

    def change(program):
        mil_executor.set_const(program, "rotary_cos_to_fp16", table.cos.numpy())
        mil_executor.set_const(program, "rotary_sin_to_fp16", table.sin.numpy())

    return _coreml_with(shipped, change)


def _cm_eps(shipped):
    eps = shipped.model.cfg.norm_eps

    def change(program):
        names = [
            name
            for name, value in mil_executor.consts(program).items()
            if np.ndim(value) == 0
            and np.issubdtype(np.asarray(value).dtype, np.floating)
            and abs(float(value) - eps) <= 0.01 * eps
        ]
        assert names, "no RMSNorm epsilon const found in the Core ML program"
        for name in names:
            _cm_update(program, name, lambda v: v * EPS_FACTOR)

    return _coreml_with(shipped, change)


def _cm_frozen(shipped):
    contract = shipped.inputs.contract
    traced = torchscript.trace(_frozen_student(shipped), contract.default_length)
    mlmodel = coreml.convert_traced(
        traced,
        list(contract.lengths),
        contract.default_length,
        "fp16",
        {"short_description": "frozen", "version": "fault"},
    )
    path = os.path.join(shipped.tmp, "frozen.mlpackage")
    shutil.rmtree(path, ignore_errors=True)
    coreml.save_mlpackage(mlmodel, path)
    return _coreml_backend(mil_executor.load_mlpackage(path), path)


def _cm_renamed(shipped):
    """A converter upgrade that names the weight consts differently (the weight check must not pass
    by finding nothing to compare)."""
    program = mil_executor.load_mlpackage(shipped.inputs.paths.mlpackage)
    for op in program.function.operations:
        if op.op_type == "const" and op.outputs[0].name.endswith("_weight_to_fp16"):
            op.outputs[0].name = op.outputs[0].name.replace("_weight_to_fp16", "_w_fp16")
    return _coreml_backend(program, shipped.inputs.paths.mlpackage)


def _ts_drops_last_position(shipped):
    """An export that returns logits for every position but the last (an off-by-one in slicing)."""
    module = torchscript.load(shipped.inputs.paths.torchscript)
    forward = torchscript.numpy_forward(module)
    return verification.Backend(
        "torchscript", shipped.inputs.paths.torchscript, lambda ids: forward(ids)[:, :-1]
    )


# --- Core ML int8 / int4 variants -------------------------------------------------------------
# A corrupted byte in the compressed weights: one channel's scale or zero point, one block's scale,
# one 4-bit value. Each moves only the elements it covers, below the quantization noise the output
# bounds allow; the exact weight check (the package against the checkpoint quantized the same way)
# sees every one.

_QUANTIZED = WEIGHT[1] + "_quantized"


def _compressed_backend(shipped: Shipped, name: str, change=None, path: str | None = None):
    path = path or shipped.inputs.paths.artifact(name)
    program = mil_executor.load_mlpackage(path)
    if change:
        change(program)
    return verification.compressed_coreml_backend(name, path, shipped.inputs.contract, program)


def _cm_const_update(program, role: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    """Changes the const feeding input `role` of the faulted weight's constexpr op."""
    name = mil_executor.compressed_input(program, _QUANTIZED, role)
    old = np.array(mil_executor.consts(program)[name])
    mil_executor.set_const(program, name, change(old))


def _bump_first(delta):
    def change(values):
        values.reshape(-1)[0] = values.reshape(-1)[0] + delta
        return values

    return change


def _scale_first(values):
    values.reshape(-1)[0] = values.reshape(-1)[0] * np.float16(SCALE)
    return values


def _int8_scale(shipped):
    return _compressed_backend(shipped, "coreml_int8", lambda p: _cm_const_update(p, "scale", _scale_first))


def _int8_zero_point(shipped):
    return _compressed_backend(
        shipped, "coreml_int8", lambda p: _cm_const_update(p, "zero_point", _bump_first(1))
    )


def _int4_scale(shipped):
    return _compressed_backend(shipped, "coreml_int4", lambda p: _cm_const_update(p, "scale", _scale_first))


def _int4_value(shipped):
    def flip(values):
        first = int(values.reshape(-1)[0])
        values.reshape(-1)[0] = first + 1 if first < 7 else first - 1  # stays a 4-bit value
        return values

    return _compressed_backend(shipped, "coreml_int4", lambda p: _cm_const_update(p, "data", flip))


def _int4_is_int8(shipped):
    """The int8 package shipped under the int4 name (iOS16, the other weight op and weights)."""
    return _compressed_backend(shipped, "coreml_int4", path=shipped.inputs.paths.mlpackage_int8)


# --- GGUF ------------------------------------------------------------------------------------


def _gguf_copy(shipped: Shipped, name: str) -> str:
    path = os.path.join(shipped.tmp, name)
    shutil.copyfile(shipped.inputs.paths.gguf, path)
    return path


def _gguf_backend(shipped: Shipped, path: str, f32_kv_cache: bool = True) -> verification.Backend:
    llama = gguf_check.load(path, f32_kv_cache=f32_kv_cache)
    inputs = shipped.inputs

    def check(report, contract, model):
        del contract, model
        verification.check_gguf_tokenizer(report, llama, inputs.tokenizer, inputs.strings)

    return verification.Backend("gguf", path, lambda ids: gguf_check.logits(llama, ids), check)


def _gguf_edit(shipped: Shipped, tag: str, change: Callable) -> verification.Backend:
    """A copy of the shipped GGUF whose bytes `change(reader)` edits in place (a writable memmap)."""
    import gguf

    path = _gguf_copy(shipped, f"{tag}.gguf")
    reader = gguf.GGUFReader(path, "r+")
    change(reader)
    reader.data.flush()
    del reader
    return _gguf_backend(shipped, path)


def _tensor(reader, name: str) -> np.ndarray:
    return next(t for t in reader.tensors if t.name == name).data


def _field_value(reader, key: str) -> np.ndarray:
    field = reader.fields[key]
    return field.parts[field.data[0]]


def _gg_scale(shipped):
    return _gguf_edit(shipped, "scale", lambda r: _tensor(r, WEIGHT[2]).__imul__(np.float32(SCALE)))


def _gg_noise(shipped):
    def change(reader):
        data = _tensor(reader, WEIGHT[2])
        data += _noise(data.shape).astype(data.dtype)

    return _gguf_edit(shipped, "noise", change)


def _gg_rope(shipped):
    return _gguf_edit(
        shipped, "rope", lambda r: _field_value(r, "llama.rope.freq_base").__imul__(ROPE_FACTOR)
    )


def _gg_eps(shipped):
    key = "llama.attention.layer_norm_rms_epsilon"
    return _gguf_edit(shipped, "eps", lambda r: _field_value(r, key).__imul__(EPS_FACTOR))


def _token_parts(reader) -> list[np.ndarray]:
    field = reader.fields["tokenizer.ggml.tokens"]
    return [field.parts[i] for i in field.data]


def _gg_swap_ids(shipped):
    """Two used tokens of the same byte length trade places in the vocabulary."""
    tokenizer = shipped.inputs.tokenizer
    used = sorted({i for text in shipped.inputs.strings for i in tokenizer.encode(text)})

    def change(reader):
        parts = _token_parts(reader)
        by_length = {}
        for i in used:
            by_length.setdefault(len(parts[i]), []).append(i)
        a, b = next(ids for size, ids in sorted(by_length.items()) if size > 1 and len(ids) >= 2)[:2]
        parts[a][:], parts[b][:] = parts[b].copy(), parts[a].copy()

    return _gguf_edit(shipped, "swap", change)


def _gg_flair_byte(shipped):
    """One byte of a flair emoji token the dataset uses changed (U+2728 sparkles -> U+2729)."""
    tokenizer = shipped.inputs.tokenizer
    used = sorted({i for text in shipped.inputs.strings for i in tokenizer.encode(text)})

    def change(reader):
        parts = _token_parts(reader)
        for part in (parts[i] for i in used):
            raw = bytes(part)
            if "\u2728".encode() in raw:
                at = raw.index("\u2728".encode()) + 2
                part[at] = part[at] + 1
                return
        raise AssertionError("no token holds the sparkles flair")

    return _gguf_edit(shipped, "flair", change)


def _gg_scale_block(variant: str):
    """The quantized `variant` GGUF (backend gguf_<variant lower>) with one block scale corrupted."""
    import gguf

    backend = "gguf_" + variant.lower()

    def inject(shipped):
        source = shipped.inputs.paths.artifact(backend)
        path = os.path.join(shipped.tmp, f"scale_block.{variant}.gguf")
        shutil.copyfile(source, path)
        reader = gguf.GGUFReader(path, "r+")
        tensor = next(t for t in reader.tensors if t.name == SCALE_BLOCK[0])
        assert tensor.tensor_type.name == variant, f"{SCALE_BLOCK[0]} is {tensor.tensor_type.name}"
        # Q8_0 and Q4_0 blocks both begin with their f16 scale.
        scale = tensor.data.reshape(-1)[:2].view(np.float16)
        scale *= np.float16(SCALE_BLOCK[1])
        reader.data.flush()
        del reader
        llama = gguf_check.load(path)
        inputs = shipped.inputs

        def check(report, contract, model):
            del contract, model
            verification.check_gguf_tokenizer(report, llama, inputs.tokenizer, inputs.strings, backend)

        return verification.Backend(backend, path, lambda ids: gguf_check.logits(llama, ids), check)

    return inject


def _gg_unpermuted(shipped):
    path = os.path.join(shipped.tmp, "unpermuted.gguf")
    gguf_export.export(shipped.model, shipped.inputs.tokenizer, path, permute_qk=False)
    return _gguf_backend(shipped, path)


def _gg_kv_f16(shipped):
    """The GGUF run with llama.cpp's f16 KV cache, checked as the f32-cache artifact it claims to be."""
    return _gguf_backend(shipped, shipped.inputs.paths.gguf, f32_kv_cache=False)


# --- TorchScript decoder: cache faults ---------------------------------------------------------
# The shipped decoder, driven through its KV cache by a step function with the mistake a runtime
# could make. Its prefill (every length, the replay) is right, so only the multi-step decode parity
# (verify/decode_parity.py) can see these.


class _OffByOnePosition(kv_decoder.TorchScriptSteps):
    """Each decoded token is written and positioned one slot too far: slot len(prompt) is never
    written, and every reply token sits one position late."""

    def decode(self, token):
        logits = self._call([token], self.pos + 1)
        self.pos += 1
        return logits


class _StaleEntry(kv_decoder.TorchScriptSteps):
    """A decoded token's keys and values never stay in the last layer's cache: that slot keeps
    what was there before (zeros, or an earlier sequence's entry) for every later step."""

    def decode(self, token):
        keys, values = self.keys[-1].clone(), self.values[-1].clone()
        logits = super().decode(token)
        self.keys[-1], self.values[-1] = keys, values
        return logits


class _NotReset(kv_decoder.TorchScriptSteps):
    """A new sequence is written after the previous one instead of from position 0."""

    def prefill(self, prompt_ids):
        return self._run(prompt_ids)


def _decoder_with(steps: type) -> Callable[[Shipped], verification.Backend]:
    def inject(shipped: Shipped) -> verification.Backend:
        path = shipped.inputs.paths.torchscript_decoder
        return verification.decoder_backend(
            path, torchscript.load(path), shipped.inputs.paths.metadata, steps=steps
        )

    return inject


# --- AOTInductor decoder: cache faults ---------------------------------------------------------
# The same three mistakes, made by a runtime driving the shipped magic-8-ball.decode.pt2 through
# its cache (conversion/aoti_decoder.py, AOTISteps): the cache tensors are the caller's, updated in
# place by the package, so a runtime's mistake is in what it hands over.


class _AotiOffByOnePosition(aoti_decoder.AOTISteps):
    """Each decoded token is written and positioned one slot too far."""

    def decode(self, token):
        logits = self.forward([token], self.pos + 1)[0, -1]
        self.pos += 1
        return logits


class _AotiStaleEntry(aoti_decoder.AOTISteps):
    """A decoded token's keys and values never stay in the last layer's cache."""

    def decode(self, token):
        keys, values = self.keys[-1].clone(), self.values[-1].clone()
        logits = super().decode(token)
        self.keys[-1].copy_(keys)  # in place: the package is handed these very tensors
        self.values[-1].copy_(values)
        return logits


class _AotiNotReset(aoti_decoder.AOTISteps):
    """A new sequence is written after the previous one instead of from position 0."""

    def prefill(self, prompt_ids):
        return self._advance(prompt_ids)


class _AotiStartsAtOne(aoti_decoder.AOTISteps):
    """Positions counted from 1: every call, the prefill of a whole sequence included, is written and
    rotated one slot late (and a sequence of max_seq_len tokens no longer fits)."""

    def forward(self, ids, pos):
        return super().forward(ids, pos + 1)


def _aoti_decoder_with(steps: type) -> Callable[[Shipped], verification.Backend]:
    def inject(shipped: Shipped) -> verification.Backend:
        paths = shipped.inputs.paths
        return verification.aoti_backend(
            paths.aoti_decoder, shipped.inputs.contract, paths.metadata, steps=steps
        )

    return inject


# --- Stateful Core ML package: cache faults ----------------------------------------------------
# The shipped stateful package through the MIL executor, driven by a step function with the
# mistake a runtime could make. Its prefill (every length, the replay) is right, so only the
# multi-step decode parity (verify/decode_parity.py) can see these.


class _StateOffByOne(coreml_stateful_steps.StatefulSteps):
    """Each decoded token is written and positioned one slot too far: slot len(prompt) keeps a pad
    token's entry, and every reply token sits one position late."""

    def decode(self, token):
        logits = self.run([int(token)], self.position + 1)[-1]
        self.position -= 1  # the next token goes one slot after this one, one too far again
        return logits


class _StateStaleEntry(coreml_stateful_steps.StatefulSteps):
    """A decoded token's keys and values never stay in the last layer's slots of the state: what was
    there before (a pad token's entry, or zeros) is read at every later step."""

    def decode(self, token):
        kept = {name: self.state.values[name][-1].copy() for name in coreml_stateful.STATE_NAMES}
        logits = super().decode(token)
        for name, value in kept.items():
            self.state.values[name][-1] = value
        return logits


class _StateNotReset(coreml_stateful_steps.StatefulSteps):
    """A new sequence is written after the previous one on the same state, instead of from
    position 0 on a fresh state (make_state())."""

    def prefill(self, prompt_ids):
        if self.state is None:
            self.state = self.new_state()
        return self.run(list(prompt_ids), self.position)[-1]


def _stateful_with(steps: type) -> Callable[[Shipped], verification.Backend]:
    def inject(shipped: Shipped) -> verification.Backend:
        paths, pad_id = shipped.inputs.paths, shipped.inputs.tokenizer.pad_id
        return verification.stateful_coreml_backend(paths.mlpackage_stateful, pad_id, steps=steps)

    return inject


# The Core ML int8/int4 variants' byte-level faults: only the exact weight and spec checks see
# them, so //tests:gate_power runs them through the artifact's own checks alone
# (gate_power.run_content_faults), seconds each instead of a whole executor verification.
COMPRESSED_FAULTS = (
    Fault(
        "scale_block_corrupted",
        f"one scale of {WEIGHT[1]} x {SCALE} (an int8 channel, an int4 block)",
        {"coreml_int8": _int8_scale, "coreml_int4": _int4_scale},
    ),
    Fault("zero_point_shifted", f"one int8 zero point of {WEIGHT[1]} + 1", {"coreml_int8": _int8_zero_point}),
    Fault("int4_value_flipped", f"one 4-bit value of {WEIGHT[1]} +- 1", {"coreml_int4": _int4_value}),
    Fault("int8_shipped_as_int4", "the int8 package under the int4 name", {"coreml_int4": _int4_is_int8}),
)

FAULTS = (
    Fault(
        "scale_0.3%",
        f"{WEIGHT[0]} x {SCALE}",
        {"torchscript": _ts_scale, "coreml": _cm_scale, "gguf": _gg_scale},
    ),
    Fault(
        "noise_1e-4",
        f"{WEIGHT[0]} + N(0, {NOISE:g})",
        {"torchscript": _ts_noise, "coreml": _cm_noise, "gguf": _gg_noise},
    ),
    Fault(
        "rope_base_+3%",
        f"rope theta x {ROPE_FACTOR}",
        {"torchscript": _ts_rope, "coreml": _cm_rope, "gguf": _gg_rope},
    ),
    Fault("norm_eps_x10", f"RMSNorm epsilon x {EPS_FACTOR:g}", {"coreml": _cm_eps, "gguf": _gg_eps}),
    Fault("qk_unpermuted", "Q/K rows left in HF order", {"gguf": _gg_unpermuted}),
    Fault("kv_f16_claimed_f32", "f16 KV cache under f32 bounds", {"gguf": _gg_kv_f16}),
    Fault("frozen_length", "RoPE slice frozen by int(T)", {"torchscript": _ts_frozen, "coreml": _cm_frozen}),
    Fault("token_ids_swapped", "two vocabulary entries swapped", {"gguf": _gg_swap_ids}),
    Fault("flair_byte", "one byte of a flair token", {"gguf": _gg_flair_byte}),
    Fault("weight_consts_renamed", "Core ML weight consts under other names", {"coreml": _cm_renamed}),
    Fault("last_position_dropped", "logits for T-1 positions", {"torchscript": _ts_drops_last_position}),
    Fault(
        "scale_block_x16",
        f"the f16 scale of {SCALE_BLOCK[0]}'s first block x {SCALE_BLOCK[1]:g}",
        {"gguf_q8_0": _gg_scale_block("Q8_0"), "gguf_q4_0": _gg_scale_block("Q4_0")},
    ),
    Fault(
        "cache_off_by_one",
        "decoded tokens one cache slot (and position) late",
        {"torchscript_decoder": _decoder_with(_OffByOnePosition)},
    ),
    Fault(
        "cache_stale_entry",
        "decoded tokens' entries lost from the last layer's cache",
        {"torchscript_decoder": _decoder_with(_StaleEntry)},
    ),
    Fault(
        "cache_not_reset",
        "a new sequence continues the previous one's cache",
        {"torchscript_decoder": _decoder_with(_NotReset)},
    ),
    Fault(
        "aoti_cache_off_by_one",
        "the AOTInductor decoder's decoded tokens one cache slot (and position) late",
        {"aoti_decoder": _aoti_decoder_with(_AotiOffByOnePosition)},
    ),
    Fault(
        "aoti_cache_stale_entry",
        "the AOTInductor decoder's decoded tokens' entries lost from the last layer's cache",
        {"aoti_decoder": _aoti_decoder_with(_AotiStaleEntry)},
    ),
    Fault(
        "aoti_positions_from_one",
        "the AOTInductor decoder driven with positions counted from 1",
        {"aoti_decoder": _aoti_decoder_with(_AotiStartsAtOne)},
    ),
    Fault(
        "aoti_cache_not_reset",
        "a new sequence continues the previous one's cache in the AOTInductor decoder",
        {"aoti_decoder": _aoti_decoder_with(_AotiNotReset)},
    ),
    Fault(
        "state_off_by_one",
        "decoded tokens one state slot (and position) late",
        {"coreml_stateful": _stateful_with(_StateOffByOne)},
    ),
    Fault(
        "state_stale_entry",
        "decoded tokens' entries lost from the last layer's state",
        {"coreml_stateful": _stateful_with(_StateStaleEntry)},
    ),
    Fault(
        "state_not_reset",
        "a new sequence continues the previous one's state",
        {"coreml_stateful": _stateful_with(_StateNotReset)},
    ),
)

# --- Content faults: small faults in the quantized and compressed files ---------------------------
# Each moves the outputs less than the quantization noise the output bounds allow, so only the
# artifact's exact content check sees it (verification.check_gguf_content for a GGUF,
# check_coreml_compressed for a Core ML int8/int4 package). //tests:gate_power runs them through the
# artifact's own checks only (gate_power.run_content_faults: Backend.interface_check, as
# verification.verify calls it), not the minutes of output comparisons that cannot see them.

Q8_0_SCALES, Q4_0_SCALES = 1.003, 1.01
LEVEL_EVERY = 16  # one quant level up on every 16th weight: 6.25% of the matrix
# Each GGUF backend -> another variant's file, shipped under its name.
OTHER_VARIANT = {"gguf": "gguf_f16", "gguf_f16": "gguf", "gguf_q8_0": "gguf_q4_0", "gguf_q4_0": "gguf_q8_0"}


def _gguf_file_copy(shipped: Shipped, backend: str, tag: str, change: Callable) -> verification.Backend:
    """A copy of the shipped GGUF of `backend` whose WEIGHT[2] data `change(data)` edits in place (the
    gguf reader's writable memory map: float values, or uint8 blocks [n_blocks, block bytes] of a
    quantized tensor), loaded as verification loads it."""
    import gguf

    path = os.path.join(shipped.tmp, f"{tag}.{backend}.gguf")
    shutil.copyfile(shipped.inputs.paths.artifact(backend), path)
    reader = gguf.GGUFReader(path, "r+")
    tensor = next(t for t in reader.tensors if t.name == WEIGHT[2])
    variant = tensor.tensor_type.name
    assert variant == verification.GGUF_VARIANTS[backend].upper(), f"{WEIGHT[2]} is {variant}"
    block_bytes = gguf_reference.BLOCK_BYTES.get(variant)
    change(tensor.data.reshape(-1, block_bytes) if block_bytes else tensor.data)
    reader.data.flush()
    del reader
    return verification.gguf_backend(backend, path, shipped.inputs)


def _gg_all_scales(backend: str, factor: float):
    """Every block scale of WEIGHT[2] x factor (each block begins with its f16 scale)."""

    def change(blocks):
        scales = blocks[:, :2].copy().view("<f2")
        blocks[:, :2] = (scales * np.float16(factor)).astype("<f2").view(np.uint8)

    return lambda shipped: _gguf_file_copy(shipped, backend, f"scales_x{factor}", change)


def _gg_levels_up(shipped):
    """One Q4_0 quant level up (down from the top level) on every LEVEL_EVERY-th weight of WEIGHT[2]:
    in each block of 32, elements 0 and 16, the two nibbles of its first quant byte."""

    def change(blocks):
        byte = blocks[:, 2].astype(np.int32)
        low, high = byte & 0x0F, byte >> 4
        low = np.where(low < 15, low + 1, low - 1)
        high = np.where(high < 15, high + 1, high - 1)
        blocks[:, 2] = (low | (high << 4)).astype(np.uint8)

    assert gguf_reference.BLOCK // LEVEL_EVERY == 2  # the two nibbles of one byte per block
    return _gguf_file_copy(shipped, "gguf_q4_0", "levels_up", change)


def _gg_one_bit(backend: str):
    """The lowest mantissa bit of WEIGHT[2]'s first value flipped (an f32 or f16 file)."""

    def change(data):
        data.view(np.uint8).reshape(-1)[0] ^= 1

    return lambda shipped: _gguf_file_copy(shipped, backend, "one_bit", change)


def _gg_other_variant(backend: str):
    """OTHER_VARIANT[backend]'s file shipped under `backend`'s name."""

    def inject(shipped):
        path = os.path.join(shipped.tmp, f"{OTHER_VARIANT[backend]}_as_{backend}.gguf")
        shutil.copyfile(shipped.inputs.paths.artifact(OTHER_VARIANT[backend]), path)
        return verification.gguf_backend(backend, path, shipped.inputs)

    return inject


def _largest_plain_const(program) -> str:
    """The largest const a compressed package holds uncompressed (mil_executor.plain_weights): a
    RoPE table."""
    plain = {name: value.size for name, value in mil_executor.plain_weights(program).items()}
    return max(sorted(plain), key=plain.get)


def _int4_plain_const(shipped):
    def change(program):
        _cm_update(program, _largest_plain_const(program), lambda value: value * SCALE)

    return _compressed_backend(shipped, "coreml_int4", change)


def _plain_const_renamed(backend: str):
    """The package's largest uncompressed const under another name (a converter upgrade that
    renames it: the check must not pass by finding nothing to compare)."""

    def change(program):
        name = _largest_plain_const(program)
        for op in program.function.operations:
            if op.op_type == "const" and op.outputs[0].name == name:
                op.outputs[0].name = name + "_renamed"

    return lambda shipped: _compressed_backend(shipped, backend, change)


def _int8_all_channel_scales(shipped):
    """Every per-channel scale of WEIGHT[1] x SCALE."""
    return _compressed_backend(
        shipped,
        "coreml_int8",
        lambda p: _cm_const_update(p, "scale", lambda values: values * np.float16(SCALE)),
    )


CONTENT_FAULTS = (
    Fault(
        "q8_0_scales_x1.003",
        f"every block scale of {WEIGHT[2]} x {Q8_0_SCALES}",
        {"gguf_q8_0": _gg_all_scales("gguf_q8_0", Q8_0_SCALES)},
    ),
    Fault(
        "q4_0_scales_x1.01",
        f"every block scale of {WEIGHT[2]} x {Q4_0_SCALES}",
        {"gguf_q4_0": _gg_all_scales("gguf_q4_0", Q4_0_SCALES)},
    ),
    Fault(
        "q4_0_levels_up_6%",
        f"one quant level up on every {LEVEL_EVERY}th weight of {WEIGHT[2]}",
        {"gguf_q4_0": _gg_levels_up},
    ),
    Fault(
        "int4_fp16_const_x1.003",
        f"the int4 package's largest uncompressed fp16 const x {SCALE}",
        {"coreml_int4": _int4_plain_const},
    ),
    Fault(
        "int8_channel_scales",
        f"every per-channel scale of {WEIGHT[1]} x {SCALE}",
        {"coreml_int8": _int8_all_channel_scales},
    ),
    Fault(
        "gguf_one_bit",
        f"the lowest bit of {WEIGHT[2]}'s first value",
        {backend: _gg_one_bit(backend) for backend in ("gguf", "gguf_f16")},
    ),
    Fault(
        "gguf_other_variant",
        "another variant's GGUF under this one's name",
        {backend: _gg_other_variant(backend) for backend in OTHER_VARIANT},
    ),
    Fault(
        "plain_const_renamed",
        "the package's largest uncompressed fp16 const under another name",
        {backend: _plain_const_renamed(backend) for backend in ("coreml_int8", "coreml_int4")},
    ),
)
# The check each content fault must trip (besides any other).
CONTENT_CATCHERS = {
    **{fault.name: "weights_elements_changed" for fault in CONTENT_FAULTS[:6]},
    "gguf_other_variant": "weights_tensors_mismatched",
    "plain_const_renamed": "weights_consts_unaccounted",
}
