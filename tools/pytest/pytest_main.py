"""Runs pytest on the test files given on the command line, from inside a Bazel py_test.

Bazel's environment tells us where to put the JUnit XML and temporary files; pytest's exit code
becomes the test's, so "no tests collected" (exit 5) fails the target instead of passing it.
"""

import os
import sys

import pytest


def main(argv: list[str]) -> int:
    args = ["-p", "no:cacheprovider", "-q", "--no-header", "-rs"]
    if "XML_OUTPUT_FILE" in os.environ:
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    if "TEST_TMPDIR" in os.environ:
        args.append("--basetemp=" + os.path.join(os.environ["TEST_TMPDIR"], "pytest"))
    return pytest.main(args + argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
