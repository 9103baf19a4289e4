"""Fails when any verification gate failed, or when anything the contract names was not verified.

Usage (from pipeline/BUILD.bazel): gates_test.py REPORT_JSON CONTRACT_JSON

Every artifact in the contract's gates must have been checked at every contract length, with every
floor-derived metric and a behaviour replay, and a KV-cache artifact also by its multi-step decode
parity: a report that left out an artifact (say, verification run without --gguf), a length or the
decode parity cannot pass by omission.
"""

import json
import sys

METRICS = ("max_abs_diff", "rms_abs_diff", "kl_mean", "kl_max", "top1_disagreement", "rms_dp")
# Artifacts with a KV cache: their multi-step decode parity (verify/decode_parity.py) must have run.
KV_CACHE_ARTIFACTS = ("torchscript_decoder", "coreml_stateful")


def failed_checks(report: dict) -> list[str]:
    failures = []
    for artifact, scopes in sorted(report["results"].items()):
        for scope, checks in sorted(scopes.items()):
            for name, check in sorted(checks.items()):
                if check.get("ok") is False:
                    detail = check.get("error") or f"{check['value']} not {check['op']} {check['bound']}"
                    failures.append(f"{artifact} {scope} {name}: {detail}")
    return failures


def unverified(report: dict, contract: dict) -> list[str]:
    """What the contract says must be verified and the report does not show as checked."""
    missing = []
    results = report["results"]
    for artifact in sorted(contract["gates"]["backends"]):
        scopes = results.get(artifact)
        if scopes is None:
            missing.append(f"{artifact}: not verified at all")
            continue
        for length in contract["lengths"]:
            checks = scopes.get(f"T{length}", {})
            absent = [m for m in ("output_shape", *METRICS) if "ok" not in checks.get(m, {})]
            if absent and "runs" not in checks:
                missing.append(f"{artifact} T{length}: no {', '.join(absent)}")
        replay = scopes.get("all", {})
        absent = [
            m
            for m in ("behaviour_mismatches", *(f"replay_{m}" for m in METRICS))
            if "ok" not in replay.get(m, {})
        ]
        if absent and "behaviour" not in replay:
            missing.append(f"{artifact} all: no {', '.join(absent)}")
        if artifact in KV_CACHE_ARTIFACTS:
            names = ("decode_token_mismatches", *(f"decode_{m}" for m in METRICS))
            absent = [m for m in names if "ok" not in replay.get(m, {})]
            if absent and "decode" not in replay:
                missing.append(f"{artifact} all: no {', '.join(absent)}")
    return missing


def main(report_path: str, contract_path: str) -> int:
    with open(report_path, encoding="utf-8") as handle:
        report = json.load(handle)
    with open(contract_path, encoding="utf-8") as handle:
        contract = json.load(handle)
    failures = failed_checks(report)
    missing = unverified(report, contract)
    gated = sum(1 for s in report["results"].values() for c in s.values() for x in c.values() if "ok" in x)
    print(f"{report_path}: {gated} gated checks over {sorted(report['results'])}, {len(failures)} failed")
    for line in failures:
        print("FAILED", line)
    for line in missing:
        print("NOT VERIFIED", line)
    if report["gates_ok"] != (not failures) or not gated:
        print("report is inconsistent: gates_ok does not match its checks")
        return 1
    return 0 if report["gates_ok"] and not missing else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
