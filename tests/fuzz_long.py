"""Fuzzes the dataset and contract readers with many more examples than the test suite.

    ./bazelw run //tests:fuzz_long -- --examples=20000

A benchmark-style program, not a test: it prints the examples run and the time taken per reader,
and exits 1 (with hypothesis's minimal failing input) if a reader raised anything but InputError.
"""

import sys
import time

from absl import app, flags

from tests import fuzz_readers

flags.DEFINE_integer("examples", 5000, "Hypothesis examples per reader.")
flags.DEFINE_enum("reader", "both", ["both", "dataset", "contract"], "Which reader to fuzz.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    properties = {"dataset": fuzz_readers.dataset_property, "contract": fuzz_readers.contract_property}
    failed = False
    for name, make in properties.items():
        if FLAGS.reader not in ("both", name):
            continue
        started = time.monotonic()
        try:
            make(FLAGS.examples)()
            verdict = "ok"
        except Exception as error:  # hypothesis re-raises the minimal failing example's error
            verdict = f"FAILED: {type(error).__name__}: {error}"
            failed = True
        print(
            f"{name}: {FLAGS.examples} examples in {time.monotonic() - started:.1f} s: {verdict}", flush=True
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    app.run(main)
