"""Fails when any verification gate in the pipeline's report.json failed; prints the failures.

Usage (from pipeline/BUILD.bazel): gates_test.py REPORT_JSON
"""

import json
import sys


def failed_checks(report: dict) -> list[str]:
    failures = []
    for artifact, scopes in sorted(report["results"].items()):
        for scope, checks in sorted(scopes.items()):
            for name, check in sorted(checks.items()):
                if check.get("ok") is False:
                    failures.append(
                        f"{artifact} {scope} {name}: {check['value']} not {check['op']} {check['bound']}"
                    )
    return failures


def main(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    failures = failed_checks(report)
    gated = sum(1 for s in report["results"].values() for c in s.values() for x in c.values() if "ok" in x)
    print(f"{path}: {gated} gated checks over {sorted(report['results'])}, {len(failures)} failed")
    for line in failures:
        print("FAILED", line)
    if report["gates_ok"] != (not failures) or not gated:
        print("report is inconsistent: gates_ok does not match its checks")
        return 1
    return 0 if report["gates_ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
