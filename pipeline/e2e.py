"""`bazel run //pipeline:e2e`: builds or reuses the artifact chain, prints the verdict, fills dist/.

Bazel builds every stage before this runs (they are its data), so a warm cache makes it a few
seconds. It prints one row per artifact (stage, file, size, sha256 prefix, gate), copies the
artifacts to dist/ in the workspace (or --out_dir), names the HTML report (report.html), and exits
1 when a gate failed, after printing the failed checks (the full check table is in report.json and
report.html, not on the terminal). gates_ok also needs every check the contract implies to be in
the report (conversion/gates.py, missing_checks, as pipeline/gates_test.py applies it; the contract
is the artifact whose sha256 the report names): what is missing is printed. An artifact whose gate
is "self" is a gate's own result (a JSON file with "ok", such as the teacher-agreement gate's): its
verdict is printed under the table and counts toward gates_ok.
"""

import json
import os
import shutil

from absl import flags

from common import atomic, cli, digest
from common.errors import InputError
from conversion import gates as gates_lib

FLAGS = flags.FLAGS
# Failed checks printed at most when a gate fails; every check is in report.json and report.html.
FAILED_LINES = 40
flags.DEFINE_multi_string("artifact", [], "stage=gate=path of one artifact (set by the BUILD file).")
flags.DEFINE_string("report", None, "report.json from //verify:verify_contracts (set by the BUILD file).")
flags.DEFINE_string(
    "out_dir", None, "Where to copy the artifacts. Default: dist/ in the workspace that ran `bazel run`."
)
flags.DEFINE_string(
    "dist_subdir", "", "A named configuration's directory under dist/ (set by the BUILD file: e2e_<name>)."
)


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def parse_artifact(spec: str) -> tuple[str, str, str]:
    parts = spec.split("=", 2)
    if len(parts) != 3:
        raise InputError(f"--artifact={spec}: expected stage=gate=path")
    return parts[0], parts[1], parts[2]


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def failed_checks(results: dict) -> list[str]:
    """One line per failed check in report.json's "results": artifact, scope, check, value, bound."""
    lines = []
    for artifact, scopes in results.items():
        for scope, checks in scopes.items():
            for name, entry in checks.items():
                if entry.get("ok") is not False:
                    continue
                if "error" in entry:
                    measured = "error: " + str(entry["error"])
                else:
                    value, bound = _value(entry.get("value")), _value(entry.get("bound"))
                    measured = f"{value}, bound {entry.get('op')} {bound}"
                    if "floor" in entry:
                        measured += f" (floor {_value(entry['floor'])})"
                lines.append(f"FAIL {artifact} {scope} {name}: {measured}")
    return lines


def print_failures(results: dict) -> None:
    """The failed checks, at most FAILED_LINES of them: the full table is in report.json and report.html."""
    lines = failed_checks(results)
    print(f"\nfailed checks ({len(lines)}):")
    print("\n".join(lines[:FAILED_LINES]))
    if len(lines) > FAILED_LINES:
        print(f"... and {len(lines) - FAILED_LINES} more in report.json and report.html")


def own_verdict(path: str) -> tuple[bool, str]:
    """(ok, one line) of a gate that writes its own result: the file's "ok", and its rule and
    figures where it states them (verify/behaviour/teacher_agreement.py's student, bound and baseline)."""
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        raise InputError(f"{path}: a gate's result needs a boolean 'ok'; rebuild it")
    line = f"{os.path.basename(path)}: {'PASS' if doc['ok'] else 'FAIL'}"
    student = doc.get("student")
    if isinstance(student, dict) and "mean_kl" in student and "bound" in doc:
        line += f" (mean KL {_value(student['mean_kl'])}, bound <= {_value(doc['bound'])}"
        if "same_top_rate" in student:
            line += f", same top {student['same_top_rate']:.1%}"
        line += f" over {doc.get('positions', '?')} positions)"
    return doc["ok"], line


def default_out_dir() -> str:
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        raise InputError("--out_dir is required outside `bazel run` (BUILD_WORKSPACE_DIRECTORY is unset)")
    return (
        os.path.join(workspace, "dist", FLAGS.dist_subdir)
        if FLAGS.dist_subdir
        else os.path.join(workspace, "dist")
    )


def copy_artifact(path: str, out_dir: str) -> None:
    target = os.path.join(out_dir, os.path.basename(path))
    if os.path.isdir(path):
        with atomic.output_dir(target) as tmp:
            shutil.copytree(path, tmp, dirs_exist_ok=True)
    else:
        with open(path, "rb") as source, atomic.output_file(target) as handle:
            shutil.copyfileobj(source, handle)


def missing_checks(report: dict, described: dict[str, dict]) -> list[str]:
    """What the contract implies and the report lacks (gates_lib.missing_checks). The contract is
    the artifact (path -> digest.describe facts) whose sha256 the report names."""
    contract = next(
        (path for path, facts in described.items() if facts["sha256"] == report.get("contract_sha256")),
        None,
    )
    if contract is None:
        return [f"the contract the report names ({report.get('contract_sha256')}) is not among the artifacts"]
    with open(contract, encoding="utf-8") as handle:
        return gates_lib.missing_checks(report, json.load(handle))


def main(argv: list[str]) -> None:
    cli.require_flag(FLAGS.report, "report")
    with open(FLAGS.report, encoding="utf-8") as handle:
        report = json.load(handle)
    gates = {
        artifact: all(check.get("ok", True) for checks in scopes.values() for check in checks.values())
        for artifact, scopes in report["results"].items()
    }
    out_dir = FLAGS.out_dir or default_out_dir()
    os.makedirs(out_dir, exist_ok=True)
    rows = [("stage", "artifact", "size", "sha256", "gate")]
    described = {}
    own = []  # (ok, line) of each gate that writes its own result
    for spec in FLAGS.artifact:
        stage, gate, path = parse_artifact(spec)
        if gate == "self":
            own_ok, line = own_verdict(path)
            own.append((own_ok, line))
            verdict = "PASS" if own_ok else "FAIL"
        else:
            verdict = "-" if gate == "-" else ("PASS" if gates.get(gate) else "FAIL")
        facts = described[path] = digest.describe(path)
        rows.append((stage, os.path.basename(path), human_size(facts["size"]), facts["sha256"][:12], verdict))
        copy_artifact(path, out_dir)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    missing = missing_checks(report, described)
    ok = bool(report.get("gates_ok")) and not missing and all(own_ok for own_ok, _ in own)
    lengths = sorted(
        {
            int(scope[1:])
            for scopes in report["results"].values()
            for scope, checks in scopes.items()
            if "max_abs_diff" in checks
        }
    )
    if not report.get("gates_ok"):  # failed checks; what was not run at all follows
        print_failures(report["results"])
    for line in missing:
        print(f"NOT VERIFIED {line}")
    for _, line in own:
        print(line)
    print(f"\ngates_ok: {str(ok).lower()}   lengths checked: {lengths}   artifacts copied to {out_dir}")
    pages = [path for _, _, path in map(parse_artifact, FLAGS.artifact) if path.endswith(".html")]
    for page in pages:
        print(f"report for people: {os.path.join(out_dir, os.path.basename(page))} (opens offline)")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)
