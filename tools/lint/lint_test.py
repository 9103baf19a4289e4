"""ruff lint and format check over the Python files named on the command line.

Run as //:lint_test, from the runfiles root, with the locked ruff and the workspace's pyproject.toml.
"""

import subprocess
import sys


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], capture_output=True, text=True)


def python_files() -> list[str]:
    files = sorted(path for path in sys.argv[1:] if path.endswith(".py"))
    assert files, "no Python files were handed to the lint test"
    return files


def main() -> int:
    files = python_files()
    config = ["--config", "pyproject.toml", "--no-cache"]
    checks = [ruff("check", *config, *files), ruff("format", "--check", "--diff", *config, *files)]
    failed = [c for c in checks if c.returncode != 0]
    for check in checks:
        sys.stdout.write(check.stdout + check.stderr)
    print(f"ruff: {len(files)} files, {'FAILED' if failed else 'clean'}")
    if failed:
        print("fix with: ruff check --fix . && ruff format .  (from the workspace root)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
