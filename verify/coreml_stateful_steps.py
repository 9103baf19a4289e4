"""The stateful Core ML package (conversion/coreml_stateful.py) as decode Steps, through the MIL
executor: prefill starts a fresh state (Core ML's make_state()) and runs the prompt right-padded to
the smallest enumerated length that holds it; decode runs one token at the next position.

Also `prefill_forward`: one whole sequence from position 0 on a fresh state, the package's logits
for every token, so the stateless checks (every contract length, the behaviour replay) run on it.
"""

from collections.abc import Sequence

import numpy as np

from common.errors import InputError
from conversion import coreml_stateful
from training.decode import Steps
from verify import mil_executor


def cache_length(program: mil_executor.Program) -> int:
    """Positions the package's state holds (the slot axis of its cache)."""
    shape, _ = program.state_specs[coreml_stateful.STATE_NAMES[0]]
    return shape[3]


def _call(program, state, ids: Sequence[int], position: int) -> np.ndarray:
    """logits [S, V] of ids at `position` (ids already padded to an enumerated length)."""
    if position + len(ids) > cache_length(program):
        raise InputError(
            f"{program.path}: {len(ids)} tokens at position {position} run past the cache's "
            f"{cache_length(program)} positions; start a new sequence"
        )
    feeds = {
        coreml_stateful.INPUT_NAME: np.asarray([ids], dtype=np.int32),
        coreml_stateful.POSITION_NAME: np.asarray([position], dtype=np.int32),
    }
    return mil_executor.evaluate(program, feeds, state)[coreml_stateful.OUTPUT_NAME][0]


def _padded(program, ids: Sequence[int], pad_id: int) -> list[int]:
    steps = program.lengths(coreml_stateful.INPUT_NAME)
    fitting = [s for s in steps if s >= len(ids)]
    if not ids or not fitting:
        raise InputError(
            f"{program.path}: a prompt of {len(ids)} tokens; the package takes 1 to {max(steps)}"
        )
    return [*ids, *[pad_id] * (fitting[0] - len(ids))]


class StatefulSteps(Steps):
    """One sequence at a time through the package; `position` is where the next token goes."""

    def __init__(self, program: mil_executor.Program, pad_id: int = 0):
        self.program, self.pad_id = program, pad_id
        self.state: mil_executor.State | None = None
        self.position = 0

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        return self.prefill_all(prompt_ids)[-1]

    def prefill_all(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """A new sequence on a fresh state; logits [P, V] for every prompt token."""
        self.state = mil_executor.make_state(self.program)
        self.position = 0
        return self._run(list(prompt_ids))

    def decode(self, token: int) -> np.ndarray:
        if self.state is None:
            raise InputError(f"{self.program.path}: decode before prefill")
        return self._run([int(token)])[-1]

    def _run(self, ids: list[int]) -> np.ndarray:
        """logits [len(ids), V] of ids written at self.position, which then moves past them."""
        logits = _call(self.program, self.state, _padded(self.program, ids, self.pad_id), self.position)
        self.position += len(ids)
        return logits[: len(ids)]


def prefill_forward(program: mil_executor.Program, pad_id: int = 0):
    """ids [1, T] -> logits float32 [1, T, V]: the whole sequence as one prefill on a fresh state."""
    steps = StatefulSteps(program, pad_id)

    def forward(ids) -> np.ndarray:
        return steps.prefill_all(np.asarray(ids).reshape(-1).tolist())[None].astype(np.float32, copy=False)

    return forward
