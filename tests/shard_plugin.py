"""pytest plugin: Bazel test sharding for a pytest target with shard_count (`-p tests.shard_plugin`).

tools/pytest's main does not shard, so a target with shard_count would run every case in every
shard; here each shard keeps its share of the collected cases, in collection order: round robin,
or balanced by each case's `shard_weight` mark where a suite gives them.
"""

import os

import pytest


def shard() -> tuple[int, int]:
    """(this shard's index, the number of shards); (0, 1) when the target is not sharded."""
    return int(os.environ.get("TEST_SHARD_INDEX", "0")), int(os.environ.get("TEST_TOTAL_SHARDS", "1"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shard_weight(w): the case's relative cost, so that shards come out even (default 1)"
    )


def assign(weights: list[float], total: int) -> list[int]:
    """The shard of each case: the heaviest first, each to the lightest shard so far (the lowest
    index on a tie). With equal weights that is round robin in collection order."""
    loads = [0.0] * total
    shards = [0] * len(weights)
    for position in sorted(range(len(weights)), key=lambda p: -weights[p]):
        shards[position] = min(range(total), key=lambda s: loads[s])
        loads[shards[position]] += weights[position]
    return shards


def _weight(item) -> float:
    mark = item.get_closest_marker("shard_weight")
    return float(mark.args[0]) if mark else 1.0


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    status = os.environ.get("TEST_SHARD_STATUS_FILE")
    if status:  # tells Bazel that this runner understands sharding
        with open(status, "a", encoding="utf-8"):
            pass
    index, total = shard()
    if total <= 1:
        return
    shards = assign([_weight(item) for item in items], total)
    keep = [item for item, s in zip(items, shards, strict=True) if s == index]
    dropped = [item for item, s in zip(items, shards, strict=True) if s != index]
    config.hook.pytest_deselected(items=dropped)
    items[:] = keep
