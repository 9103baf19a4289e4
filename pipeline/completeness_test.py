"""A report that is missing one check the contract implies is caught by both pipeline/gates_test.py
and pipeline/e2e.py (conversion/gates.py, missing_checks), on the shipped report and contract.

Each case removes one check from the shipped report.json, the kind of gap a verifier change would
leave (a check that stopped running): gates_test exits 1 naming it, and e2e prints gates_ok: false
and what is missing, and exits 1. The untouched report passes both.
"""

import json
import os
import subprocess
import sys

import pytest

from common import child_python
from pipeline import shipped_env

_ENV = ("M8B_REPORT", "M8B_CONTRACT")
_HERE = os.path.dirname(os.path.abspath(__file__))
# (artifact, scope, check): one of each kind the contract implies.
CASES = [
    ("torchscript", "all", "sampled_canonical_rate"),
    ("coreml_int8", "all", "weights_elements_changed"),
    ("gguf_q8_0", "all", "tokenizer_mismatches"),
    ("coreml", "all", "spec_output_dtype"),
    ("coreml_stateful", "all", "spec_state_shapes"),
    ("gguf_q4_0", "T128", "kl_mean"),
    ("coreml_int4", "all", "replay_quality_kl_mean"),
    ("torchscript_decoder", "all", "decode_rms_dp"),
]


@pytest.fixture(scope="module")
def shipped():
    return shipped_env.require(_ENV)


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(_HERE, script), *args],
        env=child_python.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


Run = subprocess.CompletedProcess


def _both(tmp_path, report: dict, contract: str) -> tuple[Run, Run]:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    gates = _run("gates_test.py", [str(path), contract])
    e2e = _run(
        "e2e.py",
        [f"--report={path}", f"--artifact=torchscript=-={contract}", f"--out_dir={tmp_path / 'dist'}"],
    )
    return gates, e2e


def test_the_shipped_report_misses_nothing(shipped, tmp_path):
    with open(shipped["M8B_REPORT"], encoding="utf-8") as handle:
        report = json.load(handle)
    gates, e2e = _both(tmp_path, report, shipped["M8B_CONTRACT"])
    assert gates.returncode == 0, gates.stdout + gates.stderr
    assert "NOT VERIFIED" not in gates.stdout
    assert e2e.returncode == 0 and "gates_ok: true" in e2e.stdout, e2e.stdout + e2e.stderr


@pytest.mark.parametrize(("artifact", "scope", "check"), CASES)
def test_a_report_missing_one_check_is_caught_by_both(shipped, tmp_path, artifact, scope, check):
    with open(shipped["M8B_REPORT"], encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["gates_ok"] is True  # the verdict was true: only the missing check can turn it
    del report["results"][artifact][scope][check]
    gates, e2e = _both(tmp_path, report, shipped["M8B_CONTRACT"])
    line = f"NOT VERIFIED {artifact} {scope}: no {check}"
    assert gates.returncode == 1 and line in gates.stdout, gates.stdout + gates.stderr
    assert e2e.returncode == 1, e2e.stdout + e2e.stderr
    assert "gates_ok: false" in e2e.stdout and line in e2e.stdout, e2e.stdout


@pytest.mark.parametrize("ok", [True, False])
def test_a_gate_that_writes_its_own_result_counts_toward_the_verdict(shipped, tmp_path, ok):
    """e2e's "self" gate (the teacher-agreement gate's file): its "ok" is printed with its figures
    and a false one turns gates_ok false, with the report itself passing."""
    own = tmp_path / "teacher_agreement.json"
    own.write_text(
        json.dumps({"ok": ok, "bound": 0.2, "positions": 10, "student": {"mean_kl": 0.3 - 0.2 * ok}})
    )
    e2e = _run(
        "e2e.py",
        [
            f"--report={shipped['M8B_REPORT']}",
            f"--artifact=torchscript=-={shipped['M8B_CONTRACT']}",
            f"--artifact=teacher_agreement=self={own}",
            f"--out_dir={tmp_path / 'dist'}",
        ],
    )
    verdict = "PASS" if ok else "FAIL"
    assert f"teacher_agreement.json: {verdict} (mean KL" in e2e.stdout, e2e.stdout + e2e.stderr
    assert e2e.returncode == (0 if ok else 1) and f"gates_ok: {str(ok).lower()}" in e2e.stdout, e2e.stdout


def test_a_gate_result_without_ok_is_refused(shipped, tmp_path):
    own = tmp_path / "teacher_agreement.json"
    own.write_text(json.dumps({"bound": 0.2}))
    e2e = _run(
        "e2e.py",
        [
            f"--report={shipped['M8B_REPORT']}",
            f"--artifact=teacher_agreement=self={own}",
            f"--out_dir={tmp_path / 'd'}",
        ],
    )
    assert e2e.returncode == 2 and str(own) in e2e.stderr and "'ok'" in e2e.stderr, e2e.stderr
