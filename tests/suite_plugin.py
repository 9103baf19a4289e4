"""pytest plugin for the cross-stage suites: Bazel test sharding and the per-binary case count.

Loaded with `-p tests.suite_plugin` (see tests/BUILD.bazel). Sharding is tests/shard_plugin.py's
(round robin keeps the binaries, and so the cost, spread evenly); this adds the case count.
"""

from tests import harness
from tests.shard_plugin import pytest_collection_modifyitems, shard  # noqa: F401 (a pytest hook)


def pytest_terminal_summary(terminalreporter) -> None:
    index, total = shard()
    where = f" (shard {index + 1} of {total})" if total > 1 else ""
    terminalreporter.write_sep("=", f"cases tried per binary{where}")
    for binary in harness.BINARIES:
        terminalreporter.write_line(f"{binary:<18} {harness.CASES_TRIED[binary]:>4}")
    terminalreporter.write_line(f"{'total':<18} {sum(harness.CASES_TRIED.values()):>4}")
    if harness.NOTES:
        # What each case saw: the one line a user gets for each bad input, and what the fault tests hit.
        terminalreporter.write_sep("-", "what the cases saw")
        for note in harness.NOTES:
            terminalreporter.write_line(note)
