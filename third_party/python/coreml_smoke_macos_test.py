"""macOS only: the Core ML runtime runs the tiny converted model and matches PyTorch."""

import os

import coremltools as ct
import numpy as np
import torch

from third_party.python.coreml_smoke_test import build_tiny_mlpackage


def test_predict_matches_torch(tmp_path):
    path = os.path.join(tmp_path, "tiny.mlpackage")
    build_tiny_mlpackage(path)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = np.arange(4, dtype=np.float32).reshape(1, 4) / 4
    expected = model(torch.from_numpy(x)).detach().numpy()
    got = ct.models.MLModel(path).predict({"x": x})["y"]
    np.testing.assert_allclose(got, expected, atol=1e-2)
