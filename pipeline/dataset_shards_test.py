"""The pipeline's sharded dataset equals the unsharded one byte for byte, file by file.

Usage (from pipeline/BUILD.bazel): dataset_shards_test.py SHARDED UNSHARDED [SHARDED UNSHARDED ...]
The sharded kd.jsonl is the merge of make_toy_kd's shard actions; the unsharded one comes from a
single make_toy_kd action with the same flags, as the pipeline made it before sharding.
"""

import hashlib
import sys


def digest(path: str) -> tuple[str, int]:
    with open(path, "rb") as handle:
        data = handle.read()
    return hashlib.sha256(data).hexdigest(), len(data)


def main(paths: list[str]) -> int:
    if not paths or len(paths) % 2:
        print("usage: dataset_shards_test.py SHARDED UNSHARDED [SHARDED UNSHARDED ...]")
        return 1
    failures = 0
    for sharded, unsharded in zip(paths[::2], paths[1::2], strict=True):
        (a, size_a), (b, size_b) = digest(sharded), digest(unsharded)
        same = a == b and size_a > 0
        failures += not same
        print(
            f"{'same' if same else 'DIFFERENT'}: {sharded} ({size_a} bytes, {a[:16]}) vs {unsharded} "
            f"({size_b} bytes, {b[:16]})"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
