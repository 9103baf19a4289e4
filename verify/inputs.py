"""The inputs every artifact is compared on, and every numeric floor is measured on.

Bounds are floors measured on the same model and the same inputs (verify/floors/floors.py), so the
floors stage and the verify stage must build these inputs identically: both call these functions
with the settings the contract records (contract "gates" -> "inputs").

- numeric rows, per contract length: seeded random ids, then held-out prompts + teacher replies
  packed into one row (verify/parity.py, numeric_inputs);
- the behaviour replay: eager fp32 greedy replies to the first held-out questions, each replayed
  through an artifact in one forward (verify/parity.py, behaviour_check).
"""

import dataclasses

import numpy as np

from verify import parity


@dataclasses.dataclass(frozen=True)
class Settings:
    seed: int = 0  # the random-ids row at each length
    text_sequences: int = 40  # held-out sequences packed into the real-text row
    behaviour_questions: int = 200  # held-out questions replayed through every artifact
    max_new_tokens: int = 32  # longest eager greedy reply in the replay

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def numeric_rows(
    lengths, vocab_size: int, tokenizer, heldout, settings: Settings
) -> dict[int, list[np.ndarray]]:
    """{length: [row [1, length] int32, ...]}: the rows parity is measured on at each length."""
    sequences = [
        [tokenizer.bos_id, *r.prompt_ids, *r.completion_ids] for r in heldout[: settings.text_sequences]
    ]
    return {
        length: parity.numeric_inputs(length, vocab_size, settings.seed, sequences, tokenizer.pad_id)
        for length in lengths
    }


def replay_prompts(tokenizer, heldout, settings: Settings) -> list[list[int]]:
    """[bos] + prompt ids of the held-out questions the behaviour replay uses."""
    return [[tokenizer.bos_id, *r.prompt_ids] for r in heldout[: settings.behaviour_questions]]


def replay_continuations(model, tokenizer, prompts, settings: Settings) -> list[list[int]]:
    """Eager fp32 greedy replies (KV-cache decoding) to `prompts`."""
    from training.decode import greedy_batch

    return greedy_batch(
        model, prompts, eos_id=tokenizer.eos_id, max_new_tokens=settings.max_new_tokens, batch_size=64
    )
