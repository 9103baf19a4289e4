"""Runs pytest on the test files given on the command line, from inside a Bazel py_test.

Bazel's environment tells us where to put the JUnit XML and temporary files; pytest's exit code
becomes the test's, so "no tests collected" (exit 5) fails the target instead of passing it.

A skipped test is not a passed test. Bazel reports a target whose tests were all skipped as
PASSED, so: under CI=true (CI must have every test's subject, e.g. Chromium) any skip fails the
target; elsewhere the target passes, and its log carries one line, "M8B-SKIPPED: <n> <reason>",
which .ci/run's summary counts as skipped.
"""

import os
import sys

import pytest

SKIP_MARKER = "M8B-SKIPPED:"


class _Skips:
    def __init__(self):
        self.reasons: list[str] = []

    def pytest_runtest_logreport(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.reasons.append(f"{report.nodeid}: {reason}")


def main(argv: list[str]) -> int:
    args = ["-p", "no:cacheprovider", "-q", "--no-header", "-rs"]
    if "XML_OUTPUT_FILE" in os.environ:
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    if "TEST_TMPDIR" in os.environ:
        args.append("--basetemp=" + os.path.join(os.environ["TEST_TMPDIR"], "pytest"))
    skips = _Skips()
    status = pytest.main(args + argv, plugins=[skips])
    if skips.reasons:
        print(f"{SKIP_MARKER} {len(skips.reasons)} {skips.reasons[0]}")
        if os.environ.get("CI") == "true":
            print(f"CI=true: {len(skips.reasons)} skipped test(s) fail this target; give CI the subject")
            return status or 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
