"""The NumPy MIL executor against PyTorch: every op the student's program uses, then the student.

Per-op programs are converted in fp32, so the executor must match PyTorch to float32 rounding;
the student is also checked in fp16, the precision that ships.
"""

import os

# Before NumPy loads OpenBLAS: one BLAS thread. The executor's matmuls are small, and on a busy
# 2-core machine OpenBLAS's spinning threads slow each forward several-fold (verify_contracts.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import shutil
import time

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import get_new_symbol
from torch import nn
from torch.nn import functional as F

from common.errors import InputError
from conversion import coreml
from training.model import ModelConfig, Student, init_weights
from verify import frozen_students
from verify.coreml import mil_executor, stateful_toy

LENGTHS = [64, 128, 256]
METADATA = {"short_description": "test", "version": "1"}
# Max |executor - fp32 eager| over the three lengths, measured 1.3e-3..1.5e-3 for the fp16 program
# of the seed-0 student (coremltools 9.0, numpy 2); fp32 programs measured ~5e-7.
FP16_MAX_ABS = 5e-3
FP32_MAX_ABS = 1e-5


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _float_input(length, rng):
    return rng.standard_normal((1, length, 8)).astype(np.float32)


def _int_input(length, rng):
    return rng.integers(0, 16, (1, length)).astype(np.int32)


def _embedding():
    torch.manual_seed(0)
    return nn.Embedding(16, 8)


def _linear():
    torch.manual_seed(0)
    return nn.Linear(8, 4)


# op -> (module factory, input maker). Each module converts to a program that contains `op`.
OP_CASES = {
    "add": (lambda: Fn(lambda x: x + torch.arange(8.0)), _float_input),
    "band_part": (lambda: Fn(lambda x: torch.tril(x @ x.transpose(-1, -2))), _float_input),
    "cast": (lambda: Fn(lambda x: x.float() * 0.5), _int_input),
    "concat": (lambda: Fn(lambda x: torch.cat((x, -x), -1)), _float_input),
    "cos": (lambda: Fn(lambda x: x.cos()), _float_input),
    "cumsum": (lambda: Fn(lambda x: x.cumsum(1)), _float_input),
    "expand_dims": (lambda: Fn(lambda x: x.sum(-1)[:, :, None] * x), _float_input),
    "fill": (lambda: Fn(lambda x: torch.ones(x.shape[1], x.shape[1]) @ x), _float_input),
    "fill_like": (lambda: Fn(lambda x: torch.ones_like(x) + x), _float_input),
    "gather": (_embedding, _int_input),
    "linear": (_linear, _float_input),
    "matmul": (lambda: Fn(lambda x: x @ x.transpose(-1, -2)), _float_input),
    "mul": (lambda: Fn(lambda x: x * torch.arange(8.0)), _float_input),
    "pow": (lambda: Fn(lambda x: x.pow(2)), _float_input),
    "reduce_mean": (lambda: Fn(lambda x: x - x.mean(-1, keepdim=True)), _float_input),
    "reshape": (lambda: Fn(lambda x: x.unflatten(-1, (2, 4)).transpose(-1, -2).flatten(-2)), _float_input),
    "rsqrt": (lambda: Fn(lambda x: torch.rsqrt(x * x + 1)), _float_input),
    "shape": (lambda: Fn(lambda x: torch.ones(x.shape[1], 3).T @ x), _float_input),
    "silu": (lambda: Fn(F.silu), _float_input),
    "sin": (lambda: Fn(lambda x: x.sin()), _float_input),
    "slice_by_index": (lambda: Fn(lambda x: x[:, 1:, :4] * x[:, 0:1, 4:]), _float_input),
    "softmax": (lambda: Fn(lambda x: (4 * x).softmax(-1)), _float_input),
    "split": (lambda: Fn(lambda x: x.chunk(2, -1)[1] - x.chunk(2, -1)[0]), _float_input),
    "sub": (lambda: Fn(lambda x: x - torch.arange(8.0)), _float_input),
    "tile": (lambda: Fn(lambda x: x.repeat_interleave(2, dim=1)), _float_input),
    "transpose": (lambda: Fn(lambda x: x.transpose(1, 2)), _float_input),
    # Not in the student's program today, but overridden in the executor: keep them honest.
    "select": (lambda: Fn(lambda x: torch.where(x > 0, 1.0, -0.5) * x), _float_input),
    "reduce_max": (lambda: Fn(lambda x: x - x.amax(-1, keepdim=True)), _float_input),
    "reduce_sum": (lambda: Fn(lambda x: x.sum(-1)), _float_input),
}
OP_LENGTHS = [3, 5]


def convert_module(module, make_input, path, lengths=OP_LENGTHS, trace_length=None, precision="fp32"):
    """Traces `module` and saves it as an ML Program with input x enumerated over `lengths`."""
    rng = np.random.default_rng(0)
    example = make_input(trace_length or lengths[-1], rng)
    traced = torch.jit.trace(module.eval(), torch.from_numpy(example))
    extra = list(example.shape[2:])
    shapes = ct.EnumeratedShapes(shapes=[[1, t, *extra] for t in lengths])
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=shapes, dtype=example.dtype)],
        outputs=[ct.TensorType(name="y", dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=coreml.DEPLOYMENT_TARGET,
        compute_precision=coreml.PRECISIONS[precision],
    )
    coreml.save_mlpackage(mlmodel, path)
    return mil_executor.load_mlpackage(path)


@pytest.mark.parametrize("op", sorted(OP_CASES))
def test_op_matches_torch(op, tmp_path):
    factory, make_input = OP_CASES[op]
    module = factory()
    program = convert_module(module, make_input, str(tmp_path / f"{op}.mlpackage"))
    assert op in program.op_types, f"the {op} case converts to {sorted(set(program.op_types))}"
    rng = np.random.default_rng(1)
    for length in OP_LENGTHS:
        x = make_input(length, rng)
        got = mil_executor.evaluate(program, {"x": x})["y"]
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"{op} at length {length}")


def student() -> Student:
    model = Student(ModelConfig())
    init_weights(model, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("student")
    paths = {}
    for precision in ("fp16", "fp32"):
        paths[precision] = str(root / f"{precision}.mlpackage")
        mlmodel = coreml.convert(student(), LENGTHS, 128, precision, METADATA)
        coreml.save_mlpackage(mlmodel, paths[precision])
    return paths


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_every_op_of_the_student_has_a_per_op_test(packages, precision):
    used = set(mil_executor.load_mlpackage(packages[precision]).op_types) - {"const"}
    missing = sorted(used - set(OP_CASES))
    assert not missing, f"the student's {precision} program uses {missing}: add a case to OP_CASES"
    # Ops every conversion of the student has used so far, so a changed conversion is noticed.
    assert {"linear", "matmul", "softmax", "band_part", "silu", "slice_by_index", "gather"} <= used


def _ids(length):
    return np.random.default_rng(length).integers(0, 512, (1, length)).astype(np.int32)


@pytest.mark.parametrize("precision, tolerance", [("fp16", FP16_MAX_ABS), ("fp32", FP32_MAX_ABS)])
def test_student_matches_eager_at_every_length(packages, precision, tolerance):
    program = mil_executor.load_mlpackage(packages[precision])
    model = student()
    agree = total = 0
    report = []
    for length in LENGTHS:
        ids = _ids(length)
        start = time.perf_counter()
        got = mil_executor.run(program, ids)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            expected = model(torch.from_numpy(ids)).numpy()
        assert got.dtype == np.float32 and got.shape == (1, length, 512)
        diff = float(np.abs(got - expected).max())
        report.append(f"T{length}: max_abs {diff:.2e}, {seconds:.2f} s")
        assert diff <= tolerance, f"{precision} T{length}: max abs diff {diff} > {tolerance}"
        same = got.argmax(-1) == expected.argmax(-1)
        agree, total = agree + int(same.sum()), total + same.size
        # A random-init student has near-tied logits; an argmax may flip only within the tolerance.
        top2 = np.sort(expected[0], axis=-1)[:, -2:]
        margins = top2[:, 1] - top2[:, 0]
        assert np.all(margins[~same[0]] < 2 * tolerance), f"{precision} T{length}: clear argmax flipped"
    print(f"{precision}: " + "; ".join(report) + f"; top-1 agreement {agree / total:.4f}")
    assert agree / total >= 0.99


def test_rejects_lengths_the_program_does_not_enumerate(packages):
    program = mil_executor.load_mlpackage(packages["fp16"])
    assert program.lengths() == LENGTHS
    for length in (96, 32, 257):
        with pytest.raises(InputError, match=f"length {length} is not one of the enumerated lengths"):
            mil_executor.run(program, np.zeros((1, length), dtype=np.int32))
    with pytest.raises(InputError, match=r"shape \[1, T\]"):
        mil_executor.run(program, np.zeros((2, 64), dtype=np.int32))
    with pytest.raises(InputError, match="integer array"):
        mil_executor.run(program, np.zeros((1, 64), dtype=np.float32))
    with pytest.raises(InputError, match="outside the vocabulary"):
        mil_executor.run(program, np.full((1, 64), 512, dtype=np.int32))
    with pytest.raises(InputError, match="inputs are"):
        mil_executor.evaluate(program, {"tokens": np.zeros((1, 64), dtype=np.int32)})


def test_repeated_runs_at_mixed_lengths_are_stable(packages):
    program = mil_executor.load_mlpackage(packages["fp32"])
    first = mil_executor.run(program, _ids(64))
    mil_executor.run(program, _ids(256))
    np.testing.assert_array_equal(mil_executor.run(program, _ids(64)), first)


def test_frozen_length_student_is_caught_at_other_lengths(tmp_path):
    model = frozen_students.frozen_rotary_student()
    traced = torch.jit.trace(model, torch.zeros(1, 128, dtype=torch.int32), check_trace=False)
    # The same conversion as conversion/coreml.py, minus its trace check (which would refuse this).
    mlmodel = coreml.convert_traced(traced, LENGTHS, 128, "fp16", METADATA)
    path = str(tmp_path / "frozen.mlpackage")
    coreml.save_mlpackage(mlmodel, path)
    program = mil_executor.load_mlpackage(path)
    assert program.lengths() == LENGTHS  # the input claims every length...
    ids = _ids(128)
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).numpy()
    assert np.abs(mil_executor.run(program, ids) - expected).max() <= FP16_MAX_ABS  # ...and T128 works
    for length in (64, 256):
        with pytest.raises(InputError, match="a length was frozen"):
            mil_executor.run(program, _ids(length))


def test_a_result_that_contradicts_a_declared_static_shape_is_refused(tmp_path):
    # NumPy broadcasting and clamped slicing can compute a plausible array where Core ML's
    # declared types say otherwise; the executor trusts the declared static dims over NumPy.
    module = Fn(lambda x: x * 2.0)
    program = convert_module(module, _float_input, str(tmp_path / "mul.mlpackage"))
    (output,) = program.function.outputs
    program.declared[id(output)] = (1, 5, 8)  # as a program frozen at length 5 would declare
    rng = np.random.default_rng(0)
    assert mil_executor.evaluate(program, {"x": _float_input(5, rng)})["y"].shape == (1, 5, 8)
    with pytest.raises(InputError, match=r"produced shape \(1, 3, 8\), but the program declares \(1, 5, 8\)"):
        mil_executor.evaluate(program, {"x": _float_input(3, rng)})


def test_missing_or_corrupt_packages_are_input_errors(packages, tmp_path):
    with pytest.raises(InputError, match="not found"):
        mil_executor.load_mlpackage(str(tmp_path / "absent.mlpackage"))

    def copy(name):
        path = str(tmp_path / name)
        shutil.copytree(packages["fp16"], path)
        return path

    no_weights = copy("no_weights.mlpackage")
    os.remove(os.path.join(no_weights, "Data/com.apple.CoreML/weights/weight.bin"))
    with pytest.raises(InputError, match="weight file .*weight.bin .* is missing"):
        mil_executor.load_mlpackage(no_weights)

    truncated = copy("truncated.mlpackage")
    with open(os.path.join(truncated, "Data/com.apple.CoreML/weights/weight.bin"), "r+b") as handle:
        handle.truncate(600_000)
    with pytest.raises(InputError, match="cannot load the ML Program"):
        mil_executor.load_mlpackage(truncated)

    bad_spec = copy("bad_spec.mlpackage")
    with open(os.path.join(bad_spec, "Data/com.apple.CoreML/model.mlmodel"), "wb") as handle:
        handle.write(b"\xff" * 100)
    with pytest.raises(InputError, match="corrupt Core ML model spec"):
        mil_executor.load_mlpackage(bad_spec)

    bad_manifest = copy("bad_manifest.mlpackage")
    with open(os.path.join(bad_manifest, "Manifest.json"), "w") as handle:
        json.dump({"itemInfoEntries": {}}, handle)
    with pytest.raises(InputError, match="corrupt package manifest"):
        mil_executor.load_mlpackage(bad_manifest)

    no_manifest = copy("no_manifest.mlpackage")
    os.remove(os.path.join(no_manifest, "Manifest.json"))
    with pytest.raises(InputError, match="no Manifest.json"):
        mil_executor.load_mlpackage(no_manifest)


# --- Compressed weights and iOS18 ops (the Core ML int8/int4 variants) -------------------------


def _program_of(prog, path, lengths, target):
    """Saves a MIL program with input x [1, T, 8] enumerated over `lengths`; loads it back."""
    shapes = ct.EnumeratedShapes(shapes=[[1, t, 8] for t in lengths])
    mlmodel = ct.convert(
        prog,
        inputs=[ct.TensorType(name="x", shape=shapes)],
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT32,
    )
    coreml.save_mlpackage(mlmodel, path)
    return mil_executor.load_mlpackage(path)


def test_constexpr_affine_dequantize_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    quantized = rng.integers(-128, 128, (4, 8)).astype(np.int8)
    zero_point = rng.integers(-3, 4, 4).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, 4).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, get_new_symbol(), 8))], opset_version=ct.target.iOS16)
    def prog(x):
        w = mb.constexpr_affine_dequantize(
            quantized_data=quantized, zero_point=zero_point, scale=scale, axis=0
        )
        return mb.linear(x=x, weight=w, name="y")

    program = _program_of(prog, str(tmp_path / "affine.mlpackage"), OP_LENGTHS, ct.target.iOS16)
    assert "constexpr_affine_dequantize" in program.op_types
    weight = (quantized.astype(np.float32) - zero_point[:, None]) * scale[:, None]
    for length in OP_LENGTHS:
        x = rng.standard_normal((1, length, 8)).astype(np.float32)
        got = mil_executor.evaluate(program, {"x": x})["y"]
        np.testing.assert_allclose(got, x @ weight.T, rtol=1e-5, atol=1e-5)


def test_constexpr_blockwise_shift_scale_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(-8, 8, (4, 8)).astype(np.int8)  # 4-bit values
    scale = rng.uniform(0.01, 0.1, (4, 2)).astype(np.float32)  # blocks of 4 columns

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, get_new_symbol(), 8))], opset_version=ct.target.iOS18)
    def prog(x):
        w = mb.constexpr_blockwise_shift_scale(data=data, scale=scale)
        return mb.linear(x=x, weight=w, name="y")

    program = _program_of(prog, str(tmp_path / "blockwise.mlpackage"), OP_LENGTHS, ct.target.iOS18)
    assert "constexpr_blockwise_shift_scale" in program.op_types
    weight = data.astype(np.float32) * np.repeat(scale, 4, axis=1)
    for length in OP_LENGTHS:
        x = rng.standard_normal((1, length, 8)).astype(np.float32)
        got = mil_executor.evaluate(program, {"x": x})["y"]
        np.testing.assert_allclose(got, x @ weight.T, rtol=1e-5, atol=1e-5)


def test_a_replaced_const_is_decompressed_again_on_the_next_call(tmp_path):
    """evaluate() decompresses a weight once and reuses it until set_const replaces a const it is
    made from (fault injection, //tests:gate_power): then the next call sees the new weight."""
    rng = np.random.default_rng(0)
    data = rng.integers(-8, 8, (4, 8)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, (4, 2)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, get_new_symbol(), 8))], opset_version=ct.target.iOS18)
    def prog(x):
        w = mb.constexpr_blockwise_shift_scale(data=data, scale=scale, name="w")
        return mb.linear(x=x, weight=w, name="y")

    program = _program_of(prog, str(tmp_path / "replaced.mlpackage"), OP_LENGTHS, ct.target.iOS18)
    x = rng.standard_normal((1, OP_LENGTHS[0], 8)).astype(np.float32)
    first = mil_executor.evaluate(program, {"x": x})["y"]
    np.testing.assert_array_equal(mil_executor.evaluate(program, {"x": x})["y"], first)
    name = mil_executor.compressed_input(program, "w", "scale")
    doubled = np.asarray(mil_executor.consts(program)[name]) * 2
    mil_executor.set_const(program, name, doubled)
    weight = data.astype(np.float32) * np.repeat(doubled.astype(np.float32), 4, axis=1)
    got = mil_executor.evaluate(program, {"x": x})["y"]
    np.testing.assert_allclose(got, x @ weight.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, 2 * first, rtol=1e-5, atol=1e-5)


def test_scaled_dot_product_attention_matches_torch(tmp_path):
    """iOS18 programs fuse attention; the student's int4 variant runs it with a causal mask."""
    module = Fn(lambda x: F.scaled_dot_product_attention(x, x * 0.5, x + 1.0, is_causal=True))
    rng = np.random.default_rng(0)
    example = torch.from_numpy(_float_input(OP_LENGTHS[-1], rng)[:, None])  # [1, 1, T, 8]: one head
    traced = torch.jit.trace(module.eval(), example)
    shapes = ct.EnumeratedShapes(shapes=[[1, 1, t, 8] for t in OP_LENGTHS])
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=shapes, dtype=np.float32)],
        outputs=[ct.TensorType(name="y", dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT32,
    )
    path = str(tmp_path / "sdpa.mlpackage")
    coreml.save_mlpackage(mlmodel, path)
    program = mil_executor.load_mlpackage(path)
    assert "scaled_dot_product_attention" in program.op_types, sorted(set(program.op_types))
    for length in OP_LENGTHS:
        x = rng.standard_normal((1, 1, length, 8)).astype(np.float32)
        got = mil_executor.evaluate(program, {"x": x})["y"]
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"length {length}")


# --- States (iOS18 stateful programs: the Core ML KV cache) -------------------------------------


def _stateful(module, tmp_path):
    path = str(tmp_path / "stateful.mlpackage")
    stateful_toy.convert(module, path)
    return mil_executor.load_mlpackage(path)


def _feeds(steps, pos, rng):
    return {
        "x": rng.standard_normal((1, steps, stateful_toy.WIDTH)).astype(np.float32),
        "pos": np.array([pos], dtype=np.int32),
    }


def _torch_step(module, feeds):
    with torch.no_grad():
        return module(torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["pos"])).numpy()


def test_state_writes_at_a_runtime_position_match_torch_across_calls(tmp_path):
    """read_state, slice_update (the write at pos) and coreml_update_state, over one sequence of
    calls whose outputs depend on everything written before: the state persists between calls."""
    module = stateful_toy.CacheWriter()
    program = _stateful(module, tmp_path)
    assert {"read_state", "slice_update", "coreml_update_state"} <= set(program.op_types), program.op_types
    assert program.state_specs == {stateful_toy.STATE: ((1, 8, 4), np.dtype(np.float16))}
    module.cache.zero_()  # tracing wrote into the eager buffer
    state = mil_executor.make_state(program)
    rng = np.random.default_rng(0)
    pos = 0
    for steps in (3, 1, 1, 3):
        feeds = _feeds(steps, pos, rng)
        got = mil_executor.evaluate(program, feeds, state)["y"]
        expected = _torch_step(module, feeds)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=f"call at pos {pos}")
        np.testing.assert_array_equal(state.values[stateful_toy.STATE], module.cache.numpy())
        pos += steps
    assert np.all(state.values[stateful_toy.STATE] != 0)  # every slot written once


def test_read_state_alone_matches_torch(tmp_path):
    module = stateful_toy.CacheReader()
    program = _stateful(module, tmp_path)
    assert "read_state" in program.op_types and "coreml_update_state" not in program.op_types
    state = mil_executor.make_state(program)
    first = np.arange(4, dtype=np.float16) - 1.5
    state.values[stateful_toy.STATE][0, 0] = first
    module.cache[0, 0] = torch.from_numpy(first)
    feeds = _feeds(3, 2, np.random.default_rng(0))
    np.testing.assert_allclose(mil_executor.evaluate(program, feeds, state)["y"], _torch_step(module, feeds))
    assert np.array_equal(state.values[stateful_toy.STATE][0, 0], first)  # read, never written


def test_a_fresh_state_starts_a_new_sequence(tmp_path):
    program = _stateful(stateful_toy.CacheWriter(), tmp_path)
    feeds = [_feeds(1, pos, np.random.default_rng(pos)) for pos in range(3)]
    first, second = mil_executor.make_state(program), mil_executor.make_state(program)
    replies = [mil_executor.evaluate(program, f, first)["y"] for f in feeds]
    assert np.all(second.values[stateful_toy.STATE] == 0)  # states are independent
    again = [mil_executor.evaluate(program, f, second)["y"] for f in feeds]
    for a, b in zip(replies, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # A call at position 0 on the used state still sees the first sequence's later entries.
    stale = mil_executor.evaluate(program, feeds[0], first)["y"]
    assert not np.array_equal(stale, replies[0])


def test_bad_states_are_input_errors_naming_the_state(tmp_path):
    program = _stateful(stateful_toy.CacheWriter(), tmp_path)
    feeds = _feeds(1, 0, np.random.default_rng(0))
    with pytest.raises(
        InputError,
        match=r"state 'cache' is float16 \(1, 9, 4\), but the program declares float16 \(1, 8, 4\)",
    ):
        mil_executor.evaluate(program, feeds, mil_executor.State({"cache": np.zeros((1, 9, 4), np.float16)}))
    with pytest.raises(InputError, match=r"state 'cache' is float32 \(1, 8, 4\)"):
        mil_executor.evaluate(program, feeds, mil_executor.State({"cache": np.zeros((1, 8, 4), np.float32)}))
    with pytest.raises(InputError, match=r"states are \['cache'\], got \['kv'\]"):
        mil_executor.evaluate(program, feeds, mil_executor.State({"kv": np.zeros((1, 8, 4), np.float16)}))
    with pytest.raises(InputError, match="the program is stateful"):
        mil_executor.evaluate(program, feeds)


def test_a_failed_call_leaves_the_state_as_it_was(tmp_path):
    program = _stateful(stateful_toy.CacheWriter(), tmp_path)
    state = mil_executor.make_state(program)
    mil_executor.evaluate(program, _feeds(3, 0, np.random.default_rng(0)), state)
    before = state.values[stateful_toy.STATE].copy()
    with pytest.raises(InputError, match="slice_update"):  # 3 slots from 6 run past the 8 slots
        mil_executor.evaluate(program, _feeds(3, 6, np.random.default_rng(1)), state)
    np.testing.assert_array_equal(state.values[stateful_toy.STATE], before)


def test_a_stateless_program_refuses_a_state(packages):
    program = mil_executor.load_mlpackage(packages["fp32"])
    assert program.state_specs == {}
    with pytest.raises(InputError, match="has no states"):
        mil_executor.evaluate(program, {"input_ids": _ids(64)}, mil_executor.State({}))


# --- Kernels that replace the stock value_inference for speed -----------------------------------


def _kernel_mismatches(program) -> tuple[set, list]:
    """(op types compared, ops whose kernel result differs from value_inference), on the values the
    program's vars hold after an evaluate()."""
    compared, differ = set(), []
    for step in mil_executor._plan(program):
        if step.op.op_type not in mil_executor.SAME_AS_VALUE_INFERENCE:
            continue
        assert step.kernel is not None, f"{step.op.name} ({step.op.op_type}) runs value_inference"
        got = np.asarray(step.kernel(step.values(), step.op))
        expected = np.asarray(step.op.value_inference())
        compared.add(step.op.op_type)
        if (got.dtype, got.shape, got.tobytes()) != (expected.dtype, expected.shape, expected.tobytes()):
            differ.append(f"{step.op.name} ({step.op.op_type})")
    return compared, differ


def test_kernels_compute_what_value_inference_computes_bit_for_bit(packages, tmp_path):
    """A kernel that replaces value_inference for speed must return the same array, same dtype,
    same bits, on every op of the student's programs (fp16 and fp32, at every length) and of a
    stateful program (slice_update)."""
    compared = set()
    for precision in ("fp16", "fp32"):
        program = mil_executor.load_mlpackage(packages[precision])
        for length in LENGTHS:
            mil_executor.run(program, _ids(length))
            ops, differ = _kernel_mismatches(program)
            compared |= ops
            assert not differ, f"{precision} T{length}: {differ}"
    module = stateful_toy.CacheWriter()
    program = _stateful(module, tmp_path)
    state = mil_executor.make_state(program)
    rng = np.random.default_rng(0)
    for steps, pos in ((3, 0), (1, 3)):
        mil_executor.evaluate(program, _feeds(steps, pos, rng), state)
        ops, differ = _kernel_mismatches(program)
        compared |= ops
        assert not differ, f"stateful call at {pos}: {differ}"
    # The ops the student's programs use, so a kernel that stops being used here is noticed.
    assert {
        "add",
        "mul",
        "pow",
        "rsqrt",
        "reshape",
        "transpose",
        "gather",
        "softmax",
        "slice_update",
    } <= compared


def test_the_float16_square_is_the_float16_power_for_every_value():
    """The pow kernel squares a float16 array with np.square (faster); NumPy's float16 power gives
    the same bits for every float16 value (NaNs aside, whose payload nothing reads)."""
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    two = np.float16(2)
    with np.errstate(over="ignore", invalid="ignore"):
        got = mil_executor._pow({"x": x, "y": two}, None)
        expected = x**two
    assert got.dtype == np.float16
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    number = ~np.isnan(expected)
    assert np.array_equal(got.view(np.uint16)[number], expected.view(np.uint16)[number])


def _same_bits(got: np.ndarray, expected: np.ndarray) -> bool:
    """Same dtype and bits, NaNs aside (their payload nothing reads)."""
    bits = {2: np.uint16, 4: np.uint32}[expected.itemsize]
    number = ~np.isnan(expected)
    return (
        got.dtype == expected.dtype
        and np.array_equal(np.isnan(got), np.isnan(expected))
        and np.array_equal(got.view(bits)[number], expected.view(bits)[number])
    )


def test_the_fast_float16_casts_are_numpys_for_every_boundary():
    """_astype converts float16 <-> float32 through torch: every float16 value widens to NumPy's
    float32, and float32 values at, just around and between every float16 rounding boundary
    (ties, subnormals, overflow), and random bit patterns, round to NumPy's float16."""
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    assert _same_bits(mil_executor._astype(halves, np.float32), halves.astype(np.float32))
    finite = np.sort(halves[np.isfinite(halves)].astype(np.float32))
    ties = (finite[:-1].astype(np.float64) + finite[1:]) / 2  # exact in float32
    ties = np.concatenate([ties, [65519.0, 65520.0, 65521.0]]).astype(np.float32)
    near = [np.nextafter(ties, np.float32(-np.inf)), ties, np.nextafter(ties, np.float32(np.inf))]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    singles = np.concatenate([finite, *near, noise, np.float32([np.inf, -np.inf, 1e30, -1e-30])])
    with np.errstate(over="ignore"):
        assert _same_bits(mil_executor._astype(singles, np.float16), singles.astype(np.float16))


@pytest.mark.parametrize("operator_fn", [np.add, np.subtract, np.multiply, np.true_divide])
def test_float16_arithmetic_is_numpys_for_every_float16_value(operator_fn):
    """_float16_op (add, sub and mul, and softmax's subtraction and division) computes two float16
    operands in float32 and rounds once: NumPy's float16 bits for every float16 x against a sample
    of y (specials included), both ways round."""
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    rng = np.random.default_rng(1)
    sample = rng.integers(0, 1 << 16, 96, dtype=np.uint64).astype(np.uint16).view(np.float16)
    specials = np.float16([0.0, -0.0, 1.0, -1.0, 65504.0, -65504.0, 6e-8, -6e-8, np.inf, -np.inf])
    with np.errstate(all="ignore"):
        for y in np.concatenate([sample, specials]):
            for a, b in ((x, y), (y, x), (x, np.full_like(x, y))):
                got = mil_executor._float16_op(operator_fn, a, b)
                assert _same_bits(np.asarray(got), operator_fn(a, b)), (operator_fn.__name__, y)
