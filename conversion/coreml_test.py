import json
import os
import uuid

import coremltools as ct
import pytest

from common.errors import InputError
from conversion import coreml, mlpackage_testing
from training.model import ModelConfig, Student, init_weights
from verify import frozen_students

LENGTHS = [64, 128, 256]
METADATA = {
    "short_description": "test student",
    "version": "7",
    "author": "tests",
    "user_defined": {"contract_sha256": "c" * 64},
}


def student() -> Student:
    model = Student(ModelConfig())
    init_weights(model, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pkg") / "student.mlpackage")
    coreml.save_mlpackage(coreml.convert(student(), LENGTHS, 128, "fp16", METADATA), path)
    return path


def test_saved_package_has_contract_io(package):
    spec = ct.utils.load_spec(package)
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion == 7  # iOS16 / macOS13
    (inp,) = spec.description.input
    assert inp.name == "input_ids"
    array = inp.type.multiArrayType
    assert array.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    assert sorted(tuple(s.shape) for s in array.enumeratedShapes.shapes) == [(1, 64), (1, 128), (1, 256)]
    assert list(array.shape) == [1, 128]  # the default length
    (out,) = spec.description.output
    assert out.name == "logits"
    assert out.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert list(out.type.multiArrayType.shape) == []  # follows the input, not frozen


def test_metadata(package):
    meta = ct.utils.load_spec(package).description.metadata
    assert meta.shortDescription == "test student"
    assert meta.versionString == "7"
    assert meta.author == "tests"
    user = dict(meta.userDefined)
    assert user["model_type"] == "magic-8-ball"
    assert user["contract_sha256"] == "c" * 64
    assert user["precision"] == "fp16"
    assert "com.github.apple.coremltools.conversion_date" not in user  # would change daily


def test_package_files_and_manifest(package):
    files = mlpackage_testing.tree(package)
    assert sorted(files) == [
        "Data/com.apple.CoreML/model.mlmodel",
        "Data/com.apple.CoreML/weights/weight.bin",
        "Manifest.json",
    ]
    manifest = json.loads(files["Manifest.json"])
    entries = manifest["itemInfoEntries"]
    assert entries[manifest["rootModelIdentifier"]]["path"] == "com.apple.CoreML/model.mlmodel"
    for identifier in entries:
        assert uuid.UUID(identifier).version == 5  # name-based, from the content: not random
    for directory, _, names in os.walk(package):
        assert os.stat(directory).st_mode & 0o777 == 0o755
        for name in names:
            assert os.stat(os.path.join(directory, name)).st_mode & 0o777 == 0o644
    # fp16 weights: about two bytes per parameter.
    assert 1_200_000 < len(files["Data/com.apple.CoreML/weights/weight.bin"]) < 1_300_000


_SAVE_SCRIPT = """
import sys
from conversion import coreml
from conversion.coreml_test import LENGTHS, METADATA, student
coreml.save_mlpackage(coreml.convert(student(), LENGTHS, 128, "fp16", METADATA), sys.argv[1])
"""


def test_same_model_gives_byte_identical_packages_across_processes(package, tmp_path):
    # Plain protobuf serialization writes maps in an order seeded per process (not by
    # PYTHONHASHSEED), so the check needs a second process.
    mlpackage_testing.assert_saved_alike_in_another_process(
        package, _SAVE_SCRIPT, str(tmp_path / "again.mlpackage")
    )


def test_manifest_identifiers_follow_content(package, tmp_path):
    other = str(tmp_path / "fp32.mlpackage")
    coreml.save_mlpackage(coreml.convert(student(), LENGTHS, 128, "fp32", METADATA), other)
    ids16 = set(json.loads(mlpackage_testing.tree(package)["Manifest.json"])["itemInfoEntries"])
    ids32 = set(json.loads(mlpackage_testing.tree(other)["Manifest.json"])["itemInfoEntries"])
    assert ids16.isdisjoint(ids32)
    spec = ct.utils.load_spec(other)
    assert dict(spec.description.metadata.userDefined)["precision"] == "fp32"
    weights = mlpackage_testing.tree(other)["Data/com.apple.CoreML/weights/weight.bin"]
    assert len(weights) > 2_400_000  # fp32: four bytes per parameter


def test_save_replaces_existing_package_completely(package, tmp_path):
    path = str(tmp_path / "m.mlpackage")
    os.makedirs(os.path.join(path, "stale"))
    mlmodel = ct.models.MLModel(package, skip_model_load=True)
    coreml.save_mlpackage(mlmodel, path)
    assert mlpackage_testing.tree(path) == mlpackage_testing.tree(package)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    mlmodel = coreml.convert(student(), [64], 64, "fp16", METADATA)
    path = str(tmp_path / "m.mlpackage")

    def broken_manifest(package):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(coreml, "_deterministic_manifest", broken_manifest)
    with pytest.raises(OSError):
        coreml.save_mlpackage(mlmodel, path)
    assert os.listdir(tmp_path) == []


def test_save_path_must_be_mlpackage_in_existing_dir(package, tmp_path):
    mlmodel = ct.models.MLModel(package, skip_model_load=True)
    with pytest.raises(InputError, match=r"must end in \.mlpackage"):
        coreml.save_mlpackage(mlmodel, str(tmp_path / "m.pkg"))
    with pytest.raises(InputError, match="does not exist"):
        coreml.save_mlpackage(mlmodel, str(tmp_path / "missing" / "m.mlpackage"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "lengths, default, message",
    [
        ([64, 512], 64, f"above the model's max_seq_len {ModelConfig().max_seq_len}"),
        ([], 64, "empty"),
        ([64, 64], 64, "repeats"),
        ([0, 64], 64, "not a positive integer"),
        ([64, 128], 256, "default_length: 256 is not one of"),
    ],
)
def test_bad_lengths_are_input_errors(lengths, default, message):
    with pytest.raises(InputError, match=message):
        coreml.convert(student(), lengths, default, "fp16", METADATA)


def test_bad_precision_and_metadata_are_input_errors():
    with pytest.raises(InputError, match="precision"):
        coreml.convert(student(), [64], 64, "int8", METADATA)
    with pytest.raises(InputError, match="unknown keys"):
        coreml.convert(student(), [64], 64, "fp16", dict(METADATA, colour="blue"))
    with pytest.raises(InputError, match="version: missing"):
        coreml.convert(student(), [64], 64, "fp16", {"short_description": "x"})
    with pytest.raises(InputError, match="must be strings"):
        coreml.convert(student(), [64], 64, "fp16", dict(METADATA, user_defined={"n": 1}))


def test_frozen_length_trace_is_refused():
    model = frozen_students.frozen_rotary_student()
    with pytest.raises(InputError, match="fails at length 64 .* a shape was frozen"):
        coreml.convert(model, LENGTHS, 128, "fp16", METADATA)


def test_tree_digest_covers_names_and_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    first = coreml._tree_digest(str(tmp_path))
    assert coreml._tree_digest(str(tmp_path)) == first
    (tmp_path / "a").write_bytes(b"2")
    second = coreml._tree_digest(str(tmp_path))
    os.rename(tmp_path / "a", tmp_path / "b")
    third = coreml._tree_digest(str(tmp_path))
    assert len({first, second, third}) == 3
