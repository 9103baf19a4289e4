"""The first stage of a chain whose dataset was made outside the graph: checks the file against its pin.

    check_sha256 --in=captures/my.kd.jsonl --sha256=<64 hex digits> --out=<chain>.kd.jsonl
                 [--pinned_by="dataset_sha256 of student_chain(name = ...) in pipeline/BUILD.bazel"]

A capture from a server (`bazel run //data:make_toy_kd -- --teacher=openai:URL ...`) cannot be
remade inside a build action, so the chain names the file and its sha256 (student_chain's
`dataset` and `dataset_sha256`, pipeline/defs.bzl). This copies the file to --out only when its
sha256 is the pinned one, and every later stage reads that copy: a capture changed after it was
pinned stops the chain here, with both digests, instead of training on data nobody reviewed.
A mismatch, a missing file or a malformed pin: one line `error: ...`, exit status 2, no --out.
"""

import hashlib

from absl import flags

from common import atomic, cli
from common.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_string("in", None, "The pinned file (required).")
flags.DEFINE_string("sha256", None, "Its expected sha256, 64 lower-case hex digits (required).")
flags.DEFINE_string("out", None, "Where the checked copy goes (required).")
flags.DEFINE_string(
    "pinned_by", "the pin", "Where the pin is written, for the message (set by student_chain)."
)

_HEX = set("0123456789abcdef")


def _check_digest_form(expected: str, path: str) -> None:
    if len(expected) != 64 or not set(expected) <= _HEX:
        raise InputError(
            f"--sha256: {expected!r} is not a sha256; give 64 lower-case hex digits (`sha256sum {path}`)"
        )


def copy_if_pinned(path: str, expected: str, out: str, pinned_by: str) -> None:
    """Copies `path` to `out` when its sha256 is `expected`; InputError saying what to do otherwise,
    with nothing at `out`. The digest is taken of the very bytes copied, in one read."""
    _check_digest_form(expected, path)
    try:
        source = open(path, "rb")  # closed by the with below, after the output is complete
    except FileNotFoundError:
        raise InputError(f"--in: {path}: file not found; it is the file {pinned_by} pins") from None
    except IsADirectoryError:
        raise InputError(f"--in: {path}: is a directory; pin one file") from None
    except OSError as error:
        raise InputError(f"--in: {path}: cannot read: {error.strerror}") from None
    digest = hashlib.sha256()
    with source, atomic.output_file(out) as handle:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
            handle.write(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise InputError(
                f"--in: {path}: sha256 is {actual}, but {pinned_by} expects {expected}; the file is not "
                "the one that was pinned: restore the captured file, or if you captured it anew on purpose, "
                f"check it and put its digest (`sha256sum {path}`) in the pin"
            )


def main(argv: list[str]) -> None:
    del argv
    for name in ("in", "sha256", "out"):
        cli.require_flag(FLAGS[name].value, name)
    cli.check_output_path(FLAGS.out, "out")
    copy_if_pinned(FLAGS["in"].value, FLAGS.sha256, FLAGS.out, FLAGS.pinned_by)


if __name__ == "__main__":
    cli.run(main)
