"""A test's subject from the environment: artifact paths that a BUILD file passes in variables.

A run without them (plain pytest outside Bazel) has no subject: it is skipped with a message naming
the variables and where they are set, and under CI=true it fails, since a skip there would read as
a pass.
"""

import os

import pytest


def require(names, where: str) -> dict[str, str]:
    """{name: value} of the environment variables `names`; skip (fail under CI=true) if any is unset.
    `where` ends the message: what the variables name, or what sets them."""
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        message = f"set {', '.join(missing)} {where}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return {name: os.environ[name] for name in names}
