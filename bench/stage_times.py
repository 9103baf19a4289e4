"""Median wall time of the conversion and verification stages, run on the pipeline's artifacts.

    ./bazelw run //bench:stage_times -- --repeats=3

Each stage binary runs as a fresh process, as in the pipeline (bench/stages.py); the ratio is to
the start-up baseline measured in the same run.
"""

from absl import flags

from bench import stages, table
from common import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 3, "Runs per stage; the median is reported.")
flags.DEFINE_string("artifacts", "pipeline", "Runfiles directory holding the pipeline artifacts.")
flags.DEFINE_multi_string("tool", [], "name=path of a stage binary (set by the BUILD file).")


def main(argv: list[str]) -> None:
    del argv
    tools = dict(spec.split("=", 1) for spec in FLAGS.tool)
    print(table.format_table(stages.measure(tools, FLAGS.artifacts, FLAGS.repeats)))


if __name__ == "__main__":
    cli.run(main)
