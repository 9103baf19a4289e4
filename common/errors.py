"""The one exception type for bad input: binaries turn it into a message and exit status 2."""


class InputError(Exception):
    """Bad input from a user: a file, a flag or a record.

    The message names where (file, file:line, or --flag), what is wrong and, when it helps,
    what to do. Raise it from libraries; binaries report it through common.cli.run.
    """
