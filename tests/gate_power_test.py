"""//tests:gate_power: every realistic fault turns gates_ok false, and the shipped artifacts pass.

Prints the fault table (fault x artifact -> the checks that caught it), and for every gated check
of the shipped report.json what makes it fail. No false alarms: the untouched artifacts of three
student seeds pass every gate (//pipeline:gates_test for the shipped seed 0,
//pipeline:seed1_gates_test and //pipeline:seed2_gates_test for seeds 1 and 2).
"""

import json
import os

import pytest

from tests import gate_faults, gate_power
from verify import verification


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    root = os.path.join(os.environ.get("TEST_SRCDIR", ""), os.environ.get("TEST_WORKSPACE", ""), "pipeline")
    paths = verification.pipeline_paths(root)
    return gate_power.shipped(paths, str(tmp_path_factory.mktemp("faults")))


def test_every_fault_is_caught_and_every_gate_can_fail(shipped):
    rows = gate_power.run_faults(shipped)
    print("\n" + gate_power.table(rows))
    missed = [f"{row.fault} x {row.artifact}" for row in rows if row.gates_ok]
    assert not missed, f"faults that left gates_ok true: {missed}"

    # No gate that cannot fail: every gated check of the shipped report is tripped by some fault
    # here, or is shown failing by the test SHOWN_ELSEWHERE names.
    with open(os.path.join(os.path.dirname(shipped.inputs.paths.contract), "report.json")) as handle:
        report = json.load(handle)
    gated = {
        name for scopes in report["results"].values() for checks in scopes.values()
        for name, entry in checks.items() if "ok" in entry
    }  # fmt: skip
    tripped = {caught.split(" ", 1)[1] for row in rows for caught in row.caught_by}
    for name in sorted(gated):
        where = "faults here" if name in tripped else gate_faults.SHOWN_ELSEWHERE.get(name, "NOTHING")
        print(f"gate {name:<34} fails on: {where}")
    never = sorted(gated - tripped - set(gate_faults.SHOWN_ELSEWHERE))
    assert not never, f"gates no fault trips and no test is named for: {never}"


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
