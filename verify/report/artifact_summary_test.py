"""The per-artifact summary reads report entries: worst over the lengths, agreement where measured."""

from verify.report import artifact_summary


def _entry(value, ok=True):
    return {"value": value, "op": "<=", "bound": 1.0, "ok": ok}


RESULTS = {
    "gguf_q8_0": {
        "T64": {
            "kl_mean": _entry(2e-4),
            "kl_max": _entry(1e-3),
            "top1_disagreement": _entry(0.01),
            "rms_dp": _entry(0.004),
        },
        "T128": {
            "kl_mean": _entry(3e-4),
            "kl_max": _entry(2e-3),
            "top1_disagreement": _entry(0.02),
            "rms_dp": _entry(0.005),
        },
        "all": {"behaviour_agreement": {"value": 0.985}, "replay_kl_mean": _entry(9.0)},
    },
    "torchscript": {
        "T64": {
            "kl_mean": _entry(1e-12),
            "kl_max": _entry(2e-12),
            "top1_disagreement": _entry(0.0),
            "rms_dp": _entry(1e-7),
        }
    },
    "broken": {"T64": {"runs": {"error": "RuntimeError: no"}}},
}
ARTIFACTS = {"gguf_q8_0": {"size": 677088, "sha256": "x"}, "torchscript": {"size": 2_600_000, "sha256": "y"}}


def test_worst_length_and_agreement():
    summary = artifact_summary.summarize(ARTIFACTS, RESULTS)
    assert summary["gguf_q8_0"] == {
        "behaviour_agreement": 0.985,
        "kl_max": 2e-3,
        "kl_mean": 3e-4,
        "rms_dp": 0.005,
        "same_top": 0.98,
        "size": 677088,
    }
    assert "behaviour_agreement" not in summary["torchscript"] and summary["torchscript"]["same_top"] == 1.0


def test_an_artifact_that_did_not_run_has_no_row():
    assert "broken" not in artifact_summary.summarize(ARTIFACTS, RESULTS)


def test_nan_values_are_left_out():
    results = {"x": {"T64": {"kl_mean": {"value": "nan"}, "kl_max": _entry(1.0)}}}
    assert artifact_summary.summarize({}, results) == {}
