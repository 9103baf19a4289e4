"""Fails when any verification gate failed, or when anything the contract names was not verified.

Usage (from pipeline/BUILD.bazel): gates_test.py REPORT_JSON CONTRACT_JSON

Every check the contract implies for every artifact it names (conversion/gates.py, missing_checks:
every length's metrics, the replay, the decode parity of a KV-cache artifact, the quality bounds of
a lossy one, sampled replies, the tokenizer, the spec and exact weights) must be in the report:
a report that left out an artifact (say, verification run without --gguf), a length or a check that
stopped running cannot pass by omission. pipeline/e2e.py applies the same function.
"""

import json
import sys

from conversion import gates as gates_lib


def failed_checks(report: dict) -> list[str]:
    failures = []
    for artifact, scopes in sorted(report["results"].items()):
        for scope, checks in sorted(scopes.items()):
            for name, check in sorted(checks.items()):
                if check.get("ok") is False:
                    detail = check.get("error") or f"{check['value']} not {check['op']} {check['bound']}"
                    failures.append(f"{artifact} {scope} {name}: {detail}")
    return failures


def main(report_path: str, contract_path: str) -> int:
    with open(report_path, encoding="utf-8") as handle:
        report = json.load(handle)
    with open(contract_path, encoding="utf-8") as handle:
        contract = json.load(handle)
    failures = failed_checks(report)
    missing = gates_lib.missing_checks(report, contract)
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
