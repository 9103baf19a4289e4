"""verify/verification.py's per-length output checks under every artifact's name.

The output shape and dtype checks are the same code for every artifact; what differs is whether
the artifact's runtime can hand back another dtype at all (the Core ML executor and llama.cpp
return float32 whatever the artifact computes in: there output_dtype is information, and the
package's declared type is gated by its spec). //tests:gate_power names these tests for the
(artifact, output_shape) and (artifact, output_dtype) pairs no fault of its own trips.
"""

import os

import numpy as np
import pytest

from common.errors import InputError
from conversion import gates as gates_lib
from conversion import gates_testing
from verify import verification
from verify.report import report as report_lib

LENGTHS = (16, 32)
VOCAB = 512


class _Contract:
    lengths = LENGTHS
    gates = gates_testing.gates(LENGTHS)
    outputs = (type("Spec", (), {"dtype": "float32"})(),)

    @staticmethod
    def output_shape(length):
        return (1, length, VOCAB)


def _check(name: str, forward) -> dict:
    rows = {length: [np.zeros((1, length), dtype=np.int32)] for length in LENGTHS}
    refs = {length: [np.zeros((1, length, VOCAB), dtype=np.float32)] for length in LENGTHS}
    report = report_lib.Report("m", "0" * 64)
    backend = verification.Backend(name, "artifact", forward)
    paths = verification.Paths("c", "w", "m", "t", "d")
    verification.check_outputs(report, backend, _Contract, rows, refs, paths)
    return report.results[name]


@pytest.mark.parametrize("name", sorted(gates_lib.DEFAULT_BACKENDS))
def test_logits_for_one_position_too_few_fail_output_shape(name):
    results = _check(name, lambda ids: np.zeros((1, ids.shape[1] - 1, VOCAB), dtype=np.float32))
    for length in LENGTHS:
        assert results[f"T{length}"]["output_shape"]["ok"] is False
        assert "max_abs_diff" not in results[f"T{length}"]  # no metrics on the wrong shape


@pytest.mark.parametrize("name", sorted(gates_lib.DEFAULT_BACKENDS))
def test_float16_logits_fail_output_dtype_where_the_runtime_can_return_them(name):
    results = _check(name, lambda ids: np.zeros((1, ids.shape[1], VOCAB), dtype=np.float16))
    entry = results["T16"]["output_dtype"]
    assert entry["value"] == ["float16"]
    if name in gates_lib.DTYPE_GATED_BACKENDS:
        assert entry["ok"] is False
    else:
        assert "ok" not in entry and entry["implied_by"] == verification.OUTPUT_DTYPE_IMPLIED_BY[name]


# The worker pool verify_all spreads the backends over (verification._run_pool).


def test_the_pool_returns_every_result_by_name_whatever_worker_computed_it():
    names = [f"backend{i}" for i in range(7)]
    results = verification._run_pool(lambda name: (name, os.getpid()), names, 2)
    assert sorted(results) == sorted(names)
    assert all(results[name][0] == name for name in names)
    assert os.getpid() not in {pid for _, pid in results.values()}  # computed in the workers


def test_a_worker_exception_is_raised_in_the_parent_with_its_traceback():
    def work(name):
        if name == "bad":
            raise InputError(f"{name}: cannot load it")
        return name

    with pytest.raises(InputError, match="bad: cannot load it") as info:
        verification._run_pool(work, ["good", "bad", "other"], 2)
    assert any("in the verification worker checking bad" in note for note in info.value.__notes__)


def test_a_worker_that_dies_is_an_error_naming_its_backend_not_a_hang():
    def work(name):
        if name == "dies":
            os._exit(3)
        return name

    with pytest.raises(RuntimeError, match=r"died \(exit code 3\) while checking dies"):
        verification._run_pool(work, ["dies", "fine"], 2)


def test_eager_shared_work_is_reused_only_for_the_same_model_weights_and_inputs(monkeypatch):
    import torch

    class Made:
        def __init__(self, model, inputs):
            self.model, self.inputs = model, inputs

    monkeypatch.setattr(verification, "Shared", Made)
    monkeypatch.setattr(verification, "_last_shared", [])
    model, inputs = torch.nn.Linear(2, 2), object()
    first = verification.shared_work(model, inputs)
    assert verification.shared_work(model, inputs) is first
    assert verification.shared_work(model, object()) is not first  # other inputs
    first = verification.shared_work(model, inputs)
    with torch.no_grad():
        model.weight[0, 0] += 1  # the same object, another weight: eager's side changes
    assert verification.shared_work(model, inputs) is not first


def test_the_pool_starts_no_worker_without_work():
    assert verification._run_pool(lambda name: name, [], 2) == {}
    assert verification._run_pool(lambda name: name, ["only"], 2) == {"only": "only"}
