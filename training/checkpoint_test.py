"""checkpoint: save/load round trip, and the torch-free checks that run before any heavy import."""

import json
import pickle

import pytest
import safetensors.torch
import torch

from common.errors import InputError
from training import checkpoint
from training.model import ModelConfig, Student, init_weights

CFG = ModelConfig(
    vocab_size=40, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32, max_seq_len=32
)
FACTS = {"tokenizer_sha256": "0" * 64, "dataset_sha256": "1" * 64, "steps": 3}


@pytest.fixture
def saved(tmp_path):
    model = Student(CFG)
    init_weights(model, 0)
    weights, metadata = str(tmp_path / "w.safetensors"), str(tmp_path / "w.json")
    checkpoint.save(weights, metadata, model, FACTS)
    return model, weights, metadata


def _repin(weights_path: str, metadata_path: str) -> None:
    """Pins weights_sha256 to the damaged file, so only the layout check stands between it and torch."""
    with open(metadata_path) as handle:
        values = json.load(handle)
    values["weights_sha256"] = checkpoint.sha256_file(weights_path)
    with open(metadata_path, "w") as handle:
        json.dump(values, handle)


def test_load_gives_back_the_saved_tensors(saved):
    model, weights, metadata = saved
    loaded, facts = checkpoint.load(weights, metadata, expected_vocab_size=CFG.vocab_size)
    assert facts["steps"] == 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_check_accepts_what_safetensors_writes(saved):
    _, weights, metadata = saved
    _, cfg = checkpoint.check(weights, metadata)
    assert cfg == CFG


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: data[: int(len(data) * 0.9)], "bytes of tensor data"),
        (lambda data: data + b"\0" * 4, "bytes of tensor data"),
        (lambda data: data[:4], "header length"),
        (lambda data: pickle.dumps({"w": [1.0, 2.0]}), "header length"),
        (lambda data: data[:8] + b"\xff" + data[9:], "not JSON"),
    ],
    ids=["cut", "extra bytes", "shorter than its header length", "a pickle", "header not JSON"],
)
def test_check_refuses_a_damaged_file_without_torch(saved, damage, reason):
    _, weights, metadata = saved
    with open(weights, "rb") as handle:
        data = damage(handle.read())
    with open(weights, "wb") as handle:
        handle.write(data)
    _repin(weights, metadata)
    with pytest.raises(InputError, match=reason) as raised:
        checkpoint.check(weights, metadata)
    assert weights in str(raised.value)
    with pytest.raises(InputError, match=reason):
        checkpoint.load(weights, metadata)


def _rewrite_header(weights: str, edit) -> None:
    with open(weights, "rb") as handle:
        data = handle.read()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    edit(header)
    encoded = json.dumps(header).encode()
    with open(weights, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little") + encoded + data[8 + size :])


def _first_tensor(header: dict) -> dict:
    return header[min(name for name in header if name != "__metadata__")]


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda h: _first_tensor(h).update(dtype="F8_E9"), "no consistent dtype"),
        (lambda h: _first_tensor(h).update(shape=[-1]), "no consistent dtype"),
        (lambda h: _first_tensor(h).update(shape=[1, 2, 3]), "no consistent dtype"),
        (lambda h: _first_tensor(h).pop("data_offsets"), "no consistent dtype"),
    ],
    ids=["unknown dtype", "negative size", "shape does not fit its bytes", "no offsets"],
)
def test_check_refuses_an_inconsistent_header(saved, edit, reason):
    _, weights, metadata = saved
    _rewrite_header(weights, edit)
    _repin(weights, metadata)
    with pytest.raises(InputError, match=reason):
        checkpoint.check(weights, metadata)


def test_check_refuses_overlapping_tensors(saved):
    _, weights, metadata = saved

    def overlap(header):
        spans = sorted(
            (info["data_offsets"], name) for name, info in header.items() if name != "__metadata__"
        )
        (first, name_a), (_, name_b) = spans[0], spans[1]
        # Both tensors claim the same bytes: the data no longer tiles the file.
        header[name_b]["data_offsets"] = list(first)
        header[name_b]["shape"] = header[name_a]["shape"]
        header[name_b]["dtype"] = header[name_a]["dtype"]

    _rewrite_header(weights, overlap)
    _repin(weights, metadata)
    with pytest.raises(InputError, match="gap or an overlap"):
        checkpoint.check(weights, metadata)


def test_a_pinned_digest_catches_a_change_first(saved):
    _, weights, metadata = saved
    with open(weights, "r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x7f")
    with pytest.raises(InputError, match="sha256 does not match"):
        checkpoint.check(weights, metadata)


def test_the_layout_check_agrees_with_safetensors_on_its_own_files(saved):
    _, weights, _ = saved
    with open(weights, "rb") as handle:
        data = handle.read()
    checkpoint._check_safetensors_layout(data, weights)  # no error
    assert set(safetensors.torch.load(data)) == set(Student(CFG).state_dict())


def _edit_metadata(metadata_path: str, edit) -> None:
    with open(metadata_path) as handle:
        values = json.load(handle)
    edit(values)
    with open(metadata_path, "w") as handle:
        json.dump(values, handle)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("weights_sha256"), "weights_sha256: missing"),
        (lambda m: m["config"].update(max_seq_len=10**9), "config.max_seq_len: is 1000000000; at most 8192"),
        (lambda m: m["config"].update(n_layers=0), "config.n_layers: is 0; must be positive"),
        (lambda m: m["config"].update(d_model=16.5), "config.d_model: is 16.5; must be a positive int"),
        (lambda m: m["config"].pop("n_heads"), "config.n_heads: missing"),
        (lambda m: m["config"].update(n_experts=4), "config.n_experts: unknown field"),
        (lambda m: m.update(config=[1, 2]), "config: must be a JSON object"),
    ],
    ids=[
        "no weights digest",
        "huge context",
        "zero layers",
        "fractional width",
        "no heads",
        "unknown",
        "a list",
    ],
)
def test_check_refuses_bad_metadata_naming_file_and_field(saved, edit, message):
    _, weights, metadata = saved
    _edit_metadata(metadata, edit)
    with pytest.raises(InputError, match=message) as raised:
        checkpoint.check(weights, metadata)
    assert str(raised.value).startswith(metadata + ": ")
