"""A toy stateful Core ML program for the executor's tests: a registered fp16 buffer written in place
at a runtime position, as the student's KV cache is (conversion/coreml_stateful.py).

Traced with torch.jit.trace (coremltools' documented path for states; torch.export would turn every
mutable buffer into a state) and converted at iOS18, the first target with ct.StateType.
"""

import coremltools as ct
import numpy as np
import torch
from torch import nn

from conversion import coreml

STATE = "cache"
SLOTS, WIDTH = 8, 4
STEPS = [1, 3]  # enumerated lengths of x


class CacheWriter(nn.Module):
    """x [1, S, 4], pos int32 [1] -> the running sum over the cache's slots after writing 2x at pos."""

    def __init__(self):
        super().__init__()
        self.register_buffer(STATE, torch.zeros(1, SLOTS, WIDTH, dtype=torch.float16))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.cache[:, pos : pos + x.shape[1], :] = (2 * x).half()
        return self.cache.float().cumsum(1) + x.sum(1, keepdim=True)


class CacheReader(nn.Module):
    """x [1, S, 4] -> x scaled by the first slot of the cache, which it never writes."""

    def __init__(self):
        super().__init__()
        self.register_buffer(STATE, torch.zeros(1, SLOTS, WIDTH, dtype=torch.float16))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x * self.cache[:, :1, :].float() + pos.float()


def convert(module: nn.Module, path: str) -> None:
    """Saves `module` as a stateful fp32 ML Program at `path` (state "cache", fp16 [1, 8, 4])."""
    module = module.eval()
    example = (torch.ones(1, STEPS[0], WIDTH), torch.zeros(1, dtype=torch.int32))
    traced = torch.jit.trace(module, example)
    mlmodel = ct.convert(
        traced,
        inputs=[
            ct.TensorType(
                name="x", shape=ct.EnumeratedShapes(shapes=[[1, s, WIDTH] for s in STEPS]), dtype=np.float32
            ),
            ct.TensorType(name="pos", shape=(1,), dtype=np.int32),
        ],
        outputs=[ct.TensorType(name="y", dtype=np.float32)],
        states=[
            ct.StateType(wrapped_type=ct.TensorType(shape=(1, SLOTS, WIDTH), dtype=np.float16), name=STATE)
        ],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT32,
    )
    coreml.save_mlpackage(mlmodel, path)
