"""A skipped test is not a passed test: pytest_main fails a skip under CI=true and marks it elsewhere."""

import os
import subprocess
import sys

import pytest

SKIPPING = "import pytest\n\n\ndef test_needs_a_browser():\n    pytest.skip('no chromium here')\n"
PASSING = "def test_fine():\n    assert True\n"
MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytest_main.py")


def run(tmp_path, source: str, ci: str | None):
    path = tmp_path / "case_test.py"
    path.write_text(source)
    env = {
        k: v for k, v in os.environ.items() if k not in ("CI", "XML_OUTPUT_FILE", "TEST_SHARD_STATUS_FILE")
    }
    env["TEST_TMPDIR"] = str(tmp_path)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, MAIN, str(path)], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("ci", [None, "false"])
def test_a_skip_outside_ci_passes_but_is_marked(tmp_path, ci):
    done = run(tmp_path, SKIPPING, ci)
    assert done.returncode == 0, done.stdout
    assert "M8B-SKIPPED: 1 " in done.stdout and "no chromium here" in done.stdout


def test_a_skip_under_ci_fails(tmp_path):
    done = run(tmp_path, SKIPPING, "true")
    assert done.returncode != 0, done.stdout
    assert "CI=true: 1 skipped test(s) fail this target" in done.stdout


def test_passing_tests_carry_no_marker(tmp_path):
    done = run(tmp_path, PASSING, "true")
    assert done.returncode == 0 and "M8B-SKIPPED" not in done.stdout
