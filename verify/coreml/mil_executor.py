"""A NumPy reference executor for a saved Core ML .mlpackage, so Linux can check Core ML numerics.

MLModel.predict exists only on macOS. The package's ML Program is plain data, though: we load it
back with coremltools' milproto loader (weights from Data/com.apple.CoreML/weights/weight.bin)
and evaluate its ops in order, each through its own NumPy `value_inference`, in the precision the
program declares: in an fp16 program every intermediate is rounded to float16 (matmuls accumulate
in float32 first, as GPU matrix units do). An fp32 program is computed in float64, and its outputs
rounded to float32 once (`_putter` says why).

Before each op runs, the types of its inputs are set to the concrete runtime shapes. The stock
value_inference code was written for static shapes (it is coremltools' constant folder), and
with concrete types most ops work unchanged; the few that still fail get a small override
below. After each op, the result must agree with every static dimension the program declared
for it: a program whose trace froze a length (docs/architecture.md, "Frozen lengths") fails loudly
here at the other lengths instead of computing something plausible.

Stateful programs (iOS18: a KV cache held as Core ML state, conversion/coreml_stateful.py) run
against a `State` (make_state()), the executor's counterpart of the runtime's MLState: it holds one
array per declared state, `read_state` copies from it, `coreml_update_state` writes into it, and
evaluate() leaves the written values in it for the next call. A state is only updated when the
whole call succeeded. A fresh sequence needs a fresh state (make_state() gives zeros).

A package is untrusted data, and its description sizes what the executor allocates: every state
(make_state() zeroes one array per state, in the declared shape) and every input shape it
enumerates (a caller pads to them, run_mlpackage reads arrays of them). load_mlpackage holds each of
those shapes to `Bounds` before anything is allocated: Bounds.for_model(cfg) from the checkpoint's
config (a state holds at most n_layers x n_kv_heads x max_seq_len x head_dim elements, an input
max_seq_len), or LIMITS for a package run without a checkpoint. A package that declares more is an
InputError naming the state or input and the bound; make_state checks again before it allocates.

This is a reference, not the Core ML runtime: it proves the saved program computes the model at
each enumerated length. verify/coreml/coreml_runtime_test.py runs the real runtime on macOS.
"""

import dataclasses
import functools
import operator
import os

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# coremltools adapter: every coremltools internal this module touches is in this section, and
# verify/coreml/mil_internals_test.py fails loudly (naming the internal) when any of them moves.
#   - coremltools.proto (protobuf spec; public, read in verify/coreml/coreml_spec.py)
#   - coremltools.converters.mil.frontend.milproto.load.load(model_spec, specification_version,
#         file_weights_dir)                                     -> mil Program
#   - Program.functions["main"]: Function.inputs {name: Var}, .outputs [Var], .operations [Operation]
#   - Operation.op_type, .name, .inputs {name: Var}, .outputs [Var], .value_inference(), and
#         input access by name (op.x, op.keep_dims, ...: the Var bound to that input, or None);
#         const ops carry their value from loading
#   - Var.name, .val, .sym_type, .dtype, and the private slots Var._sym_val (read through .val;
#         we store runtime values there) and Var._sym_type (we store the concrete runtime type)
#   - types.tensor(dtype, shape), types.is_tensor, types.nptype_from_builtin,
#     types.symbolic.is_symbolic, types.type_mapping.string_to_nptype
#   - the helpers the stock value_inference of gather, slice_by_index and slice_update call
#         (ops.defs._utils: compute_gather, solve_slice_by_index_slice, get_squeeze_axes), called
#         by the kernels that replace them; cast's supported_dtypes()
#   - compressed weights (the int8/int4 variants, conversion/coreml_compress.py): the ops
#         constexpr_affine_dequantize (iOS16) and constexpr_blockwise_shift_scale (iOS18), run
#         through their own Operation.materialized_val_inference() (which calls the op class's
#         static decompress()); their inputs (quantized_data/data, scale, zero_point/offset, axis)
#         are const ops
#   - scaled_dot_product_attention (iOS18 programs) inputs query, key, value, attn_mask
#   - linear's bias input (linear_biases), and Var.op (the op that produces a var)
#   - states (iOS18, ct.StateType): a state is a Function input whose sym_type is
#         types.state(tensor) (types.is_state); the ops read_state(input) and
#         coreml_update_state(state, value), which have no value_inference (the loader turns the
#         saved write_state + read_state pair back into one coreml_update_state); slice_update
#         (the cache write) runs through a kernel that computes what its value_inference does
# Pinned by coremltools==9.0 in third_party/python/requirements_lock.txt.
# ---------------------------------------------------------------------------------------------
from coremltools.converters.mil.frontend.milproto import load as _milproto_load
from coremltools.converters.mil.mil import types as _types
from coremltools.converters.mil.mil.ops.defs._utils import compute_gather as _compute_gather
from coremltools.converters.mil.mil.ops.defs._utils import get_squeeze_axes as _squeeze_axes
from coremltools.converters.mil.mil.ops.defs._utils import solve_slice_by_index_slice as _solve_slice
from coremltools.converters.mil.mil.types.symbolic import is_symbolic as _is_symbolic
from coremltools.converters.mil.mil.types.type_mapping import string_to_nptype as _string_to_nptype

from common.errors import InputError
from training import config as config_lib
from verify.coreml import coreml_spec, mlpackage_manifest

MAIN_FUNCTION = "main"


class _Value:
    """Stands in for a coremltools builtin value: Var.val reads `._sym_val.val`."""

    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val


def _load_program(spec, weights_dir: str):
    return _milproto_load.load(spec, spec.specificationVersion, file_weights_dir=weights_dir)


def _set_value(var, value: np.ndarray) -> None:
    if _types.is_tensor(var.sym_type):
        var._sym_type = _types.tensor(var.dtype, value.shape)
    elif value.ndim == 0:
        value = value[()]  # scalars are NumPy scalars in coremltools, not 0-d arrays
    var._sym_val = _Value(value)


def _declared_shape(var) -> tuple | None:
    """Static dims as ints, symbolic dims as None; None for a non-tensor (scalar) var."""
    if not _types.is_tensor(var.sym_type):
        return None
    return tuple(None if _is_symbolic(d) else int(d) for d in var.sym_type.get_shape())


def _np_dtype(var) -> np.dtype:
    return np.dtype(_types.nptype_from_builtin(var.dtype))


# Kernels: op_type -> function(v, op) -> value or tuple of values, where v maps each input the op
# has to its value (a tuple input, concat's values, to a tuple of values). One runs instead of the
# op's stock value_inference, for one of two reasons:
#   - the stock version cannot be used (each such kernel says why);
#   - speed: the stock version is run through coremltools' precondition wrapper and reads every
#     value through Var.val and every shape through the var's type, which was most of an
#     evaluation (a T1 decode step of the stateful package is ~170 tiny ops). These kernels
#     ("same as value_inference") compute exactly the stock NumPy expressions, in the same order
#     and dtypes, on the same values; verify/coreml/mil_executor_test.py holds each to value_inference,
#     bit for bit, on every op of the student's programs.
# An op without a kernel, or without an input its kernel needs (KERNEL_INPUTS), runs its stock
# value_inference.


def _binary(operator_fn):
    # Same as value_inference (elementwise_binary): the Python operator on the two values.
    return lambda v, op: operator_fn(v["x"], v["y"])


def _half_arithmetic(operator_fn):
    # Same as value_inference (elementwise_binary) for add, sub and mul (_float16_op says why).
    return lambda v, op: _float16_op(operator_fn, v["x"], v["y"])


def _float16_op(operator_fn, x, y):
    """operator_fn(x, y) for +, -, * or /, with the same bits. On float16 operands NumPy converts
    every element in software (~9 ns an element for + or *, ~30 for /: most of an fp16 program's
    elementwise time); computed in float32 on the exact widenings and rounded to float16 once, the
    result is the correctly rounded float16 one, since float32's 24 bits are at least 2 x 11 + 2,
    the precision at which rounding twice is innocuous for +, -, * and / (Figueroa, 1995). NumPy's
    float16 result is that correctly rounded one. mil_executor_test checks every float16 x against a
    sample of y."""
    if _float16_pair(x, y):
        return _astype(operator_fn(_widen(x), _widen(y)), np.float16)
    return operator_fn(x, y)


# float16 <-> float32 conversion. NumPy converts one element at a time in software here (~1.5 ns an
# element to float32, ~3 ns back), torch with the CPU's conversion instructions, ~10x faster. Both
# are IEEE conversions, exact to float32 and round-to-nearest-even to float16, so they give the same
# bits (verify/coreml/mil_executor_test.py checks every float16 value, and float32 values at and
# around every float16 rounding boundary). torch is already loaded: coremltools imports it.
_TORCH_CAST = {
    (np.dtype(np.float16), np.dtype(np.float32)): torch.float32,
    (np.dtype(np.float32), np.dtype(np.float16)): torch.float16,
}
# Below this many elements NumPy's cast is quicker than the round trip through torch (~5 us).
_TORCH_CAST_MIN = 2048
# Below this many elements NumPy's float16 loop is quicker than the route through float32.
_FLOAT32_ROUTE_MIN = 256


def _astype(x: np.ndarray, dtype) -> np.ndarray:
    """x.astype(dtype): the same values and layout; float16 <-> float32 of a C-contiguous array through
    torch (a torch result is C-contiguous too; other layouts keep NumPy's cast)."""
    target = _TORCH_CAST.get((x.dtype, np.dtype(dtype)))
    if target is None or x.size < _TORCH_CAST_MIN or not (x.flags.c_contiguous and x.flags.writeable):
        return x.astype(dtype)
    return torch.from_numpy(x).to(target).numpy()


def _widen(x):
    """A float16 array or scalar in float32 (exact)."""
    return _astype(x, np.float32) if isinstance(x, np.ndarray) else np.float32(x)


_FLOAT16 = np.dtype(np.float16)


def _float16_pair(x, y) -> bool:
    """Both operands float16 (arrays or NumPy scalars), with enough elements for the float32 route
    to pay for its conversions."""
    return (
        getattr(x, "dtype", None) == _FLOAT16
        and getattr(y, "dtype", None) == _FLOAT16
        and max(x.size, y.size) >= _FLOAT32_ROUTE_MIN
    )


def _pow(v, op):
    # Same as value_inference (x ** y). A float16 array squared (every RMS norm's x ** 2) goes
    # through np.square: NumPy's float16 power rounds powf(x, 2) of the float32 values to float16,
    # its square rounds x * x; the square of a float16 is exact in float32, so both round the same
    # number, and the square is three times faster (verify/coreml/mil_executor_test.py checks every
    # float16 value).
    x, y = v["x"], v["y"]
    if isinstance(x, np.ndarray) and x.dtype == np.float16 and np.ndim(y) == 0:
        if np.asarray(y).dtype == np.float16 and y == 2:
            # The float32 square of a float16 is exact: rounded once, it is the float16 square.
            return _astype(np.square(_widen(x)), np.float16)
    return operator.pow(x, y)


def _rsqrt(v, op):
    # Same as value_inference.
    x = v["x"]
    result = 1.0 / np.sqrt(x + v["epsilon"])
    return np.array(result) if x.ndim == 0 else result


@functools.lru_cache(maxsize=64)
def _cast_nptype(op_class, dtype: str):
    """The NumPy type cast converts to: worked out once per (op class, dtype), not on every call."""
    if dtype not in op_class.supported_dtypes():
        raise NotImplementedError(f"cast to {dtype} is not supported")
    return _string_to_nptype(dtype)


def _cast(v, op):
    # Same as value_inference (cast.get_cast_value on a value that is not symbolic).
    nptype = _cast_nptype(type(op), str(v["dtype"]))
    x = v["x"]
    if isinstance(x, np.ndarray):
        return _astype(x, nptype)
    return x.astype(dtype=nptype) if hasattr(x, "astype") else nptype(x)


def _gather(v, op):
    # Same as value_inference; an iOS15 gather has no batch_dims input (always 0).
    return _compute_gather(
        params=v["x"], indices=v["indices"], axis=v["axis"], batch_dims=v.get("batch_dims", 0)
    )


def _reshape(v, op):
    # Same values as value_inference: its 0s are the input's dims; a -1 numpy infers as it does.
    x, shape = v["x"], [int(s) for s in v["shape"]]
    if 0 in shape:
        if len(shape) != x.ndim:
            raise ValueError(f"a 0 in reshape's shape {shape} needs rank {x.ndim}")
        shape = [x.shape[dim] if s == 0 else s for dim, s in enumerate(shape)]
    return np.reshape(x, shape)


def _expand_dims(v, op):
    # Same as value_inference.
    x, axes = v["x"], v["axes"]
    out_rank = np.ndim(x) + len(axes)
    for axis in axes:
        if axis <= -out_rank - 1 or axis >= out_rank:
            raise IndexError(f"axis {axis} is out of bounds for rank {out_rank}")
    shape = list(np.shape(x))
    for axis in sorted(out_rank + axis if axis < 0 else axis for axis in axes):
        shape.insert(axis, 1)
    return np.reshape(x, shape)


def _slices(v, shape):
    args = (
        v["begin"],
        v["end"],
        v.get("stride"),
        v.get("begin_mask"),
        v.get("end_mask"),
        v.get("squeeze_mask"),
    )
    return _solved_slices(tuple(shape), *(None if a is None else tuple(np.ravel(a).tolist()) for a in args))


@functools.lru_cache(maxsize=4096)
def _solved_slices(shape, begin, end, stride, begin_mask, end_mask, squeeze_mask) -> tuple:
    """The index the slice inputs give on `shape`, solved once per distinct set (a decode step slices
    with the same values every call, and solving them was most of a slice's time). The inputs are
    hashable tuples of their values; the solver gets them back as arrays, as from a program."""
    arrays = (None if a is None else np.asarray(a) for a in (stride, begin_mask, end_mask, squeeze_mask))
    return tuple(_solve_slice(shape, np.asarray(begin), np.asarray(end), *arrays))


def _slice_by_index(v, op):
    # Same as value_inference; squeezing every axis (a scalar) is left to it.
    x = v["x"]
    result = x[_slices(v, x.shape)]
    axes = _squeeze_axes(v.get("squeeze_mask"), x.ndim)
    if not axes:
        return result
    if len(axes) == result.ndim:
        return op.value_inference()
    return np.squeeze(result, axis=tuple(axes))


def _slice_update(v, op):
    # Same as value_inference (iOS18): a copy of x with the slice replaced.
    x = np.copy(v["x"])
    slices = _slices(v, x.shape)
    x[slices] = np.reshape(v["update"], x[slices].shape)
    return x


def _concat(v, op):
    # Same as value_inference (on values, none symbolic). Like it, ignores interleave.
    values = list(v["values"])
    if not isinstance(values[0], np.ndarray) or values[0].shape == ():
        return np.stack(values, axis=v["axis"])
    return np.concatenate(values, axis=v["axis"])


def _softmax(v, op):
    # Same as value_inference.
    x, axis = v["x"], v["axis"]
    max_vals = np.max(x, axis=axis, keepdims=True)
    temp = np.exp(_float16_op(operator.sub, x, max_vals))
    return _float16_op(operator.truediv, temp, np.sum(temp, axis=axis, keepdims=True))


def _silu(v, op):
    # No value_inference at all in coremltools 9.0. Computed in float32 (float64 in an fp32 program),
    # rounded to the op's dtype.
    x = v["x"]
    x = _widen(x) if x.dtype == np.float16 else x
    return x / (1.0 + np.exp(-x))


def _shape(v, op):
    # The stock version reads the var's type, which holds symbols unless made concrete (it returns
    # a symbolic shape); the runtime shape is the value's.
    return np.array(np.shape(v["x"]), dtype=np.int32)


def _select(v, op):
    # With scalar branches the stock version sees a scalar type (it broadcasts a and b, not cond)
    # and calls .item() on the broadcast array.
    return np.where(v["cond"], v["a"], v["b"])


def _reduce(numpy_fn):
    def reduce(v, op):
        # keep_dims arrives as a 0-d numpy bool, which numpy 2 reductions reject as `keepdims`.
        axes = None if v.get("axes") is None else tuple(int(a) for a in v["axes"])
        keep = bool(v["keep_dims"]) if v.get("keep_dims") is not None else False
        return numpy_fn(v["x"], axis=axes, keepdims=keep)

    return reduce


def _band_part(v, op):
    # Same semantics as the stock version, vectorised (it loops over M*N elements in Python).
    x = v["x"]
    m, n = x.shape[-2:]
    rows, cols = np.arange(m)[:, None], np.arange(n)[None, :]
    lower, upper = int(v["lower"]), int(v["upper"])
    keep = ((lower < 0) | (rows - cols <= lower)) & ((upper < 0) | (cols - rows <= upper))
    return np.where(keep, x, np.zeros((), dtype=x.dtype))


def _accumulator(*arrays) -> type:
    """The dtype a product sums in: float32 for float16 operands (as GPU matrix units accumulate;
    NumPy's float16 matmul is an unvectorised loop, three times slower and no more faithful), rounded
    to float16 by the store; float64 in an fp32 program (`_putter`)."""
    return np.float32 if any(a.dtype == np.float16 for a in arrays) else np.float64


def _weight_as(op, name: str, value, dtype):
    """A weight's copy in `dtype`, made once: kept on the op until the weight's value object changes
    (set_const, or a constexpr decompressed again). Converting every matrix on every call was a
    fifth of a decode step."""
    held = op.__dict__.setdefault("_executor_weights", {})
    source = getattr(op, name)._sym_val
    cached = held.get((name, dtype))
    if cached is None or cached[0] is not source:
        cached = held[(name, dtype)] = (source, value.astype(dtype))
    return cached[1]


def _linear(v, op):
    # Accumulated in _accumulator's dtype, rounded to the op's dtype afterwards.
    x, weight = v["x"], v["weight"]
    dtype = _accumulator(x, weight)
    result = np.matmul(_astype(x, dtype), _weight_as(op, "weight", weight, dtype).T)
    if v.get("bias") is not None:
        result = result + _weight_as(op, "bias", v["bias"], dtype)
    return result


def _matmul(v, op):
    # Accumulated as in _linear.
    dtype = _accumulator(v["x"], v["y"])
    x, y = _astype(v["x"], dtype), _astype(v["y"], dtype)
    if v.get("transpose_x") is not None and v["transpose_x"]:
        x = np.swapaxes(x, -1, -2)
    if v.get("transpose_y") is not None and v["transpose_y"]:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


# States (iOS18 stateful programs). The value of a state input var is the State's array for the
# call; coreml_update_state replaces it, so ops after the update read the new value, as in Core ML.

STATE_OPS = ("read_state", "coreml_update_state")


def _read_state(v, op):
    # A copy: the runtime's read_state copies the state's content into a new tensor.
    return np.array(v["input"], copy=True)


def _coreml_update_state(v, op):
    state, value = op.state, np.asarray(v["value"])
    dtype = np.dtype(_types.nptype_from_builtin(state.sym_type.wrapped_type().get_primitive()))
    held = np.asarray(state.val)
    if value.shape != held.shape:
        raise ValueError(f"update of state {state.name!r} has shape {value.shape}, the state {held.shape}")
    state._sym_val = _Value(value.astype(dtype, copy=True))
    return value


# Compressed weights and iOS18 ops (the Core ML int8/int4 variants). Kept apart from the ops
# above: each is one function, registered in OVERRIDES below.

CONSTEXPR_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")


def _constexpr(v, op):
    # constexpr ops have no value_inference by design (coremltools keeps weights compressed while
    # it optimizes); materializing is what the runtime does once when it loads the model. Their
    # inputs are consts, so the stock decompression applies unchanged.
    return op.materialized_val_inference()


def _scaled_dot_product_attention(v, op):
    # Accumulated as in _linear, rounded to the op's dtype afterwards; the stock version multiplies
    # in the inputs' float16 (NumPy's slow loop) and rounds every partial sum.
    dtype = _accumulator(*(v[name] for name in ("query", "key", "value")))
    q, k, value = (_astype(v[name], dtype) for name in ("query", "key", "value"))
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / np.sqrt(dtype(q.shape[-1]))
    if v.get("attn_mask") is not None:
        mask = v["attn_mask"]
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask.astype(dtype)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    return np.matmul(scores / scores.sum(-1, keepdims=True), value)


OVERRIDES = {
    **{op_type: _constexpr for op_type in CONSTEXPR_OPS},
    "read_state": _read_state,
    "coreml_update_state": _coreml_update_state,
    "scaled_dot_product_attention": _scaled_dot_product_attention,
    "linear": _linear,
    "matmul": _matmul,
    "silu": _silu,
    "shape": _shape,
    "select": _select,
    "band_part": _band_part,
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "reduce_prod": _reduce(np.prod),
    # Same as value_inference, for speed (above).
    "add": _half_arithmetic(operator.add),
    "sub": _half_arithmetic(operator.sub),
    "mul": _half_arithmetic(operator.mul),
    "pow": _pow,
    "less_equal": _binary(operator.le),
    "rsqrt": _rsqrt,
    "cast": _cast,
    "gather": _gather,
    "reshape": _reshape,
    "expand_dims": _expand_dims,
    "transpose": lambda v, op: np.transpose(v["x"], axes=v["perm"]),
    "tile": lambda v, op: np.tile(v["x"], reps=v["reps"]),
    "fill": lambda v, op: np.full(shape=v["shape"], fill_value=v["value"]),
    "slice_by_index": _slice_by_index,
    "slice_update": _slice_update,
    "concat": _concat,
    "softmax": _softmax,
}
# The kernels that compute what the op's stock value_inference computes (for speed, above).
SAME_AS_VALUE_INFERENCE = (
    "add", "sub", "mul", "pow", "less_equal", "rsqrt", "cast", "gather", "reshape", "expand_dims",
    "transpose", "tile", "fill", "slice_by_index", "slice_update", "concat", "softmax",
)  # fmt: skip
# Inputs a kernel reads with v[...] that the op may leave to its defaults (coremltools'
# default_inputs); an op without one of them runs its stock value_inference instead.
KERNEL_INPUTS = {
    "rsqrt": ("epsilon",),
    "gather": ("axis",),
    "fill": ("value",),
    "softmax": ("axis",),
    "concat": ("axis",),
    "band_part": ("lower", "upper"),
}

# ---------------------------------------------------------------------------------------------
# end of the coremltools adapter
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The most elements one state or one enumerated input shape of a package may declare, and
    where each bound comes from (for the error message)."""

    state_elements: int
    input_elements: int
    state_source: str
    input_source: str

    @classmethod
    def for_model(cls, cfg) -> "Bounds":
        """From a checkpoint's config (training/config.py ModelConfig): a state is at most one KV
        cache [n_layers, 1, n_kv_heads, max_seq_len, head_dim], an input at most max_seq_len tokens."""
        return cls(
            state_elements=cfg.n_layers * cfg.n_kv_heads * cfg.max_seq_len * cfg.head_dim,
            input_elements=cfg.max_seq_len,
            state_source=(
                f"n_layers {cfg.n_layers} x n_kv_heads {cfg.n_kv_heads} x max_seq_len "
                f"{cfg.max_seq_len} x head_dim {cfg.head_dim} of the checkpoint"
            ),
            input_source=f"max_seq_len {cfg.max_seq_len} of the checkpoint",
        )


# Without a checkpoint (run_mlpackage runs any package): an input of up to the longest context any
# checkpoint may have (training/config.py), a state of up to 2^26 elements (128 MiB in float16), far
# above the default student's 32,768-element caches and far below what a CI machine holds.
LIMITS = Bounds(
    state_elements=1 << 26,
    input_elements=config_lib.MAX_SEQ_LEN,
    state_source="the executor's limit for a package run without a checkpoint",
    input_source=f"the longest context a checkpoint may have ({config_lib.MAX_SEQ_LEN})",
)


def _check_bound(path: str, kind: str, name: str, shape: tuple[int, ...], limit: int, source: str) -> None:
    """InputError unless `shape` has positive dims and at most `limit` elements; counted in Python
    integers, so a product past 2^64 cannot wrap around to a small number."""
    elements = 1
    for dim in shape:
        elements *= int(dim)
    if any(int(dim) < 1 for dim in shape) or elements > limit:
        raise InputError(
            f"{path}: {kind} {name!r} declares shape {list(shape)} ({elements} elements); the bound "
            f"is {limit} elements ({source}); refused before allocating it"
        )


@dataclasses.dataclass
class Program:
    """A loaded ML Program ready to evaluate. Not thread-safe: evaluation writes into `function`."""

    path: str
    function: object  # the coremltools mil Function "main"
    input_shapes: dict[str, list[tuple[int, ...]]]  # enumerated shapes per input (fixed: one)
    input_dtypes: dict[str, np.dtype]
    output_names: list[str]
    declared: dict[int, tuple | None]  # id(var) -> static dims as loaded
    # Declared states (iOS18 stateful programs): name -> (shape, dtype). Empty for a stateless one.
    state_specs: dict[str, tuple[tuple[int, ...], np.dtype]] = dataclasses.field(default_factory=dict)
    bounds: Bounds = LIMITS  # what load_mlpackage held the shapes to; make_state checks again
    # id(constexpr op) -> the _Value objects of its const inputs when it last ran. A constexpr op
    # depends on consts only, and a const changes only through set_const (a new _Value), so while
    # every input is still the same object its output var still holds the decompressed weights:
    # the runtime decompresses once at load, and so does evaluate() (it was a third of an int4
    # forward).
    materialized_from: dict[int, tuple] = dataclasses.field(default_factory=dict, repr=False)
    plan: "_Plan | None" = dataclasses.field(default=None, repr=False)  # made by _plan

    @property
    def op_types(self) -> list[str]:
        return [op.op_type for op in self.function.operations]

    def lengths(self, input_name: str = "input_ids") -> list[int]:
        """Sequence lengths (dim 1) the input enumerates, sorted."""
        return sorted({shape[1] for shape in self.input_shapes[input_name]})


@dataclasses.dataclass
class State:
    """The values of a stateful program's states, carried from one evaluate() call to the next (the
    executor's MLState). evaluate() replaces each array after a successful call."""

    values: dict[str, np.ndarray]


def make_state(program: Program) -> State:
    """A fresh state for one sequence: every declared state zeroed, in its declared dtype (Core ML's
    makeState() documents its buffers as initialized to zeros). InputError, before allocating, for a
    state larger than the program's bounds."""
    bounds = program.bounds
    for name, (shape, _) in program.state_specs.items():
        _check_bound(program.path, "state", name, shape, bounds.state_elements, bounds.state_source)
    return State({name: np.zeros(shape, dtype) for name, (shape, dtype) in program.state_specs.items()})


def _state_specs(path: str, spec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    specs = {}
    for feature in spec.description.state:
        dtype = coreml_spec.state_dtype_of(spec, feature.name)
        if dtype is None:
            raise InputError(f"{path}: state {feature.name!r}: only multi-array states are supported")
        specs[feature.name] = (coreml_spec.state_shape(spec, feature.name), np.dtype(dtype))
    return specs


def _input_signature(path: str, spec, name: str) -> tuple[list[tuple[int, ...]], np.dtype]:
    shapes = coreml_spec.input_shapes(spec, name)
    dtype = coreml_spec.input_dtype_of(spec, name)
    if shapes is None or dtype is None:
        raise InputError(
            f"{path}: input {name!r}: only multi-array inputs with enumerated or fixed shapes are "
            "supported (the contract uses enumerated shapes)"
        )
    return shapes, np.dtype(dtype)


def _blob_files(block) -> set[str]:
    names = set()
    for op in block.operations:
        for attr in op.attributes.values():
            if attr.WhichOneof("value") == "blobFileValue":
                names.add(attr.blobFileValue.fileName)
        for nested in op.blocks:
            names |= _blob_files(nested)
    return names


def load_mlpackage(path: str, bounds: Bounds = LIMITS) -> Program:
    """Loads a saved ML Program package. InputError for a missing/corrupt package or weight file, a
    weight file that resolves outside the package, or a state or input shape beyond `bounds`
    (Bounds.for_model(cfg) when the checkpoint is known)."""
    spec, model_path = coreml_spec.read_spec(path)
    if MAIN_FUNCTION not in spec.mlProgram.functions:
        raise InputError(f"{model_path}: the ML Program has no {MAIN_FUNCTION!r} function")
    # Shapes first: nothing below allocates from them, and a hostile one stops here.
    shapes, dtypes = {}, {}
    for feature in spec.description.input:
        shapes[feature.name], dtypes[feature.name] = _input_signature(path, spec, feature.name)
        for shape in shapes[feature.name]:
            _check_bound(path, "input", feature.name, shape, bounds.input_elements, bounds.input_source)
    states = _state_specs(path, spec)
    for name, (shape, _) in states.items():
        _check_bound(path, "state", name, shape, bounds.state_elements, bounds.state_source)

    weights_dir = os.path.join(os.path.dirname(model_path), "weights")
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for name in sorted(_blob_files(block)):
                weight_file = os.path.join(weights_dir, name.split("/")[-1])
                if not os.path.isfile(weight_file):
                    raise InputError(f"{path}: weight file {weight_file} (named {name}) is missing")
                mlpackage_manifest.require_inside(path, weight_file)
    try:
        mil_program = _load_program(spec, weights_dir)
    except Exception as error:  # the loader raises many types, including C++ errors on bad blobs
        raise InputError(f"{path}: cannot load the ML Program ({type(error).__name__}: {error})") from None

    function = mil_program.functions[MAIN_FUNCTION]
    if sorted([*shapes, *states]) != sorted(function.inputs):
        raise InputError(
            f"{path}: description inputs and states {sorted([*shapes, *states])} != program inputs "
            f"{sorted(function.inputs)}"
        )
    for name in states:
        if not _types.is_state(function.inputs[name].sym_type):
            raise InputError(f"{path}: state {name!r} is not a state in the ML Program")
    declared = {}
    for var in function.inputs.values():
        declared[id(var)] = _declared_shape(var)
    for op in function.operations:
        for var in op.outputs:
            declared[id(var)] = _declared_shape(var)
    return Program(
        path=path,
        function=function,
        input_shapes=shapes,
        input_dtypes=dtypes,
        output_names=[o.name for o in spec.description.output],
        declared=declared,
        state_specs=states,
        bounds=bounds,
    )


class _Step:
    """One op of a program as evaluate() runs it, compiled once per program: in a small call (a
    decode step) the per-op bookkeeping (building each kernel's inputs, making each result's type,
    casting results already in their var's dtype) is a large share of the time. Holds its kernel (None:
    value_inference), its inputs split into the values of consts (read here, once: set_const drops
    the plan) and the vars read on every call, and `run`, which evaluates the op and stores its
    results."""

    __slots__ = ("op", "kernel", "fixed", "reads", "tuple_reads", "run")

    def __init__(self, program: Program, op):
        self.op = op
        kernel = OVERRIDES.get(op.op_type)
        inputs = op.inputs
        if kernel is not None and all(name in inputs for name in KERNEL_INPUTS.get(op.op_type, ())):
            self.kernel = kernel
        else:
            self.kernel = None
        self.fixed, reads, tuple_reads = {}, [], []
        for name, var in inputs.items():
            if isinstance(var, (tuple, list)):
                tuple_reads.append((name, tuple(var)))
            elif var.op is not None and var.op.op_type == "const":
                self.fixed[name] = var._sym_val.val
            else:
                reads.append((name, var))
        self.reads, self.tuple_reads = tuple(reads), tuple(tuple_reads)
        self.run = self._compile(program)

    def values(self) -> dict:
        """The kernel's v: each input's value. Read from the var's slot, not through Var.val, which
        tests it for symbols on every read: the executor only ever stores concrete arrays there."""
        v = self.fixed.copy()
        for name, var in self.reads:
            v[name] = var._sym_val.val
        for name, tuple_vars in self.tuple_reads:
            v[name] = tuple(var._sym_val.val for var in tuple_vars)
        return v

    def _compile(self, program: Program):
        op, kernel, values = self.op, self.kernel, self.values
        puts = tuple(_putter(program, op, var) for var in op.outputs)
        single = len(puts) == 1

        def run() -> None:
            try:
                result = kernel(values(), op) if kernel is not None else op.value_inference()
            except (NotImplementedError, ValueError, TypeError, IndexError) as error:
                raise _op_failure(program, op, error) from None
            if single and result is not None and not isinstance(result, tuple):
                puts[0](result)
                return
            for put, value in zip(puts, _results(program, op, result, len(puts)), strict=True):
                put(value)

        if op.op_type not in CONSTEXPR_OPS:
            return run
        sources_of = tuple(op.inputs.values())

        def materialize() -> None:
            # A constexpr op depends on consts only: while each is the same _Value object as when it
            # last ran, its output var still holds the decompressed weights (Program.materialized_from).
            sources = tuple(var._sym_val for var in sources_of)
            held = program.materialized_from.get(id(op))
            if held is not None and all(a is b for a, b in zip(held, sources, strict=True)):
                return
            run()
            program.materialized_from[id(op)] = sources

        return materialize


def _putter(program: Program, op, var):
    """A function that stores one result in `var`: cast to the var's dtype (in an fp16 program, this
    is where every intermediate is rounded), held to the var's declared static dims (op None: a
    program input, not checked), with its tensor type made once per shape the var takes.

    A float32 var keeps a float64 value: an fp32 program is computed in float64, rounded to float32
    where it casts and at its outputs (evaluate). Its float32 rounding is the runtime's own, which
    NumPy cannot reproduce: rounded after every op, with the products summed in the order of the BLAS
    kernel this CPU selects, the fp32 package of the default student came out at 13x the float32
    floor's KL at one position on an AVX-512 machine, a false alarm on an untouched package that
    another machine did not raise. Computed in float64, the package differs from eager by eager's
    own float32 error, which its floor (float64 vs float32 eager) measures on the same machine, and
    by its outputs' rounding to float32 (that position: 0.80 of the bound); a program that computes
    something else than the model still shows."""
    is_tensor, builtin_dtype = _types.is_tensor(var.sym_type), var.dtype
    np_dtype = _np_dtype(var)
    kept = (np_dtype, np.dtype(np.float64)) if np_dtype == np.float32 else (np_dtype,)
    declared = program.declared.get(id(var)) if op is not None else None
    agreed = {}  # shape -> its tensor type (False for a scalar var), for shapes that passed the check

    def put(value) -> None:
        if value.__class__ is not np.ndarray:
            value = np.asarray(value)
        if value.dtype not in kept:
            value = _astype(value, np_dtype)
        shape = value.shape
        sym_type = agreed.get(shape)
        if sym_type is None:
            if op is not None:
                _check_declared(program, op, declared, shape)
            sym_type = agreed[shape] = _types.tensor(builtin_dtype, shape) if is_tensor else False
        if is_tensor:
            var._sym_type = sym_type
        elif value.ndim == 0:
            value = value[()]  # scalars are NumPy scalars in coremltools, not 0-d arrays
        var._sym_val = _Value(value)

    return put


@dataclasses.dataclass
class _Plan:
    steps: list  # _Step per op but the consts, in program order
    feeds: dict  # input name (not a state) -> (its NumPy dtype, its putter)
    # (var, its NumPy dtype) of each output and each state: a var's dtype is worked out through its
    # coremltools type (~10 us), and a decode step reads three.
    outputs: tuple
    states: tuple  # (state name, var, dtype)


def _plan(program: Program) -> list:
    """The program's steps, compiled on its first evaluation (and again after set_const)."""
    if program.plan is None:
        function = program.function
        program.plan = _Plan(
            steps=[_Step(program, op) for op in function.operations if op.op_type != "const"],
            feeds={
                name: (_np_dtype(var), _putter(program, None, var))
                for name, var in function.inputs.items()
                if name not in program.state_specs
            },
            outputs=tuple((var, _np_dtype(var)) for var in function.outputs),
            states=tuple(
                (name, function.inputs[name], _np_dtype(function.inputs[name]))
                for name in program.state_specs
            ),
        )
    return program.plan.steps


def _check_declared(program: Program, op, declared: tuple | None, shape: tuple) -> None:
    if declared is None:
        return
    frozen = len(shape) != len(declared) or any(
        d is not None and d != s for d, s in zip(declared, shape, strict=True)
    )
    if frozen:
        raise InputError(
            f"{program.path}: op {op.name!r} ({op.op_type}) produced shape {shape}, but the program "
            f"declares {tuple('?' if d is None else d for d in declared)}: a length was frozen "
            "during conversion, so this program is only valid at one length"
        )


def _op_failure(program: Program, op, error: Exception) -> InputError:
    if isinstance(error, NotImplementedError):
        return InputError(
            f"{program.path}: op {op.name!r} ({op.op_type}) has no NumPy implementation ({error}); "
            "add an override in verify/coreml/mil_executor.py"
        )
    hint = (
        "an index is out of range (input ids outside the vocabulary?)"
        if isinstance(error, IndexError)
        else "if other enumerated lengths work, a length was frozen during conversion"
    )
    shapes = [np.shape(v.val) for v in op.inputs.values() if hasattr(v, "val")]
    return InputError(
        f"{program.path}: op {op.name!r} ({op.op_type}) failed on shapes {shapes}: {error} ({hint})"
    )


def _results(program: Program, op, result, count: int) -> tuple:
    results = result if isinstance(result, tuple) else (result,)
    if len(results) != count or any(r is None for r in results):
        raise InputError(
            f"{program.path}: op {op.name!r} ({op.op_type}) produced no value; "
            "add an override in verify/coreml/mil_executor.py"
        )
    return results


def _check_state(program: Program, state: State | None) -> None:
    """InputError, naming the state, unless `state` is what the program declares."""
    if not program.state_specs:
        if state is not None:
            raise InputError(f"{program.path}: the program has no states, but a state was given")
        return
    if not isinstance(state, State):
        raise InputError(
            f"{program.path}: the program is stateful (states {sorted(program.state_specs)}); "
            "pass a state from make_state(program)"
        )
    if sorted(state.values) != sorted(program.state_specs):
        raise InputError(
            f"{program.path}: states are {sorted(program.state_specs)}, got {sorted(state.values)}; "
            "use make_state(program)"
        )
    for name, (shape, dtype) in program.state_specs.items():
        value = state.values[name]
        if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
            got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
            raise InputError(
                f"{program.path}: state {name!r} is {got}, but the program declares {dtype} {shape}; "
                "use make_state(program) for a fresh state"
            )


def evaluate(
    program: Program, feeds: dict[str, np.ndarray], state: State | None = None
) -> dict[str, np.ndarray]:
    """Runs the program on named inputs; returns {output name: array}. InputError on bad feeds.

    A stateful program needs `state` (make_state()); the call reads it and leaves the updated
    values in it, only if the whole call succeeded. Values are written into the program's vars,
    so one Program must not be evaluated from two threads at once; sequential runs at different
    lengths are fine (every op is recomputed).
    """
    if sorted(feeds) != sorted(program.input_shapes):
        raise InputError(f"{program.path}: inputs are {sorted(program.input_shapes)}, got {sorted(feeds)}")
    _check_state(program, state)
    function = program.function
    for name in program.state_specs:
        function.inputs[name]._sym_val = _Value(state.values[name])
    steps, feed_puts = _plan(program), program.plan.feeds
    for name, (dtype, put) in feed_puts.items():
        value = np.asarray(feeds[name])
        allowed = program.input_shapes[name]
        if tuple(value.shape) not in allowed:
            raise InputError(
                f"{program.path}: input {name!r} shape {tuple(value.shape)} is not one of the "
                f"shapes the program enumerates {sorted(allowed)}"
            )
        expected = program.input_dtypes[name]
        if value.dtype.kind != expected.kind:
            raise InputError(f"{program.path}: input {name!r} dtype {value.dtype}, expected {expected}")
        put(value.astype(dtype))
    for step in steps:
        step.run()
    values = {var.name: np.asarray(var.val).astype(dtype, copy=False) for var, dtype in program.plan.outputs}
    for name, var, dtype in program.plan.states:
        state.values[name] = np.asarray(var.val).astype(dtype, copy=False)
    return {name: values[name] for name in program.output_names}


def run(
    program: Program, input_ids: np.ndarray, input_name: str = "input_ids", output_name: str = "logits"
) -> np.ndarray:
    """input_ids int [1, T] -> logits float32 [1, T, V]. InputError for a length not enumerated."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[0] != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"input_ids: expected an integer array of shape [1, T], got {ids.dtype} {ids.shape}")
    if input_name not in program.input_shapes:
        raise InputError(
            f"{program.path}: no input named {input_name!r} (has {sorted(program.input_shapes)})"
        )
    if ids.shape[1] not in program.lengths(input_name):
        raise InputError(
            f"{program.path}: length {ids.shape[1]} is not one of the enumerated lengths "
            f"{program.lengths(input_name)}"
        )
    outputs = evaluate(program, {input_name: ids.astype(np.int32)})
    if output_name not in outputs:
        raise InputError(f"{program.path}: no output named {output_name!r} (has {sorted(outputs)})")
    return outputs[output_name].astype(np.float32, copy=False)


def consts(program: Program) -> dict[str, np.ndarray]:
    """{name: value} of every const op: the program's weights and constants, as loaded."""
    return {
        op.outputs[0].name: op.outputs[0].val for op in program.function.operations if op.op_type == "const"
    }


def set_const(program: Program, name: str, value: np.ndarray) -> None:
    """Replaces one const's value (same shape and dtype), for fault injection (//tests:gate_power).
    The only way to change a const: evaluate() re-decompresses a weight when a const it is made
    from was replaced (Program.materialized_from), not when an array was changed in place."""
    for op in program.function.operations:
        if op.op_type == "const" and op.outputs[0].name == name:
            old = np.asarray(op.outputs[0].val)
            value = np.asarray(value)
            if value.shape != old.shape:
                raise ValueError(f"const {name}: shape {value.shape}, expected {old.shape}")
            _set_value(op.outputs[0], value.astype(old.dtype))
            program.plan = None  # it holds the consts' values
            return
    raise KeyError(f"no const named {name!r}")


def materialized_weights(program: Program) -> dict[str, np.ndarray]:
    """{name: value} of every compressed weight (constexpr op), decompressed as the runtime does."""
    return {
        op.outputs[0].name: np.asarray(_constexpr(None, op))
        for op in program.function.operations
        if op.op_type in CONSTEXPR_OPS
    }


def _elements(value) -> int:
    return int(np.size(value))


def compression_share(program: Program) -> tuple[int, int]:
    """(weight elements held compressed, all weight elements): elements out of constexpr ops, and
    those plus every floating-point const of more than one element (scalars are constants, not
    weights; the compressed ops' own scales and data are not counted twice)."""
    compressed_inputs = {
        id(var)
        for op in program.function.operations
        if op.op_type in CONSTEXPR_OPS
        for var in op.inputs.values()
    }
    compressed = sum(
        int(np.prod(op.outputs[0].shape))  # static: a constexpr output's shape is its data's
        for op in program.function.operations
        if op.op_type in CONSTEXPR_OPS
    )
    plain = sum(
        _elements(op.outputs[0].val)
        for op in program.function.operations
        if op.op_type == "const"
        and id(op.outputs[0]) not in compressed_inputs
        and np.issubdtype(np.asarray(op.outputs[0].val).dtype, np.floating)
        and _elements(op.outputs[0].val) > 1
    )
    return compressed, compressed + plain


def plain_weights(program: Program) -> dict[str, np.ndarray]:
    """{name: value} of every floating-point const of more than one element that no compressed
    weight is made from: what a compressed package holds uncompressed (RoPE tables, norm weights,
    zero biases), the same consts compression_share counts as plain."""
    compressed_inputs = {
        id(var)
        for op in program.function.operations
        if op.op_type in CONSTEXPR_OPS
        for var in op.inputs.values()
    }
    return {
        op.outputs[0].name: np.asarray(op.outputs[0].val)
        for op in program.function.operations
        if op.op_type == "const"
        and id(op.outputs[0]) not in compressed_inputs
        and np.issubdtype(np.asarray(op.outputs[0].val).dtype, np.floating)
        and _elements(op.outputs[0].val) > 1
    }


def linear_biases(program: Program) -> set[str]:
    """Names of the consts that are a `linear` op's bias (the converter gives a bias-free linear a
    zero bias)."""
    return {
        op.bias.name
        for op in program.function.operations
        if op.op_type == "linear"
        and op.bias is not None
        and op.bias.op is not None
        and op.bias.op.op_type == "const"
    }


def compressed_input(program: Program, weight: str, role: str) -> str:
    """The name of the const that feeds input `role` (scale, zero_point, data, ...) of the constexpr
    op whose output is `weight`, for set_const. The loader names these consts with a per-process
    counter, so they are found by the op they feed, never by name."""
    for op in program.function.operations:
        if op.op_type in CONSTEXPR_OPS and op.outputs[0].name == weight:
            var = op.inputs.get(role)
            if var is None or var.op.op_type != "const":
                raise KeyError(
                    f"{weight}: its {op.op_type} has no const input {role!r} ({sorted(op.inputs)})"
                )
            return var.name
    raise KeyError(f"no compressed weight named {weight!r}")
