"""Behaviour agreement: does an artifact's own greedy reply give the same canonical answer as eager's?

The replay gate (verify/parity.py, behaviour_check) compares next-token choices along eager's
replies. A quantized variant may flip a near tie there and then carry on to the same answer, or to
another one; what a user sees is the reply it generates itself. So each held-out question is
answered greedily through the artifact and compared with eager's greedy reply by its canonical
answer (data/teacher.canonical_reply: one of the 20 answers with its flair, then the end token).
Where eager's reply is not canonical, the artifact agrees only by giving the identical reply.

Near ties. Where the replies part at a step at which eager's own top two logits are closer than
the backend's near-tie margin (twice its largest logit bound, conversion/gates.py near_tie_margin),
an error within the bounds may flip the choice: eager's greedy pick there is itself a coin toss
(the student spreads a group's answers almost evenly; on the default student the Q8_0 flips sit at
margins of a few thousandths of a logit). Such a disagreement is counted apart, as the replay gate
counts near-tie flips. `rate` is the share of all questions that agree; `decisive_rate` leaves out
the near-tie disagreements. Both are information: a decisive disagreement already fails the
replay's max_abs gate (MEASURED says why).

Cheap, and exact: eager's reply goes through the artifact in one forward (attention is causal, so
the logits at step i are those the artifact sees after the same i tokens); while its argmax equals
eager's token, the replay is the artifact's own reply. From the first step where it differs, the
artifact's token is kept and the rest is generated one forward per token. Every input is padded to
the smallest contract length that holds it (the trailing pad cannot change earlier logits), so a
backend that runs only the contract's lengths (Core ML's enumerated shapes) works too.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from data import teacher
from verify import parity

LogitsFn = Callable[[np.ndarray], np.ndarray]  # ids int [1, T] -> logits [1, T, V]

# Every backend whose agreement is measured and reported (information, never a verdict).
# Why not a gate: a decisive disagreement (outside a near tie) starts at a step whose logits the
# behaviour replay already compared (the same sequence, padded the same way), where the artifact's
# argmax differs from eager's by more than the near-tie margin, twice the largest max_abs bound
# (conversion/gates.py): the replay's max_abs_diff fails there first. So the decisive share is 1
# whenever the numeric gates pass, and a target on it (issue 15's 99% for Q8_0) adds no power.
MEASURED = ("gguf_q8_0", "gguf_q4_0", "coreml_int8", "coreml_int4")


@dataclasses.dataclass(frozen=True)
class Result:
    questions: int
    agreed: int
    near_tie_disagreements: int  # disagreements that start where eager's top two are a near tie
    regenerated: int  # replies that left eager's and were finished token by token
    disagreements: tuple[tuple[int, str, str], ...]  # (question, eager reply, artifact reply), first few

    @property
    def rate(self) -> float:
        return self.agreed / self.questions if self.questions else 0.0

    @property
    def decisive_rate(self) -> float:
        decisive = self.questions - self.near_tie_disagreements
        return self.agreed / decisive if decisive else 1.0


def _next_logits(
    forward: LogitsFn, sequence: Sequence[int], lengths: Sequence[int], pad_id: int
) -> np.ndarray:
    length = parity.smallest_length(len(sequence), lengths)
    out = np.asarray(forward(parity.pad_row(sequence, length, pad_id)))
    return out[0, len(sequence) - 1]


def artifact_reply(
    forward: LogitsFn,
    prompt: Sequence[int],
    eager_reply: Sequence[int],
    eos_id: int,
    max_new_tokens: int,
    lengths: Sequence[int],
    pad_id: int,
) -> tuple[list[int], bool]:
    """(the artifact's greedy reply to `prompt`, whether it is eager's throughout) (module docstring)."""
    longest = max(lengths)
    limit = min(max_new_tokens, longest - len(prompt))
    proposal = list(eager_reply)[: max(limit, 0)]
    reply: list[int] = []
    if proposal:
        sequence = [*prompt, *proposal]
        length = parity.smallest_length(len(sequence), lengths)
        logits = np.asarray(forward(parity.pad_row(sequence, length, pad_id)))[0, len(prompt) - 1 :]
        for step, expected in enumerate(proposal):
            token = int(np.argmax(logits[step]))
            reply.append(token)
            if token == eos_id or token != expected:
                break
        if reply == proposal and (reply[-1] == eos_id or len(reply) == limit):
            return reply, True
    while len(reply) < limit and (not reply or reply[-1] != eos_id):
        reply.append(int(np.argmax(_next_logits(forward, [*prompt, *reply], lengths, pad_id))))
    return reply, False


def check(
    forward: LogitsFn,
    prompts: Sequence[Sequence[int]],
    eager_replies: Sequence[Sequence[int]],
    tokenizer,
    max_new_tokens: int,
    lengths: Sequence[int],
    eager_forward: LogitsFn | None = None,
    near_tie_margin: float = 0.0,
    examples: int = 5,
) -> Result:
    """Share of `prompts` whose greedy reply through `forward` has eager's canonical answer.

    eager_forward (needed when near_tie_margin > 0) gives eager's logits where two replies part."""
    if len(prompts) != len(eager_replies):
        raise ValueError(f"{len(prompts)} prompts but {len(eager_replies)} eager replies")
    agreed = regenerated = near_ties = 0
    disagreements = []
    for q, (prompt, expected) in enumerate(zip(prompts, eager_replies, strict=True)):
        reply, held = artifact_reply(
            forward, prompt, expected, tokenizer.eos_id, max_new_tokens, lengths, tokenizer.pad_id
        )
        regenerated += not held
        want = teacher.canonical_reply(expected, tokenizer)
        got = teacher.canonical_reply(reply, tokenizer)
        if (want is not None and got == want) or (want is None and list(reply) == list(expected)):
            agreed += 1
            continue
        if near_tie_margin > 0 and _parts_at_near_tie(
            eager_forward, prompt, expected, reply, lengths, tokenizer.pad_id, near_tie_margin
        ):
            near_ties += 1
        elif len(disagreements) < examples:
            disagreements.append((q, tokenizer.decode(list(expected)), tokenizer.decode(reply)))
    return Result(len(prompts), agreed, near_ties, regenerated, tuple(disagreements))


def _parts_at_near_tie(eager_forward, prompt, expected, reply, lengths, pad_id, margin) -> bool:
    """Whether eager's top two logits lie within `margin` at the first step the replies differ."""
    step = next(
        (i for i, (a, b) in enumerate(zip(expected, reply, strict=False)) if a != b),
        min(len(expected), len(reply)),
    )
    if step >= len(expected) or step >= len(reply):
        return False  # one reply is a prefix of the other: it stopped early or ran on, not a tie
    top2 = np.sort(_next_logits(eager_forward, [*prompt, *expected[:step]], lengths, pad_id))[-2:]
    return bool(top2[1] - top2[0] < margin)
