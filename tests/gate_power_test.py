"""//tests:gate_power: every realistic fault turns gates_ok false, and every gated check of every
artifact can fail.

Prints the fault table (fault x artifact -> the checks that caught it), and for every gated
(artifact, check) pair of the shipped report.json the fault on that artifact that trips it, or the
test that fails it (tests/artifact_faults.py SHOWN_ELSEWHERE): a fault caught on one artifact is no
proof for another, whose bounds are its own. No false alarms: the untouched artifacts of three
student seeds and the wide configuration pass every gate (//pipeline:gates_test,
//pipeline:seed1_gates_test, //pipeline:seed2_gates_test, //pipeline:wide_gates_test).
"""

import dataclasses
import json
import os

import pytest

from common.errors import InputError
from tests import artifact_faults, gate_faults, gate_power
from verify import verification


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    root = os.path.join(os.environ.get("TEST_SRCDIR", ""), os.environ.get("TEST_WORKSPACE", ""), "pipeline")
    paths = verification.pipeline_paths(root)
    return gate_power.shipped(paths, str(tmp_path_factory.mktemp("faults")))


@pytest.fixture(scope="module")
def rows(shipped):
    rows = gate_power.run_faults(shipped, gate_faults.FAULTS + artifact_faults.ARTIFACT_FAULTS)
    print("\n" + gate_power.table(rows))
    return rows


@pytest.fixture(scope="module")
def check_rows(shipped):
    """The faults only an artifact's own checks see, through those checks alone (seconds each)."""
    rows = gate_power.run_content_faults(shipped, artifact_faults.CHECK_FAULTS)
    print("\n" + gate_power.table(rows))
    return rows


@pytest.fixture(scope="module")
def length_rows(shipped):
    """The faults whose point is a per-length check, through the per-length checks alone."""
    rows = gate_power.run_length_faults(shipped, artifact_faults.LENGTH_FAULTS)
    print("\n" + gate_power.table(rows))
    return rows


def test_every_fault_is_caught(rows, check_rows, length_rows):
    every = rows + check_rows + length_rows
    missed = [f"{row.fault} x {row.artifact}" for row in every if row.gates_ok]
    assert not missed, f"faults that left gates_ok true: {missed}"
    # Each fault of tests/artifact_faults.py fails through the check it is there for.
    caught = {}
    for row in every:
        caught.setdefault((row.fault, row.artifact), set()).update(c.split(" ", 1)[1] for c in row.caught_by)
    expected = dict(artifact_faults.MUST_CATCH)
    for row in check_rows:
        if row.fault in artifact_faults.MUST_CATCH_SPEC:
            expected[row.fault, row.artifact] = artifact_faults.MUST_CATCH_SPEC[row.fault]
    for (fault, artifact), check in sorted(expected.items()):
        assert check in caught[fault, artifact], f"{fault} x {artifact}: caught by {caught[fault, artifact]}"


def test_every_gated_check_of_every_artifact_can_fail(shipped, rows, check_rows, length_rows):
    """No gate that cannot fail, artifact by artifact: each gated (artifact, check) pair of the
    shipped report is tripped by a fault on that artifact, or the test SHOWN_ELSEWHERE names fails
    it. The content faults (gate_faults.CONTENT_FAULTS, through the artifact's own checks) count."""
    with open(os.path.join(os.path.dirname(shipped.inputs.paths.contract), "report.json")) as handle:
        gated = gate_power.gated(json.load(handle))
    content = gate_power.run_content_faults(shipped)
    tripped = gate_power.tripped(rows + check_rows + length_rows + content)
    elsewhere = artifact_faults.SHOWN_ELSEWHERE
    for artifact, check in sorted(gated):
        where = (
            "a fault on it" if (artifact, check) in tripped else elsewhere.get((artifact, check), "NOTHING")
        )
        print(f"gate {artifact:<20} {check:<36} fails on: {where}")
    never = sorted(gated - tripped - set(elsewhere))
    assert not never, (
        f"(artifact, check) pairs no fault on that artifact trips and no test is named for: {never}"
    )
    stale = sorted(set(elsewhere) & tripped)
    assert not stale, f"SHOWN_ELSEWHERE names pairs a fault here trips (drop them): {stale}"


def test_a_range_dim_package_is_refused_before_any_report(shipped):
    """A package converted with a RangeDim instead of the contract's enumerated lengths claims
    lengths the contract does not: verification refuses it as bad input when it loads the
    artifacts (verify_contracts: one line, exit 2), before anything is measured or reported."""
    paths = dataclasses.replace(shipped.inputs.paths, mlpackage=artifact_faults.range_dim_package(shipped))
    inputs = verification.check_inputs(paths)
    with pytest.raises(InputError, match="range.mlpackage"):
        verification.load_backends(dataclasses.replace(inputs, contract=_only(inputs.contract, "coreml")))


def _only(contract, backend: str):
    """The contract with only `backend` to verify (load_backends loads what the contract names)."""
    gates = {**contract.gates, "backends": {backend: contract.gates["backends"][backend]}}
    return dataclasses.replace(contract, gates=gates)


def test_content_faults_are_caught_by_the_content_checks(shipped):
    """The small faults of the quantized and compressed files (gate_faults.CONTENT_FAULTS), each
    below the quantization noise, turn gates_ok false through the artifact's exact content check."""
    rows = gate_power.run_content_faults(shipped)
    print("\n" + gate_power.table(rows))
    assert len(rows) == sum(len(fault.inject) for fault in gate_faults.CONTENT_FAULTS)
    for row in rows:
        assert not row.gates_ok, f"{row.fault} x {row.artifact} left gates_ok true"
        catcher = f"all {gate_faults.CONTENT_CATCHERS[row.fault]}"
        assert catcher in row.caught_by, f"{row.fault} x {row.artifact}: caught by {row.caught_by}"
