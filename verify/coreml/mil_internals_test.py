"""Fails loudly, naming the internal, when a coremltools internal that verify/coreml/mil_executor.py
uses moves.

The executor evaluates a saved ML Program through coremltools' own MIL loader and NumPy value
inference, which are not public API. When coremltools is upgraded, this test says which piece
changed; fix the adapter section at the top of verify/coreml/mil_executor.py, then rerun
verify/coreml/mil_executor_test.py.
"""

import importlib
import inspect

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import get_new_symbol

from conversion import coreml
from verify.coreml import mil_executor, stateful_toy

VALIDATED_VERSION = "9.0"


def need(condition, internal: str, detail: str = "") -> None:
    if not condition:
        pytest.fail(
            f"coremltools internal moved: {internal} {detail}. verify/coreml/mil_executor.py was validated "
            f"against coremltools {VALIDATED_VERSION} (installed: {ct.__version__}); update its adapter."
        )


def test_coremltools_is_the_validated_version():
    need(ct.__version__ == VALIDATED_VERSION, "coremltools.__version__", f"is {ct.__version__}")


@pytest.mark.parametrize(
    "module, names",
    [
        ("coremltools.proto.Model_pb2", ["Model"]),
        ("coremltools.proto.FeatureTypes_pb2", ["ArrayFeatureType"]),
        ("coremltools.converters.mil.frontend.milproto.load", ["load"]),
        ("coremltools.converters.mil.mil.types", ["tensor", "is_tensor", "nptype_from_builtin"]),
        ("coremltools.converters.mil.mil.types.symbolic", ["is_symbolic"]),
        ("coremltools.converters.mil.mil.var", ["Var"]),
    ],
)
def test_modules_and_names_exist(module, names):
    try:
        loaded = importlib.import_module(module)
    except ImportError as error:
        pytest.fail(f"coremltools internal moved: module {module} cannot be imported ({error})")
    for name in names:
        need(hasattr(loaded, name), f"{module}.{name}", "is missing")


def test_milproto_load_signature():
    from coremltools.converters.mil.frontend.milproto.load import load

    params = list(inspect.signature(load).parameters)
    need(
        params[:3] == ["model_spec", "specification_version", "file_weights_dir"],
        "milproto.load.load(model_spec, specification_version, file_weights_dir)",
        f"has parameters {params}",
    )


def test_var_keeps_its_value_and_type_slots():
    from coremltools.converters.mil.mil.var import Var

    slots = getattr(Var, "__slots__", ())
    need("_sym_val" in slots, "Var._sym_val", f"is not a slot ({slots})")
    need("_sym_type" in slots, "Var._sym_type", f"is not a slot ({slots})")
    for prop in ("val", "sym_val", "sym_type", "dtype", "shape"):
        need(
            isinstance(inspect.getattr_static(Var, prop), property), f"Var.{prop}", "is no longer a property"
        )


def test_types_tensor_builds_concrete_shapes():
    from coremltools.converters.mil.mil import types

    t = types.tensor(types.fp16, (2, 3))
    need(types.is_tensor(t), "types.is_tensor(types.tensor(...))", "is False")
    need(tuple(t.get_shape()) == (2, 3), "types.tensor(...).get_shape()", f"is {t.get_shape()}")
    need(t.get_primitive() == types.fp16, "types.tensor(...).get_primitive()")
    need(types.nptype_from_builtin(types.fp16) == np.float16, "types.nptype_from_builtin(fp16)")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """A tiny saved ML Program: y = softmax(x @ w) with a flexible length, loaded by the executor."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, get_new_symbol(), 4))], opset_version=ct.target.iOS16)
    def prog(x):
        w = np.arange(8, dtype=np.float32).reshape(4, 2) / 8
        return mb.softmax(x=mb.matmul(x=x, y=w), axis=-1, name="y")

    shapes = ct.EnumeratedShapes(shapes=[[1, 2, 4], [1, 4, 4]])
    mlmodel = ct.convert(
        prog,
        inputs=[ct.TensorType(name="x", shape=shapes)],
        convert_to="mlprogram",
        minimum_deployment_target=coreml.DEPLOYMENT_TARGET,
        compute_precision=ct.precision.FLOAT32,
    )
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.mlpackage")
    coreml.save_mlpackage(mlmodel, path)
    return mil_executor.load_mlpackage(path)


def test_loaded_program_shape(program):
    function = program.function
    need(isinstance(function.inputs, dict), "Function.inputs", f"is {type(function.inputs)}, not a dict")
    need(list(function.inputs) == ["x"], "Function.inputs keys", f"are {list(function.inputs)}")
    need(isinstance(function.outputs, list | tuple), "Function.outputs", f"is {type(function.outputs)}")
    ops = list(function.operations)
    need(all(hasattr(op, "op_type") and hasattr(op, "name") for op in ops), "Operation.op_type/.name")
    need(all(isinstance(op.outputs, list) for op in ops), "Operation.outputs", "is not a list of Var")
    need(all(callable(getattr(op, "value_inference", None)) for op in ops), "Operation.value_inference")
    matmul = next(op for op in ops if op.op_type == "matmul")
    need(hasattr(matmul, "x") and hasattr(matmul.x, "sym_type"), "Operation input access by name (op.x)")
    need(matmul.transpose_x is not None, "Operation optional input access (op.transpose_x)")


def test_value_inference_reads_values_written_to_sym_val(program):
    x = np.random.default_rng(0).standard_normal((1, 2, 4)).astype(np.float32)
    got = mil_executor.evaluate(program, {"x": x})["y"]
    logits = x @ (np.arange(8, dtype=np.float32).reshape(4, 2) / 8)
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    need(
        np.allclose(got, expected, atol=1e-6),
        "Var._sym_val -> Var.val -> value_inference",
        "gave wrong values",
    )


# --- compressed weights (the Core ML int8/int4 variants) --------------------------------------


@pytest.mark.parametrize(
    "module, op_type",
    [
        ("coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops", "constexpr_affine_dequantize"),
        ("coremltools.converters.mil.mil.ops.defs.iOS18.compression", "constexpr_blockwise_shift_scale"),
    ],
)
def test_constexpr_ops_materialize_through_their_own_decompress(module, op_type):
    try:
        op_class = getattr(importlib.import_module(module), op_type)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"coremltools internal moved: {module}.{op_type} ({error})")
    need(
        callable(getattr(op_class, "materialized_val_inference", None)),
        f"{op_type}.materialized_val_inference",
    )
    need(
        isinstance(inspect.getattr_static(op_class, "decompress"), staticmethod),
        f"{op_type}.decompress",
        "is not static",
    )
    need(
        op_type in mil_executor.CONSTEXPR_OPS and op_type in mil_executor.OVERRIDES,
        f"executor runs {op_type}",
    )


def test_decompress_signatures():
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_affine_dequantize
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_blockwise_shift_scale

    affine = list(inspect.signature(constexpr_affine_dequantize.decompress).parameters)
    need(
        affine == ["quantized_data", "zero_point", "scale", "axis"],
        "constexpr_affine_dequantize.decompress",
        f"has {affine}",
    )
    blockwise = list(inspect.signature(constexpr_blockwise_shift_scale.decompress).parameters)
    need(
        blockwise == ["data", "scale", "offset"],
        "constexpr_blockwise_shift_scale.decompress",
        f"has {blockwise}",
    )
    q = np.array([[1, -2], [3, 4]], dtype=np.int8)
    got = constexpr_blockwise_shift_scale.decompress(q, np.array([[0.5], [2.0]], dtype=np.float16), None)
    need(
        np.array_equal(got, np.array([[0.5, -1.0], [6.0, 8.0]], dtype=np.float16)),
        "blockwise decompress values",
    )


def test_quantizer_classmethods_used_for_the_floors():
    from coremltools.optimize.coreml import _quantization_passes

    quantizer = getattr(_quantization_passes, "linear_quantize_weights", None)
    need(quantizer is not None, "coremltools.optimize.coreml._quantization_passes.linear_quantize_weights")
    params = list(inspect.signature(quantizer.blockwise_compress).parameters)
    need(
        params == ["original_data", "nbits", "mode", "signed", "block_sizes"],
        "linear_quantize_weights.blockwise_compress(original_data, nbits, mode, signed, block_sizes)",
        f"has {params}",
    )
    need(
        isinstance(inspect.getattr_static(quantizer, "decompress"), staticmethod),
        "linear_quantize_weights.decompress",
    )


def test_a_compressed_const_loads_as_a_constexpr_op_the_executor_runs(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, get_new_symbol(), 4))], opset_version=ct.target.iOS18)
    def prog(x):
        w = mb.constexpr_blockwise_shift_scale(
            data=np.arange(8, dtype=np.int8).reshape(2, 4) - 4, scale=np.full((2, 1), 0.25, dtype=np.float32)
        )
        return mb.linear(x=x, weight=w, name="y")

    mlmodel = ct.convert(
        prog,
        inputs=[ct.TensorType(name="x", shape=ct.EnumeratedShapes(shapes=[[1, 2, 4], [1, 3, 4]]))],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT32,
    )
    path = str(tmp_path / "c.mlpackage")
    coreml.save_mlpackage(mlmodel, path)
    program = mil_executor.load_mlpackage(path)
    op = next(op for op in program.function.operations if op.op_type == "constexpr_blockwise_shift_scale")
    need(op.outputs[0].val is None, "constexpr output value", "is materialized at load (expected None)")
    need(all(v.op.op_type == "const" for v in op.inputs.values()), "constexpr inputs", "are not const ops")
    weights = mil_executor.materialized_weights(program)
    need(len(weights) == 1, "mil_executor.materialized_weights", f"found {sorted(weights)}")


# --- states (the stateful Core ML package: conversion/coreml_stateful.py) -----------------------


def test_state_ops_and_types():
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.ops.defs import coreml_dialect
    from coremltools.converters.mil.mil.ops.defs.iOS18 import states, tensor_transformation

    need(callable(getattr(types, "is_state", None)), "types.is_state")
    op_classes = {
        "read_state": getattr(states, "read_state", None),
        "coreml_update_state": getattr(coreml_dialect.ops, "coreml_update_state", None),
    }
    for name, op_class in op_classes.items():
        need(op_class is not None, f"op class {name} (iOS18.states / coreml_dialect.ops)")
        need(name in mil_executor.STATE_OPS and name in mil_executor.OVERRIDES, f"executor runs {name}")
    need(
        list(op_classes["coreml_update_state"].input_spec.input_types) == ["state", "value"],
        "coreml_update_state inputs (state, value)",
    )
    need(list(op_classes["read_state"].input_spec.input_types) == ["input"], "read_state inputs (input)")
    slice_update = getattr(tensor_transformation, "slice_update", None)
    need(slice_update is not None, "iOS18.tensor_transformation.slice_update")
    need(
        "value_inference" in vars(slice_update),
        "slice_update.value_inference",
        "is gone: add an override in verify/coreml/mil_executor.py",
    )


def test_a_saved_state_write_loads_as_coreml_update_state(tmp_path):
    path = str(tmp_path / "stateful.mlpackage")
    stateful_toy.convert(stateful_toy.CacheWriter(), path)
    spec = ct.models.MLModel(path, skip_model_load=True).get_spec()
    saved = [op.type for op in spec.mlProgram.functions["main"].block_specializations["CoreML8"].operations]
    need("write_state" in saved, "saved stateful program", f"has no write_state ({sorted(set(saved))})")
    program = mil_executor.load_mlpackage(path)
    loaded = program.op_types
    need(
        "write_state" not in loaded and loaded.count("coreml_update_state") == saved.count("write_state"),
        "milproto load: write_state + read_state -> coreml_update_state",
        f"loaded {sorted(set(loaded))}",
    )
    state_var = program.function.inputs[stateful_toy.STATE]
    from coremltools.converters.mil.mil import types

    need(types.is_state(state_var.sym_type), "Function.inputs[state].sym_type", "is not types.state")
    need(
        tuple(state_var.sym_type.wrapped_type().get_shape()) == (1, 8, 4),
        "types.state(...).wrapped_type().get_shape()",
    )
