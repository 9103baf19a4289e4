import os
import subprocess
import sys

import coremltools as ct
import pytest
from absl import flags

from common import child_python
from common.errors import InputError
from conversion import contract as contract_lib
from conversion import convert_coreml, gates_testing
from training import checkpoint
from training.model import ModelConfig, Student, init_weights

TOKENIZER_SHA256 = "a" * 64


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A checkpoint (random init, seed 0) and the contract exported from it."""
    root = tmp_path_factory.mktemp("inputs")
    model = Student(ModelConfig())
    init_weights(model, seed=0)
    weights, metadata = str(root / "student.safetensors"), str(root / "student.json")
    checkpoint.save(
        weights,
        metadata,
        model,
        {"tokenizer_sha256": TOKENIZER_SHA256, "dataset_sha256": "b" * 64, "steps": 0},
    )
    contract = contract_lib.make_contract(512, TOKENIZER_SHA256, gates=gates_testing.gates()).with_artifact(
        "weights", checkpoint.sha256_file(weights)
    )
    contract_path = str(root / "contract.json")
    contract.save(contract_path)
    return {"weights": weights, "metadata": metadata, "contract": contract_path}


def run_main(**values):
    """Parses the flags in-process and runs main; flags are reset afterwards."""
    argv = ["convert_coreml"] + [f"--{name}={value}" for name, value in values.items()]
    flags.FLAGS(argv)
    try:
        convert_coreml.main([])
    finally:
        flags.FLAGS.unparse_flags()


def binary(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "conversion.convert_coreml", *args],
        env=child_python.child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_binary_writes_package_and_rejects_bad_input_with_exit_2(inputs, tmp_path):
    good = str(tmp_path / "good.mlpackage")
    bad = str(tmp_path / "bad.mlpackage")
    args = [f"--weights={inputs['weights']}", f"--metadata={inputs['metadata']}"]
    # Both runs at once: each pays the torch + coremltools import.
    procs = [
        binary(*args, f"--contract={inputs['contract']}", f"--out={good}"),
        binary(*args, f"--contract={inputs['weights']}", f"--out={bad}"),  # not a contract
    ]
    (out_good, err_good), (_, err_bad) = (p.communicate(timeout=300) for p in procs)
    assert procs[0].returncode == 0, err_good.decode()[-2000:]
    assert procs[1].returncode == 2
    assert err_bad.decode().strip().splitlines()[-1].startswith(f"error: {inputs['weights']}: not valid JSON")
    assert not os.path.exists(bad)
    assert os.listdir(tmp_path) == ["good.mlpackage"]  # no temporaries left behind

    spec = ct.utils.load_spec(good)
    user = dict(spec.description.metadata.userDefined)
    assert user["contract_sha256"] == checkpoint.sha256_file(inputs["contract"])
    assert user["weights_sha256"] == checkpoint.sha256_file(inputs["weights"])
    assert user["tokenizer_sha256"] == TOKENIZER_SHA256
    assert user["model_type"] == "magic-8-ball"
    shapes = spec.description.input[0].type.multiArrayType.enumeratedShapes.shapes
    assert sorted(tuple(s.shape) for s in shapes) == [(1, 64), (1, 128), (1, 256)]


def test_missing_flag(inputs, tmp_path):
    with pytest.raises(InputError, match="--out is required"):
        run_main(weights=inputs["weights"], metadata=inputs["metadata"], contract=inputs["contract"])


def test_out_must_be_mlpackage(inputs, tmp_path):
    with pytest.raises(InputError, match="--out: .* must end in .mlpackage"):
        run_main(**inputs, out=str(tmp_path / "model.bin"))


def test_length_above_max_seq_len(inputs, tmp_path):
    path = str(tmp_path / "contract.json")
    contract_lib.make_contract(
        512, TOKENIZER_SHA256, lengths=(64, 512), default_length=64, gates=gates_testing.gates((64, 512))
    ).save(path)
    out = str(tmp_path / "m.mlpackage")
    with pytest.raises(
        InputError,
        match=rf"contract.json: lengths: 512 is above the model's max_seq_len {ModelConfig().max_seq_len}",
    ):
        run_main(weights=inputs["weights"], metadata=inputs["metadata"], contract=path, out=out)
    assert not os.path.exists(out)


def test_contract_from_another_checkpoint(inputs, tmp_path):
    other_tokenizer = str(tmp_path / "tok.json")
    contract_lib.make_contract(512, "d" * 64, gates=gates_testing.gates()).save(other_tokenizer)
    with pytest.raises(InputError, match="tokenizer_sha256 differs"):
        run_main(**dict(inputs, contract=other_tokenizer), out=str(tmp_path / "m.mlpackage"))
    other_weights = str(tmp_path / "w.json")
    contract_lib.make_contract(512, TOKENIZER_SHA256, gates=gates_testing.gates()).with_artifact(
        "weights", "e" * 64
    ).save(other_weights)
    with pytest.raises(InputError, match="artifacts.weights"):
        run_main(**dict(inputs, contract=other_weights), out=str(tmp_path / "m.mlpackage"))
    assert sorted(os.listdir(tmp_path)) == ["tok.json", "w.json"]


def test_vocab_mismatch(inputs, tmp_path):
    path = str(tmp_path / "contract.json")
    contract_lib.make_contract(300, TOKENIZER_SHA256, gates=gates_testing.gates()).save(path)
    with pytest.raises(InputError, match="vocab_size"):
        run_main(**dict(inputs, contract=path), out=str(tmp_path / "m.mlpackage"))


def test_stateful_writes_the_kv_cache_package(inputs, tmp_path):
    out = str(tmp_path / "magic-8-ball.stateful.mlpackage")
    run_main(**inputs, out=out, stateful="true")
    spec = ct.utils.load_spec(out)
    assert [s.name for s in spec.description.state] == ["k_cache", "v_cache"]
    user = dict(spec.description.metadata.userDefined)
    assert user["weights_sha256"] == checkpoint.sha256_file(inputs["weights"])
    assert user["state_names"] == "k_cache,v_cache" and spec.specificationVersion == 9  # iOS18


@pytest.mark.parametrize(
    "flag, message",
    [
        ({"precision": "fp32"}, "the stateful package is fp16; drop --precision=fp32"),
        ({"compress": "int8"}, "the stateful package is not compressed; drop --compress=int8"),
        ({"target": "iOS16"}, "Core ML states need iOS18; drop --target=iOS16"),
    ],
)
def test_stateful_refuses_flags_it_cannot_honour(inputs, tmp_path, flag, message):
    out = str(tmp_path / "s.mlpackage")
    with pytest.raises(InputError, match=f"--stateful: {message}"):
        run_main(**inputs, out=out, stateful="true", **flag)
    assert not os.path.exists(out)
