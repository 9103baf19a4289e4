"""Constrained decoding: the token paths that spell a canonical reply, as a trie.

A canonical reply (data/teacher.py, canonical_reply) is one of the 20 answers, the flair of its
group, then the end token. Under a tokenizer each has exactly one token sequence,
encode(completion_text(a)) + [eos] (the teacher's own, TokenTeacher.sequences), so the trie over
those 20 sequences holds every canonical path and nothing else: a decoder that only picks tokens
the trie allows after what it has written ends in a canonical reply, whatever the model's logits.

This is a guarantee layered on top of the model (`ask --constrain`); the quality numbers
(//pipeline:robustness_test, //pipeline:student_quality_test) measure the model unconstrained.
`gbnf()` states the same set of replies as a llama.cpp grammar (GBNF), for llama.cpp's own tools.
"""

from collections.abc import Sequence

import numpy as np

from data import teacher


class CanonicalTrie:
    def __init__(self, tokenizer):
        self.sequences = [list(s) for s in teacher.TokenTeacher(tokenizer).sequences]
        self.longest = max(len(s) for s in self.sequences)
        self._next: dict[tuple[int, ...], set[int]] = {}
        for seq in self.sequences:
            for t in range(len(seq)):
                self._next.setdefault(tuple(seq[:t]), set()).add(seq[t])

    def allowed(self, written: Sequence[int]) -> list[int]:
        """The token ids that may follow `written` (the reply so far), ascending; [] once complete."""
        return sorted(self._next.get(tuple(int(i) for i in written), ()))

    def mask(self, logits: np.ndarray, written: Sequence[int]) -> np.ndarray:
        """`logits` [V] with every id the trie does not allow after `written` set to -inf."""
        allowed = self.allowed(written)
        if not allowed:
            raise ValueError(f"reply {list(written)} is complete or left the canonical replies")
        out = np.full(np.shape(logits), -np.inf, dtype=np.float64)
        out[allowed] = np.asarray(logits, dtype=np.float64)[allowed]
        return out


def gbnf() -> str:
    """A llama.cpp grammar whose language is exactly the 20 canonical reply texts."""

    def literal(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    replies = [literal(teacher.completion_text(a)) for a in range(len(teacher.ANSWERS))]
    return "root ::= " + " | ".join(replies) + "\n"
