"""Checks a saved .mlpackage's interface against the contract, without running it.

The reference pipeline shipped a model that claimed flexible input shapes while its output stayed
[1, 128, vocab] (docs/architecture.md, "Frozen lengths"): coremltools converts such a frozen trace
silently. So besides names, dtypes and the enumerated lengths, this rejects a length-carrying
output dimension that is fixed while the input is flexible, both in the model description and in
the ML Program's own output type, and it proves a length outside the contract is reported unsupported.

Only the protobuf spec is read (coremltools.proto), so this runs anywhere.
"""

import dataclasses

from coremltools import proto
from google.protobuf.message import DecodeError

from common.errors import InputError
from verify.coreml import mlpackage_manifest

_ARRAY = proto.FeatureTypes_pb2.ArrayFeatureType
DTYPE_NAMES = {
    _ARRAY.INT32: "int32",
    _ARRAY.FLOAT32: "float32",
    _ARRAY.FLOAT16: "float16",
    _ARRAY.DOUBLE: "float64",
}
MAIN_FUNCTION = "main"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    measured: object
    expected: object


def read_spec(path: str) -> tuple[proto.Model_pb2.Model, str]:
    """(root model spec, its file path) of a .mlpackage. InputError for a missing/corrupt package."""
    model_path = mlpackage_manifest.root_model_path(path)
    spec = proto.Model_pb2.Model()
    try:
        with open(model_path, "rb") as handle:
            spec.ParseFromString(handle.read())
    except FileNotFoundError:
        raise InputError(f"{path}: the manifest names {model_path}, which is missing") from None
    except (DecodeError, OSError) as error:
        raise InputError(f"{model_path}: corrupt Core ML model spec ({error})") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(f"{model_path}: not an ML Program (found {spec.WhichOneof('Type')!r})")
    return spec, model_path


def _feature(features, name: str):
    for feature in features:
        if feature.name == name:
            return feature
    return None


def input_shapes(spec, input_name: str = "input_ids") -> list[tuple[int, ...]] | None:
    """Enumerated (or the one fixed) input shapes; None for a range-flexible or missing input."""
    feature = _feature(spec.description.input, input_name)
    if feature is None or feature.type.WhichOneof("Type") != "multiArrayType":
        return None
    array = feature.type.multiArrayType
    which = array.WhichOneof("ShapeFlexibility")
    if which == "enumeratedShapes":
        return [tuple(int(d) for d in s.shape) for s in array.enumeratedShapes.shapes]
    if which is None:
        return [tuple(int(d) for d in array.shape)]
    return None


def input_dtype_of(spec, input_name: str = "input_ids") -> str | None:
    """ "int32", "float32", ... of a multi-array input; None if missing or not a multi-array."""
    feature = _feature(spec.description.input, input_name)
    if feature is None or feature.type.WhichOneof("Type") != "multiArrayType":
        return None
    return DTYPE_NAMES.get(feature.type.multiArrayType.dataType)


def _state_array(spec, state_name: str):
    feature = _feature(spec.description.state, state_name)
    if feature is None or feature.type.WhichOneof("Type") != "stateType":
        return None
    wrapped = feature.type.stateType
    if wrapped.WhichOneof("Type") != "arrayType":
        return None
    return wrapped.arrayType


def state_shape(spec, state_name: str) -> tuple[int, ...] | None:
    """The declared shape of a multi-array state (states have one fixed shape); None if missing."""
    array = _state_array(spec, state_name)
    return None if array is None else tuple(int(d) for d in array.shape)


def state_dtype_of(spec, state_name: str) -> str | None:
    """ "float16", ... of a multi-array state; None if missing or not a multi-array."""
    array = _state_array(spec, state_name)
    return None if array is None else DTYPE_NAMES.get(array.dataType)


def supports_length(spec, length: int, input_name: str = "input_ids") -> bool:
    """Whether the Core ML runtime would accept input_ids of shape [1, length]."""
    feature = _feature(spec.description.input, input_name)
    if feature is None or feature.type.WhichOneof("Type") != "multiArrayType":
        return False
    array = feature.type.multiArrayType
    if array.WhichOneof("ShapeFlexibility") == "shapeRange":
        ranges = array.shapeRange.sizeRanges
        # upperBound -1 means unbounded.
        return len(ranges) == 2 and all(
            r.lowerBound <= size and (r.upperBound < 0 or size <= r.upperBound)
            for r, size in zip(ranges, (1, length), strict=True)
        )
    return (1, length) in (input_shapes(spec, input_name) or [])


def _probe_lengths(lengths: list[int]) -> list[int]:
    """Lengths outside the contract to probe: between each pair of contract lengths, and past the ends."""
    ordered = sorted(set(lengths))
    probes = {ordered[-1] + 1}
    if ordered[0] > 1:
        probes.add(ordered[0] - 1)
    probes |= {(a + b) // 2 for a, b in zip(ordered, ordered[1:], strict=False) if b - a > 1}
    return sorted(probes - set(ordered))


def _program_output_dims(spec, output_name: str) -> list | None:
    """The ML Program's declared dims of an output: ints, or "?" for a runtime-sized dim."""
    function = spec.mlProgram.functions.get(MAIN_FUNCTION)
    if function is None or function.opset not in function.block_specializations:
        return None
    block = function.block_specializations[function.opset]
    for op in block.operations:
        for out in op.outputs:
            if out.name == output_name and out.type.WhichOneof("type") == "tensorType":
                return [
                    int(d.constant.size) if d.WhichOneof("dimension") == "constant" else "?"
                    for d in out.type.tensorType.dimensions
                ]
    return None


def check_spec(
    mlpackage_path: str,
    lengths: list[int],
    input_name: str = "input_ids",
    input_dtype: str = "int32",
    output_name: str = "logits",
    output_dtype: str | None = "float32",
    default_length: int | None = None,
    length_axis: int = 1,
) -> list[CheckResult]:
    """One CheckResult per property; all ok means the package matches the contract's interface.

    InputError only when the package cannot be read at all. `length_axis` is the output
    dimension that carries the sequence length ([1, T, vocab] -> 1).
    """
    spec, _ = read_spec(mlpackage_path)
    results = []

    def check(name, measured, expected, ok=None):
        results.append(
            CheckResult(name, measured == expected if ok is None else bool(ok), measured, expected)
        )

    check("model_kind", spec.WhichOneof("Type"), "mlProgram")
    check("input_names", [f.name for f in spec.description.input], [input_name])
    check("input_dtype", input_dtype_of(spec, input_name), input_dtype)

    shapes = input_shapes(spec, input_name)
    expected_shapes = sorted((1, t) for t in lengths)
    check("input_enumerated_shapes", sorted(shapes) if shapes else shapes, expected_shapes)
    if default_length is not None:
        feature = _feature(spec.description.input, input_name)
        is_array = feature is not None and feature.type.WhichOneof("Type") == "multiArrayType"
        default = tuple(int(d) for d in feature.type.multiArrayType.shape) if is_array else None
        check("input_default_shape", default, (1, default_length))
    check(
        "contract_lengths_supported",
        [t for t in sorted(lengths) if supports_length(spec, t, input_name)],
        sorted(lengths),
    )
    probes = _probe_lengths(lengths)
    check("other_lengths_unsupported", [t for t in probes if supports_length(spec, t, input_name)], [])

    check("output_names", [o.name for o in spec.description.output], [output_name])
    out = _feature(spec.description.output, output_name)
    out_is_array = out is not None and out.type.WhichOneof("Type") == "multiArrayType"
    if output_dtype is not None:
        measured = DTYPE_NAMES.get(out.type.multiArrayType.dataType, "other") if out_is_array else None
        check("output_dtype", measured, output_dtype)

    flexible = shapes is None or len(shapes) > 1
    described = [int(d) for d in out.type.multiArrayType.shape] if out_is_array else None
    # A fixed description shape is only acceptable for a fixed input.
    check(
        "output_shape_not_frozen",
        described if described else "unspecified",
        "unspecified" if flexible else "fixed",
        ok=out_is_array and (not flexible or not described),
    )
    dims = _program_output_dims(spec, output_name)
    length_dim = dims[length_axis] if dims and len(dims) > length_axis else None
    check(
        "program_output_length_dynamic",
        dims,
        f"dim {length_axis} '?' (runtime length)" if flexible else f"dim {length_axis} fixed",
        ok=dims is not None and (length_dim == "?" if flexible else length_dim is not None),
    )
    return results


def failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok]


# The Core ML variants with compressed weights (conversion/coreml_compress.py): the deployment
# target each must declare (Core ML's specification version: iOS16 is 7, iOS17 8, iOS18 9), and
# the op that holds its weights. An int4 package below iOS18 would not load on any device.
SPECIFICATION_VERSIONS = {"iOS16": 7, "iOS17": 8, "iOS18": 9}
COMPRESSED_VARIANTS = {
    "int8": ("iOS16", "constexpr_affine_dequantize"),
    "int4": ("iOS18", "constexpr_blockwise_shift_scale"),
}


def _op_types(block) -> list[str]:
    types = [op.type for op in block.operations]
    for op in block.operations:
        for nested in op.blocks:
            types += _op_types(nested)
    return types


def check_compression(mlpackage_path: str, compression: str) -> list[CheckResult]:
    """The variant's deployment target (exactly its target, the oldest that runs it), the metadata
    naming the compression, and its weights held in the variant's constexpr op (none of the other)."""
    target, op_type = COMPRESSED_VARIANTS[compression]
    spec, _ = read_spec(mlpackage_path)
    by_version = {version: name for name, version in SPECIFICATION_VERSIONS.items()}
    measured_target = by_version.get(spec.specificationVersion, f"spec {spec.specificationVersion}")
    function = spec.mlProgram.functions.get(MAIN_FUNCTION) if spec.WhichOneof("Type") == "mlProgram" else None
    ops = (
        [t for block in function.block_specializations.values() for t in _op_types(block)] if function else []
    )
    constexpr = sorted({t for t in ops if t.startswith("constexpr_")})
    metadata = dict(spec.description.metadata.userDefined)
    return [
        CheckResult("deployment_target", measured_target == target, measured_target, target),
        CheckResult(
            "compression_metadata",
            metadata.get("compression") == compression,
            metadata.get("compression"),
            compression,
        ),
        CheckResult("compressed_weight_ops", constexpr == [op_type], constexpr, [op_type]),
    ]


# The stateful package (conversion/coreml_stateful.py): a KV cache held as Core ML state.


def _spec_target(spec) -> str:
    by_version = {version: name for name, version in SPECIFICATION_VERSIONS.items()}
    return by_version.get(spec.specificationVersion, f"spec {spec.specificationVersion}")


def _array_dtype(feature) -> str | None:
    if feature is None or feature.type.WhichOneof("Type") != "multiArrayType":
        return None
    return DTYPE_NAMES.get(feature.type.multiArrayType.dataType, "other")


def check_stateful_spec(
    mlpackage_path: str,
    states: dict[str, tuple[tuple[int, ...], str]],
    inputs: dict[str, tuple[str, list[tuple[int, ...]]]],
    outputs: dict[str, str],
    target: str,
) -> list[CheckResult]:
    """One CheckResult per property of a stateful package: its deployment target; the names,
    shapes and dtypes of its states; the names, dtypes and enumerated shapes of its inputs; the
    names and dtypes of its outputs; and the metadata naming the states.

    states {name: (shape, dtype)}, inputs {name: (dtype, [shape, ...])}, outputs {name: dtype}, in
    the order the package declares them. InputError only when the package cannot be read at all.
    """
    spec, _ = read_spec(mlpackage_path)
    description = spec.description
    results = []

    def check(name, measured, expected):
        results.append(CheckResult(name, measured == expected, measured, expected))

    check("deployment_target", _spec_target(spec), target)
    check("state_names", [s.name for s in description.state], list(states))
    check("state_shapes", {n: state_shape(spec, n) for n in states}, {n: s for n, (s, _) in states.items()})
    check(
        "state_dtypes", {n: state_dtype_of(spec, n) for n in states}, {n: d for n, (_, d) in states.items()}
    )
    check("input_names", [f.name for f in description.input], list(inputs))
    check(
        "input_dtypes",
        {n: _array_dtype(_feature(description.input, n)) for n in inputs},
        {n: d for n, (d, _) in inputs.items()},
    )
    measured_shapes = {n: input_shapes(spec, n) for n in inputs}
    check(
        "input_shapes",
        {n: sorted(s) if s else s for n, s in measured_shapes.items()},
        {n: sorted(s) for n, (_, s) in inputs.items()},
    )
    check("output_names", [f.name for f in description.output], list(outputs))
    check("output_dtypes", {n: _array_dtype(_feature(description.output, n)) for n in outputs}, outputs)
    check("state_metadata", description.metadata.userDefined.get("state_names"), ",".join(states))
    return results
