"""The stateful Core ML package: its interface, and prefill + decode through the MIL executor
against the eager Student's own KV-cache decoding at every step up to the cache's length."""

import os

# Before NumPy loads OpenBLAS: one BLAS thread (see verify/coreml/mil_executor_test.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

from common.errors import InputError
from conversion import coreml, coreml_stateful, mlpackage_testing
from training.decode import CachedSteps
from training.model import ModelConfig, Student, init_weights
from verify.coreml import coreml_spec, coreml_stateful_steps, mil_executor

LENGTHS = [64, 128, 256]
METADATA = {"short_description": "test", "version": "1"}
# Max |executor - fp32 eager| per step; the fp16 whole-sequence program measured 1.3e-3..1.5e-3
# (verify/coreml/mil_executor_test.py FP16_MAX_ABS, the same bound).
FP16_MAX_ABS = 5e-3


def student() -> Student:
    model = Student(ModelConfig())
    init_weights(model, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("stateful") / "magic-8-ball.stateful.mlpackage")
    coreml.save_mlpackage(coreml_stateful.convert(student(), LENGTHS, 128, METADATA), path)
    return path


def test_the_package_declares_its_states_inputs_outputs_and_target(package):
    expected = coreml_stateful.interface(ModelConfig(), LENGTHS)
    results = coreml_spec.check_stateful_spec(package, **expected)
    assert not coreml_spec.failures(results), coreml_spec.failures(results)
    spec, _ = coreml_spec.read_spec(package)
    user = spec.description.metadata.userDefined
    assert user["state_names"] == "k_cache,v_cache" and "slot i = position i" in user["state_layout"]
    assert user["step_lengths"] == "1,64,128,256" and user["precision"] == "fp16"
    program = mil_executor.load_mlpackage(package)
    assert {"read_state", "slice_update", "coreml_update_state"} <= set(program.op_types)
    assert program.state_specs["k_cache"] == ((2, 1, 2, 256, 32), np.dtype(np.float16))


def test_prefill_then_decode_matches_eager_at_every_step_to_the_cache_length(package):
    """Teacher-forced: a 20-token prompt, then one token per call up to position 255, each step's
    logits against the eager Student decoding with its own KV cache."""
    program = mil_executor.load_mlpackage(package)
    model = student()
    ids = np.random.default_rng(1).integers(0, 512, 256).tolist()
    ours, eager = coreml_stateful_steps.StatefulSteps(program), CachedSteps(model)
    diffs = [np.abs(ours.prefill(ids[:20]) - eager.prefill(ids[:20]).numpy()).max()]
    for token in ids[20:]:
        diffs.append(np.abs(ours.decode(token) - eager.decode(token).numpy()).max())
    assert ours.position == 256
    worst = int(np.argmax(diffs))
    print(f"max |diff| {max(diffs):.2e} at step {worst} (position {19 + worst})")
    assert max(diffs) <= FP16_MAX_ABS
    with pytest.raises(InputError, match="run past the cache's 256 positions"):
        ours.decode(ids[0])


def test_prefill_at_every_contract_length_matches_the_eager_forward(package):
    program = mil_executor.load_mlpackage(package)
    model = student()
    forward = coreml_stateful_steps.prefill_forward(program)
    for length in LENGTHS:
        ids = np.random.default_rng(length).integers(0, 512, (1, length))
        with torch.no_grad():
            expected = model(torch.from_numpy(ids)).numpy()
        got = forward(ids)
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= FP16_MAX_ABS, length


def test_a_new_sequence_does_not_see_the_last_one(package):
    program = mil_executor.load_mlpackage(package)
    steps = coreml_stateful_steps.StatefulSteps(program)
    first = [steps.prefill([1, 2, 3])] + [steps.decode(t) for t in (4, 5)]
    steps.prefill(np.arange(100, 140).tolist())  # another, longer sequence in between
    again = [steps.prefill([1, 2, 3])] + [steps.decode(t) for t in (4, 5)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # Even the previous sequence's state, restarted at position 0, gives the same logits: every slot
    # a token reads was written in its own sequence first (conversion/coreml_stateful.py).
    steps.prefill(np.arange(100, 140).tolist())
    for token in range(40):  # past the 64 slots a padded prompt overwrites
        steps.decode(token)
    used = steps.state
    steps.new_state = lambda: used
    reused = [steps.prefill([1, 2, 3])] + [steps.decode(t) for t in (4, 5)]
    assert steps.state is used and np.all(used.values["k_cache"][:, :, :, 64:80] != 0)  # stale, unread
    for a, b in zip(first, reused, strict=True):
        np.testing.assert_array_equal(a, b)


_SAVE_SCRIPT = """
import sys
from conversion import coreml, coreml_stateful
from conversion.coreml_stateful_test import LENGTHS, METADATA, student
coreml.save_mlpackage(coreml_stateful.convert(student(), LENGTHS, 128, METADATA), sys.argv[1])
"""


def test_the_same_model_gives_a_byte_identical_package_in_another_process(package, tmp_path):
    mlpackage_testing.assert_saved_alike_in_another_process(
        package, _SAVE_SCRIPT, str(tmp_path / "again.mlpackage")
    )


def test_lengths_the_model_cannot_hold_are_refused():
    with pytest.raises(InputError, match="512"):
        coreml_stateful.convert(student(), [64, 512], 64, METADATA)
