"""The slowest tests of a `bazel test` run, from its log: one Markdown row each.

    bazel test //... 2>&1 | tee test.log
    python3.11 bench/slowest_tests.py test.log [--top=10] [--before=OLD.log]

Reads the summary lines Bazel prints with --test_summary=short ("//pkg:name  PASSED in 12.3s"), and
with --before puts each test's time in an earlier run's log beside it. Cached results ("(cached)")
carry no time of their own and are left out. Exit status 2 when a log holds no timed test.
"""

import re
import sys

_LINE = re.compile(r"^(//\S+)\s+(PASSED|FAILED|TIMEOUT|FLAKY) in (\d+(?:\.\d+)?)s")


def timings(path: str) -> dict[str, tuple[str, float]]:
    """{label: (status, seconds)} of every test the log timed."""
    found = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = _LINE.match(line)
            if match:
                found[match.group(1)] = (match.group(2), float(match.group(3)))
    if not found:
        print(f"error: {path}: no timed test summary line (bazel test --test_summary=short)", file=sys.stderr)
        sys.exit(2)
    return found


def main(argv: list[str]) -> None:
    top, before, paths = 10, None, []
    for arg in argv:
        if arg.startswith("--top="):
            top = int(arg.split("=", 1)[1])
        elif arg.startswith("--before="):
            before = timings(arg.split("=", 1)[1])
        else:
            paths.append(arg)
    if len(paths) != 1:
        print("usage: slowest_tests.py TEST_LOG [--top=N] [--before=OLD_LOG]", file=sys.stderr)
        sys.exit(2)
    now = timings(paths[0])
    rows = sorted(now.items(), key=lambda item: -item[1][1])[:top]
    header = "| test | seconds | status |" + (" before (s) |" if before else "")
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for label, (status, seconds) in rows:
        row = f"| `{label}` | {seconds:.1f} | {status} |"
        if before:
            row += f" {before[label][1]:.1f} |" if label in before else " (new) |"
        print(row)
    total = sum(seconds for _, seconds in now.values())
    print(f"\n{len(now)} timed tests, {total:.0f} s of test time in all")


if __name__ == "__main__":
    main(sys.argv[1:])
