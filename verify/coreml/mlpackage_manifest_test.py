"""verify/coreml/mlpackage_manifest.py on package layouts built here: plain, symlinked whole (a directory
symlink, or a tree of symlinks to one package's files at the same places, as Bazel's sandbox stages
a tree artifact), and with a symlink under Data/ that leads out of the package."""

import json
import os

import pytest

from common.errors import InputError
from verify.coreml import mlpackage_manifest

MODEL = "com.apple.CoreML/model.mlmodel"
WEIGHTS = "com.apple.CoreML/weights/weight.bin"


def _package(root) -> str:
    """A package layout: Manifest.json naming Data/<MODEL>, the model and a weight file."""
    path = os.path.join(root, "m.mlpackage")
    os.makedirs(os.path.join(path, "Data", os.path.dirname(WEIGHTS)))
    manifest = {"rootModelIdentifier": "x", "itemInfoEntries": {"x": {"path": MODEL}}}
    with open(os.path.join(path, "Manifest.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    for name in (MODEL, WEIGHTS):
        with open(os.path.join(path, "Data", name), "wb") as handle:
            handle.write(b"spec" if name == MODEL else b"weights")
    return path


def _symlink_farm(package: str, root) -> str:
    """A real directory tree whose every file is an absolute symlink to the same file of `package`."""
    farm = os.path.join(root, "farm.mlpackage")
    for parent, _, files in os.walk(package):
        target = os.path.join(farm, os.path.relpath(parent, package))
        os.makedirs(target, exist_ok=True)
        for name in files:
            os.symlink(os.path.abspath(os.path.join(parent, name)), os.path.join(target, name))
    return farm


def test_a_plain_package_is_read(tmp_path):
    package = _package(tmp_path)
    assert mlpackage_manifest.root_model_path(package) == os.path.join(package, "Data", MODEL)
    mlpackage_manifest.require_inside(package, os.path.join(package, "Data", WEIGHTS))


def test_a_package_symlinked_whole_is_read(tmp_path):
    package = _package(tmp_path / "real")
    link = str(tmp_path / "link.mlpackage")
    os.symlink(package, link)
    assert mlpackage_manifest.root_model_path(link) == os.path.join(link, "Data", MODEL)
    farm = _symlink_farm(package, tmp_path)
    assert mlpackage_manifest.root_model_path(farm) == os.path.join(farm, "Data", MODEL)
    mlpackage_manifest.require_inside(farm, os.path.join(farm, "Data", WEIGHTS))


@pytest.mark.parametrize("member", [MODEL, WEIGHTS])
def test_a_symlink_under_data_that_leads_out_is_refused(tmp_path, member):
    package = _package(tmp_path / "real")
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"not the package's")
    inside = os.path.join(package, "Data", member)
    os.remove(inside)
    os.symlink(str(outside), inside)
    with pytest.raises(InputError, match="outside the package"):
        mlpackage_manifest.require_inside(package, inside)
    if member == MODEL:
        with pytest.raises(InputError, match="outside the package"):
            mlpackage_manifest.root_model_path(package)


def test_a_farm_symlink_to_another_file_of_the_package_is_refused(tmp_path):
    """In a tree of symlinks every file must lead to its own place: the weights file pointing at
    the model spec leads elsewhere."""
    farm = _symlink_farm(_package(tmp_path / "real"), tmp_path)
    weights = os.path.join(farm, "Data", WEIGHTS)
    os.remove(weights)
    os.symlink(os.path.realpath(os.path.join(farm, "Data", MODEL)), weights)
    with pytest.raises(InputError, match="outside the package"):
        mlpackage_manifest.require_inside(farm, weights)


def test_a_symlinked_data_directory_that_leads_out_is_refused(tmp_path):
    package = _package(tmp_path / "real")
    elsewhere = _package(tmp_path / "other")
    data = os.path.join(package, "Data")
    os.rename(data, str(tmp_path / "old_data"))
    os.symlink(os.path.join(elsewhere, "Data"), data)
    with pytest.raises(InputError, match="outside the package"):
        mlpackage_manifest.root_model_path(package)


def test_a_manifest_that_is_not_a_file_or_too_large_is_refused(tmp_path):
    package = _package(tmp_path)
    manifest = os.path.join(package, "Manifest.json")
    os.remove(manifest)
    os.symlink("/dev/zero", manifest)  # reading it would never end
    with pytest.raises(InputError, match="no Manifest.json"):
        mlpackage_manifest.root_model_path(package)
    os.remove(manifest)
    with open(manifest, "wb") as handle:
        handle.write(b" " * (mlpackage_manifest.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(InputError, match="corrupt package manifest"):
        mlpackage_manifest.root_model_path(package)


def test_a_member_named_outside_the_package_is_refused(tmp_path):
    package = _package(tmp_path)
    with pytest.raises(InputError, match="not inside the package"):
        mlpackage_manifest.require_inside(package, str(tmp_path / "x.bin"))
