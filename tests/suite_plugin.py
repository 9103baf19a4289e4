"""pytest plugin for the cross-stage suites: Bazel test sharding and the per-binary case count.

Loaded with `-p tests.suite_plugin` (see tests/BUILD.bazel). tools/pytest's main does not shard,
so a target with shard_count would run every case in every shard; here each shard keeps every
N-th case (round robin keeps the binaries, and so the cost, spread evenly).
"""

import os

import pytest

from tests import harness


def _shard() -> tuple[int, int]:
    return int(os.environ.get("TEST_SHARD_INDEX", "0")), int(os.environ.get("TEST_TOTAL_SHARDS", "1"))


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    status = os.environ.get("TEST_SHARD_STATUS_FILE")
    if status:  # tells Bazel that this runner understands sharding
        with open(status, "a", encoding="utf-8"):
            pass
    index, total = _shard()
    if total <= 1:
        return
    keep = [item for position, item in enumerate(items) if position % total == index]
    dropped = [item for position, item in enumerate(items) if position % total != index]
    config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def pytest_terminal_summary(terminalreporter) -> None:
    index, total = _shard()
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
