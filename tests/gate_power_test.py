"""//tests:gate_power: every realistic fault turns gates_ok false, and every gated check of every
artifact can fail.

Prints the fault table (fault x artifact -> the checks that caught it; a fault that the per-length
output checks or the decode parity catch is listed with those checks alone, WHOLE below says why),
and for every gated
(artifact, check) pair of the shipped report.json the fault on that artifact that trips it, or the
test that fails it (tests/artifact_faults.py SHOWN_ELSEWHERE): a fault caught on one artifact is no
proof for another, whose bounds are its own. So the suite runs artifact by artifact, one test
each, and Bazel's shards split the artifacts between them (tests/shard_plugin.py). No false alarms:
the untouched artifacts of three student seeds and the wide configuration pass every gate
(//pipeline:gates_test, //pipeline:seed1_gates_test, //pipeline:seed2_gates_test,
//pipeline:wide_gates_test).
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


# The faults that always run through the whole verification, even where the per-length output
# checks catch them first (gate_power.run_faults_staged): between them they trip the checks only the
# whole verification runs (the replay, the sampled replies, the weights). Every other fault of the
# "verify" kind runs through the whole verification only where the per-length checks miss it, or
# where an artifact's gated check is left untripped: then every fault on that artifact runs whole
# (a student trained on another CPU left gguf_q8_0's replay_rms_abs_diff to scale_block_x16 alone).
WHOLE = frozenset({"norm_eps_x10", "flair_row_zeroed", "output_rows_shifted", "frozen_length"})


def _staged(ship, faults):
    return gate_power.run_faults_staged(ship, faults, WHOLE)


# Every fault, by kind: through the whole verification (staged, as above), through the artifact's own
# checks only, through the per-length checks only, and the small content faults (artifact_faults.py
# says why).
VERIFY_FAULTS = gate_faults.FAULTS + artifact_faults.ARTIFACT_FAULTS
KINDS = (
    ("verify", _staged, VERIFY_FAULTS),
    ("checks", gate_power.run_content_faults, artifact_faults.CHECK_FAULTS),
    ("lengths", gate_power.run_length_faults, artifact_faults.LENGTH_FAULTS),
    ("content", gate_power.run_content_faults, gate_faults.CONTENT_FAULTS),
)
# Every artifact a fault targets. A gated check is proved on its own artifact only (a fault caught
# on one artifact is no proof for another), so the suite runs artifact by artifact, and Bazel's
# shards split the artifacts (tests/suite_plugin.py).
ARTIFACTS = sorted({artifact for _, _, faults in KINDS for fault in faults for artifact in fault.inject})
# Each artifact's share of the suite's time, so that Bazel's shards come out even (round robin put
# the two slowest, a compiled faulty AOTInductor package and the GGUF faults, beside others:
# shards of 26 s to 115 s). Rough seconds from one run's test.xml; scheduling only, no verdict.
SHARD_WEIGHTS = {
    "aoti_decoder": 40,
    "coreml_stateful": 22,
    "gguf": 22,
    "torchscript_decoder": 20,
    "coreml": 18,
    "coreml_int4": 12,
    "gguf_kv_f16": 10,
}


def _on(faults, artifact: str) -> list:
    """The faults that target `artifact`, each reduced to its injection there."""
    return [
        dataclasses.replace(fault, inject={artifact: fault.inject[artifact]})
        for fault in faults
        if artifact in fault.inject
    ]


@pytest.fixture(scope="module")
def gated(shipped):
    with open(os.path.join(os.path.dirname(shipped.inputs.paths.contract), "report.json")) as handle:
        return gate_power.gated(json.load(handle))


def test_every_artifact_with_a_gated_check_has_faults(gated):
    """The per-artifact tests below cover every artifact the shipped report gates, and every
    artifact the expectations name (one outside ARTIFACTS would never be checked)."""
    assert {artifact for artifact, _ in gated} <= set(ARTIFACTS)
    named = {a for _, a in artifact_faults.MUST_CATCH} | {a for a, _ in artifact_faults.SHOWN_ELSEWHERE}
    assert named <= set(ARTIFACTS), sorted(named - set(ARTIFACTS))


@pytest.mark.parametrize(
    "artifact",
    [pytest.param(a, marks=pytest.mark.shard_weight(SHARD_WEIGHTS.get(a, 8))) for a in ARTIFACTS],
)
def test_every_fault_is_caught_and_every_gated_check_can_fail(shipped, gated, artifact):
    """Each fault on `artifact` turns gates_ok false (through the check it is there for, where
    artifact_faults.MUST_CATCH or the content catchers name one), and each gated (artifact, check)
    pair of the shipped report is tripped by one of them or failed by the test SHOWN_ELSEWHERE names."""
    assert artifact in shipped.inputs.contract.gates["backends"], (
        f"{artifact}: not verified by the shipped contract"
    )
    rows = {kind: run(shipped, _on(faults, artifact)) for kind, run, faults in KINDS}
    checks = sorted(check for where, check in gated if where == artifact)
    elsewhere = {
        check: test for (where, check), test in artifact_faults.SHOWN_ELSEWHERE.items() if where == artifact
    }
    every = [row for kind_rows in rows.values() for row in kind_rows]
    tripped = gate_power.tripped(every)
    if any((artifact, check) not in tripped and check not in elsewhere for check in checks):
        rows["verify"] = gate_power.run_faults(shipped, _on(VERIFY_FAULTS, artifact))
        every = [row for kind_rows in rows.values() for row in kind_rows]
        tripped = gate_power.tripped(every)
    print("\n" + gate_power.table(every))
    missed = [row.fault for row in every if row.gates_ok]
    assert not missed, f"faults on {artifact} that left gates_ok true: {missed}"
    caught = {}
    for row in every:
        caught.setdefault(row.fault, set()).update(c.split(" ", 1)[1] for c in row.caught_by)
    expected = {
        fault: check for (fault, where), check in artifact_faults.MUST_CATCH.items() if where == artifact
    }
    expected.update(
        (row.fault, artifact_faults.MUST_CATCH_SPEC[row.fault])
        for row in rows["checks"]
        if row.fault in artifact_faults.MUST_CATCH_SPEC
    )
    expected.update((row.fault, gate_faults.CONTENT_CATCHERS[row.fault]) for row in rows["content"])
    for fault, check in sorted(expected.items()):
        assert fault in caught, f"{fault} x {artifact}: expected to be caught by {check}, but it never ran"
        assert check in caught[fault], f"{fault} x {artifact}: caught by {sorted(caught[fault])}"

    for check in checks:
        where = "a fault on it" if (artifact, check) in tripped else elsewhere.get(check, "NOTHING")
        print(f"gate {artifact:<20} {check:<36} fails on: {where}")
    never = [check for check in checks if (artifact, check) not in tripped and check not in elsewhere]
    assert not never, f"{artifact}: gated checks no fault on it trips and no test is named for: {never}"
    stale = sorted(check for check in elsewhere if (artifact, check) in tripped)
    assert not stale, f"{artifact}: SHOWN_ELSEWHERE names checks a fault here trips (drop them): {stale}"


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
