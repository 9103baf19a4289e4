import csv
import hashlib
import json
import os
import re
import subprocess

import pytest
from absl import flags

from common import child_python
from common.errors import InputError
from data import dataset, dataset_testing
from data import generate as make_data
from training import checkpoint, run_toy_distill

FLAGS = flags.FLAGS
SHORT = ["--steps=4", "--batch_size=8", "--heldout_every=2", "--warmup=2", "--threads=1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    # Without noise: template questions are short enough for the 64-token context case below.
    tokenizer, header, records = make_data.generate(
        n=60, seed=0, heldout_fraction=0.2, topk=8, noise_fraction=0.0
    )
    paths = {"in": str(root / "kd.jsonl"), "tokenizer": str(root / "tokenizer.json")}
    dataset.write_dataset(paths["in"], header, records)
    tokenizer.save(paths["tokenizer"])
    return paths


def _outputs(directory) -> dict:
    names = {"out_weights": "w.safetensors", "out_metadata": "meta.json", "out_history": "history.csv"}
    return {flag: str(directory / name) for flag, name in names.items()}


def _args(inputs: dict, outputs: dict) -> list[str]:
    return [f"--{flag}={path}" for flag, path in {**inputs, **outputs}.items()]


def _run_binary(args: list[str]) -> subprocess.CompletedProcess:
    return child_python.run_module("training.run_toy_distill", args)


def test_two_runs_write_identical_checkpoints_with_full_metadata(toy, tmp_path):
    first, second = _outputs(tmp_path / "a"), _outputs(tmp_path / "b")
    # The first run as a pipeline stage runs it (nothing printed but the parameter count), the second
    # with its log (--verbosity=0): the same bytes either way.
    for outputs, logged in ((first, False), (second, True)):
        os.makedirs(os.path.dirname(outputs["out_weights"]))
        result = _run_binary(_args(toy, outputs) + SHORT + (["--verbosity=0"] if logged else []))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("parameters: 623,232 (untied embeddings; d_model 128, 2 layers")
        assert len(result.stdout.splitlines()) == 1, result.stdout
        if logged:
            assert "tokens/s" in result.stderr and "ETA" in result.stderr  # absl progress lines
        else:
            assert not result.stderr.strip(), result.stderr
    for flag in first:
        with open(first[flag], "rb") as a, open(second[flag], "rb") as b:
            assert a.read() == b.read(), flag

    model, metadata = checkpoint.load(first["out_weights"], first["out_metadata"])
    with open(toy["in"], "rb") as handle:
        assert metadata["dataset_sha256"] == hashlib.sha256(handle.read()).hexdigest()
    header = json.loads(open(toy["in"], encoding="utf-8").readline())
    assert metadata["tokenizer_sha256"] == header["tokenizer_sha256"]
    assert metadata["steps"] == 4 and metadata["parameter_count"] == 623232
    assert metadata["tie_embeddings"] is False and model.cfg.tie_embeddings is False
    assert metadata["training"]["batch_size"] == 8 and metadata["training"]["seed"] == 0
    assert metadata["final_train_loss"] > 0 and metadata["heldout_loss"] > 0
    assert "/" not in json.dumps(metadata["training"])  # no paths in the artifact

    with open(first["out_history"], encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [bool(r["heldout_loss"]) for r in rows] == [False, True, False, True]
    assert float(rows[-1]["heldout_loss"]) == metadata["heldout_loss"]
    assert float(rows[0]["lr"]) < float(rows[1]["lr"])  # warmup


def test_missing_flag_exits_2_with_one_line(toy, tmp_path):
    outputs = _outputs(tmp_path)
    result = _run_binary(_args({"tokenizer": toy["tokenizer"]}, outputs) + SHORT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: --in is required"
    assert not any(os.path.exists(p) for p in outputs.values())


def _run_in_process(args: list[str]) -> None:
    FLAGS.unparse_flags()
    try:
        FLAGS(["run_toy_distill", *args])
        run_toy_distill.main([])
    finally:
        FLAGS.unparse_flags()


def _edited_copy(source: str, target, line: int, old: str, new: str) -> str:
    lines = open(source, encoding="utf-8").read().split("\n")
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new)
    target.write_text("\n".join(lines), encoding="utf-8")
    return str(target)


def test_bad_inputs_raise_input_error_and_write_nothing(toy, tmp_path):
    outputs = _outputs(tmp_path)
    header = open(toy["in"], encoding="utf-8").readline()
    bad_record = _edited_copy(toy["in"], tmp_path / "bad.jsonl", 3, '"split":"train"', '"split":"dev"')
    wrong_digest = _edited_copy(
        toy["in"], tmp_path / "digest.jsonl", 1, json.loads(header)["tokenizer_sha256"], "0" * 64
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text(header, encoding="utf-8")
    cases = [
        ({"in": str(tmp_path / "missing.jsonl")}, "missing.jsonl: dataset file not found"),
        ({"in": bad_record}, "bad.jsonl:3: split: is 'dev'"),
        ({"in": wrong_digest}, "digest.jsonl:1: tokenizer_sha256: is 0000"),
        ({"in": str(empty)}, 'empty.jsonl: no records with split "train"'),
    ]
    for override, message in cases:
        with pytest.raises(InputError, match=message.replace("(", r"\(")):
            _run_in_process(_args({**toy, **override}, outputs) + SHORT)
    bad_flags = [("--steps=0", "--steps: must be > 0"), ("--ce_weight=-1", "--ce_weight")]
    bad_flags += ARCHITECTURE_FLAG_ERRORS
    for flag_value, message in bad_flags:
        with pytest.raises(InputError, match=message):
            _run_in_process(_args(toy, outputs) + SHORT + [flag_value])
    assert not any(os.path.exists(p) for p in outputs.values())


# One message per architecture rule, each naming its flag (checked before torch is imported).
ARCHITECTURE_FLAG_ERRORS = [
    ("--n_heads=3", "--n_heads: 3 does not divide d_model 128"),
    ("--d_model=132", "--n_heads: head dimension d_model / n_heads = 132 / 4 = 33 is odd"),
    ("--n_kv_heads=3", "--n_kv_heads: 3 does not divide n_heads 4"),
    ("--n_layers=0", "--n_layers: is 0; must be positive"),
    ("--rope_theta=-1", "--rope_theta: is -1.0; must be positive"),
    ("--max_seq_len=1000000000", "--max_seq_len: is 1000000000; at most 8192 is supported"),
    ("--ffn_hidden=1000000", "--d_model/--n_layers/--ffn_hidden: 768,230,016 parameters; at most"),
    ("--max_seq_len=8", "longer than the model's 8"),
]


def test_a_dataset_of_single_id_lists_trains_with_the_tail_bucket(tmp_path):
    # The renormalised loss made every one-id list a KL of 0 and the trainer refused such a dataset;
    # with the tail bucket the list's one id is weighed against the rest, so it trains on both terms.
    tokenizer, header, records = make_data.generate(n=60, seed=0, heldout_fraction=0.2, topk=1)
    paths = {"in": str(tmp_path / "kd1.jsonl"), "tokenizer": str(tmp_path / "tokenizer.json")}
    dataset.write_dataset(paths["in"], header, records)
    tokenizer.save(paths["tokenizer"])
    outputs = _outputs(tmp_path)
    _run_in_process(_args(paths, outputs) + SHORT)
    _, metadata = checkpoint.load(outputs["out_weights"], outputs["out_metadata"])
    assert metadata["training"]["kd"] == "logits" and metadata["training"]["kl_weight"] == 1.0
    assert metadata["training"]["loss"] == run_toy_distill.LOSS_DESCRIPTION["logits"]
    assert metadata["final_train_kl"] > 0.01


@pytest.mark.parametrize("kd", ["logits", "sequence"])
def test_version_2_datasets_train_and_record_their_loss(tmp_path, kd, caplog):
    tokenizer, header, records = make_data.generate(
        n=60, seed=0, heldout_fraction=0.2, topk=4, noise_fraction=0.0
    )
    header, records = dataset_testing.as_version_2(header, records, kd)
    paths = {"in": str(tmp_path / "kd2.jsonl"), "tokenizer": str(tmp_path / "tokenizer.json")}
    dataset.write_dataset(paths["in"], header, records)
    tokenizer.save(paths["tokenizer"])
    outputs = _outputs(tmp_path)
    caplog.set_level("INFO")
    # In process, absl logs warnings only unless told otherwise.
    _run_in_process(_args(paths, outputs) + SHORT + ["--verbosity=0"])
    _, metadata = checkpoint.load(outputs["out_weights"], outputs["out_metadata"])
    assert metadata["training"]["kd"] == kd
    assert metadata["training"]["loss"] == run_toy_distill.LOSS_DESCRIPTION[kd]
    said = [r.getMessage() for r in caplog.records if "no soft targets" in r.getMessage()]
    if kd == "sequence":
        assert metadata["training"]["kl_weight"] == 0.0 and metadata["final_train_kl"] == 0.0
        assert said == [f"{paths['in']}: kd sequence (no soft targets): training on the cross-entropy alone"]
    else:
        assert metadata["training"]["kl_weight"] == 1.0 and metadata["final_train_kl"] > 0
        assert said == []


def test_a_sequence_dataset_refuses_an_explicit_kl_weight_and_a_zero_ce_weight(tmp_path):
    tokenizer, header, records = make_data.generate(n=20, seed=0, heldout_fraction=0.2, topk=4)
    header, records = dataset_testing.as_version_2(header, records, "sequence")
    paths = {"in": str(tmp_path / "seq.jsonl"), "tokenizer": str(tmp_path / "tokenizer.json")}
    dataset.write_dataset(paths["in"], header, records)
    tokenizer.save(paths["tokenizer"])
    outputs = _outputs(tmp_path)
    cases = [
        (
            "--kl_weight=0.5",
            "seq.jsonl:1: kd: is 'sequence' (no soft targets), so there is no KL term to weigh",
        ),
        ("--ce_weight=0", "seq.jsonl:1: kd: is 'sequence' (no soft targets) and --ce_weight is 0"),
    ]
    for flag, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            _run_in_process(_args(paths, outputs) + SHORT + [flag])
    assert not any(os.path.exists(p) for p in outputs.values())
    # A version-2 header naming another tokenizer is refused at line 1, as version 1 is.
    header["tokenizer_sha256"] = "0" * 64
    dataset.write_dataset(paths["in"], header, records)
    with pytest.raises(InputError, match=r"seq.jsonl:1: tokenizer_sha256: is 0000.* pass the tokenizer"):
        _run_in_process(_args(paths, outputs) + SHORT)


def test_a_tied_student_reports_its_own_parameter_count(toy, tmp_path, capsys):
    outputs = _outputs(tmp_path)
    arch = [
        "--tie_embeddings",
        "--d_model=96",
        "--n_layers=3",
        "--n_heads=6",
        "--n_kv_heads=3",
        "--max_seq_len=64",
    ]
    _run_in_process(_args(toy, outputs) + SHORT + arch)
    model, metadata = checkpoint.load(outputs["out_weights"], outputs["out_metadata"])
    assert model.cfg.tie_embeddings and model.lm_head.weight is model.embed.weight
    assert (model.cfg.d_model, model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_kv_heads) == (96, 3, 6, 3)
    assert metadata["config"]["max_seq_len"] == 64
    expected = sum(p.numel() for p in model.parameters())  # a shared weight counted once
    assert metadata["parameter_count"] == expected == model.cfg.parameter_count
    assert (
        f"parameters: {expected:,} (tied embeddings; d_model 96, 3 layers, 6/3 heads"
        in capsys.readouterr().out
    )
