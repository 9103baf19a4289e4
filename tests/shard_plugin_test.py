"""tests/shard_plugin.py's split: every case in exactly one shard, round robin without weights, and
balanced shards with them."""

from tests import shard_plugin


def test_equal_weights_split_round_robin():
    assert shard_plugin.assign([1.0] * 7, 3) == [0, 1, 2, 0, 1, 2, 0]


def test_weights_even_out_the_shards():
    weights = [6.0, 1.0, 1.0, 6.0, 4.0, 3.0, 3.0, 2.0]
    shards = shard_plugin.assign(weights, 4)
    loads = [sum(w for w, s in zip(weights, shards, strict=True) if s == index) for index in range(4)]
    assert sorted(loads) == [6.0, 6.0, 7.0, 7.0]
    # Round robin: 6 + 4 in shard 0, 6 + 2 in shard 3, 4 in each of the others.
    assert [sum(weights[i::4]) for i in range(4)] == [10.0, 4.0, 4.0, 8.0]


def test_one_shard_takes_everything():
    assert shard_plugin.assign([5.0, 1.0, 2.0], 1) == [0, 0, 0]
