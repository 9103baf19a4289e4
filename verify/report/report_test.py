import hashlib
import json

import pytest

from verify.report import report as report_lib


def _report():
    report = report_lib.Report("magic-8-ball", "00" * 32)
    report.check("torchscript", "T64", "max_abs_diff", 1.23456789e-6, "<=", 1e-4)
    report.check("coreml", "T64", "top1_agreement", 0.995, ">=", 0.99)
    report.note("coreml", "all", "behaviour_near_tie_flips", 2)
    return report


def test_verdicts_follow_the_bounds():
    report = _report()
    assert report.gates_ok
    assert report.check("coreml", "T128", "max_abs_diff", 0.2, "<=", 0.1) is False
    assert not report.gates_ok


def test_nan_and_errors_fail():
    report = _report()
    assert report.check("gguf", "T64", "max_abs_diff", float("nan"), "<=", 0.1) is False
    assert report.to_dict()["results"]["gguf"]["T64"]["max_abs_diff"]["value"] == "nan"
    other = _report()
    other.fail("gguf", "T64", "runs", "RuntimeError: boom")
    assert not other.gates_ok


def test_notes_never_gate_and_an_empty_report_does_not_pass():
    report = report_lib.Report("magic-8-ball", "00" * 32)
    report.note("coreml", "all", "near_ties", 5)
    assert not report.gates_ok


def test_override_verdict_and_duplicates():
    report = _report()
    report.check("coreml", "all", "spec_output_shape", "unspecified", "==", "fixed", ok=True)
    assert report.gates_ok
    with pytest.raises(ValueError, match="twice"):
        report.check("coreml", "all", "spec_output_shape", "x", "==", "x")


def test_json_is_rounded_sorted_and_deterministic(tmp_path):
    path = tmp_path / "report.json"
    _report().save(str(path))
    data = path.read_bytes()
    assert data == _report().to_bytes()
    values = json.loads(data)
    assert values["gates_ok"] is True
    entry = values["results"]["torchscript"]["T64"]["max_abs_diff"]
    assert entry == {"value": 1.235e-06, "op": "<=", "bound": 0.0001, "ok": True}
    assert list(values) == sorted(values)


def test_artifact_digests_for_files_and_directories(tmp_path):
    file = tmp_path / "model.pt"
    file.write_bytes(b"weights")
    assert report_lib.describe_artifact(str(file)) == {
        "sha256": hashlib.sha256(b"weights").hexdigest(),
        "size": 7,
    }
    package = tmp_path / "m.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Manifest.json").write_bytes(b"{}")
    (package / "Data" / "model.mlmodel").write_bytes(b"spec")
    first = report_lib.describe_artifact(str(package))
    assert first["files"] == 2 and first["size"] == 6
    (package / "Data" / "model.mlmodel").write_bytes(b"spe!")
    assert report_lib.describe_artifact(str(package))["sha256"] != first["sha256"]


def test_summary_lists_every_check_and_the_verdict():
    report = _report()
    report.check("coreml", "T128", "max_abs_diff", 0.5, "<=", 0.1)
    text = report.summary()
    lines = text.splitlines()
    assert lines[0].split() == ["artifact", "scope", "check", "value", "floor", "bound"]
    assert any("max_abs_diff" in line and line.rstrip().endswith("FAIL") for line in lines)
    assert lines[-1] == "gates: FAIL"
    # Per artifact: lengths ascending, then whole-artifact checks.
    coreml_scopes = [line.split()[1] for line in lines[1:-1] if line.startswith("coreml")]
    assert coreml_scopes == ["T64", "T128", "all"]


def test_an_implied_check_is_information_named_with_its_gate():
    report = _report()
    report.note("gguf", "all", "behaviour_mismatches", 3, implied_by="replay_max_abs_diff")
    assert report.gates_ok  # information: never a verdict
    entry = report.to_dict()["results"]["gguf"]["all"]["behaviour_mismatches"]
    assert entry == {"value": 3, "implied_by": "replay_max_abs_diff"}
    line = next(line for line in report.summary().splitlines() if "behaviour_mismatches" in line)
    assert "(implied by replay_max_abs_diff)" in line


def test_each_scope_carries_its_own_floor():
    report = report_lib.Report("magic-8-ball", "00" * 32)
    report.check("coreml", "T64", "top1_disagreement", 0.0, "<=", 0.03125, floor=1 / 128)
    report.check("coreml", "T256", "top1_disagreement", 0.0, "<=", 0.0078125, floor=1 / 512)
    results = report.to_dict()["results"]["coreml"]
    assert results["T64"]["top1_disagreement"]["floor"] == 0.007812
    assert results["T256"]["top1_disagreement"]["floor"] == 0.001953


def test_reports_checked_apart_merge_into_the_bytes_of_one_report(tmp_path):
    whole = report_lib.Report("magic-8-ball", "00" * 32)
    parts = [report_lib.Report("magic-8-ball", "00" * 32) for _ in range(2)]
    for report, artifact in ((whole, "torchscript"), (parts[0], "torchscript")):
        report.check(artifact, "T64", "max_abs_diff", 1e-6, "<=", 1e-4)
        report.note(artifact, "all", "behaviour_questions", 6)
    for report in (whole, parts[1]):
        report.check("coreml", "T64", "max_abs_diff", 0.2, "<=", 0.1)
    merged = report_lib.Report("magic-8-ball", "00" * 32)
    for part in parts:
        merged.merge(part)
    assert merged.to_bytes() == whole.to_bytes()
    assert not merged.gates_ok
    with pytest.raises(ValueError, match="recorded twice"):
        merged.merge(parts[1])
    with pytest.raises(ValueError, match="another model"):
        merged.merge(report_lib.Report("other", "00" * 32))
