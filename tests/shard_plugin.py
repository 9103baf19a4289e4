"""pytest plugin: Bazel test sharding for a pytest target with shard_count (`-p tests.shard_plugin`).

tools/pytest's main does not shard, so a target with shard_count would run every case in every
shard; here each shard keeps every N-th collected case, in collection order.
"""

import os

import pytest


def shard() -> tuple[int, int]:
    """(this shard's index, the number of shards); (0, 1) when the target is not sharded."""
    return int(os.environ.get("TEST_SHARD_INDEX", "0")), int(os.environ.get("TEST_TOTAL_SHARDS", "1"))


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    status = os.environ.get("TEST_SHARD_STATUS_FILE")
    if status:  # tells Bazel that this runner understands sharding
        with open(status, "a", encoding="utf-8"):
            pass
    index, total = shard()
    if total <= 1:
        return
    keep = [item for position, item in enumerate(items) if position % total == index]
    dropped = [item for position, item in enumerate(items) if position % total != index]
    config.hook.pytest_deselected(items=dropped)
    items[:] = keep
