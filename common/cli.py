"""Runs an absl main so that bad input is one clear line on stderr and exit status 2."""

import os
import sys
from collections.abc import Callable

from absl import app, flags

from common.errors import InputError

BAD_INPUT = 2


def _parse_flags(argv: list[str]) -> list[str]:
    # absl exits 1 on a bad flag; bad usage is bad input here, so exit 2 with its message.
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(BAD_INPUT)


def run(main: Callable[[list[str]], None], accept_args: bool = False) -> None:
    """app.run(main), turning InputError into `error: <message>` and exit status 2.

    Positional arguments are refused (a mistyped flag is a clear error) unless accept_args.
    """

    def guarded(argv: list[str]) -> None:
        if len(argv) > 1 and not accept_args:
            print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
            sys.exit(BAD_INPUT)
        try:
            main(argv)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(BAD_INPUT)

    app.run(guarded, flags_parser=_parse_flags)


def require_flag(value, flag: str) -> None:
    """Raises InputError naming --flag when a required flag is unset or empty."""
    if value is None or value == "":
        raise InputError(f"--{flag} is required")


def check_output_path(path: str, flag: str) -> None:
    """Fails before any work, not after it, when --flag's output file cannot be written there."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"--{flag}: output directory {parent} does not exist; create it first")
    if os.path.isdir(path):
        raise InputError(f"--{flag}: {path} is a directory; give a file path")
    if not os.access(parent, os.W_OK):  # a read-only filesystem stops root too
        raise InputError(f"--{flag}: output directory {parent} is not writable")


def check_distinct_outputs(paths: dict[str, str]) -> None:
    """InputError when two output flags ({flag: path}) name the same file: one would overwrite the other."""
    seen: dict[str, str] = {}
    for flag, path in paths.items():
        if not path:
            continue
        key = os.path.abspath(path)
        if key in seen:
            raise InputError(f"--{seen[key]} and --{flag} name the same file {path}; give two paths")
        seen[key] = flag
