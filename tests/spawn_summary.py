"""Counts the spawns in a Bazel execution log (--execution_log_json_file) and checks them.

    spawn_summary.py LOG [--all_remote_hits] [--only_ran M1,M2] [--must_run M1] [--must_not_run M1,M2]

Prints one line per mnemonic (spawns, remote cache hits, executed) and exits 1 when a check fails:
--all_remote_hits  every spawn was served by the remote cache (nothing executed);
--only_ran         spawns that executed all have one of these mnemonics;
--must_run         at least one spawn with each of these mnemonics executed;
--must_not_run     no spawn with these mnemonics executed (and so they were cache hits or skipped).
Bazel 4 writes the log as a stream of JSON objects, not one array.
"""

import argparse
import collections
import json
import pathlib
import sys


def read_spawns(path: pathlib.Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    spawns, position = [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return spawns
        spawn, position = decoder.raw_decode(text, position)
        spawns.append(spawn)


def summarise(spawns: list[dict]) -> dict[str, collections.Counter]:
    by_mnemonic: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for spawn in spawns:
        counts = by_mnemonic[spawn.get("mnemonic", "?")]
        counts["spawns"] += 1
        counts["hits" if spawn.get("remoteCacheHit") else "executed"] += 1
    return by_mnemonic


def names(value: str) -> set[str]:
    return {name for name in value.split(",") if name}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=pathlib.Path)
    parser.add_argument("--all_remote_hits", action="store_true")
    parser.add_argument("--only_ran", type=names)
    parser.add_argument("--must_run", type=names, default=set())
    parser.add_argument("--must_not_run", type=names, default=set())
    args = parser.parse_args()

    by_mnemonic = summarise(read_spawns(args.log))
    total = sum((counts for counts in by_mnemonic.values()), collections.Counter())
    print(f"  {'mnemonic':<24}{'spawns':>8}{'remote hits':>13}{'executed':>10}")
    for mnemonic, counts in sorted(by_mnemonic.items()):
        print(f"  {mnemonic:<24}{counts['spawns']:>8}{counts['hits']:>13}{counts['executed']:>10}")
    print(f"  {'total':<24}{total['spawns']:>8}{total['hits']:>13}{total['executed']:>10}")

    ran = {mnemonic for mnemonic, counts in by_mnemonic.items() if counts["executed"]}
    problems = []
    if args.all_remote_hits:
        if total["spawns"] == 0:
            problems.append("no spawns at all: nothing was looked up in the remote cache")
        elif total["executed"]:
            problems.append(f"{total['executed']} spawn(s) executed instead of coming from the cache")
        else:
            print(f"  remote cache hits: {total['hits']} of {total['spawns']} (100%)")
    if args.only_ran is not None and ran - args.only_ran:
        problems.append(f"unexpected actions ran: {', '.join(sorted(ran - args.only_ran))}")
    if args.must_run - ran:
        problems.append(f"expected actions did not run: {', '.join(sorted(args.must_run - ran))}")
    if args.must_not_run & ran:
        problems.append(f"actions that should be cached ran: {', '.join(sorted(args.must_not_run & ran))}")
    for problem in problems:
        print(f"  FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
