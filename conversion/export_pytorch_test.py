import hashlib
import json
import os
import shutil

import pytest
import torch
from absl import flags
from absl.testing import flagsaver

from common.errors import InputError
from conversion import contract as contract_lib
from conversion import export_pytorch, gates_testing, torchscript
from data import tokenizer as tokenizer_lib
from training.config import ModelConfig
from verify import fixtures

torch.set_num_threads(1)
FLAGS = flags.FLAGS


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return fixtures.write_inputs(str(tmp_path_factory.mktemp("inputs")))


def _floors(inputs, out_dir, lengths="64,128,256", sha=None) -> str:
    """A floors file for the fixture checkpoint (placeholder values: this test is about the export)."""
    path = os.path.join(out_dir, "floors.json")
    lengths = [int(t) for t in lengths.split(",") if t.strip().isdigit()] or [64]
    doc = gates_testing.floors_doc(lengths, sha or _sha(inputs.weights))
    with open(path, "w") as handle:
        json.dump(doc, handle)
    return path


def run(inputs, out_dir, **overrides):
    os.makedirs(out_dir, exist_ok=True)
    if "floors" not in overrides:
        # Beside, not in, the output directory: tests assert a failed export leaves that empty.
        floors_dir = out_dir.rstrip("/") + "-floors"
        os.makedirs(floors_dir, exist_ok=True)
        overrides["floors"] = _floors(inputs, floors_dir, overrides.get("lengths", "64,128,256"))
    values = {
        "weights": inputs.weights,
        "metadata": inputs.metadata,
        "tokenizer": inputs.tokenizer,
        "out_torchscript": os.path.join(out_dir, "model.pt"),
        "out_decoder": os.path.join(out_dir, "model.decode.pt"),
        "out_contract": os.path.join(out_dir, "contract.json"),
        **overrides,
    }
    argv = ["export_pytorch"] + [f"--{name}={value}" for name, value in values.items()]
    with flagsaver.flagsaver():
        FLAGS.unparse_flags()
        FLAGS(argv)
        export_pytorch.main(argv[:1])
    return values["out_torchscript"], values["out_contract"]


def _sha(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_export_writes_a_matching_contract_and_reproducible_bytes(inputs, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    model_pt, contract_json = run(inputs, str(tmp_path / "a"))
    contract = contract_lib.load_contract(contract_json)
    assert contract.lengths == (64, 128, 256) and contract.default_length == 128
    decoder_pt = os.path.join(os.path.dirname(model_pt), "model.decode.pt")
    assert contract.artifacts == {
        "torchscript": _sha(model_pt),
        "torchscript_decoder": _sha(decoder_pt),
        "weights": _sha(inputs.weights),
    }
    assert contract.tokenizer_sha256 == tokenizer_lib.Tokenizer.load(inputs.tokenizer).digest
    module = torchscript.load(model_pt)
    assert module(torch.zeros(1, 256, dtype=torch.int32)).shape == (1, 256, contract.vocab_size)

    # Same inputs copied elsewhere (no absolute paths in outputs), same bytes.
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in (inputs.weights, inputs.metadata, inputs.tokenizer):
        shutil.copy(path, moved)
    copied = fixtures.Inputs(
        tokenizer=str(moved / os.path.basename(inputs.tokenizer)),
        dataset=inputs.dataset,
        weights=str(moved / os.path.basename(inputs.weights)),
        metadata=str(moved / os.path.basename(inputs.metadata)),
    )
    again_pt, again_contract = run(copied, str(tmp_path / "b"))
    assert _sha(again_pt) == _sha(model_pt)
    assert _sha(os.path.join(os.path.dirname(again_pt), "model.decode.pt")) == _sha(decoder_pt)
    assert _sha(again_contract) == _sha(contract_json)


def test_contract_bounds_are_the_floors_times_the_factor(inputs, tmp_path):
    _, contract_json = run(inputs, str(tmp_path), verify_backends="torchscript,gguf")
    gates = contract_lib.load_contract(contract_json).gates
    # The f32 GGUF is held to its own precision: f32 with RoPE as llama.cpp computes it
    # (verify/floors/floors.py).
    assert gates["backends"] == {"gguf": "ggml_f32", "torchscript": "f32"}
    entry = gates["bounds"]["f32"]["T128"]["kl_mean"]
    assert entry == {
        "floor": gates_testing.PLACEHOLDER_FLOOR,
        "factor": 4.0,
        "bound": 4 * gates_testing.PLACEHOLDER_FLOOR,
    }


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda inputs, d: _floors(inputs, d, sha="e" * 64),
            "--floors: .* was measured on checkpoint eeeeeeeeeeee",
        ),
        (lambda inputs, d: _floors(inputs, d, lengths="64,128"), "floors were measured at \\[64, 128\\]"),
        (lambda inputs, d: os.path.join(d, "absent.json"), "--floors: .* not found"),
    ],
)
def test_floors_that_do_not_belong_are_refused(inputs, tmp_path, make, message):
    floors = make(inputs, str(tmp_path))
    with pytest.raises(InputError, match=message):
        run(inputs, str(tmp_path / "out"), floors=floors)
    assert not os.path.exists(tmp_path / "out" / "contract.json")


def test_custom_lengths(inputs, tmp_path):
    _, contract_json = run(inputs, str(tmp_path), lengths="32,96", default_length=32)
    assert contract_lib.load_contract(contract_json).lengths == (32, 96)


@pytest.mark.parametrize(
    ("lengths", "middle"), [("48,96,192", 96), ("192,48,96", 96), ("32,64,160,224", 64), ("64,128,256", 128)]
)
def test_the_default_length_is_the_middle_of_the_lengths(inputs, tmp_path, lengths, middle):
    """Lengths without 128 export without --default_length (a user's configuration failed here)."""
    model_pt, contract_json = run(inputs, str(tmp_path), lengths=lengths)
    contract = contract_lib.load_contract(contract_json)
    assert contract.default_length == middle
    assert contract.lengths == tuple(sorted(int(t) for t in lengths.split(",")))


def _truncate(path, out):
    with open(path, "rb") as handle:
        data = handle.read()
    with open(out, "wb") as handle:
        handle.write(data[: len(data) // 2])


def _flip_byte(path, out):
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    data[-100] ^= 0x01
    with open(out, "wb") as handle:
        handle.write(bytes(data))


def _edit_metadata(path, out, **changes):
    with open(path) as handle:
        values = json.load(handle)
    values.update(changes)
    with open(out, "w") as handle:
        json.dump(values, handle)


def _other_tokenizer(path, out):
    tokenizer_lib.train(["completely different text"] * 3, vocab_size=300).save(out)


@pytest.mark.parametrize(
    ("flag", "make", "message"),
    [
        ("weights", None, "not found"),
        ("weights", _truncate, "sha256 does not match"),
        ("weights", _flip_byte, "sha256 does not match"),
        ("metadata", lambda p, o: _edit_metadata(p, o, model_type="gpt2"), "model_type"),
        ("tokenizer", _other_tokenizer, "--tokenizer"),
    ],
)
def test_bad_files_exit_2_and_write_nothing(inputs, tmp_path, flag, make, message):
    bad = str(tmp_path / ("bad_" + os.path.basename(getattr(inputs, flag))))
    if make is not None:
        make(getattr(inputs, flag), bad)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=message):
        run(inputs, str(out), **{flag: bad})
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lengths": "64,128,512"}, f"512 is above the model's max_seq_len {ModelConfig().max_seq_len}"),
        ({"lengths": "64,x"}, "--lengths"),
        ({"lengths": ","}, "--lengths: empty"),
        ({"lengths": "64,256", "default_length": "128"}, "--default_length: 128 is not one of --lengths"),
        ({"out_contract": "/nonexistent/dir/contract.json"}, "does not exist"),
        ({"out_decoder": "/nonexistent/dir/model.decode.pt"}, "does not exist"),
    ],
)
def test_bad_flags_write_nothing(inputs, tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        run(inputs, str(tmp_path), **overrides)
    assert os.listdir(tmp_path) == []


def test_missing_required_flag(inputs, tmp_path):
    with pytest.raises(InputError, match="--tokenizer is required"):
        run(inputs, str(tmp_path), tokenizer="")
