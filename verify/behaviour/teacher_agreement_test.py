"""The teacher-agreement gate (verify/behaviour/teacher_agreement.py) and its binary, on a small teacher and
students made here: the teacher a seeded student with sharpened logits, exported to GGUF and run by
llama.cpp; the "trained" student the teacher's own weights, the untrained one a seeded student of
the same config. The gate on the from_wide chain's real artifacts is
//pipeline:teacher_agreement_power_test.
"""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conversion import gguf_export
from data import dataset, generate
from training import checkpoint
from training.model import ModelConfig, Student, init_weights
from verify.behaviour import teacher_agreement
from verify.gguf_files import gguf_check

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)  # the source tree and Bazel runfiles alike
BINARY = os.path.join(HERE, "check_teacher_agreement.py")
# A seeded student's logits are near zero, its distributions near uniform whatever the prompt: a
# teacher like that has no answers to learn, and every student sits close to it. Scaling the final
# norm scales every logit, so the teacher's distributions differ from prompt to prompt and position
# to position as a trained model's do.
SHARPEN = 40.0


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _save_student(model: Student, directory, name: str, dataset_path) -> tuple[str, str]:
    """A checkpoint of `model` as the trainer would write it after training on `dataset_path`."""
    weights, metadata = str(directory / f"{name}.safetensors"), str(directory / f"{name}.json")
    tokenizer_digest = dataset.read_dataset(str(dataset_path)).header["tokenizer_sha256"]
    facts = {"tokenizer_sha256": tokenizer_digest, "dataset_sha256": _sha256(dataset_path), "steps": 0}
    checkpoint.save(weights, metadata, model, facts)
    return weights, metadata


@dataclasses.dataclass(frozen=True)
class Small:
    directory: object
    tokenizer: str
    dataset: str
    teacher_gguf: str
    trained: tuple[str, str]  # (weights, metadata): the teacher's own weights
    untrained: tuple[str, str]  # a seeded student of the same config


def _v2_header(tok, teacher_sha256: str) -> dict:
    return {
        "format": dataset.FORMAT,
        "version": dataset.VERSION_2,
        "teacher": {
            "kind": "gguf",
            "model": "sharpened seed-7 student",
            "sha256": teacher_sha256,
            "endpoint": None,
            "server_model": None,
            "api": None,
        },
        "sampling": {"mode": "greedy", "max_tokens": 32},
        "kd": "sequence",
        "soft_targets": False,
        "topk": 0,
        "tokenizer_sha256": tok.digest,
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Small:
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("small")
    tok, _, rows = generate.generate(n=60, seed=0, heldout_fraction=0.5, topk=4)
    tokenizer = str(directory / "tokenizer.json")
    tok.save(tokenizer)
    teacher = Student(ModelConfig(vocab_size=tok.vocab_size))
    init_weights(teacher, seed=7)
    with torch.no_grad():
        teacher.norm.weight.mul_(SHARPEN)
    teacher_gguf = str(directory / "teacher.gguf")
    gguf_export.export(teacher.eval(), tok, teacher_gguf)
    # The replies are the rule teacher's, not this teacher's greedy ones: the gate scores any reply
    # by teacher forcing, and a seeded model's greedy replies never reach eos.
    records = [dataclasses.replace(r, topk_ids=[], topk_logprobs=[], topk_tail=[]) for r in rows]
    kd = str(directory / "kd.jsonl")
    dataset.write_dataset(kd, _v2_header(tok, _sha256(teacher_gguf)), records)
    untrained = Student(ModelConfig(vocab_size=tok.vocab_size))
    init_weights(untrained, seed=8)
    return Small(
        directory=directory,
        tokenizer=tokenizer,
        dataset=kd,
        teacher_gguf=teacher_gguf,
        trained=_save_student(teacher, directory, "trained", kd),
        untrained=_save_student(untrained, directory, "untrained", kd),
    )


def _replies(small: Small) -> tuple[teacher_agreement.Replies, list]:
    data = dataset.read_dataset(small.dataset)
    heldout = sorted(data.split("heldout"), key=lambda r: r.id)
    from data.tokenizer import Tokenizer

    bos = Tokenizer.load(small.tokenizer).bos_id
    return teacher_agreement.heldout_replies(heldout, bos), heldout


def _student(paths: tuple[str, str]) -> Student:
    model, _ = checkpoint.load(*paths)
    return model


@pytest.fixture(scope="module")
def teacher_rows(small):
    replies, _ = _replies(small)
    llama = gguf_check.load_llama(small.teacher_gguf, f32_kv_cache=True, n_threads=1)
    return replies, teacher_agreement.teacher_logprobs(llama, replies)


# --- the library ---------------------------------------------------------------------------------


def test_llama_cpp_rows_are_the_teachers_next_token_distributions(small, teacher_rows):
    """Row i of a reply is the distribution over reply token i: for token 0 that is the model's
    last position given the prompt alone, computed here without the library's row arithmetic."""
    replies, teacher = teacher_rows
    model = _student(small.trained)
    starts = np.cumsum([0] + [len(r) for r in replies.replies])[:-1]
    with torch.no_grad():
        for index in (0, len(replies.prompts) - 1):
            last = model(torch.tensor([replies.prompts[index]]))[0, -1].double()
            expected = torch.log_softmax(last, dim=-1).numpy()
            np.testing.assert_allclose(teacher[starts[index]], expected, atol=2e-3)
            # and the last row predicts eos, which the reply ends with, given the whole reply before it
            full = model(torch.tensor([replies.inputs(index)]))[0, -1].double()
            end = starts[index] + len(replies.replies[index]) - 1
            np.testing.assert_allclose(teacher[end], torch.log_softmax(full, dim=-1).numpy(), atol=2e-3)
    assert teacher.shape == (replies.positions, 512)
    assert np.abs(np.exp(teacher).sum(-1) - 1).max() < 1e-9  # float64 log-softmax over the vocabulary


def test_the_teachers_own_weights_pass_and_an_untrained_student_fails(small, teacher_rows):
    replies, teacher = teacher_rows
    trained = teacher_agreement.agreement(
        teacher, teacher_agreement.student_logprobs(_student(small.trained), replies), replies
    )
    untrained = teacher_agreement.agreement(
        teacher, teacher_agreement.student_logprobs(_student(small.untrained), replies), replies
    )
    print(teacher_agreement.format_result(trained))
    print(teacher_agreement.format_result(untrained))
    assert trained["ok"] and trained["student"]["mean_kl"] < 1e-3 * trained["baseline"]["mean_kl"]
    assert trained["student"]["same_top_rate"] > 0.99
    assert not untrained["ok"] and untrained["student"]["mean_kl"] > untrained["bound"]
    assert teacher_agreement.failures(untrained) and not teacher_agreement.failures(trained)
    assert trained["bound"] == pytest.approx(0.1 * trained["baseline"]["mean_kl"], rel=1e-3)
    assert trained["factor"] == 0.1


def test_a_kind_only_student_fails(teacher_rows):
    """A student that answers every prompt with its kind's average teacher distribution at each
    position is the baseline itself: ratio 1, far above 1/10."""
    replies, teacher = teacher_rows
    kind_only = teacher_agreement.kind_baseline(teacher, replies)
    result = teacher_agreement.agreement(teacher, kind_only, replies)
    assert not result["ok"]
    assert result["student"]["mean_kl"] == result["baseline"]["mean_kl"] > 0


def test_the_kind_baseline_is_the_mean_of_each_kind_at_each_position(teacher_rows):
    replies, teacher = teacher_rows
    baseline = np.exp(teacher_agreement.kind_baseline(teacher, replies))
    rows = [
        (kind, step, start + step)
        for kind, reply, start in zip(
            replies.kinds, replies.replies, np.cumsum([0] + [len(r) for r in replies.replies]), strict=False
        )
        for step in range(len(reply))
    ]
    for kind, step, row in rows[:: max(1, len(rows) // 25)]:
        same = [r for k, s, r in rows if k == kind and s == step]
        np.testing.assert_allclose(baseline[row], np.exp(teacher[same]).mean(axis=0), rtol=1e-12)


def test_shapes_must_agree(teacher_rows):
    replies, teacher = teacher_rows
    with pytest.raises(ValueError, match="must both be"):
        teacher_agreement.agreement(teacher, teacher[:-1], replies)


# --- the binary ----------------------------------------------------------------------------------


def run(*flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, BINARY, *flags], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def _flags(small: Small, student: tuple[str, str], out, **overrides) -> list[str]:
    values = {
        "weights": student[0],
        "metadata": student[1],
        "tokenizer": small.tokenizer,
        "dataset": small.dataset,
        "teacher_gguf": small.teacher_gguf,
        "out": str(out),
        **overrides,
    }
    return [f"--{name}={value}" for name, value in values.items()]


def test_the_binary_writes_the_same_result_twice_and_exits_1_when_the_gate_fails(small, tmp_path):
    passed = run(*_flags(small, small.trained, tmp_path / "trained.json"))
    assert passed.returncode == 0, passed.stderr
    result = json.loads((tmp_path / "trained.json").read_text())
    assert result["ok"] and result["factor"] == 0.1
    assert result["inputs"]["teacher"]["sha256"] == _sha256(small.teacher_gguf)
    assert result["inputs"]["teacher_kv_cache"] == "f32"

    failed = run(*_flags(small, small.untrained, tmp_path / "untrained.json"))
    assert failed.returncode == 1, failed.stderr
    assert "FAILED: mean KL(teacher || student)" in failed.stdout
    assert not json.loads((tmp_path / "untrained.json").read_text())["ok"]

    # As a pipeline stage runs it: the result is written and the chain's test reads the verdict. Its
    # bytes are the previous run's: same inputs, same file.
    staged = run(*_flags(small, small.untrained, tmp_path / "staged.json"), "--noexit_nonzero_on_failed_gate")
    assert staged.returncode == 0, staged.stderr
    assert (tmp_path / "staged.json").read_bytes() == (tmp_path / "untrained.json").read_bytes()


def _write_dataset(small: Small, path, header: dict) -> str:
    records = dataset.read_dataset(small.dataset).records
    dataset.write_dataset(str(path), header, records)
    return str(path)


def test_bad_inputs_exit_2_with_one_line_and_no_output(small, tmp_path):
    from data.tokenizer import Tokenizer

    tok = Tokenizer.load(small.tokenizer)
    other_gguf = str(tmp_path / "other.gguf")
    other = Student(ModelConfig(vocab_size=tok.vocab_size))
    init_weights(other, seed=9)
    gguf_export.export(other.eval(), tok, other_gguf)
    # A dataset captured from another teacher, and the student's checkpoint made on it.
    elsewhere = _write_dataset(small, tmp_path / "elsewhere.jsonl", _v2_header(tok, _sha256(other_gguf)))
    captured_elsewhere = _save_student(_student(small.trained), tmp_path, "elsewhere", elsewhere)
    # A version-1 dataset (the rules teacher's) and a checkpoint made on it.
    rules = str(tmp_path / "rules.jsonl")
    _, header, rows = generate.generate(n=60, seed=0, heldout_fraction=0.5, topk=4)
    dataset.write_dataset(rules, header, rows)
    on_rules = _save_student(_student(small.trained), tmp_path, "rules", rules)
    cases = [
        (
            _flags(small, small.trained, tmp_path / "o.json", teacher_gguf=other_gguf),
            f"error: --teacher_gguf: {other_gguf} has sha256 {_sha256(other_gguf)}, but {small.dataset} "
            f"was captured from {_sha256(small.teacher_gguf)}; pass the GGUF the dataset was captured from",
        ),
        (
            _flags(small, small.trained, tmp_path / "o.json", dataset=elsewhere),
            f"error: --dataset: {elsewhere} is not the dataset {small.trained[1]} was trained on",
        ),
        (
            _flags(small, captured_elsewhere, tmp_path / "o.json", dataset=elsewhere),
            f"error: --teacher_gguf: {small.teacher_gguf} has sha256",
        ),
        (
            _flags(small, on_rules, tmp_path / "o.json", dataset=rules),
            f"error: --dataset: {rules} was not captured from a GGUF teacher (its teacher is 'm8b-rules-v1')",
        ),
        (
            _flags(small, small.trained, tmp_path / "o.json", teacher_gguf=small.tokenizer),
            f"error: {small.tokenizer}: not a readable GGUF file",
        ),
        (
            _flags(small, small.trained, tmp_path / "missing" / "o.json"),
            "error: --out: output directory",
        ),
    ]
    for flags, message in cases:
        result = run(*flags)
        lines = result.stderr.strip().splitlines()
        assert (result.returncode, len(lines)) == (2, 1), (flags, result.stderr)
        assert lines[0].startswith(message), (lines[0], message)
        assert not (tmp_path / "o.json").exists()
