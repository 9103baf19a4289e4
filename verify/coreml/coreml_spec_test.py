import os
import shutil

import pytest
import torch

from common.errors import InputError
from conversion import coreml, coreml_stateful
from training.model import ModelConfig, Student, init_weights
from verify import frozen_students
from verify.coreml import coreml_spec

_ARRAY = coreml_spec.proto.FeatureTypes_pb2.ArrayFeatureType

LENGTHS = [64, 128, 256]
METADATA = {"short_description": "test", "version": "1"}
CHECKS = [
    "model_kind",
    "input_names",
    "input_dtype",
    "input_enumerated_shapes",
    "input_default_shape",
    "contract_lengths_supported",
    "other_lengths_unsupported",
    "output_names",
    "output_dtype",
    "output_shape_not_frozen",
    "program_output_length_dynamic",
]


def student() -> Student:
    model = Student(ModelConfig())
    init_weights(model, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("good") / "student.mlpackage")
    coreml.save_mlpackage(coreml.convert(student(), LENGTHS, 128, "fp16", METADATA), path)
    return path


@pytest.fixture(scope="module")
def frozen_package(tmp_path_factory):
    model = frozen_students.frozen_rotary_student()
    traced = torch.jit.trace(model, torch.zeros(1, 128, dtype=torch.int32), check_trace=False)
    path = str(tmp_path_factory.mktemp("frozen") / "frozen.mlpackage")
    coreml.save_mlpackage(coreml.convert_traced(traced, LENGTHS, 128, "fp16", METADATA), path)
    return path


def by_name(results):
    return {r.name: r for r in results}


def test_converted_student_passes_every_check(package):
    results = coreml_spec.check_spec(package, LENGTHS, default_length=128)
    assert [r.name for r in results] == CHECKS
    assert coreml_spec.failures(results) == []
    checks = by_name(results)
    assert checks["input_enumerated_shapes"].measured == [(1, 64), (1, 128), (1, 256)]
    assert checks["other_lengths_unsupported"].measured == []
    assert checks["output_shape_not_frozen"].measured == "unspecified"
    assert checks["program_output_length_dynamic"].measured == [1, "?", 512]


def test_supports_exactly_the_contract_lengths(package):
    spec, _ = coreml_spec.read_spec(package)
    assert [t for t in (32, 63, 64, 96, 128, 192, 256, 257, 512) if coreml_spec.supports_length(spec, t)] == [
        64,
        128,
        256,
    ]
    assert not coreml_spec.supports_length(spec, 96)
    assert not coreml_spec.supports_length(spec, 64, input_name="tokens")


def test_frozen_length_package_fails_the_output_checks(frozen_package):
    failed = {r.name: r for r in coreml_spec.failures(coreml_spec.check_spec(frozen_package, LENGTHS))}
    # The input still claims every length; the output gives the frozen length away.
    assert sorted(failed) == ["output_shape_not_frozen", "program_output_length_dynamic"]
    assert failed["output_shape_not_frozen"].measured == [1, 128, 512]
    assert failed["program_output_length_dynamic"].measured == [1, 128, 512]


def test_contract_mismatches_are_reported(package):
    checks = by_name(
        coreml_spec.check_spec(
            package,
            [64, 128],
            input_name="tokens",
            input_dtype="float32",
            output_name="scores",
            output_dtype="float16",
            default_length=64,
        )
    )
    for name in ("input_names", "input_dtype", "input_enumerated_shapes", "input_default_shape"):
        assert not checks[name].ok, name
    for name in ("output_names", "output_dtype", "contract_lengths_supported"):
        assert not checks[name].ok, name
    assert checks["input_enumerated_shapes"].expected == [(1, 64), (1, 128)]


def test_extra_enumerated_lengths_are_flagged(package):
    # Against a contract of [64, 128], the package's extra length 256 breaks the exact-set check.
    checks = by_name(coreml_spec.check_spec(package, [64, 128]))
    assert not checks["input_enumerated_shapes"].ok
    assert checks["input_enumerated_shapes"].measured == [(1, 64), (1, 128), (1, 256)]


def test_fixed_length_package(tmp_path):
    path = str(tmp_path / "fixed.mlpackage")
    coreml.save_mlpackage(coreml.convert(student(), [64], 64, "fp16", METADATA), path)
    results = coreml_spec.check_spec(path, [64], default_length=64)
    assert coreml_spec.failures(results) == []
    spec, _ = coreml_spec.read_spec(path)
    assert coreml_spec.supports_length(spec, 64) and not coreml_spec.supports_length(spec, 128)


def test_unreadable_packages_are_input_errors(package, tmp_path):
    with pytest.raises(InputError, match="not found"):
        coreml_spec.check_spec(str(tmp_path / "absent.mlpackage"), LENGTHS)
    broken = str(tmp_path / "broken.mlpackage")
    shutil.copytree(package, broken)
    with open(os.path.join(broken, "Data/com.apple.CoreML/model.mlmodel"), "wb") as handle:
        handle.write(b"\xff" * 64)
    with pytest.raises(InputError, match="corrupt Core ML model spec"):
        coreml_spec.check_spec(broken, LENGTHS)
    os.remove(os.path.join(broken, "Data/com.apple.CoreML/model.mlmodel"))
    with pytest.raises(InputError, match="which is missing"):
        coreml_spec.read_spec(broken)


# --- The stateful package (conversion/coreml_stateful.py) ---------------------------------------

STATEFUL_CHECKS = [
    "deployment_target",
    "state_names",
    "state_shapes",
    "state_dtypes",
    "input_names",
    "input_dtypes",
    "input_shapes",
    "output_names",
    "output_dtypes",
    "state_metadata",
]


@pytest.fixture(scope="module")
def stateful_package(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("stateful") / "magic-8-ball.stateful.mlpackage")
    coreml.save_mlpackage(coreml_stateful.convert(student(), LENGTHS, 128, METADATA), path)
    return path


def _stateful_failures(path, lengths=LENGTHS):
    expected = coreml_stateful.interface(ModelConfig(), lengths)
    return [r.name for r in coreml_spec.failures(coreml_spec.check_stateful_spec(path, **expected))]


def test_the_stateful_package_passes_every_check(stateful_package):
    results = coreml_spec.check_stateful_spec(
        stateful_package, **coreml_stateful.interface(ModelConfig(), LENGTHS)
    )
    assert [r.name for r in results] == STATEFUL_CHECKS
    assert coreml_spec.failures(results) == []


def _array(feature):
    return feature.type.multiArrayType


def _state_array(spec, index):
    return spec.description.state[index].type.stateType.arrayType


# check -> one edit of the package's spec that only that check must catch.
STATEFUL_FAULTS = {
    "deployment_target": lambda spec: setattr(spec, "specificationVersion", 8),
    "state_names": lambda spec: setattr(spec.description.state[1], "name", "values"),
    "state_shapes": lambda spec: _state_array(spec, 0).shape.__setitem__(3, 128),
    "state_dtypes": lambda spec: setattr(_state_array(spec, 1), "dataType", _ARRAY.FLOAT32),
    "input_names": lambda spec: setattr(spec.description.input[1], "name", "pos"),
    "input_dtypes": lambda spec: setattr(_array(spec.description.input[1]), "dataType", _ARRAY.FLOAT32),
    "input_shapes": lambda spec: (
        _array(spec.description.input[0]).enumeratedShapes.shapes[0].shape.__setitem__(1, 2)
    ),
    "output_names": lambda spec: setattr(spec.description.output[0], "name", "scores"),
    "output_dtypes": lambda spec: setattr(_array(spec.description.output[0]), "dataType", _ARRAY.FLOAT16),
    "state_metadata": lambda spec: spec.description.metadata.userDefined.pop("state_names"),
}


@pytest.mark.parametrize("check", STATEFUL_CHECKS)
def test_each_stateful_check_fails_on_its_fault(stateful_package, tmp_path, check):
    path = str(tmp_path / "faulty.mlpackage")
    shutil.copytree(stateful_package, path)
    spec, model_path = coreml_spec.read_spec(path)
    STATEFUL_FAULTS[check](spec)
    with open(model_path, "wb") as handle:
        handle.write(spec.SerializeToString())
    # A renamed state or input is also missing from the checks by name that follow.
    also = {
        "state_names": ["state_shapes", "state_dtypes"],
        "input_names": ["input_dtypes", "input_shapes"],
        "output_names": ["output_dtypes"],
    }
    assert _stateful_failures(path) == [c for c in STATEFUL_CHECKS if c in [check, *also.get(check, [])]]


def test_a_stateless_package_or_a_shorter_cache_fails_the_stateful_checks(package, stateful_package):
    assert _stateful_failures(package) == [
        "deployment_target",
        "state_names",
        "state_shapes",
        "state_dtypes",
        "input_names",
        "input_dtypes",
        "input_shapes",
        "state_metadata",
    ]
    # The contract says 256 positions; a package built for 128 has a shorter cache and no T256 step.
    assert _stateful_failures(stateful_package, [64, 128, 256]) == []
    assert _stateful_failures(stateful_package, [64, 128]) == ["state_shapes", "input_shapes"]
