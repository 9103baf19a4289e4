"""The pipeline tests' inputs: artifact paths that pipeline/BUILD.bazel passes in environment variables.

A test run without them (plain pytest outside Bazel) has no subject: it is skipped with a message
naming the variables, and under CI=true it fails, since a skip there would read as a pass.
"""

import os

import pytest


def require(names) -> dict[str, str]:
    """{name: value} of the environment variables `names`; skip (fail under CI=true) if any is unset."""
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        message = f"set {', '.join(missing)} to the pipeline's artifacts (see the module docstring)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return {name: os.environ[name] for name in names}
