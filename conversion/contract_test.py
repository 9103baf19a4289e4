import hashlib
import json

import pytest

from common.errors import InputError
from conversion import contract as contract_lib
from conversion import gates_testing

TOKENIZER_SHA = "ab" * 32
WEIGHTS_SHA = "cd" * 32


def _contract(**kwargs):
    kwargs.setdefault("gates", gates_testing.gates(kwargs.get("lengths", (64, 128, 256))))
    return contract_lib.make_contract(vocab_size=512, tokenizer_sha256=TOKENIZER_SHA, **kwargs)


def _gates_edit(change) -> dict:
    gates = gates_testing.gates()
    change(gates)
    return gates


def test_a_factor_above_the_limit_needs_a_reason():
    gates = gates_testing.gates()
    gates["bounds"]["f32"]["T64"]["kl_max"].update(
        factor=8.0, bound=8e-3, why="KL is quadratic in a logit error"
    )
    assert _contract(gates=gates).gates["bounds"]["f32"]["T64"]["kl_max"]["factor"] == 8.0


def _saved_dict(tmp_path) -> dict:
    path = tmp_path / "contract.json"
    _contract(artifacts={"weights": WEIGHTS_SHA}).save(str(path))
    return json.loads(path.read_text())


def test_round_trip_is_equal_and_canonical(tmp_path):
    contract = _contract(artifacts={"weights": WEIGHTS_SHA})
    path = tmp_path / "contract.json"
    contract.save(str(path))
    loaded = contract_lib.load_contract(str(path))
    assert loaded == contract
    assert path.read_bytes() == loaded.to_bytes()
    assert loaded.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_fields_follow_the_design():
    values = _contract().to_dict()
    assert values["model_name"] == values["model_type"] == "magic-8-ball"
    assert values["lengths"] == [64, 128, 256]
    assert values["default_length"] == 128
    assert values["inputs"] == [{"name": "input_ids", "dtype": "int32", "shape": [1, "T"]}]
    assert values["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [1, "T", 512]}]
    assert values["version"] == 3
    assert values["gates"]["backends"] == {
        "coreml": "fp16",
        "coreml_fp32": "f32",
        "coreml_int4": "int4",
        "coreml_int8": "int8",
        "coreml_stateful": "fp16",
        "gguf": "ggml_f32",
        "gguf_f16": "w_f16",
        "gguf_kv_f16": "kv_f16",
        "gguf_q4_0": "w_q4_0",
        "gguf_q8_0": "w_q8_0",
        "torchscript": "f32",
        "torchscript_decoder": "f32",
        "torch_export": "f32",
        "aoti_decoder": "f32",
    }
    entry = values["gates"]["bounds"]["fp16"]["T64"]["kl_max"]
    assert entry["bound"] == pytest.approx(entry["floor"] * entry["factor"]) and entry["factor"] <= 4


def test_concrete_shapes_per_length():
    contract = _contract()
    assert contract.input_shape(64) == (1, 64)
    assert contract.output_shape(256) == (1, 256, 512)


def test_with_artifact_returns_a_new_contract():
    contract = _contract()
    pinned = contract.with_artifact("torchscript", WEIGHTS_SHA)
    assert pinned.artifacts == {"torchscript": WEIGHTS_SHA}
    assert contract.artifacts == {}
    assert pinned.digest != contract.digest


@pytest.mark.parametrize(
    ("name", "sha", "field"),
    [("torchscript", "xyz", "artifacts.torchscript"), ("Bad Name", WEIGHTS_SHA, "artifacts.Bad Name")],
)
def test_with_artifact_rejects_bad_entries(name, sha, field):
    with pytest.raises(InputError, match=field):
        _contract().with_artifact(name, sha)


def test_lengths_are_sorted():
    assert _contract(lengths=[256, 64, 128]).lengths == (64, 128, 256)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lengths": []}, "lengths"),
        ({"lengths": [64, 64, 128]}, "lengths"),
        ({"lengths": [0, 64]}, "lengths"),
        ({"default_length": 96}, "default_length"),
        ({"gates": _gates_edit(lambda g: g["bounds"]["f32"]["T64"]["kl_max"].pop("floor"))}, "T64.kl_max"),
        (
            {
                "gates": _gates_edit(
                    lambda g: g["bounds"]["fp16"]["T128"]["max_abs_diff"].update(factor=5.0, bound=5e-3)
                )
            },
            "T128.max_abs_diff.factor",
        ),
        (
            {"gates": _gates_edit(lambda g: g["bounds"]["fp16"]["T128"]["rms_dp"].update(bound=1.0))},
            "T128.rms_dp.bound",
        ),
        ({"gates": _gates_edit(lambda g: g["bounds"]["f32"].pop("replay"))}, "bounds.f32"),
        ({"gates": _gates_edit(lambda g: g["backends"].update(extra="bf16"))}, "backends.extra"),
        # Every lossy backend keeps its quality bounds, with its own reference, at every length.
        ({"gates": _gates_edit(lambda g: g["quality"].pop("gguf_q4_0"))}, "lossy backends"),
        (
            {"gates": _gates_edit(lambda g: g["quality"]["gguf_q4_0"].update(reference="ref_q8_0"))},
            "reference",
        ),
        (
            {"gates": _gates_edit(lambda g: g["quality"]["coreml_int4"]["bounds"].pop("T128"))},
            "coreml_int4.bounds",
        ),
        (
            {
                "gates": _gates_edit(
                    lambda g: g["quality"]["coreml_int8"]["bounds"]["T64"]["kl_mean"].update(bound=1.0)
                )
            },
            "T64.kl_mean.bound",
        ),
        ({"gates": _gates_edit(lambda g: g["methods"].pop("ref_int8"))}, "ref_int8"),
        ({"gates": _gates_edit(lambda g: g.pop("quality"))}, "quality"),
    ],
)
def test_make_contract_validates(kwargs, field):
    with pytest.raises(InputError, match=field):
        _contract(**kwargs)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.pop("vocab_size"), "vocab_size: missing"),
        (lambda d: d.update(surprise=1), "surprise: unknown field"),
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=1), "version"),
        (lambda d: d.update(model_type="gpt2"), "model_type"),
        (lambda d: d.update(model_name="other"), "model_name"),
        (lambda d: d.update(vocab_size=512.0), "vocab_size"),
        (lambda d: d.update(tokenizer_sha256="short"), "tokenizer_sha256"),
        (lambda d: d.update(lengths=[128, 64]), "lengths"),
        (lambda d: d.update(lengths="64"), "lengths"),
        (lambda d: d.update(default_length=True), "default_length"),
        (lambda d: d["inputs"][0].update(dtype="int64"), "inputs"),
        (lambda d: d["inputs"][0].update(shape=[1, "L"]), r"inputs\[0\].shape"),
        (lambda d: d["outputs"][0].update(shape=[1, "T", 500]), "outputs"),
        (lambda d: d["outputs"][0].pop("dtype"), r"outputs\[0\]"),
        (lambda d: d["artifacts"].update(weights="0" * 63), "artifacts.weights"),
        (lambda d: d["gates"]["bounds"]["f32"]["T64"]["kl_mean"].update(floor="1e-4"), "T64.kl_mean.floor"),
        (
            lambda d: d["gates"]["bounds"]["kv_f16"]["T256"]["rms_dp"].update(bound=float("nan")),
            "T256.rms_dp.bound",
        ),
    ],
)
def test_load_names_the_bad_field(tmp_path, edit, field):
    values = _saved_dict(tmp_path)
    edit(values)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(values))
    with pytest.raises(InputError, match=field) as error:
        contract_lib.load_contract(str(path))
    assert str(path) in str(error.value)


def test_load_rejects_missing_and_unparsable_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        contract_lib.load_contract(str(tmp_path / "absent.json"))
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(_contract().to_bytes()[:50])
    with pytest.raises(InputError, match="not valid JSON"):
        contract_lib.load_contract(str(truncated))
    not_object = tmp_path / "list.json"
    not_object.write_text("[]")
    with pytest.raises(InputError, match="JSON object"):
        contract_lib.load_contract(str(not_object))
