"""Every locked dependency the stages use imports on the pinned interpreter, at the locked version."""

import importlib.metadata

import pytest


@pytest.mark.parametrize(
    "module, distribution, version_prefix",
    [
        ("torch", "torch", "2.13.0"),
        ("coremltools", "coremltools", "9.0"),
        ("numpy", "numpy", "2."),
        ("gguf", "gguf", "0.19.0"),
        ("absl", "absl-py", ""),
        ("safetensors", "safetensors", ""),
    ],
)
def test_import(module, distribution, version_prefix):
    importlib.import_module(module)
    assert importlib.metadata.version(distribution).startswith(version_prefix)


def test_torch_is_the_cpu_build_without_cuda():
    import torch

    assert not torch.cuda.is_available()
    assert torch.ones(2, 2).sum().item() == 4.0
