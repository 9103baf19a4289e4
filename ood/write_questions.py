"""Writes ood/questions.tsv from its two sources (ood/questions.py, build).

bazel run //ood:write_questions -- --out=$PWD/ood/questions.tsv
"""

from absl import flags

from common import atomic, cli
from ood import questions

flags.DEFINE_string("out", None, "Output: the question set TSV (ood/questions.tsv in the repository).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    cli.require_flag(FLAGS.out, "out")
    cli.check_output_path(FLAGS.out, "out")
    atomic.write_bytes(FLAGS.out, questions.to_tsv(questions.build()).encode("utf-8"))


if __name__ == "__main__":
    cli.run(main)
