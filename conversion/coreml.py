"""Student -> Core ML ML Program (.mlpackage) with enumerated sequence lengths.

One conversion serves every contract length: the input is `input_ids` int32 [1, T] with
ct.EnumeratedShapes over the contract lengths (each enumerated shape can run on the Neural
Engine; a RangeDim model runs there only at its default shape). The output is `logits`
float32 [1, T, vocab].

The model is traced once at the default length (conversion/torchscript.py's trace). That is only
safe because the student builds its mask and positions from the runtime length
(docs/architecture.md, "Export rules"), so before converting we run the trace at every contract
length against eager and refuse a trace that froze a shape.

Saved packages are deterministic: coremltools writes random item identifiers into
Manifest.json, today's date into the metadata and protobuf maps in hash order; we derive the
identifiers from the content, drop the date and serialize the spec deterministically, so the
same model and settings give byte-identical packages, in any process.
"""

import hashlib
import json
import os
import tempfile
import uuid

import coremltools as ct
import numpy as np
import torch

from common import atomic
from common.errors import InputError
from conversion import contract as contract_lib
from conversion import torchscript
from training.config import MODEL_TYPE
from training.model import Student

INPUT_NAME = "input_ids"
OUTPUT_NAME = "logits"
PRECISIONS = {"fp16": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}

# iOS16 / macOS13 (spec version 7, opset CoreML6; the two name the same target). ML Programs need
# iOS15+; iOS16 still reaches nearly every device in use (iPhone 8 / 2017 onwards, macOS 13+), gets
# the iOS16 opset (fill_like, fp16 I/O), and is what third_party/python's smoke test pins. Not
# iOS18: it fuses attention into scaled_dot_product_attention (measured: plus select and
# greater_equal for the mask), which older OSes lack. The int4 variant needs iOS18 all the same
# (conversion/coreml_compress.py); verify/coreml/mil_executor.py runs its fused attention too.
DEPLOYMENT_TARGET = ct.target.iOS16

# Metadata keys convert() accepts; everything in "user_defined" must be str -> str.
METADATA_KEYS = ("short_description", "version", "author", "license", "user_defined")
REQUIRED_METADATA_KEYS = ("short_description", "version")

# coremltools stamps the conversion day here; dropping it keeps packages reproducible.
_CONVERSION_DATE_KEY = "com.github.apple.coremltools.conversion_date"

# uuid5 namespace for Manifest.json item identifiers (fixed, so identifiers depend on content only).
_MANIFEST_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "magic-8-ball/coreml/manifest")


def _check_metadata(metadata: dict) -> None:
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if unknown:
        raise InputError(f"metadata: unknown keys {unknown}; expected some of {list(METADATA_KEYS)}")
    for key in REQUIRED_METADATA_KEYS:
        if not metadata.get(key):
            raise InputError(f"metadata: {key}: missing")
    user_defined = metadata.get("user_defined", {})
    if not isinstance(user_defined, dict):
        raise InputError("metadata: user_defined: must be a dict of str -> str")
    for key, value in user_defined.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InputError(f"metadata: user_defined: {key!r}: keys and values must be strings")


def convert_traced(
    traced: torch.jit.ScriptModule,
    lengths: list[int],
    default_length: int,
    precision: str,
    metadata: dict,
    target=DEPLOYMENT_TARGET,
) -> ct.models.MLModel:
    """ct.convert with the contract's input/output names and enumerated lengths, plus metadata.

    No checks on the trace: convert() is the entry point; this is separate so tests can convert a
    deliberately broken trace the same way and prove the verifiers catch it.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision: {precision!r}; expected one of {sorted(PRECISIONS)}")
    _check_metadata(metadata)
    if len(lengths) > 1:
        shapes = ct.EnumeratedShapes(shapes=[[1, t] for t in lengths], default=[1, default_length])
    else:
        shapes = (1, lengths[0])  # EnumeratedShapes needs two or more shapes
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(name=INPUT_NAME, shape=shapes, dtype=np.int32)],
        # dtype float32 so the saved output is float32 as the contract says (an iOS16 fp16 program
        # would otherwise return fp16 logits).
        outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=PRECISIONS[precision],
    )
    apply_metadata(mlmodel, metadata, precision)
    return mlmodel


def apply_metadata(mlmodel: ct.models.MLModel, metadata: dict, precision: str) -> None:
    """Writes checked metadata into the model, without coremltools' conversion date (reproducible
    packages); user_defined_metadata always names the model type and the precision."""
    _check_metadata(metadata)
    mlmodel.short_description = metadata["short_description"]
    mlmodel.version = metadata["version"]
    if metadata.get("author"):
        mlmodel.author = metadata["author"]
    if metadata.get("license"):
        mlmodel.license = metadata["license"]
    user = mlmodel.user_defined_metadata
    if _CONVERSION_DATE_KEY in user:
        del user[_CONVERSION_DATE_KEY]
    for key, value in sorted(metadata.get("user_defined", {}).items()):
        user[key] = value
    user["model_type"] = MODEL_TYPE
    user["precision"] = precision


def convert(
    model: Student,
    lengths: list[int],
    default_length: int,
    precision: str = "fp16",
    metadata: dict | None = None,
    target=DEPLOYMENT_TARGET,
) -> ct.models.MLModel:
    """Student -> in-memory ML Program. metadata keys: see METADATA_KEYS.

    Put provenance (e.g. {"contract_sha256": ...}) in metadata["user_defined"];
    user_defined_metadata["model_type"] is always "magic-8-ball". `target`: a ct.target (the
    int4 variant needs iOS18, conversion/coreml_compress.py); iOS18 programs fuse attention into
    scaled_dot_product_attention. InputError for a length above
    the model's max_seq_len; torchscript.FrozenLengthError (an InputError) for a trace that only
    works at the default length.
    """
    lengths = contract_lib.check_lengths(lengths, default_length, model.cfg.max_seq_len)
    if precision not in PRECISIONS:
        raise InputError(f"precision: {precision!r}; expected one of {sorted(PRECISIONS)}")
    metadata = metadata or {}
    _check_metadata(metadata)
    model = model.eval()
    traced = torchscript.trace(model, default_length)
    # A trace that froze the length (int() on a shape) fails or mis-shapes at the other lengths,
    # and coremltools would convert it silently: refuse it before converting.
    torchscript.check_lengths_match(traced, model, lengths, model.cfg.vocab_size)
    return convert_traced(traced, lengths, default_length, precision, metadata, target)


def _tree_digest(root: str) -> str:
    """sha256 over the relative paths and bytes of every file under root (or of root if a file)."""
    digest = hashlib.sha256()
    if os.path.isfile(root):
        files = [(os.path.basename(root), root)]
    else:
        files = [
            (os.path.relpath(os.path.join(d, name), root), os.path.join(d, name))
            for d, _, names in os.walk(root)
            for name in names
        ]
    for rel, full in sorted(files):
        digest.update(rel.encode() + b"\0")
        with open(full, "rb") as handle:
            digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()


def _deterministic_manifest(package: str) -> str:
    """Manifest.json text with each item identifier derived from its path and content."""
    with open(os.path.join(package, "Manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    entries = manifest["itemInfoEntries"]
    renamed = {}
    for old_id, entry in entries.items():
        content = _tree_digest(os.path.join(package, "Data", entry["path"]))
        renamed[old_id] = str(uuid.uuid5(_MANIFEST_NAMESPACE, f"{entry['path']}\n{content}"))
    if len(set(renamed.values())) != len(renamed):
        raise ValueError("two Manifest.json items have the same path and content")
    manifest["itemInfoEntries"] = {renamed[old]: entry for old, entry in entries.items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    return json.dumps(manifest, indent=4, sort_keys=True) + "\n"


def _reserialize_spec(package: str) -> None:
    """Rewrites the root model spec with protobuf's deterministic (sorted-map) serialization.

    Plain serialization writes map fields (user metadata, program functions) in hash order,
    which differs between processes.
    """
    with open(os.path.join(package, "Manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec_path = os.path.join(package, "Data", root)
    spec = ct.proto.Model_pb2.Model()
    with open(spec_path, "rb") as handle:
        spec.ParseFromString(handle.read())
    with open(spec_path, "wb") as handle:
        handle.write(spec.SerializeToString(deterministic=True))


def save_mlpackage(mlmodel: ct.models.MLModel, path: str) -> None:
    """Writes the .mlpackage directory at `path` completely or not at all, byte-reproducibly."""
    if not path.endswith(".mlpackage"):
        raise InputError(f"{path}: a Core ML package path must end in .mlpackage")
    with tempfile.TemporaryDirectory(prefix="m8b-coreml-") as scratch:
        saved = os.path.join(scratch, "model.mlpackage")
        mlmodel.save(saved)
        _reserialize_spec(saved)
        manifest = _deterministic_manifest(saved)  # after the rewrite: identifiers follow content
        with atomic.output_dir(path) as out:
            # Copy file by file (sorted) so permissions are uniform and nothing but bytes carries over.
            for directory, _, names in sorted(os.walk(saved)):
                rel_dir = os.path.relpath(directory, saved)
                os.makedirs(os.path.join(out, rel_dir), mode=0o755, exist_ok=True)
                os.chmod(os.path.join(out, rel_dir), 0o755)
                for name in sorted(names):
                    rel = os.path.normpath(os.path.join(rel_dir, name))
                    target = os.path.join(out, rel)
                    if rel == "Manifest.json":
                        data = manifest.encode("utf-8")
                    else:
                        with open(os.path.join(directory, name), "rb") as handle:
                            data = handle.read()
                    with open(target, "wb") as handle:
                        handle.write(data)
                    os.chmod(target, 0o644)
