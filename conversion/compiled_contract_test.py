"""The contract's "compiled" record of the AOTInductor decoder: round-trips, stays out of contracts
without one, and each malformed field is refused, named."""

import json

import pytest

from common.errors import InputError
from conversion import contract as contract_lib
from conversion import gates_testing

BUILD = {
    "compiler": "g++ (Debian 12.2.0-14+deb12u1) 12.2.0",
    "isa": "avx2",
    "machine": "x86_64",
    "march": "x86-64-v3",
    "so_sha256": "ef" * 32,
    "threads": 1,
    "torch": "2.13.0+cpu",
}


def _contract():
    contract = contract_lib.make_contract(
        vocab_size=512, tokenizer_sha256="ab" * 32, gates=gates_testing.gates()
    )
    return contract.with_artifact("aoti_decoder", "cd" * 32)


def test_the_record_round_trips_and_is_absent_without_one(tmp_path):
    plain = _contract()
    assert contract_lib.COMPILED not in plain.to_dict()  # contracts without a compile keep their bytes
    compiled = plain.with_compiled("aoti_decoder", BUILD)
    path = tmp_path / "contract.json"
    compiled.save(str(path))
    loaded = contract_lib.load_contract(str(path))
    assert loaded == compiled and loaded.compiled["aoti_decoder"] == BUILD
    assert path.read_bytes() == loaded.to_bytes()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.update(so_sha256="ab"), "so_sha256: must be 64 lowercase hex digits"),
        (lambda b: b.update(threads=0), "threads: must be an integer in 1..1024"),
        (lambda b: b.update(threads=True), "threads: must be an integer"),
        (lambda b: b.update(isa="avx2\n"), "isa: must be a short printable string"),
        (lambda b: b.update(torch=""), "torch: must be a short printable string"),
        (lambda b: b.pop("march"), "must be an object with exactly"),
        (lambda b: b.update(extra="x"), "must be an object with exactly"),
    ],
)
def test_a_malformed_record_is_refused_naming_the_field(tmp_path, change, message):
    values = _contract().with_compiled("aoti_decoder", BUILD).to_dict()
    change(values[contract_lib.COMPILED]["aoti_decoder"])
    path = tmp_path / "contract.json"
    path.write_text(json.dumps(values))
    with pytest.raises(InputError, match=message) as raised:
        contract_lib.load_contract(str(path))
    assert f"{path}: compiled.aoti_decoder" in str(raised.value)


def test_a_record_for_an_artifact_the_contract_does_not_pin_is_refused():
    with pytest.raises(InputError, match="pins no artifact 'other'"):
        _contract().with_compiled("other", BUILD)
