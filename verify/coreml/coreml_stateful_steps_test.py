"""StatefulSteps: the stateful package's calls (padding, positions, the cache's end) through the MIL
executor, on a package with a short cache (contract lengths 16 and 32)."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

from common.errors import InputError
from conversion import coreml, coreml_stateful
from training.decode import CachedSteps
from verify import fixtures
from verify.coreml import coreml_stateful_steps, mil_executor

LENGTHS = fixtures.SHORT_STATEFUL_LENGTHS
FP16_MAX_ABS = 5e-3  # as verify/coreml/mil_executor_test.py: the fp16 program against fp32 eager
student = fixtures.short_stateful_student


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return mil_executor.load_mlpackage(
        fixtures.write_short_stateful_package(str(tmp_path_factory.mktemp("steps")))
    )


class Recording(coreml_stateful_steps.StatefulSteps):
    """Records the shape and position of every call."""

    def __init__(self, program):
        super().__init__(program, pad_id=7)
        self.calls = []

    def predict(self, feeds):
        ids = feeds[coreml_stateful.INPUT_NAME]
        self.calls.append((ids.shape[1], int(feeds[coreml_stateful.POSITION_NAME][0]), int(ids[0, -1])))
        return super().predict(feeds)


def test_prompts_are_padded_to_the_next_step_length_and_decodes_follow(program):
    steps = Recording(program)
    assert steps.step_lengths == [1, 16, 32] and steps.cache_length == 32
    eager = CachedSteps(student())
    prompt = list(range(20, 30))
    got = [steps.prefill(prompt)] + [steps.decode(t) for t in (3, 4)]
    expected = [eager.prefill(prompt)] + [eager.decode(t) for t in (3, 4)]
    # The prompt padded with pad_id to 16 at position 0, then one token at positions 10 and 11.
    assert steps.calls == [(16, 0, 7), (1, 10, 3), (1, 11, 4)]
    for a, b in zip(got, expected, strict=True):
        assert a.shape == (512,) and np.abs(a - b.numpy()).max() <= FP16_MAX_ABS


def test_prefill_forward_gives_every_tokens_logits(program):
    ids = np.random.default_rng(0).integers(0, 512, (1, 20))
    got = coreml_stateful_steps.prefill_forward(program)(ids)
    with torch.no_grad():
        expected = student()(torch.from_numpy(ids)).numpy()
    assert got.shape == (1, 20, 512) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= FP16_MAX_ABS


def test_calls_the_package_cannot_take_are_input_errors(program):
    steps = coreml_stateful_steps.StatefulSteps(program)
    with pytest.raises(InputError, match="decode before prefill"):
        steps.decode(1)
    with pytest.raises(InputError, match="33 tokens in one call; the package takes 1 to 32"):
        steps.prefill(list(range(33)))
    with pytest.raises(InputError, match="0 tokens in one call"):
        steps.prefill([])
    steps.prefill(list(range(31)))
    steps.decode(1)  # position 31: the last slot
    with pytest.raises(InputError, match="1 tokens at position 32 run past the cache's 32 positions"):
        steps.decode(2)
    # A prompt that fits the largest step but, padded, would run past the cache from a later position.
    with pytest.raises(InputError, match="run past the cache"):
        steps.run(list(range(10)), 20)


def test_a_package_without_the_cache_states_is_refused(tmp_path):
    path = str(tmp_path / "stateless.mlpackage")
    metadata = {"short_description": "test", "version": "1"}
    coreml.save_mlpackage(coreml.convert(student(), LENGTHS, 16, "fp16", metadata), path)
    with pytest.raises(InputError, match=r"not the stateful package \(states \[\], inputs \['input_ids'\]\)"):
        coreml_stateful_steps.StatefulSteps(mil_executor.load_mlpackage(path))
