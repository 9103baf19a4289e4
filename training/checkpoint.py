"""Checkpoint = weights in safetensors + metadata JSON. Loading never unpickles anything.

The metadata says what the weights are (model_type, architecture config, tokenizer digest,
dataset digest, training facts). Loading checks it before building the model, so a checkpoint of
another model type or vocabulary is a clear error, never a silent misload.

check() does every check that needs no torch (metadata, config, the weights' digest); binaries call
it first, so a bad checkpoint fails in well under a second. save() and load() import torch and
safetensors' torch half themselves, which is why this module's imports stay light.
"""

import hashlib
import json
import math
import os

from common import atomic
from common.digest import sha256_file  # noqa: F401  (re-exported: callers use checkpoint.sha256_file)
from common.errors import InputError
from training.config import MODEL_TYPE, ConfigError, ModelConfig

# weights_sha256 is required: without it a changed weights file would be checked by its layout only.
REQUIRED_METADATA = ("model_type", "config", "tokenizer_sha256", "dataset_sha256", "steps", "weights_sha256")

# Bytes per element of the safetensors dtypes torch writes.
_DTYPE_BYTES = {
    **{"F64": 8, "F32": 4, "F16": 2, "BF16": 2},
    **{"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1},
}


def save(weights_path: str, metadata_path: str, model, metadata: dict) -> None:
    """Writes both files atomically (model: a training.model.Student). safetensors output is
    deterministic for equal tensors."""
    import safetensors.torch

    tensors = {name: t.detach().contiguous().clone() for name, t in sorted(model.state_dict().items())}
    data = safetensors.torch.save(tensors, metadata={"format": "pt"})
    full = dict(metadata, model_type=MODEL_TYPE, config=model.cfg.to_dict())
    full["weights_sha256"] = hashlib.sha256(data).hexdigest()
    atomic.write_bytes(weights_path, data)
    try:
        atomic.write_text(metadata_path, json.dumps(full, indent=2, sort_keys=True) + "\n")
    except BaseException:
        os.remove(weights_path)  # both files or neither (a full disk, say)
        raise


def load_metadata(metadata_path: str) -> dict:
    try:
        with open(metadata_path, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{metadata_path}: checkpoint metadata not found") from None
    except OSError as error:
        raise InputError(f"{metadata_path}: cannot read checkpoint metadata: {error.strerror}") from None
    except (ValueError, RecursionError) as error:
        # ValueError: bad UTF-8, bad JSON, a number of over 4300 digits; RecursionError: deep nesting.
        raise InputError(
            f"{metadata_path}: not valid JSON checkpoint metadata ({str(error)[:200]})"
        ) from None
    if not isinstance(metadata, dict):
        raise InputError(f"{metadata_path}: metadata must be a JSON object")
    for field in REQUIRED_METADATA:
        if field not in metadata:
            raise InputError(f"{metadata_path}: {field}: missing")
    if metadata["model_type"] != MODEL_TYPE:
        raise InputError(
            f"{metadata_path}: model_type: is {metadata['model_type']!r}, expected {MODEL_TYPE!r}; "
            "this is not a Magic 8 Ball checkpoint"
        )
    return metadata


def check_metadata(metadata_path: str) -> tuple[dict, ModelConfig]:
    """(metadata, config) from the metadata file alone: for a binary that reads the architecture
    but not the weights (pipeline/ask.py). InputError for anything wrong."""
    metadata = load_metadata(metadata_path)
    return metadata, _model_config(metadata["config"], metadata_path)


def require_tokenizer(metadata: dict, metadata_path: str, tokenizer_digest: str, tokenizer_path: str) -> None:
    """Raises InputError unless the checkpoint was trained with this tokenizer (by sha256)."""
    if metadata["tokenizer_sha256"] != tokenizer_digest:
        raise InputError(
            f"--tokenizer: {tokenizer_path} has sha256 {tokenizer_digest}, but {metadata_path} was trained "
            f"with tokenizer {metadata['tokenizer_sha256']}; pass the tokenizer the checkpoint was "
            "trained with"
        )


def _model_config(values, metadata_path: str) -> ModelConfig:
    """metadata["config"] as a ModelConfig: every field present, of its type and within
    training/config.py's limits, before anything is built from it."""
    try:
        return ModelConfig.from_dict(values)
    except ConfigError as error:
        where = f"config.{error.field}" if error.field else "config"
        raise InputError(f"{metadata_path}: {where}: {error.problem}") from None


def _check_safetensors_layout(data: bytes, weights_path: str) -> None:
    """The file's layout, read with the standard library: an 8-byte header length, a JSON header of
    {name: {dtype, shape, data_offsets}}, and tensor data that tiles the rest exactly. A cut, damaged
    or foreign file (a pickle, say) fails here, before torch is imported; load() then reads the
    tensors with safetensors itself and checks their names and shapes against the config."""

    def unreadable(reason: str) -> InputError:
        return InputError(f"{weights_path}: not a readable safetensors file ({reason})")

    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or size > len(data) - 8:
        raise unreadable(f"its header length does not fit its {len(data)} bytes")
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise unreadable("the header is not JSON") from None
    if not isinstance(header, dict):
        raise unreadable("the header is not a JSON object")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            shape, width = info["shape"], _DTYPE_BYTES[info["dtype"]]
            sized = all(type(d) is int and d >= 0 for d in shape) and type(begin) is type(end) is int
        except (TypeError, KeyError, ValueError):
            sized = False
        if not sized or end - begin != math.prod(shape) * width:
            raise unreadable(f"tensor {name!r} has no consistent dtype, shape and data_offsets")
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise unreadable(f"the tensor data has a gap or an overlap at byte {begin}")
        position = end
    if position != len(data) - 8 - size:
        raise unreadable(f"{len(data) - 8 - size} bytes of tensor data where its header describes {position}")


def _read_checked(
    weights_path: str, metadata_path: str, expected_vocab_size: int | None
) -> tuple[dict, ModelConfig, bytes]:
    metadata, cfg = check_metadata(metadata_path)
    if expected_vocab_size is not None and cfg.vocab_size != expected_vocab_size:
        raise InputError(
            f"{metadata_path}: config.vocab_size: {cfg.vocab_size}, "
            f"but the tokenizer has {expected_vocab_size}"
        )
    try:
        with open(weights_path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise InputError(f"{weights_path}: checkpoint weights not found") from None
    except OSError as error:
        raise InputError(f"{weights_path}: cannot read checkpoint weights: {error.strerror}") from None
    if hashlib.sha256(data).hexdigest() != metadata["weights_sha256"]:
        raise InputError(
            f"{weights_path}: sha256 does not match {metadata_path} weights_sha256; "
            "the weights are truncated or were changed"
        )
    _check_safetensors_layout(data, weights_path)
    return metadata, cfg, data


def check(
    weights_path: str, metadata_path: str, expected_vocab_size: int | None = None
) -> tuple[dict, ModelConfig]:
    """(metadata, config) after every check that needs no torch; InputError for anything wrong.

    load() repeats these checks and adds the tensors' names, shapes and dtypes against the config.
    """
    metadata, cfg, _ = _read_checked(weights_path, metadata_path, expected_vocab_size)
    return metadata, cfg


def load(weights_path: str, metadata_path: str, expected_vocab_size: int | None = None) -> tuple:
    """Returns (training.model.Student in eval mode, metadata). Raises InputError for anything wrong."""
    import safetensors
    import safetensors.torch
    import torch

    from training.model import Student

    metadata, cfg, data = _read_checked(weights_path, metadata_path, expected_vocab_size)
    try:
        tensors = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, OSError) as error:
        raise InputError(f"{weights_path}: not a readable safetensors file ({error})") from None
    # A config that asks for a huge model is refused by its shapes before anything that size is
    # allocated. The model itself is built only when the file holds at least as many values as its
    # config's parameters (so no more memory than the file took); otherwise the expected shapes come
    # from a model on the meta device. Not always on the meta device: its first use imports
    # torch._dynamo, over a second in every process that loads a checkpoint.
    model = None
    if sum(tensor.numel() for tensor in tensors.values()) >= cfg.parameter_count:
        model = Student(cfg)
        expected = model.state_dict()
    else:
        with torch.device("meta"):
            expected = Student(cfg).state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"{weights_path}: tensors do not match the {MODEL_TYPE} config: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape or tensor.dtype != expected[name].dtype:
            raise InputError(
                f"{weights_path}: {name}: shape {tuple(tensor.shape)} {tensor.dtype}, "
                f"expected {tuple(expected[name].shape)} {expected[name].dtype}"
            )
    model = model or Student(cfg)
    model.load_state_dict(tensors)
    model.eval()
    return model, metadata
