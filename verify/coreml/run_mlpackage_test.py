"""run_mlpackage as a user runs it: a subprocess, a short stateful package, state carried in files."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest

from common import child_python
from conversion import coreml_stateful
from verify import fixtures
from verify.coreml import coreml_stateful_steps, mil_executor

K, V = coreml_stateful.STATE_NAMES


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return fixtures.write_short_stateful_package(str(tmp_path_factory.mktemp("run")))


def run(*args):
    return child_python.run_module("verify.coreml.run_mlpackage", args)


def feeds(path, ids, position):
    np.savez(
        path,
        **{
            coreml_stateful.INPUT_NAME: np.asarray([ids], np.int32),
            coreml_stateful.POSITION_NAME: np.asarray([position], np.int32),
        },
    )
    return path


def test_a_sequence_continues_across_runs_through_the_state_files(package, tmp_path):
    prompt, token = list(range(3, 19)), 42
    first = run(
        f"--mlpackage={package}",
        f"--inputs={feeds(tmp_path / 'prefill.npz', prompt, 0)}",
        f"--out={tmp_path / 'prefill_out.npz'}",
        f"--state_out={tmp_path / 'state1.npz'}",
    )
    assert first.returncode == 0, first.stderr[-2000:]
    second = run(
        f"--mlpackage={package}",
        f"--inputs={feeds(tmp_path / 'decode.npz', [token], len(prompt))}",
        f"--out={tmp_path / 'decode_out.npz'}",
        f"--state_in={tmp_path / 'state1.npz'}",
        f"--state_out={tmp_path / 'state2.npz'}",
    )
    assert second.returncode == 0, second.stderr[-2000:]
    # The same two calls in one process, state held in memory: the same logits, bit for bit.
    steps = coreml_stateful_steps.StatefulSteps(mil_executor.load_mlpackage(package))
    expected_prefill = steps.prefill_all(prompt)
    expected_decode = steps.decode(token)
    logits = coreml_stateful.OUTPUT_NAME
    np.testing.assert_array_equal(np.load(tmp_path / "prefill_out.npz")[logits][0], expected_prefill)
    np.testing.assert_array_equal(np.load(tmp_path / "decode_out.npz")[logits][0, -1], expected_decode)
    with np.load(tmp_path / "state2.npz") as state:
        np.testing.assert_array_equal(state[K], steps.state.values[K])


def _state(tmp_path, program, **override):
    arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in program.state_specs.items()}
    arrays.update(override)
    arrays = {name: value for name, value in arrays.items() if value is not None}
    path = str(tmp_path / "state_in.npz")
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "override, message",
    [
        ({K: np.zeros((2, 1, 2, 64, 32), np.float16)}, f"state '{K}' is float16 (2, 1, 2, 64, 32), but"),
        ({V: np.zeros((2, 1, 2, 32, 32), np.float32)}, f"state '{V}' is float32 (2, 1, 2, 32, 32), but"),
        ({V: None}, f"no array for the state(s) ['{V}']"),
        ({"cache": np.zeros(3, np.float16)}, "'cache' is not a state of"),
    ],
    ids=["wrong shape", "wrong dtype", "missing state", "unknown state"],
)
def test_a_bad_state_exits_2_naming_it_and_writes_nothing(package, tmp_path, override, message):
    program = mil_executor.load_mlpackage(package)
    out = tmp_path / "out"
    out.mkdir()
    result = run(
        f"--mlpackage={package}",
        f"--inputs={feeds(tmp_path / 'decode.npz', [5], 16)}",
        f"--out={out / 'logits.npz'}",
        f"--state_in={_state(tmp_path, program, **override)}",
        f"--state_out={out / 'state.npz'}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --state_in: ") and message in last, last
    assert "Traceback" not in result.stderr
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda p, d: [f"--mlpackage={p}", f"--out={d / 'o.npz'}"], "--inputs is required"),
        (
            lambda p, d: [f"--mlpackage={d}/absent", f"--inputs={d}/x", f"--out={d / 'o.npz'}"],
            "is not a directory",
        ),
        (
            lambda p, d: [
                f"--mlpackage={p}",
                f"--inputs={feeds(d / 'f.npz', [1, 2, 3], 0)}",
                f"--out={d / 'o.npz'}",
            ],
            "input 'input_ids' is int32 (1, 3)",
        ),
        (
            lambda p, d: [
                f"--mlpackage={p}",
                f"--inputs={feeds(d / 'f.npz', [1], 0)}",
                f"--out={d / 'o.npz'}",
                f"--state_out={d / 'o.npz'}",
            ],
            "same file",
        ),
    ],
    ids=["no inputs", "no package", "length not enumerated", "one file twice"],
)
def test_bad_flags_and_inputs_exit_2(package, tmp_path, args, message):
    result = run(*args(package, tmp_path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "o.npz")
