"""The TorchScript decoder: the student with a fixed-size KV cache passed in and out.

    decoder(input_ids int32 [1, S], pos int64 [1], keys, values) -> (logits float32 [1, S, V], keys, values)
    keys, values: float32 [n_layers, 1, n_kv_heads, max_seq_len, head_dim]

`input_ids` are the S tokens at positions pos..pos+S-1: a prompt (prefill, pos 0) or one new token
(decode). The caches are updated in place and returned (training/model.py, IndexedKVCache: the
stateful Core ML package's FixedKVCache, written with fewer operators per step; the layout and
sizes come from the checkpoint's config, which the contract pins by digest). pos + S must not
exceed max_seq_len: `TorchScriptSteps` checks that before each call, with a clear error instead
of index_copy_'s. A new sequence starts again at pos 0; the old entries need no reset
(docs/architecture.md, "KV cache").

One trace serves every S and pos (no int() on shapes, positions from the pos tensor); export()
proves it by running the trace against eager for a prefill at every contract length and for
one-token decoding up to the last slot, before anything is written.
"""

from collections.abc import Sequence

import numpy as np
import torch

from common.errors import InputError
from training.decode import Steps
from training.model import FixedKVCache, IndexedKVCache, Student

TOLERANCE = 1e-4  # largest logit difference to eager the export accepts, as conversion/torchscript.py
_EXAMPLE_LENGTH, _EXAMPLE_POS = 3, 2  # traced at these; checked at others


class Decoder(torch.nn.Module):
    """The module docstring's signature around Student.forward with an IndexedKVCache."""

    def __init__(self, model: Student):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(input_ids, IndexedKVCache(keys, values, pos))
        return logits, keys, values


def empty_cache(cfg, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    return FixedKVCache.empty(cfg, batch=1, dtype=dtype)


class TorchScriptSteps(Steps):
    """training.decode.Steps through a decoder (the exported file or an eager Decoder)."""

    def __init__(self, decoder, cfg):
        self.decoder, self.cfg = decoder, cfg
        # The method itself, not the module: nn.Module.__call__'s hook handling showed in a decode
        # step's time.
        self._forward = decoder.forward
        self.keys, self.values = empty_cache(cfg)
        self.pos = 0
        # A decode step's inputs, made once and rewritten in place through NumPy views: making two
        # tensors per step showed in the step's time (a few percent).
        self._token, self._at = torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, dtype=torch.int64)
        self._token_view, self._at_view = self._token.numpy(), self._at.numpy()

    def _call(self, ids: Sequence[int], pos: int) -> torch.Tensor:
        """Runs ids at positions pos.. against the cache; the logits after the last one, [V]."""
        if pos + len(ids) > self.cfg.max_seq_len:
            raise InputError(
                f"sequence: {pos + len(ids)} tokens; the decoder's cache holds at most "
                f"{self.cfg.max_seq_len} (max_seq_len)"
            )
        if len(ids) == 1:
            self._token_view[0, 0], self._at_view[0] = ids[0], pos
            inputs = self._token, self._at
        else:
            inputs = torch.tensor([list(ids)], dtype=torch.int32), torch.tensor([pos])
        # inference_mode, not no_grad: no version counting per op, ~15% of a decode step here.
        with torch.inference_mode():
            logits, self.keys, self.values = self._forward(*inputs, self.keys, self.values)
        return logits[0, -1]

    def _run(self, ids: Sequence[int]) -> torch.Tensor:
        logits = self._call(ids, self.pos)
        self.pos += len(ids)
        return logits

    def prefill(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        self.pos = 0  # a new sequence: slots at or after pos are never read before they are written
        return self._run(prompt_ids)

    def decode(self, token: int) -> torch.Tensor:
        return self._run([token])


def trace(model: Student) -> torch.jit.ScriptModule:
    """The decoder as shipped: traced, then frozen.

    Freezing inlines the weights as constants, so a step no longer walks the module tree (a call
    per submodule) and computes exactly what the trace computes. Two faster variants change the
    rounding and were left out for the decode parity's margin (docs/architecture.md, "KV cache"):
    torch.jit.optimize_for_inference (each linear weight pre-transposed for a plain matmul), and
    attending over the written slots only. The file stays byte-reproducible. The stateless
    magic-8-ball.pt is a plain trace (conversion/torchscript.py).
    """
    from conversion import torchscript

    keys, values = empty_cache(model.cfg)
    example = (
        torch.zeros(1, _EXAMPLE_LENGTH, dtype=torch.int32),
        torch.tensor([_EXAMPLE_POS]),
        keys,
        values,
    )
    with torchscript.fresh_jit_types(), torch.no_grad():
        traced = torch.jit.trace(Decoder(model.eval()), example, check_trace=False, _store_inputs=False)
        return torch.jit.freeze(traced.eval())


def check_against_eager(
    decoder, model: Student, lengths: Sequence[int], tolerance: float = TOLERANCE
) -> float:
    """Largest logit difference between `decoder` and eager over a prefill at every length and a
    one-token decode through every slot; InputError when it exceeds `tolerance` or a shape is wrong."""
    from conversion import torchscript

    cfg = model.cfg
    worst = 0.0

    def compare(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        nonlocal worst
        if got.shape != expected.shape or got.dtype != torch.float32:
            raise InputError(
                f"the decoder gives {tuple(got.shape)} {got.dtype} for {what}, expected "
                f"{tuple(expected.shape)} torch.float32"
            )
        diff = float((got - expected).abs().max())
        worst = max(worst, diff)
        if not diff <= tolerance:
            raise InputError(
                f"the decoder's logits for {what} differ from eager by {diff:.3g} (bound {tolerance:g})"
            )

    with torch.no_grad():
        for length in lengths:
            ids = torchscript.probe_ids(length, cfg.vocab_size)
            keys, values = empty_cache(cfg)
            logits, _, _ = decoder(ids, torch.tensor([0]), keys, values)
            compare(logits, model(ids), f"a prefill of {length} tokens")
        ids = torchscript.probe_ids(cfg.max_seq_len, cfg.vocab_size)
        expected = model(ids)
        steps = TorchScriptSteps(decoder, cfg)
        compare(steps.prefill(ids[0, :1].tolist()), expected[0, 0], "position 0")
        for pos in range(1, cfg.max_seq_len):
            compare(steps.decode(int(ids[0, pos])), expected[0, pos], f"a decode step at position {pos}")
    return worst


def export(model: Student, lengths: Sequence[int]) -> torch.jit.ScriptModule:
    """The traced decoder, checked against eager (check_against_eager) before it is returned."""
    model = model.eval()
    traced = trace(model)
    check_against_eager(traced, model, lengths)
    return traced


def prefill_forward(decoder, cfg):
    """The decoder as a whole-sequence logits function: ids [1, T] (NumPy) -> logits [1, T, V] (NumPy),
    each call a fresh cache and a prefill from position 0."""

    def forward(ids) -> np.ndarray:
        keys, values = empty_cache(cfg)
        ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int32))
        with torch.inference_mode():
            logits, _, _ = decoder(ids, torch.tensor([0]), keys, values)
        return logits.numpy()

    return forward
