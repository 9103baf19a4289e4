"""The locked torch and coremltools work together: a tiny model converts to an .mlpackage."""

import os

import coremltools as ct
import numpy as np
import torch


def build_tiny_mlpackage(path: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    traced = torch.jit.trace(model, torch.zeros(1, 4))
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=(1, 4), dtype=np.float32)],
        outputs=[ct.TensorType(name="y")],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.macOS13,
    )
    mlmodel.save(path)


def test_tiny_model_converts_to_mlpackage_with_named_io(tmp_path):
    path = os.path.join(tmp_path, "tiny.mlpackage")
    build_tiny_mlpackage(path)
    assert os.path.isfile(os.path.join(path, "Manifest.json"))
    spec = ct.utils.load_spec(path)
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [i.name for i in spec.description.input] == ["x"]
    assert [o.name for o in spec.description.output] == ["y"]
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 4]
    assert spec.specificationVersion >= 7  # macOS13 / iOS16 ML Program
