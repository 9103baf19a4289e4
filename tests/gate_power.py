"""Runs every fault of tests/gate_faults.py through verification and tabulates what caught it.

A library for //tests:gate_power (tests/gate_power_test.py): `run(paths, tmp)` returns one row per
(fault, artifact) with the failed checks, and the clean report of the shipped artifacts.
"""

import dataclasses

from tests import gate_faults
from verify import verification
from verify.report import report as report_lib


@dataclasses.dataclass(frozen=True)
class Row:
    fault: str
    artifact: str
    gates_ok: bool
    caught_by: tuple[str, ...]  # "<scope> <check>" of every failed check


def failed_checks(report, artifact: str) -> tuple[str, ...]:
    return tuple(
        f"{where} {name}"
        for where, checks in report.results.get(artifact, {}).items()
        for name, entry in checks.items()
        if entry.get("ok") is False
    )


def shipped(paths: verification.Paths, tmp: str) -> gate_faults.Shipped:
    """The shipped artifacts the contract names (a configuration without an artifact leaves its
    file out), checked and loaded as verify_contracts does."""
    from conversion import contract as contract_lib

    named = {
        verification.FLAGS_OF[name] for name in contract_lib.load_contract(paths.contract).gates["backends"]
    }
    unnamed = {field for field in verification.FLAGS_OF.values() if field not in named}
    paths = dataclasses.replace(paths, **{field: None for field in unnamed})
    inputs = verification.check_inputs(paths)
    return gate_faults.Shipped(inputs, verification.load_model(inputs), tmp)


def run_faults(ship: gate_faults.Shipped, faults=gate_faults.FAULTS) -> list[Row]:
    rows = []
    for fault in faults:
        for artifact, inject in fault.inject.items():
            if artifact not in ship.inputs.contract.gates["backends"]:
                continue  # not verified in this configuration: nothing to prove
            backend = inject(ship)
            # The greedy agreement is information only (verify/behaviour/greedy_agreement.py), and a faulted
            # variant's replies would all be regenerated: skipped here.
            report = verification.verify(ship.model, ship.inputs, [backend], agreement=False)
            rows.append(Row(fault.name, artifact, report.gates_ok, failed_checks(report, artifact)))
    return rows


def run_faults_staged(ship: gate_faults.Shipped, faults, whole: frozenset[str]) -> list[Row]:
    """run_faults, with the first checks first: the per-length output checks, and a KV-cache
    artifact's decode parity. A fault they catch is caught by the whole verification too, which
    runs the same checks on the same inputs (verify_backend calls them on verification's shared
    work, as here), so its row is theirs: a second or two, where a whole verification of one
    artifact takes several. The whole verification runs for the faults they miss, and for the
    faults named in `whole`: those show that the checks only it runs (the replay, the sampled
    replies, the weights) can fail."""
    first = _checks(ship, decode=True)
    rows = []
    for fault in faults:
        for artifact, inject in fault.inject.items():
            if artifact not in ship.inputs.contract.gates["backends"]:
                continue  # not verified in this configuration: nothing to prove
            if fault.name not in whole:
                row = first(fault.name, artifact, inject(ship))
                if not row.gates_ok:
                    rows.append(row)
                    continue
            rows.extend(run_faults(ship, [dataclasses.replace(fault, inject={artifact: inject})]))
    return rows


def _checks(ship: gate_faults.Shipped, decode: bool):
    """(fault name, artifact, faulted backend) -> Row of the per-length output checks alone (and
    with `decode`, a KV-cache artifact's decode parity too), called as verify_backend calls them on
    the held-out rows, eager's logits and the decode inputs of verification's shared work."""
    inputs = ship.inputs
    shared = verification.shared_work(ship.model, inputs)

    def run(fault: str, artifact: str, backend: verification.Backend) -> Row:
        report = report_lib.Report(inputs.contract.model_name, "")
        verification.check_outputs(report, backend, inputs.contract, shared.rows, shared.refs, inputs.paths)
        if decode and backend.steps:
            verification.check_decode(
                report, backend, shared.decode_inputs, inputs.tokenizer.eos_id, inputs.contract, inputs.paths
            )
        return Row(fault, artifact, report.gates_ok, failed_checks(report, artifact))

    return run


def run_length_faults(ship: gate_faults.Shipped, faults) -> list[Row]:
    """Each fault through the per-length output checks alone, for faults whose point is a
    per-length check (a quality bound, the floor ratio): seconds each, where a whole verification
    of a Core ML variant takes minutes."""
    checks = _checks(ship, decode=False)
    return [
        checks(fault.name, artifact, inject(ship))
        for fault in faults
        for artifact, inject in fault.inject.items()
    ]


def tripped(rows: list[Row]) -> set[tuple[str, str]]:
    """(artifact, check) of every check some fault on that artifact failed."""
    return {(row.artifact, caught.split(" ", 1)[1]) for row in rows for caught in row.caught_by}


def gated(report: dict) -> set[tuple[str, str]]:
    """(artifact, check) of every gated check (one with a verdict) of a report.json."""
    return {
        (artifact, name)
        for artifact, scopes in report["results"].items()
        for checks in scopes.values()
        for name, entry in checks.items()
        if "ok" in entry
    }


def run_content_faults(ship: gate_faults.Shipped, faults=gate_faults.CONTENT_FAULTS) -> list[Row]:
    """Each content fault through its artifact's own checks only: Backend.interface_check, called
    as verification.verify calls it, into a report of its own. The output comparisons cannot see
    these faults, and skipping them keeps each fault to seconds."""
    rows = []
    for fault in faults:
        for artifact, inject in fault.inject.items():
            backend = inject(ship)
            report = report_lib.Report(ship.inputs.contract.model_name, "")
            backend.interface_check(report, ship.inputs.contract, ship.model)
            rows.append(Row(fault.name, artifact, report.gates_ok, failed_checks(report, artifact)))
    return rows


def table(rows: list[Row]) -> str:
    """One line per (fault, artifact) that ran, grouped by fault."""
    faults = list(dict.fromkeys(row.fault for row in rows))
    lines = ["fault x artifact -> catching checks (first three; 'MISSED' = gates_ok stayed true)"]
    for fault in faults:
        for row in sorted((r for r in rows if r.fault == fault), key=lambda r: r.artifact):
            if row.gates_ok:
                text = "MISSED"
            else:
                extra = len(row.caught_by) - 3
                text = ", ".join(row.caught_by[:3]) + (f" (+{extra} more)" if extra > 0 else "")
            lines.append(f"{fault:<24} {row.artifact:<20} {text}")
    return "\n".join(lines)
