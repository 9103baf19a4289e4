"""conversion/gates.py: per-length floors into bounds, the lossy variants' quality bounds, and the
completeness check that pipeline/gates_test.py and pipeline/e2e.py apply."""

import copy

import pytest

from common.errors import InputError
from conversion import gates as gates_lib
from conversion import gates_testing

LENGTHS = (64, 128, 256)


def _floors() -> dict:
    """A floors document whose every floor differs (so a bound from the wrong scope shows)."""
    doc = gates_testing.floors_doc(LENGTHS)
    for p, scopes in enumerate(scopes for _, scopes in sorted(doc["floors"].items())):
        for s, metrics in enumerate(metrics for _, metrics in sorted(scopes.items())):
            for m, metric in enumerate(sorted(metrics)):
                metrics[metric] = float(f"{(1 + p) * 1e-3 + (1 + s) * 1e-5 + (1 + m) * 1e-7:.6g}")
    return doc


def test_every_length_gets_the_bounds_of_its_own_floors():
    doc = _floors()
    gates = gates_lib.make_gates(doc, dict(gates_lib.DEFAULT_BACKENDS))
    for precision, scopes in gates["bounds"].items():
        for where, metrics in scopes.items():
            for metric, entry in metrics.items():
                assert entry["floor"] == doc["floors"][precision][where][metric]
                assert entry["bound"] == gates_lib.round4_up(entry["floor"] * gates_lib.FACTOR_LIMIT)
    fp16 = gates["bounds"]["fp16"]
    for metric in gates_lib.METRICS:  # extremes included: nothing is pooled across lengths
        assert fp16["T128"][metric]["bound"] < fp16["T256"][metric]["bound"]
    gates_lib.validate_gates(gates, LENGTHS, "gates")


def test_each_lossy_backend_is_bounded_by_its_independent_reference():
    doc = _floors()
    gates = gates_lib.make_gates(doc, dict(gates_lib.DEFAULT_BACKENDS))
    lossy = {b for b, p in gates_lib.DEFAULT_BACKENDS.items() if p in gates_lib.REFERENCES}
    assert lossy == {"gguf_q8_0", "gguf_q4_0", "coreml_int8", "coreml_int4"}
    assert set(gates["quality"]) == lossy
    for backend in lossy:
        reference = gates_lib.REFERENCES[gates_lib.DEFAULT_BACKENDS[backend]]
        entry = gates["quality"][backend]
        assert entry["reference"] == reference and reference in gates["methods"]
        assert sorted(entry["bounds"]) == sorted(gates_lib.scope_names(LENGTHS, decode=False))
        for where, metrics in entry["bounds"].items():
            assert sorted(metrics) == sorted(gates_lib.QUALITY_METRICS)
            for metric, bound in metrics.items():
                assert bound["floor"] == doc["floors"][reference][where][metric]
                assert bound["factor"] == gates_lib.QUALITY_FACTORS[metric] and bound["why"]
    # The contract reader accepts what make_gates writes.
    gates_lib.validate_gates(gates, LENGTHS, "gates")


def test_a_contract_without_lossy_backends_has_no_quality_bounds():
    gates = gates_lib.make_gates(_floors(), {"torchscript": "f32", "coreml": "fp16"})
    assert gates["quality"] == {}
    assert sorted(gates["methods"]) == ["f32", "fp16"]


def test_floors_without_a_reference_or_with_the_wrong_scopes_are_refused():
    doc = _floors()
    del doc["floors"]["ref_q4_0"]
    with pytest.raises(InputError, match="ref_q4_0"):
        gates_lib.make_gates(doc, {"gguf_q4_0": "w_q4_0"})
    doc = _floors()
    doc["floors"]["ref_int8"]["decode"] = dict(doc["floors"]["ref_int8"]["replay"])
    with pytest.raises(InputError, match="ref_int8"):
        gates_lib.validate_floors(doc, list(LENGTHS), "floors.json")
    doc = _floors()
    del doc["floors"]["fp16"]["decode"]
    with pytest.raises(InputError, match="floors.fp16"):
        gates_lib.validate_floors(doc, list(LENGTHS), "floors.json")
    doc = _floors()
    doc["version"] = 1  # pooled floors: measured before floors were per length
    with pytest.raises(InputError, match="re-run measure_floors"):
        gates_lib.validate_floors(doc, list(LENGTHS), "floors.json")


# --- Completeness -------------------------------------------------------------------------------


def _complete_report(contract: dict) -> dict:
    """A report holding exactly what expected_checks asks for, every gate passed."""
    results = {}
    for backend in contract["gates"]["backends"]:
        pinned = backend in contract["artifacts"]
        results[backend] = {
            where: {
                check: (
                    {"value": 0, "op": "==", "bound": 0, "ok": True}
                    if kind == gates_lib.GATE
                    else {"value": 0}
                )
                for check, kind in checks.items()
            }
            for where, checks in gates_lib.expected_checks(backend, contract["lengths"], pinned).items()
        }
    return {"results": results, "gates_ok": True}


@pytest.fixture()
def contract() -> dict:
    return {
        "lengths": list(LENGTHS),
        "artifacts": {"weights": "0" * 64, "torchscript": "1" * 64},
        "gates": gates_testing.gates(LENGTHS),
    }


def test_a_complete_report_misses_nothing(contract):
    assert gates_lib.missing_checks(_complete_report(contract), contract) == []


@pytest.mark.parametrize(
    ("backend", "where", "check"),
    [
        ("torchscript", "all", "sampled_canonical_rate"),
        ("gguf_kv_f16", "all", "sampled_canonical_rate"),
        ("coreml_int8", "all", "weights_elements_changed"),
        ("coreml_stateful", "all", "weights_elements_changed"),
        ("gguf_q4_0", "all", "weights_elements_changed"),
        ("gguf_f16", "all", "tokenizer_mismatches"),
        ("coreml", "all", "spec_output_dtype"),
        ("coreml_int4", "all", "spec_compressed_weight_ops"),
        ("coreml_stateful", "all", "spec_state_shapes"),
        ("gguf_q8_0", "T128", "kl_mean"),
        ("coreml_fp32", "all", "replay_top1_disagreement"),
        ("torchscript_decoder", "all", "decode_rms_dp"),
        ("gguf_q4_0", "T256", "quality_kl_mean"),
        ("coreml_int8", "all", "replay_quality_top1_disagreement"),
        ("coreml_int4", "T64", "kl_mean_floor_ratio"),
        ("torchscript", "all", "sha256_matches_contract"),
        ("torchscript", "T64", "output_dtype"),
        ("gguf", "all", "near_tie_margin"),  # information, but it must be written
    ],
)
def test_a_check_that_stopped_running_is_named(contract, backend, where, check):
    report = _complete_report(contract)
    del report["results"][backend][where][check]
    assert gates_lib.missing_checks(report, contract) == [f"{backend} {where}: no {check}"]


def test_a_gate_recorded_as_a_note_is_missing(contract):
    """A gate that lost its verdict (recorded as information) no longer gates: it is missing."""
    report = _complete_report(contract)
    report["results"]["gguf"]["all"]["tokenizer_mismatches"] = {"value": 0}
    assert gates_lib.missing_checks(report, contract) == ["gguf all: no tokenizer_mismatches"]


def test_an_artifact_not_verified_at_all_is_named(contract):
    report = _complete_report(contract)
    del report["results"]["gguf_q4_0"]
    assert gates_lib.missing_checks(report, contract) == ["gguf_q4_0: not verified at all"]


def test_a_failure_in_place_of_the_checks_it_kept_from_running_covers_them(contract):
    report = _complete_report(contract)
    results = report["results"]
    results["coreml"]["T64"] = {"runs": {"error": "InputError: length 64", "ok": False}}
    replay = results["gguf_q8_0"]["all"]
    for name in [n for n in replay if n.startswith("replay_") or n == "behaviour_mismatches"]:
        del replay[name]
    replay["behaviour"] = {"error": "ValueError: boom", "ok": False}
    decode = results["torchscript_decoder"]["all"]
    for name in [n for n in decode if n.startswith("decode_")]:
        del decode[name]
    decode["decode"] = {"error": "RuntimeError: cache", "ok": False}
    shape = results["gguf"]["T128"]
    results["gguf"]["T128"] = {"output_shape": {**shape["output_shape"], "ok": False}}
    assert gates_lib.missing_checks(report, contract) == []
    # ... but not a failure of another kind: a failed tokenizer check does not stand for the replay.
    other = copy.deepcopy(report)
    del other["results"]["gguf"]["all"]["replay_kl_mean"]
    other["results"]["gguf"]["all"]["tokenizer_mismatches"]["ok"] = False
    assert gates_lib.missing_checks(other, contract) == ["gguf all: no replay_kl_mean"]


def test_the_lists_agree_with_the_verifier():
    """The completeness table is written apart from verify/verification.py, on purpose; where both
    name backends, they must name the same ones."""
    from verify import verification
    from verify.behaviour import greedy_agreement

    assert set(gates_lib.SAMPLED_BACKENDS) == set(verification.SAMPLED_BACKENDS)
    assert set(gates_lib.AGREEMENT_BACKENDS) == set(greedy_agreement.MEASURED)
    assert set(gates_lib.COMPRESSED_BACKENDS) == set(verification.COREML_COMPRESSED)
    dtype_noted = set(gates_lib.DEFAULT_BACKENDS) - set(gates_lib.DTYPE_GATED_BACKENDS)
    assert dtype_noted == set(verification.OUTPUT_DTYPE_IMPLIED_BY)


def test_a_bound_is_never_rounded_below_floor_times_factor():
    # Two top-1 flips in 256 positions against a floor of one in 256, x 2: exactly at the bound.
    entry = gates_lib._bound(1 / 256, 2.0)
    assert entry["bound"] >= 2 / 256
    for floor in (1.05e-12, 0.0123456, 3.3333333e-5, 0.999999):
        assert gates_lib._bound(floor, 4.0)["bound"] >= floor * 4.0


def test_a_floor_of_whole_positions_keeps_its_bound_above_the_positions():
    # measure_floors writes floors through round4_up: one flip in 256 stays at or above 1/256.
    floor = gates_lib.round4_up(1 / 256)
    assert floor >= 1 / 256 and gates_lib._bound(floor, 2.0)["bound"] >= 2 / 256
