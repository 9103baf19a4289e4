import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads: see verify_contracts.py

import json

import pytest
import torch
from absl import flags
from absl.testing import flagsaver

from common.errors import InputError
from conversion import contract as contract_lib
from conversion import coreml, torchscript
from training import checkpoint
from training.model import ModelConfig, Student, init_weights
from verify import fixtures, verify_contracts

torch.set_num_threads(1)
FLAGS = flags.FLAGS
LENGTHS = [64, 128, 256]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Inputs plus the three artifacts the pipeline would hand to verification."""
    directory = str(tmp_path_factory.mktemp("artifacts"))
    inputs = fixtures.write_inputs(directory)
    model, meta = checkpoint.load(inputs.weights, inputs.metadata)
    data = torchscript.to_bytes(torchscript.trace(model, 128))
    paths = {
        "torchscript": os.path.join(directory, "model.pt"),
        "contract": os.path.join(directory, "contract.json"),
        "mlpackage": os.path.join(directory, "student.mlpackage"),
    }
    with open(paths["torchscript"], "wb") as handle:
        handle.write(data)
    gates = fixtures.measured_gates(inputs, LENGTHS, ["torchscript", "coreml"])
    contract = contract_lib.make_contract(
        model.cfg.vocab_size, meta["tokenizer_sha256"], LENGTHS, 128, gates=gates
    )
    contract = contract.with_artifact("weights", checkpoint.sha256_file(inputs.weights))
    contract = contract.with_artifact("torchscript", checkpoint.sha256_file(paths["torchscript"]))
    contract.save(paths["contract"])
    mlmodel = coreml.convert(model, LENGTHS, 128, "fp16", {"short_description": "test", "version": "1"})
    coreml.save_mlpackage(mlmodel, paths["mlpackage"])
    return inputs, paths


def run(artifacts, out, **overrides):
    inputs, paths = artifacts
    values = {
        "contract": paths["contract"],
        "weights": inputs.weights,
        "metadata": inputs.metadata,
        "tokenizer": inputs.tokenizer,
        "dataset": inputs.dataset,
        "torchscript": paths["torchscript"],
        "mlpackage": paths["mlpackage"],
        "out_report": str(out),
        "sampled_min_canonical_rate": 0,  # an untrained student writes no canonical reply
        **overrides,
    }
    argv = ["verify_contracts"] + [f"--{name}={value}" for name, value in values.items()]
    with flagsaver.flagsaver():
        FLAGS.unparse_flags()
        FLAGS(argv)
        verify_contracts.main(argv[:1])


def test_good_artifacts_pass_with_a_deterministic_report(artifacts, tmp_path):
    run(artifacts, tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["gates_ok"] is True
    assert sorted(report["artifacts"]) == ["coreml", "tokenizer", "torchscript", "weights"]
    assert report["artifacts"]["coreml"]["files"] >= 3
    for artifact in ("torchscript", "coreml"):
        for length in LENGTHS:
            checks = report["results"][artifact][f"T{length}"]
            assert checks["output_shape"]["value"] == [[1, length, 512]]
            assert checks["output_dtype"]["value"] == ["float32"]
            assert checks["max_abs_diff"]["ok"] is True
        behaviour = report["results"][artifact]["all"]
        assert behaviour["behaviour_questions"]["value"] == 6
        assert behaviour["behaviour_mismatches"]["value"] == 0
    entry = report["results"]["coreml"]["T64"]["kl_max"]
    assert entry["floor"] > 0 and entry["bound"] == pytest.approx(4 * entry["floor"], rel=1e-3)
    assert report["results"]["coreml"]["all"]["spec_other_lengths_unsupported"]["ok"] is True
    assert report["results"]["coreml"]["all"]["weights_elements_changed"]["value"] == 0
    assert report["results"]["coreml"]["all"]["spec_output_shape_not_frozen"]["ok"] is True

    sampled = report["results"]["torchscript"]["all"]
    assert sampled["sampled_canonical_rate"] == {"value": 0, "op": ">=", "bound": 0, "ok": True}
    assert sampled["sampled_replies"]["value"] == 6 * 5
    assert "top_k 40" in sampled["sampled_settings"]["value"]
    assert "sampled_canonical_rate" not in report["results"]["coreml"]["all"]  # not one of ask's backends

    run(artifacts, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "report.json").read_bytes()


def test_the_report_is_the_same_bytes_from_one_worker_or_two(artifacts, tmp_path):
    run(artifacts, tmp_path / "one.json", workers=1)
    run(artifacts, tmp_path / "two.json", workers=2)
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()


def test_sampled_replies_below_the_bound_fail_the_gates(artifacts, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run(artifacts, tmp_path / "report.json", sampled_min_canonical_rate=0.995)
    assert exit_info.value.code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["gates_ok"] is False
    failed = {
        (artifact, name)
        for artifact, scopes in report["results"].items()
        for checks in scopes.values()
        for name, entry in checks.items()
        if entry.get("ok") is False
    }
    assert failed == {("torchscript", "sampled_canonical_rate")}
    assert report["results"]["torchscript"]["all"]["sampled_non_canonical"]["value"]  # examples shown


def test_a_broken_torchscript_fails_the_gates(artifacts, tmp_path):
    other = Student(ModelConfig())
    init_weights(other, seed=99)
    broken = tmp_path / "broken.pt"
    torchscript.save(torchscript.trace(other.eval(), 128), str(broken))
    with pytest.raises(SystemExit) as exit_info:
        run(artifacts, tmp_path / "report.json", torchscript=str(broken))
    assert exit_info.value.code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["gates_ok"] is False
    results = report["results"]["torchscript"]
    assert results["all"]["sha256_matches_contract"]["ok"] is False
    assert all(results[f"T{t}"]["max_abs_diff"]["ok"] is False for t in LENGTHS)
    assert results["all"]["behaviour_mismatches"]["value"] > 0
    assert report["results"]["coreml"]["T64"]["max_abs_diff"]["ok"] is True


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("contract", "absent.json", "contract not found"),
        ("mlpackage", "absent.mlpackage", "Core ML package not found"),
        ("torchscript", "absent.pt", "TorchScript file not found"),
        ("dataset", "absent.jsonl", "absent.jsonl"),
        ("mlpackage", "", "--mlpackage: missing, but .* says coreml must be verified"),
        ("sampled_min_canonical_rate", "1.5", "--sampled_min_canonical_rate"),
    ],
)
def test_bad_input_is_an_input_error_and_writes_nothing(artifacts, tmp_path, flag, value, message):
    if value.startswith("absent"):
        value = str(tmp_path / value)
    with pytest.raises(InputError, match=message):
        run(artifacts, tmp_path / "report.json", **{flag: value})
    assert not (tmp_path / "report.json").exists()


def test_inputs_that_do_not_belong_together_are_refused(artifacts, tmp_path):
    inputs, _ = artifacts
    others = fixtures.write_inputs(str(tmp_path), model_seed=8)
    with pytest.raises(InputError, match="--weights: .* artifacts.weights"):
        run(artifacts, tmp_path / "report.json", weights=others.weights, metadata=others.metadata)
    assert not (tmp_path / "report.json").exists()
