"""Student -> magic-8-ball.stateful.mlpackage: prefill and one-token decode against a KV cache held
as Core ML state (docs/architecture.md, "The stateful Core ML package").

One function ("main"), fp16, iOS18 / macOS15 (the first target with ct.StateType):

    inputs   input_ids  int32 [1, S], S enumerated over STEP lengths: 1 (decode) and each contract
                        length (prefill, the prompt right-padded to the next one)
             position   int32 [1]: the position of input_ids[0, 0] in the sequence
    states   k_cache, v_cache  fp16 [n_layers, 1, n_kv_heads, cache_length, head_dim]: rotated keys
                        and values, slot i holding position i; cache_length is the contract's longest
    output   logits     float32 [1, S, vocab]

The wrapper below holds the cache as two registered buffers and calls the Student's own forward with
training/model.py's FixedKVCache over them: the slice write `keys[layer, :, :, pos:pos+S] = k`
becomes read_state, slice_update and coreml_update_state. The forward is not copied here.

Why padding a prompt is safe: a token at position p sees only slots <= p (FixedKVCache.mask), and
every slot <= p was written in this sequence before it is read, so the pad tokens' entries past the
prompt are overwritten by the decode steps before anything reads them. The same holds for a state
reused across sequences; a fresh state per sequence (Core ML's make_state()) is still what callers
should do. pos + S must stay <= cache_length: the caller checks it (verify/coreml/coreml_stateful_steps.py).

Traced with torch.jit.trace, coremltools' documented path for states (torch.export would make
every mutable buffer a state).
"""

import coremltools as ct
import numpy as np
import torch
from torch import nn

from common.errors import InputError
from conversion import contract as contract_lib
from conversion import coreml
from training.model import FixedKVCache, Student

INPUT_NAME = coreml.INPUT_NAME
POSITION_NAME = "position"
OUTPUT_NAME = coreml.OUTPUT_NAME
STATE_NAMES = ("k_cache", "v_cache")
WRAPPED = "model"  # the wrapper's attribute holding the Student: every weight's name starts with it
DEPLOYMENT_TARGET = ct.target.iOS18
TARGET_NAME = "iOS18"  # verify/coreml/coreml_spec.py SPECIFICATION_VERSIONS: spec version 9
PRECISION = "fp16"
STATE_LAYOUT = "[n_layers, 1, n_kv_heads, cache_length, head_dim] fp16, RoPE-rotated; slot i = position i"


def step_lengths(lengths) -> list[int]:
    """The enumerated lengths of input_ids: 1 for decode, each contract length for prefill."""
    return sorted({1, *lengths})


def state_shape(cfg, cache_length: int) -> tuple[int, ...]:
    return (cfg.n_layers, 1, cfg.n_kv_heads, cache_length, cfg.head_dim)


class StatefulStudent(nn.Module):
    """input_ids [1, S], position [1] -> logits [1, S, V], reading and writing the cache buffers."""

    def __init__(self, model: Student, cache_length: int):
        super().__init__()
        self.model = model  # WRAPPED
        shape = state_shape(model.cfg, cache_length)
        # Buffer names are the Core ML state names (ct.StateType(name=...) must match them).
        self.register_buffer(STATE_NAMES[0], torch.zeros(shape, dtype=torch.float16))
        self.register_buffer(STATE_NAMES[1], torch.zeros(shape, dtype=torch.float16))

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, FixedKVCache(self.k_cache, self.v_cache, position))

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()


def _check_trace(traced, wrapper: StatefulStudent, steps: list[int], cache_length: int, vocab: int) -> None:
    """The trace against the eager wrapper at every step length, prefill then one decode after it:
    a trace that froze a length or the position fails here, before anything is converted."""
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, (1, cache_length)).astype(np.int32))
    for length in steps:
        runs = [(ids[:, :length], 0)]
        if length < cache_length:
            runs.append((ids[:, length : length + 1], length))
        outputs = []
        for module in (traced, wrapper):
            wrapper.reset()  # the trace shares the wrapper's buffers
            with torch.no_grad():
                outputs.append([module(x, torch.tensor([pos], dtype=torch.int32)) for x, pos in runs])
        for (x, pos), got, expected in zip(runs, *outputs, strict=True):
            if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
                raise InputError(
                    f"stateful trace: {x.shape[1]} tokens at position {pos} differ from eager "
                    f"(shape {tuple(got.shape)} vs {tuple(expected.shape)}): the trace froze a shape"
                )
    wrapper.reset()


def convert(model: Student, lengths: list[int], default_length: int, metadata: dict) -> ct.models.MLModel:
    """Student -> in-memory stateful ML Program (see the module docstring for its interface).

    InputError for lengths the model cannot hold or metadata that is not str -> str.
    """
    lengths = contract_lib.check_lengths(lengths, default_length, model.cfg.max_seq_len)
    cache_length = max(lengths)
    steps = step_lengths(lengths)
    wrapper = StatefulStudent(model.eval(), cache_length).eval()
    example = (torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
    # check_trace off: the trace's own re-run would write into the buffers; _check_trace does it.
    traced = torch.jit.trace(wrapper, example, check_trace=False)
    _check_trace(traced, wrapper, steps, cache_length, model.cfg.vocab_size)
    shape = state_shape(model.cfg, cache_length)
    mlmodel = ct.convert(
        traced,
        inputs=[
            ct.TensorType(
                name=INPUT_NAME,
                shape=ct.EnumeratedShapes(shapes=[[1, s] for s in steps], default=[1, 1]),
                dtype=np.int32,
            ),
            ct.TensorType(name=POSITION_NAME, shape=(1,), dtype=np.int32),
        ],
        outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
        states=[
            ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=np.float16), name=name)
            for name in STATE_NAMES
        ],
        convert_to="mlprogram",
        minimum_deployment_target=DEPLOYMENT_TARGET,
        compute_precision=coreml.PRECISIONS[PRECISION],
    )
    user_defined = {
        **metadata.get("user_defined", {}),
        "state_names": ",".join(STATE_NAMES),
        "state_layout": STATE_LAYOUT,
        "state_shape": ",".join(str(d) for d in shape),
        "step_lengths": ",".join(str(s) for s in steps),
        "position_input": POSITION_NAME,
    }
    coreml.apply_metadata(mlmodel, {**metadata, "user_defined": user_defined}, PRECISION)
    return mlmodel


def interface(cfg, lengths) -> dict:
    """What the package declares, as verify/coreml/coreml_spec.py check_stateful_spec takes it: states,
    inputs, outputs (in declaration order) and the deployment target, from the model's config and
    the contract's lengths."""
    shape = state_shape(cfg, max(lengths))
    return {
        "states": {name: (shape, "float16") for name in STATE_NAMES},
        "inputs": {
            INPUT_NAME: ("int32", [(1, s) for s in step_lengths(lengths)]),
            POSITION_NAME: ("int32", [(1,)]),
        },
        "outputs": {OUTPUT_NAME: "float32"},
        "target": TARGET_NAME,
    }
