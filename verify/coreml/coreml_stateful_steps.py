"""The stateful Core ML package (conversion/coreml_stateful.py) as decode Steps (training/decode.py):
prefill starts a fresh state (Core ML's make_state()) and runs the prompt right-padded to the
smallest enumerated length that holds it; decode runs one token at the next position.

`StatefulSteps` runs the package through the MIL executor; the macOS runtime test subclasses it
with the Core ML runtime's make_state() and predict(..., state=...) (verify/coreml/coreml_runtime_test.py),
so both take the same steps. `prefill_forward` runs a whole sequence from position 0 on a fresh
state: the package's logits for every token, so the stateless checks (every contract length, the
behaviour replay) run on it too.
"""

from collections.abc import Sequence

import numpy as np

from common.errors import InputError
from conversion import coreml_stateful
from training.decode import Steps
from verify.coreml import mil_executor


class StatefulSteps(Steps):
    """One sequence at a time through the package; `position` is where the next token goes."""

    def __init__(self, program: mil_executor.Program, pad_id: int = 0):
        self.program, self.pad_id = program, pad_id
        self.where = program.path
        missing = [n for n in coreml_stateful.STATE_NAMES if n not in program.state_specs]
        inputs = sorted(program.input_shapes)
        if missing or inputs != sorted((coreml_stateful.INPUT_NAME, coreml_stateful.POSITION_NAME)):
            raise InputError(
                f"{program.path}: not the stateful package (states {sorted(program.state_specs)}, "
                f"inputs {inputs}); pass magic-8-ball.stateful.mlpackage"
            )
        self.step_lengths = program.lengths(coreml_stateful.INPUT_NAME)
        shape, _ = program.state_specs[coreml_stateful.STATE_NAMES[0]]
        self.cache_length = shape[3]  # positions the state holds (its slot axis)
        self.state = None
        self.position = 0

    # The two calls a runtime provides.

    def new_state(self):
        return mil_executor.make_state(self.program)

    def predict(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """logits [1, S, V] for the feeds, updating self.state."""
        return mil_executor.evaluate(self.program, feeds, self.state)[coreml_stateful.OUTPUT_NAME]

    # Steps.

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        return self.prefill_all(prompt_ids)[-1]

    def prefill_all(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """A new sequence on a fresh state; logits [P, V] for every prompt token."""
        self.state = self.new_state()
        self.position = 0
        return self.run(list(prompt_ids), self.position)

    def decode(self, token: int) -> np.ndarray:
        if self.state is None:
            raise InputError(f"{self.where}: decode before prefill")
        return self.run([int(token)], self.position)[-1]

    def run(self, ids: list[int], position: int) -> np.ndarray:
        """logits [len(ids), V] of ids written from `position`; the next token goes after them."""
        fitting = [s for s in self.step_lengths if s >= len(ids)]
        if not ids or not fitting:
            raise InputError(
                f"{self.where}: {len(ids)} tokens in one call; "
                f"the package takes 1 to {max(self.step_lengths)}"
            )
        if position + fitting[0] > self.cache_length:
            raise InputError(
                f"{self.where}: {len(ids)} tokens at position {position} run past the cache's "
                f"{self.cache_length} positions; start a new sequence"
            )
        row = [*ids, *[self.pad_id] * (fitting[0] - len(ids))]
        feeds = {
            coreml_stateful.INPUT_NAME: np.asarray([row], dtype=np.int32),
            coreml_stateful.POSITION_NAME: np.asarray([position], dtype=np.int32),
        }
        logits = np.asarray(self.predict(feeds), dtype=np.float32)[0, : len(ids)]
        self.position = position + len(ids)
        return logits


def prefill_forward(program: mil_executor.Program, pad_id: int = 0):
    """ids [1, T] -> logits float32 [1, T, V]: the whole sequence as one prefill on a fresh state."""
    steps = StatefulSteps(program, pad_id)

    def forward(ids) -> np.ndarray:
        return steps.prefill_all(np.asarray(ids).reshape(-1).tolist())[None]

    return forward
