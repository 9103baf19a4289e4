"""Running this repository's Python modules in a child process that imports them as the parent does.

Bazel's launcher puts the repository and the pip packages on sys.path, not on PYTHONPATH, so a child
`python -m module` would find neither. child_env() hands the parent's sys.path down.
"""

import os
import subprocess
import sys
from collections.abc import Sequence


def child_env(**extra: str) -> dict[str, str]:
    """os.environ with PYTHONPATH set to this process's sys.path, and `extra` on top."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **extra)


def run_module(
    module: str, args: Sequence[str], timeout: float | None = 300, **extra_env: str
) -> subprocess.CompletedProcess:
    """`python -m module *args` under child_env(**extra_env), its stdout and stderr captured as text.
    A failed exit status is returned, not raised: callers check it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=child_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
