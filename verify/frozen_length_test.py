"""The reference pipeline's bug, reproduced on purpose: every guard on the way must catch it.

A student whose traced code calls int() on the sequence length (docs/architecture.md, "Why the
reference pipeline passed only T128") works in eager mode at every length, but its trace is frozen at the
length it was traced at. torch.export refuses it at export time, the TorchScript length check
refuses the trace, and if it is converted to Core ML anyway (coremltools does so silently), the
spec check and the MIL executor both reject the package.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads: see verify_contracts.py

import numpy as np
import pytest
import torch

from common.errors import InputError
from conversion import coreml, torchscript
from training.config import ModelConfig
from verify import frozen_students
from verify.coreml import coreml_spec, mil_executor

torch.set_num_threads(1)

LENGTHS = [64, 128, 256]


VARIANTS = [frozen_students.frozen_rotary_student, frozen_students.frozen_view_student]


@pytest.mark.parametrize("make", VARIANTS)
def test_eager_frozen_student_still_runs_at_every_length(make):
    # The bug is invisible without tracing: that is why every artifact must be run at every length.
    model = make()
    with torch.no_grad():
        for length in LENGTHS:
            assert model(torch.zeros(1, length, dtype=torch.int32)).shape == (1, length, 512)


@pytest.mark.parametrize("make", VARIANTS)
def test_torch_export_guard_refuses_a_frozen_length(make):
    with pytest.raises(torchscript.FrozenLengthError, match="freezes the sequence length.*constant"):
        torchscript.guard_dynamic_length(make(), 128, 256)


@pytest.mark.parametrize("make", VARIANTS)
def test_export_refuses_a_frozen_length(make, tmp_path):
    # FrozenLengthError is an InputError: export_pytorch exits 2 and writes nothing.
    with pytest.raises(InputError, match="freezes the sequence length"):
        torchscript.export(make(), LENGTHS, max_seq_len=ModelConfig().max_seq_len)


@pytest.mark.parametrize("make", VARIANTS)
def test_trace_length_check_refuses_a_frozen_trace(make):
    model = make()
    traced = torchscript.trace(model, 128)
    with pytest.raises(torchscript.FrozenLengthError, match="at length 64"):
        torchscript.check_lengths_match(traced, model, LENGTHS, model.cfg.vocab_size)


@pytest.fixture(scope="module")
def frozen_package(tmp_path_factory):
    """The frozen trace converted anyway, as the reference pipeline did (coremltools does not object)."""
    model = frozen_students.frozen_rotary_student()
    traced = torchscript.trace(model, 128)
    mlmodel = coreml.convert_traced(
        traced, LENGTHS, 128, "fp16", {"short_description": "frozen", "version": "1"}
    )
    path = str(tmp_path_factory.mktemp("frozen") / "frozen.mlpackage")
    coreml.save_mlpackage(mlmodel, path)
    return path


def test_coreml_spec_check_rejects_the_frozen_package(frozen_package):
    failed = {r.name for r in coreml_spec.failures(coreml_spec.check_spec(frozen_package, LENGTHS))}
    assert failed & {"output_shape_not_frozen", "program_output_length_dynamic"}


def test_mil_executor_rejects_the_frozen_package_at_other_lengths(frozen_package):
    program = mil_executor.load_mlpackage(frozen_package)
    assert mil_executor.run(program, np.zeros((1, 128), dtype=np.int32)).shape == (1, 128, 512)
    with pytest.raises(InputError, match="64"):
        mil_executor.run(program, np.zeros((1, 64), dtype=np.int32))
