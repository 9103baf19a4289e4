"""Fails when a chain's student did not pass its teacher-agreement gate
(verify/behaviour/teacher_agreement.py).

Usage (student_chain, pipeline/defs.bzl, as `<chain>_teacher_agreement_test`):
    teacher_agreement_gate_test.py TEACHER_AGREEMENT_JSON

The result is built even when the gate fails (the stage runs with --noexit_nonzero_on_failed_gate),
so it can be read; this test is where the failure shows. A result that is not the gate's, or whose
bound is not its factor times the baseline it states, fails too: a verdict cannot pass by omission.
"""

import json
import math
import sys

FORMAT = "m8b-teacher-agreement"  # = verify.behaviour.teacher_agreement.FORMAT


def problems(result: dict) -> list[str]:
    if result.get("format") != FORMAT:
        return [f"format is {result.get('format')!r}, not {FORMAT!r}: not a teacher-agreement result"]
    found = []
    if not (result.get("questions", 0) > 0 and result.get("positions", 0) > 0):
        found.append(f"compared on {result.get('questions')} prompts, {result.get('positions')} positions")
    factor, baseline = result["factor"], result["baseline"]["mean_kl"]
    if not math.isclose(result["bound"], factor * baseline, rel_tol=1e-3):
        found.append(f"bound {result['bound']} is not factor {factor} x baseline {baseline}")
    if not result["ok"]:
        found.append(
            f"mean KL(teacher || student) {result['student']['mean_kl']} > {factor} x the kind-only "
            f"baseline's {baseline} = {result['bound']} (same top {result['student']['same_top_rate']:.2%})"
        )
    return found


def main(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        result = json.load(handle)
    student = result.get("student", {})
    print(
        f"teacher agreement: mean KL {student.get('mean_kl')} nats, bound {result.get('bound')} "
        f"(factor {result.get('factor')} x kind-only baseline {result.get('baseline', {}).get('mean_kl')}), "
        f"same top {student.get('same_top_rate')}, over {result.get('positions')} reply positions"
    )
    found = problems(result)
    for line in found:
        print(f"FAILED: {line}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
