"""Summarises a Bazel JSON profile (`--profile=FILE`): the figures BENCHMARKS.md quotes for a cold
`./bazelw test //...` that `bazel analyze-profile` does not print.

    python3.11 bench/profile_summary.py /tmp/cold.prof [ACTIONS]

Prints the phase start times, each repository fetch that took over a second, and the slot time of
all actions (their durations summed: on 2 cores, at most twice the execution phase), split into the
tests (every shard and run) and each pipeline mnemonic. With ACTIONS,
a substring such as `//pipeline:wide_`, also each action whose description contains it, with its
duration (e.g. the stage times of one pipeline configuration).
"""

import collections
import gzip
import json
import sys


def summary(events: list, actions: str | None = None) -> list[str]:
    start = min(event["ts"] for event in events if "ts" in event)

    def seconds(micros: float) -> str:
        return f"{micros / 1e6:8.1f} s"

    lines = []
    for event in events:
        if event.get("cat") == "build phase marker":
            lines.append(f"{seconds(event['ts'] - start)}  phase: {event['name']}")
        elif event.get("name", "").startswith("//external:") and event.get("dur", 0) > 1e6:
            lines.append(
                f"{seconds(event['ts'] - start)}  fetch {event['name'][11:]}: {seconds(event['dur'])}"
            )
        elif (
            actions
            and event.get("ph") == "X"
            and event.get("cat") == "action processing"
            and actions in event.get("name", "")
        ):
            lines.append(f"{seconds(event['ts'] - start)}  action {event['name']}: {seconds(event['dur'])}")
    kinds = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("cat") == "action processing":
            # "Testing //pkg:test (shard 1 of 4)" or "<Mnemonic> //pkg:target": the first word.
            name = event.get("name", "")
            kinds["tests" if name.startswith("Testing ") else name.split(" ", 1)[0]] += event.get("dur", 0)
    lines.append(f"action slot time: {seconds(sum(kinds.values())).strip()}")
    lines += [f"  {seconds(micros)}  {kind}" for kind, micros in kinds.most_common()]
    return lines


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(
            "usage: profile_summary.py PROFILE [ACTIONS]"
            " (PROFILE: a file written by bazel --profile=PROFILE)",
            file=sys.stderr,
        )
        return 2
    try:
        with open(argv[1], "rb") as handle:
            raw = handle.read()
        profile = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        events = profile["traceEvents"] if isinstance(profile, dict) else profile
        lines = summary(events, argv[2] if len(argv) == 3 else None)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(
            f"{argv[1]}: not a readable Bazel JSON profile ({error}); write one with --profile=FILE",
            file=sys.stderr,
        )
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
