"""Numeric floors: how far a correct artifact sits from fp32 eager, measured on the same model and inputs.

A bound picked as a constant to pass catches only gross faults: the seed's GGUF bound was about
6,500x llama.cpp's measured error. Here every bound is a floor times a stated factor, and a floor is
measured, not assumed: each precision an artifact computes in has an emulation in eager PyTorch,
run on the same model and the same inputs the artifacts are checked on (verify/inputs.py), and
compared with fp32 eager by the same metrics (verify/parity.py, compare_logits).

  f32     the model in float64 against float32 eager: the reordering noise that any second f32
          implementation (TorchScript, Core ML in fp32) carries.
  ggml_f32  f32, with RoPE as llama.cpp computes it: the f32 GGUF with an f32 KV cache.
  fp16    the model in float16, weights and activations: Core ML's fp16 compute.
  w_f16   float32 eager with every weight matrix in float16 and every matmul input rounded to
          float16: llama.cpp on an f16 GGUF (ggml converts the f32 operand of a matmul with f16
          weights to f16).
  kv_f16  float32 eager with attention computed as llama.cpp's CPU kernels compute it over its
          default f16 KV cache, which Ollama uses: K and V stored in float16, and the float32
          operand of each product with them (Q, then the softmax weights) rounded to float16, as
          ggml converts it for an f16 matmul. (Rounding K and V alone under-estimated llama.cpp's
          error: the seed-1 and seed-2 students then failed their replay max-KL bounds.)
  w_q8_0, w_q4_0  the Q8_0 / Q4_0 GGUF (conversion/gguf_quant.py): every weight matrix replaced
          by exactly what the file holds (quantized with the exporter's own plan and read back,
          conversion/gguf_quant.round_trip), the model in float64, and the input of every
          projection rounded through Q8_0 blocks along its rows, as ggml's CPU kernels quantize
          the f32 operand of a product with Q8_0 or Q4_0 weights. Row order is no matter: the
          exporter's Q/K row permutation moves whole rows, and blocks lie within a row.
  int8    the fp16 model with every weight matrix as the Core ML int8 package holds it (per-channel
  int4    int8, or int4 per block of 32): quantized by coremltools' own quantizer and decompressed
          by its own code (conversion/coreml_compress.quantize_like_package), so the emulation
          computes with exactly the package's weights; verification checks the package holds
          them, element for element.

llama.cpp's RoPE. ggml does not read a table: its CPU rope computes each angle in float32, the
first of a head's pairs as the position and each next one as the previous times base^(-2/d), then
cosf and sinf of it. The angle's rounding grows with the position; at T512 on the wide
configuration it alone accounts for the f32 GGUF's largest logit error (about 1.3e-4, over seven
times the f32 floor, which tables in float64 leave out). Every llama.cpp precision (LLAMA_CPP)
computes with those tables (ggml_rope_tables), so its floor holds that error and nothing more.

Why a factor of 4: an artifact and its emulation round in different places, so the artifact's
error is of the floor's order but not equal to it; on the default student every artifact measured
at most about 2x its own length's floor, and the largest on any verified chain was one Core ML
extreme (max KL at T512 on the wide configuration) at about 3.3x (the report prints value and
floor side by side: `bazel build //pipeline:report.json`). A factor of 4 leaves room for that, and
still sits far below the faults of //tests:gate_power. KL is quadratic in a logit error, so the
same factor on a KL floor is the stricter bound.

Scopes: every contract length (the numeric rows), the behaviour replay, and "decode": the steps of
multi-step decode parity (verify/decode_parity.py), eager's and the emulation's logits each through
its own KV cache along the same sequences (held-out questions with eager's replies, the rows of the
longest length fed one token per call), so a KV-cache artifact is bounded by the same floors.

Floors per length: every contract length gets its own floors, measured on that length's rows
only, for every metric, and the report shows each length's own. Nothing is pooled across lengths:
a mean over 128 positions says nothing about one over 1,024, and taking the largest over the
lengths let a floor measured at one length bound another (a top-1 floor of 1/128 from T64 allowed
32 flips of 1,024 at T512; the largest logit error of the longest length bounded the shortest).
The extremes (max abs, max KL) are single worst positions, noisier than means, but an artifact and
its emulation share the length's rows, and once llama.cpp's RoPE was emulated (below) no verified
artifact's extreme came within the factor of its own length's floor on the four students the
pipeline verifies (the report shows each value beside its floor).

A count metric (top-1 disagreement) is never floored below its resolution at that length, one
position of the rows compared there (1 / (rows x T)): an emulation that happens to flip nothing
does not make a single near-tie flip a failure.

Two workers: each precision's floors are independent of every other's, so measure() first does
the work they share (eager's logits at every length, along the replay and along the decode steps,
and every emulation, the SAME_COMPUTATION and SAME_WEIGHTS pairs resolved; the Core ML packages'
weights meanwhile in a forked process, since eager's side is serial), then forks up to two
worker processes (workers_default: both cores where there are two) that measure the precisions'
lengths and replay, and their decode steps, as separate jobs, the costly float16 ones first. Each job
computes single threaded on inputs it inherits, so its floors are the same to the bit in any worker
and in any order; they are assembled in the precisions' order. The decode steps stay one forward per
step through forced_logits' groups of equal prompt lengths: regrouping them (rows of different
prompts at the same position in one batch) is not bit-identical on CPU, where a product's rows round
differently with the batch (float32 below 4 rows, float64 in a batch's last rows past a multiple of
4, float16 for a batch of one), so it would move the floors and the decode reference verification
uses.

Independent references (REFERENCES): each lossy variant's weights are also quantized by code
written from the format's definition, not by the exporter's (verify/gguf_files/gguf_reference.py for ggml's
Q8_0 and Q4_0, verify/coreml/coreml_reference.py for Core ML's int8 and int4), with the variant's plan
(which tensor gets which type) stated here. The reference's KL and top-1 disagreement bound the
variant's own (conversion/gates.py, quality bounds): a regression in the exporter's plan moves the
emulation's floor along with the artifact, but not the reference. A reference that computes as
its variant's emulation to the bit (the same weights, and for a GGUF variant the same Q8_0 blocks of
every projection input, checked while the variant's forwards run) would measure the same floors,
so it is given them instead of running its own forwards (SAME_COMPUTATION, SAME_WEIGHTS); a plan
or quantizer that differs anywhere makes it differ, and it is measured on its own.
"""

import concurrent.futures
import copy
import math
import multiprocessing
import os

import numpy as np
import torch
from torch.nn import functional as F

from conversion import gates as gates_lib
from verify import parity

FACTOR = 4.0
REPLAY = "replay"  # the scope of the behaviour replay's metrics, beside "T<length>"
DECODE = "decode"  # the scope of multi-step decode parity (verify/decode_parity.py)
METHODS = {
    "f32": "float64 eager vs float32 eager",
    "ggml_f32": "float64 eager with RoPE as llama.cpp's ggml computes it (float32 angles), vs float32 eager",
    "fp16": "float16 eager (weights and activations) vs float32 eager",
    "kv_f16": "float32 eager, attention with Q, K, V and softmax weights in float16, vs float32 eager",
    "w_f16": "float32 eager, weight matrices and matmul inputs in float16, vs float32 eager",
    "w_q8_0": "float64 eager, weight matrices as the Q8_0 GGUF stores them, projection inputs "
    "through Q8_0 blocks, vs float32 eager",
    "w_q4_0": "float64 eager, weight matrices as the Q4_0 GGUF stores them, projection inputs "
    "through Q8_0 blocks, vs float32 eager",
    "int8": "float16 eager with the Core ML int8 package's weight matrices (per channel), vs float32 eager",
    "int4": "float16 eager with the Core ML int4 package's weight matrices (blocks of 32), vs float32 eager",
    "ref_q8_0": "float64 eager, weight matrices quantized to Q8_0 by an independent NumPy reference of "
    "ggml's format (verify/gguf_files/gguf_reference.py), projection inputs through Q8_0 blocks, "
    "vs float32 eager",
    "ref_q4_0": "float64 eager, weight matrices quantized to Q4_0 (the output projection Q8_0) by an "
    "independent NumPy reference of ggml's formats (verify/gguf_files/gguf_reference.py), projection inputs "
    "through Q8_0 blocks, vs float32 eager",
    "ref_int8": "float16 eager, weight matrices quantized int8 linear symmetric per output channel by an "
    "independent NumPy reference (verify/coreml/coreml_reference.py), vs float32 eager",
    "ref_int4": "float16 eager, weight matrices quantized int4 linear symmetric per block of 32 by an "
    "independent NumPy reference (verify/coreml/coreml_reference.py), vs float32 eager",
}
# The precisions of llama.cpp's artifacts: their RoPE is ggml's (module docstring).
LLAMA_CPP = ("ggml_f32", "kv_f16", "w_f16", "w_q8_0", "w_q4_0", "ref_q8_0", "ref_q4_0")
COMPRESSED = ("int8", "int4")  # precisions whose weights are quantized (conversion/coreml_compress.py)
# The GGUF variant each quantized-weight precision emulates (conversion/gguf_quant.DTYPES).
QUANTIZED_GGUF = {"w_q8_0": "Q8_0", "w_q4_0": "Q4_0"}
# Each lossy precision's independent reference (module docstring): conversion/gates.py REFERENCES.
REFERENCES = gates_lib.REFERENCES
# The references' plans, stated from the formats, not read from the exporters. GGUF: the type of
# every weight matrix (1-D tensors stay f32 and are not quantized) by checkpoint name; llama.cpp's
# quantizer stores the output projection of a Q4_0 file one step up, and for rows shorter than 256
# values that step is Q8_0. Core ML: every weight matrix compressed (its RoPE tables are buffers,
# not weights, and stay float16).
_REFERENCE_GGUF_PLAN = {
    "ref_q8_0": ("Q8_0", {}),
    "ref_q4_0": ("Q4_0", {"lm_head.weight": "Q8_0"}),
}
_REFERENCE_COREML = {"ref_int8": "int8", "ref_int4": "int4"}


def scope(length: int) -> str:
    return f"T{length}"


def torch_forward(model: torch.nn.Module):
    """ids int [B, T] (NumPy) -> float64 logits [B, T, V] through `model`, in its own dtype.

    Under inference_mode rather than no_grad: the same kernels, so the same logits to the bit, but
    no version counters or autograd bookkeeping on each operator, which counts in a small model."""

    def forward(ids) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.as_tensor(np.asarray(ids)).long()).to(torch.float64).numpy()

    return forward


def _f16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def _round_input_to_fp16(module, inputs):
    del module
    return (_f16(inputs[0]),)


def _attention_over_f16_cache(q, k, v, attn_mask=None, is_causal: bool = False, **unused):
    """Attention as ggml computes it over an f16 KV cache (module docstring, kv_f16): causal, or
    under the boolean mask a KV-cache forward passes (training/model.py)."""
    if unused or (attn_mask is None) == (not is_causal):
        raise ValueError("the kv_f16 emulation covers the student's causal or masked attention only")
    scores = (_f16(q) @ _f16(k).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if attn_mask is None:
        length = q.shape[-2]
        attn_mask = torch.ones(length, length, dtype=torch.bool).tril()
    scores = scores.masked_fill(~attn_mask, float("-inf"))
    return _f16(torch.softmax(scores, dim=-1)) @ _f16(v)


class _F16CacheAttention(torch.nn.Module):
    """Runs the model with F.scaled_dot_product_attention replaced by _attention_over_f16_cache.

    The model's one forward (training/model.py) stays the only definition of the network; only the
    attention kernel is swapped, for the duration of each call."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, cache=None) -> torch.Tensor:
        original = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = _attention_over_f16_cache
        try:
            return self.model(input_ids, cache)
        finally:
            F.scaled_dot_product_attention = original


class _OncePerInput:
    """A projection input hook that rounds each activation tensor once.

    Q, K and V read the same tensor, and so do the feed-forward's gate and up projections: the
    rounding is a function of the tensor alone, so while the same tensor object comes in, the first
    result is returned again instead of being recomputed (the Q8_0 round trip is most of a quantized
    emulation's extra cost). The model never writes an activation in place, and the hook holds the
    tensor it saw, so that object cannot be freed and its identity taken by another."""

    def __init__(self, round_input):
        self.round_input = round_input
        self.last = None  # (the input tensor, its rounded inputs)
        # Set by _measure_job for a GGUF reference that shares this emulation's weights
        # (SAME_WEIGHTS): another rounding, applied to every input too; differs turns True the
        # first time its bits are not round_input's.
        self.check = None
        self.differs = False

    def __call__(self, module, inputs):
        if self.last is None or self.last[0] is not inputs[0]:
            rounded = self.round_input(module, inputs)
            if self.check is not None and not self.differs:
                self.differs = not _same_bits(rounded[0], self.check(module, inputs)[0])
            self.last = (inputs[0], rounded)
        return self.last[1]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the bit (a NaN equals only the same NaN, -0.0 is not 0.0)."""
    bits = [np.ascontiguousarray(t.numpy()).view(np.uint8) for t in (a, b)]
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(*bits)


def _hook_projections(twin: torch.nn.Module, round_input) -> None:
    """Every Linear of `twin` gets its input through round_input (one _OncePerInput per model)."""
    hook = _OncePerInput(round_input)
    for module in twin.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(hook)


def _projection_hook(twin: torch.nn.Module) -> "_OncePerInput | None":
    """The _OncePerInput of `twin`'s projections, if it has one."""
    for module in twin.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, _OncePerInput):
                return hook
    return None


def _round_input_through_q8_0(module, inputs):
    """ggml quantizes the f32 operand of a Q8_0/Q4_0 product to Q8_0 blocks (its vec_dot type).

    gguf's own Q8_0 block code (what gguf_quant.round_trip runs), applied to every block of the
    activations at once: gguf.quants.quantize applies it to groups of 16 rows in a Python loop, and
    every block is computed on its own, so the result is the same to the bit
    (verify/floors/floors_test.py)."""
    del module
    from gguf.quants import Q8_0

    x = inputs[0]
    values = x.detach().to(torch.float32).numpy()
    if values.shape[-1] % Q8_0.block_size:
        raise ValueError(f"Q8_0 blocks of {Q8_0.block_size} do not divide rows of {values.shape[-1]}")
    blocks = np.ascontiguousarray(values).reshape(-1, Q8_0.block_size)
    rounded = Q8_0.dequantize_blocks(Q8_0.quantize_blocks(blocks)).reshape(values.shape)
    return (torch.from_numpy(rounded).to(x.dtype),)


def _as_gguf_weights(twin: torch.nn.Module, variant: str) -> None:
    """Every weight of `twin` replaced by what the `variant` GGUF file holds for it (float64)."""
    from conversion import gguf_export, gguf_quant

    if twin.cfg.tie_embeddings:  # the file stores token_embd and output apart, maybe in two types
        twin.lm_head.weight = torch.nn.Parameter(twin.embed.weight.detach().clone())
    state = dict(twin.named_parameters())
    with torch.no_grad():
        for state_name, name in gguf_export.tensor_names(twin.cfg).items():
            weight = state[state_name]
            array = weight.detach().to(torch.float32).numpy()
            stored = gguf_quant.round_trip(array, gguf_quant.tensor_type(variant, name, array))
            weight.copy_(torch.from_numpy(stored))


def ggml_rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """(cos, signed sin) [max_seq_len, head_dim] float32 in training/model.py Rotary's layout, from
    the angles as ggml's CPU rope computes them (module docstring, llama.cpp's RoPE)."""
    half = head_dim // 2
    scale = np.float32(np.float32(theta) ** np.float32(-2.0 / head_dim))
    angles = np.empty((max_seq_len, half), dtype=np.float32)
    angles[:, 0] = np.arange(max_seq_len, dtype=np.float32)
    for i in range(1, half):  # theta *= theta_scale, one float32 product per pair, as ggml does
        angles[:, i] = angles[:, i - 1] * scale
    cos, sin = np.cos(angles), np.sin(angles)
    return np.concatenate([cos, cos], axis=1), np.concatenate([-sin, sin], axis=1)


def _with_ggml_rope(twin: torch.nn.Module) -> torch.nn.Module:
    """`twin` with its RoPE tables replaced by ggml's (LLAMA_CPP precisions)."""
    cfg = twin.cfg
    cos, sin = ggml_rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    with torch.no_grad():
        twin.rotary.cos.copy_(torch.from_numpy(cos))
        twin.rotary.sin.copy_(torch.from_numpy(sin))
    return twin


def emulation(model: torch.nn.Module, precision: str, held: list | None = None) -> torch.nn.Module:
    """A copy of `model` that computes the way an artifact of `precision` does (module docstring).
    held: for int8 and int4, package_weights(model, precision) if already computed."""
    if precision not in METHODS:
        raise ValueError(f"precision {precision!r}; expected one of {sorted(METHODS)}")
    twin = copy.deepcopy(model)
    twin.eval()
    if precision in LLAMA_CPP:
        _with_ggml_rope(twin)
    if precision in ("f32", "ggml_f32"):
        return twin.double()
    if precision == "fp16":
        return twin.half()
    if precision in QUANTIZED_GGUF:
        _as_gguf_weights(twin, QUANTIZED_GGUF[precision])
        twin = twin.double()
        _hook_projections(twin, _round_input_through_q8_0)
        return twin
    if precision in COMPRESSED:
        return _with_weights(twin.half(), held if held is not None else package_weights(model, precision))
    if precision in _REFERENCE_GGUF_PLAN:
        return _gguf_reference(twin, *_REFERENCE_GGUF_PLAN[precision])
    if precision in _REFERENCE_COREML:
        return _coreml_reference(twin.half(), _REFERENCE_COREML[precision])
    if precision == "w_f16":
        with torch.no_grad():
            for weight in twin.parameters():
                if weight.ndim == 2:
                    weight.copy_(_f16(weight))
        _hook_projections(twin, _round_input_to_fp16)
        return twin
    wrapped = _F16CacheAttention(twin)
    wrapped.eval()
    return wrapped


def package_weights(model: torch.nn.Module, compression: str) -> list:
    """Each weight matrix of `model` in float16 as the compressed package holds it (module docstring,
    int8/int4), None where the package leaves it uncompressed; in parameters() order."""
    from conversion import coreml_compress  # coremltools: only for these precisions

    return [
        coreml_compress.quantize_like_package(weight.detach().half().numpy(), compression)
        if weight.ndim == 2
        else None
        for weight in model.parameters()
    ]


def _with_weights(model: torch.nn.Module, held: list) -> torch.nn.Module:
    """`model` (float16) with each parameter that `held` gives (package_weights) replaced. Buffers
    (the RoPE tables) stay float16, as the package keeps them."""
    with torch.no_grad():
        for weight, values in zip(model.parameters(), held, strict=True):
            if values is not None:
                weight.copy_(torch.from_numpy(values))
    return model


def _through_reference_q8_0(module, inputs):
    """_round_input_through_q8_0 with the independent reference's Q8_0 blocks."""
    del module
    from verify.gguf_files import gguf_reference

    x = inputs[0]
    values = np.ascontiguousarray(x.detach().to(torch.float32).numpy())
    rounded = gguf_reference.dequantize(gguf_reference.quantize_q8_0(values)).reshape(values.shape)
    return (torch.from_numpy(rounded).to(x.dtype),)


def _gguf_reference(twin: torch.nn.Module, matrix_type: str, overrides: dict) -> torch.nn.Module:
    """The reference of a quantized GGUF (module docstring): float64, every weight matrix through
    the independent reference's blocks of its planned type, projection inputs through Q8_0."""
    from verify.gguf_files import gguf_reference

    if twin.cfg.tie_embeddings:  # a GGUF file stores the output projection as a tensor of its own
        twin.lm_head.weight = torch.nn.Parameter(twin.embed.weight.detach().clone())
    with torch.no_grad():
        for name, weight in twin.named_parameters():
            if weight.ndim == 2:
                values = np.ascontiguousarray(weight.detach().to(torch.float32).numpy())
                blocks = gguf_reference.QUANTIZERS[overrides.get(name, matrix_type)](values)
                weight.copy_(torch.from_numpy(gguf_reference.dequantize(blocks).reshape(values.shape)))
    twin = twin.double()
    _hook_projections(twin, _through_reference_q8_0)
    return twin


def _coreml_reference(model: torch.nn.Module, compression: str) -> torch.nn.Module:
    """The reference of a compressed Core ML variant: float16, every weight matrix as
    verify/coreml/coreml_reference.py quantizes it."""
    from verify.coreml import coreml_reference

    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim == 2:
                weight.copy_(torch.from_numpy(coreml_reference.quantize(weight.numpy(), compression)))
    return model


# A Core ML variant's reference computes as the variant's emulation does (float16, every weight
# matrix replaced, no hooks: emulation()), so with the same weights to the bit it gives the same
# logits: measure() then reuses the variant's floors instead of computing them again. The weights
# are quantized independently either way (_coreml_reference), and a reference whose quantizer
# disagrees anywhere is measured on its own.
SAME_COMPUTATION = {"ref_int8": "int8", "ref_int4": "int4"}
# A GGUF variant's reference computes as the variant's emulation does (float64, ggml's RoPE, every
# weight matrix replaced, each projection input through Q8_0 blocks) except that its blocks, of
# the weights and of the inputs, come from its own code (_gguf_reference). With the same weights to
# the bit, its logits are the variant's wherever its Q8_0 blocks of every projection input are
# gguf's to the bit, each layer then seeing the same inputs as the variant's: so the variant's
# logits job rounds every input both ways (_OncePerInput.check), and if they never differ, measure()
# gives the reference the variant's floors of that job instead of running its forwards again. A
# reference whose weights or input blocks differ anywhere is measured on its own.
SAME_WEIGHTS = {"ref_q8_0": "w_q8_0", "ref_q4_0": "w_q4_0"}


def _hooked(module: torch.nn.Module) -> bool:
    return any(m._forward_pre_hooks or m._forward_hooks for m in module.modules())


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """The same module type, and every parameter and buffer of the two equal (name, dtype, value).
    Their hooks are not compared: SAME_COMPUTATION requires none, SAME_WEIGHTS checks them."""

    def tensors(module):
        return {**dict(module.named_parameters()), **dict(module.named_buffers())}

    ta, tb = tensors(a), tensors(b)
    return (
        type(a) is type(b)
        and ta.keys() == tb.keys()
        and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)
    )


def _floored(comparison: parity.Comparison) -> dict[str, float]:
    values = comparison.gated()
    values["top1_disagreement"] = max(values["top1_disagreement"], 1.0 / comparison.positions)
    return values


def workers_default() -> int:
    """Both cores where the process may run on two (module docstring, "Two workers"). Linux only:
    elsewhere (macOS has no sched_getaffinity, and forking a process that has loaded its system
    frameworks is not safe there) the precisions are measured in this process."""
    if not hasattr(os, "sched_getaffinity"):
        return 1
    return min(2, len(os.sched_getaffinity(0)))


# What every job reads: set by measure() before the pool forks, so the workers inherit it.
_SHARED: dict = {}
# A job's cost relative to a float32 logits job (balance only, never results), as measured on the
# default and wide students: CPU PyTorch has no fast float16 matmul (about 6x), and rounding every
# projection input through Q8_0 blocks (NumPy) triples a float64 model's cost, where rounding it to
# float16 costs little. A decode job computes about half the arithmetic of the lengths and replay,
# but one forward per step, whose fixed cost adds about a float32 logits job: so the cheap
# precisions' decode jobs are their longest, and run before their logits jobs, leaving the
# shortest jobs for the end.
_COST = {torch.float16: 6.0, torch.float64: 1.5, torch.float32: 1.0}
_Q8_0_INPUTS = 3.0


def _cost(job) -> float:
    emulated = _SHARED["emulations"][job[0]]
    arithmetic = _COST[next(emulated.parameters()).dtype]
    hook = _projection_hook(emulated)
    if hook is not None and hook.round_input is not _round_input_to_fp16:
        arithmetic *= _Q8_0_INPUTS
    return arithmetic / 2 + 1.0 if job[1] == DECODE else arithmetic


def _measure_job(job) -> dict[str, dict[str, dict[str, float]]]:
    """{precision: its scopes} of one job: (precision, "logits") = every length and the replay,
    (precision, DECODE) = the decode steps; a logits job whose precision a GGUF reference shares
    weights with (SAME_WEIGHTS) also gives the reference the same scopes, if the reference's input
    blocks were the same to the bit throughout. Reads only _SHARED, so a forked worker computes what
    the parent would."""
    from verify import decode_parity

    shared = _SHARED
    precision, part = job
    emulated = shared["emulations"][precision]
    if part == DECODE:
        with torch.inference_mode():  # as torch_forward: the same steps, less bookkeeping per operator
            decoded = np.concatenate(decode_parity.forced_logits(emulated, shared["seqs"]))
        return {
            precision: {DECODE: _floored(parity.compare_logits(shared["decode_refs"][None], decoded[None]))}
        }
    reference = shared["checked"].get(precision)
    if reference is None:
        return {precision: _logits_scopes(emulated)}
    # The variant's rounding, and the reference's own alongside it on every input (SAME_WEIGHTS).
    hook = _projection_hook(emulated)
    hook.check = _projection_hook(shared["emulations"][reference]).round_input
    hook.differs, hook.last = False, None
    try:
        scopes = _logits_scopes(emulated)
        differs = hook.differs
    finally:
        hook.check, hook.differs, hook.last = None, False, None
    if differs:
        return {precision: scopes}
    return {precision: scopes, reference: {where: dict(values) for where, values in scopes.items()}}


def _logits_scopes(emulated: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Every length's scope and the replay's, of one emulation (_measure_job)."""
    shared = _SHARED
    twin = torch_forward(emulated)
    rows_by_length, replay_args = shared["rows_by_length"], shared["replay_args"]
    scopes = {}
    for length, ref in shared["refs"].items():
        got = np.concatenate([twin(row) for row in rows_by_length[length]], axis=1)
        scopes[scope(length)] = _floored(parity.compare_logits(ref, got))
    replay = parity.behaviour_check(
        shared["eager"], twin, *replay_args, 0.0, artifact_batch=64, reference=shared["reference"]
    )
    if replay.comparison is None:
        raise ValueError("the behaviour replay compared no positions; give questions that fit the lengths")
    scopes[REPLAY] = _floored(replay.comparison)
    return scopes


def _shared_package_weights(compression: str) -> list:
    return package_weights(_SHARED["model"], compression)


def _worker_init() -> None:
    torch.set_num_threads(1)  # one core per worker: the pool is the parallelism


def _run_jobs(jobs: list, workers: int) -> dict:
    """{job: _measure_job(job)}, the most costly jobs first so the cheap ones fill in at the end.
    A worker's exception is raised here (with its traceback as the cause); a worker that dies
    breaks the pool (BrokenProcessPool) instead of leaving measure waiting."""
    ordered = sorted(jobs, key=_cost, reverse=True)
    if workers <= 1:
        return {job: _measure_job(job) for job in ordered}
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init
    ) as pool:
        futures = {job: pool.submit(_measure_job, job) for job in ordered}
        try:
            return {job: future.result() for job, future in futures.items()}
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the jobs not started yet would be wasted
            raise


def measure(
    model, rows_by_length, prompts, continuations, pad_id: int, precisions, workers: int | None = None
) -> dict:
    """{precision: {scope: {metric: floor}}} for the rows of each length (each its own floors), the
    behaviour replay and multi-step decoding (the decode parity's sequences, through each
    emulation's KV cache). A reference precision (REFERENCES' values) bounds no KV-cache artifact,
    so it has no decode scope.

    The work every precision shares (eager's logits, its replay and decode steps, the emulations)
    is done first; then each precision's lengths and replay, and its decode steps, are independent
    jobs, run by `workers` forked processes (default: workers_default()). Every job computes single
    threaded on the same inputs, so the floors are the same to the bit whatever the worker count or
    the order the jobs finish in (verify/floors/floors_test.py)."""
    from verify import decode_parity

    workers = workers_default() if workers is None else workers
    # The Core ML packages' weights (coremltools' import and quantizer, ~1 s) are computed by a
    # forked process while this one computes eager's side, which is serial: the second core would
    # otherwise idle. The same function on the same weights, so the same arrays either way.
    compressed = [precision for precision in precisions if precision in COMPRESSED]
    background = None
    if compressed and workers > 1:
        _SHARED["model"] = model  # inherited by the fork, not pickled
        background = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init
        )
    try:
        held = {p: background.submit(_shared_package_weights, p) for p in compressed} if background else {}
        eager = torch_forward(model.eval())
        lengths = sorted(rows_by_length)
        refs = {
            length: np.concatenate([eager(row) for row in rows_by_length[length]], axis=1)
            for length in lengths
        }
        # Eager's side of the behaviour replay, the same for every precision: computed once.
        reference = parity.replay(eager, prompts, continuations, lengths, pad_id)
        held = {precision: future.result() for precision, future in held.items()}
    finally:
        if background is not None:
            background.shutdown(cancel_futures=True)
        _SHARED.clear()
    emulations = {precision: emulation(model, precision, held.get(precision)) for precision in precisions}
    copies = {}  # precision -> the partner whose logits its own would be, bit for bit
    for precision, partner in SAME_COMPUTATION.items():
        if precision in emulations and partner in emulations:
            pair = emulations[precision], emulations[partner]
            if not any(map(_hooked, pair)) and _same_tensors(*pair):
                copies[precision] = partner
    checked = {}  # variant -> the GGUF reference whose input blocks its logits job checks
    for precision, partner in SAME_WEIGHTS.items():
        if precision in emulations and partner in emulations:
            if _same_tensors(emulations[precision], emulations[partner]):
                checked[partner] = precision
    for precision in copies:
        del emulations[precision]
    jobs = [(p, "logits") for p in emulations if p not in checked.values()]
    jobs += [(p, DECODE) for p in emulations if p not in gates_lib.REFERENCE_PRECISIONS]
    seqs = decode_refs = None
    if any(part == DECODE for _, part in jobs):
        seqs, _ = decode_parity.sequences(prompts, continuations, rows_by_length[lengths[-1]])
        with torch.inference_mode():
            decode_refs = np.concatenate(decode_parity.forced_logits(model, seqs))
    _SHARED.update(
        eager=eager,
        refs=refs,
        reference=reference,
        rows_by_length=rows_by_length,
        replay_args=(prompts, continuations, lengths, pad_id),
        emulations=emulations,
        checked=checked,
        seqs=seqs,
        decode_refs=decode_refs,
    )
    try:
        results = _run_jobs(jobs, workers)
        # A checked reference whose input blocks differed from the variant's: measured on its own.
        unchecked = [(p, "logits") for p in checked.values() if all(p not in r for r in results.values())]
        results.update(_run_jobs(unchecked, workers) if unchecked else {})
    finally:
        _SHARED.clear()
    measured = {}  # each precision's lengths and replay, then its decode steps
    for job in [*jobs, *unchecked]:
        for precision, scopes in results[job].items():
            measured.setdefault(precision, {}).update(scopes)
    out = {}
    for precision in precisions:
        if precision in copies:  # the partner's scopes; a reference has no decode scope
            partner = measured[copies[precision]]
            out[precision] = {where: dict(values) for where, values in partner.items() if where != DECODE}
        else:
            out[precision] = measured[precision]
    return out
