"""macOS only: the real Core ML runtime runs the converted student at every enumerated length.

MLModel.predict exists only on macOS, so Bazel constrains this test to @platforms//os:macos and
reports it SKIPPED elsewhere. On Linux, verify/mil_executor_test.py checks the same program with
the NumPy reference executor.
"""

import os

import coremltools as ct
import numpy as np
import pytest
import torch

from common.errors import InputError
from conversion import coreml
from training.model import ModelConfig, Student, init_weights
from verify import mil_executor

LENGTHS = [64, 128, 256]
METADATA = {"short_description": "runtime test", "version": "1"}
# fp16 on the GPU / Neural Engine: looser than the NumPy executor's 5e-3, which computes the
# same program in float16 with float32 matmul accumulation.
FP16_MAX_ABS = 2e-2
FP32_MAX_ABS = 1e-3
COMPUTE_UNITS = {
    "all": ct.ComputeUnit.ALL,
    "cpu_only": ct.ComputeUnit.CPU_ONLY,
}


def student() -> Student:
    model = Student(ModelConfig())
    init_weights(model, seed=0)
    return model.eval()


def ids_for(length: int) -> np.ndarray:
    return np.random.default_rng(length).integers(0, 512, (1, length)).astype(np.int32)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime")
    paths = {}
    for precision in ("fp16", "fp32"):
        paths[precision] = os.path.join(str(root), f"{precision}.mlpackage")
        coreml.save_mlpackage(coreml.convert(student(), LENGTHS, 128, precision, METADATA), paths[precision])
    return paths


@pytest.mark.parametrize("units", sorted(COMPUTE_UNITS))
@pytest.mark.parametrize("precision, tolerance", [("fp16", FP16_MAX_ABS), ("fp32", FP32_MAX_ABS)])
def test_predict_matches_pytorch_at_every_enumerated_length(packages, precision, tolerance, units):
    mlmodel = ct.models.MLModel(packages[precision], compute_units=COMPUTE_UNITS[units])
    model = student()
    agree = total = 0
    for length in LENGTHS:
        ids = ids_for(length)
        got = mlmodel.predict({"input_ids": ids})["logits"]
        with torch.no_grad():
            expected = model(torch.from_numpy(ids)).numpy()
        assert got.shape == (1, length, 512), f"T{length}: output shape {got.shape}"
        diff = float(np.abs(got.astype(np.float32) - expected).max())
        assert diff <= tolerance, f"{precision}/{units} T{length}: max abs diff {diff} > {tolerance}"
        same = got.argmax(-1) == expected.argmax(-1)
        agree, total = agree + int(same.sum()), total + same.size
    assert agree / total >= 0.99


def test_runtime_agrees_with_the_numpy_executor(packages):
    # The executor is Linux's stand-in for this runtime: check the stand-in where both exist.
    mlmodel = ct.models.MLModel(packages["fp16"], compute_units=ct.ComputeUnit.CPU_ONLY)
    program = mil_executor.load_mlpackage(packages["fp16"])
    for length in LENGTHS:
        ids = ids_for(length)
        runtime = mlmodel.predict({"input_ids": ids})["logits"].astype(np.float32)
        reference = mil_executor.run(program, ids)
        assert float(np.abs(runtime - reference).max()) <= FP16_MAX_ABS, f"T{length}"


def test_runtime_rejects_a_length_outside_the_contract(packages):
    mlmodel = ct.models.MLModel(packages["fp16"])
    with pytest.raises(Exception):  # noqa: B017 -- Core ML raises RuntimeError or a bridged NSError
        mlmodel.predict({"input_ids": ids_for(96)})
    with pytest.raises(InputError):
        mil_executor.run(mil_executor.load_mlpackage(packages["fp16"]), ids_for(96))
