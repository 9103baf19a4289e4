"""The out-of-distribution (OOD) question set: read it, and build it from its two sources.

The set lives in ood/questions.tsv, one question per line: <style> TAB <source> TAB <question>,
source "hand" (ood/handwritten.tsv) or "composed" (ood/compose.py). build() makes that file's
lines from the two sources; //ood:questions_test checks the committed file equals them, and that
no question is one the training data's generator can produce. Nothing in training reads it.
"""

import dataclasses
import os

from common.errors import InputError
from ood import compose

STYLES = compose.STYLES
COMPOSED_PER_STYLE = 25
HERE = os.path.dirname(os.path.abspath(__file__))
HANDWRITTEN = os.path.join(HERE, "handwritten.tsv")
QUESTIONS = os.path.join(HERE, "questions.tsv")
HEADER = "# style\tsource\tquestion (made by `bazel run //ood:write_questions`; see docs/ood_questions.md)\n"


@dataclasses.dataclass(frozen=True)
class Question:
    style: str
    source: str
    text: str


def _lines(path: str) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as handle:
            raw = handle.read()
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    return [(n, line) for n, line in enumerate(raw.split("\n"), 1) if line and not line.startswith("#")]


def _checked(path: str, n: int, style: str, text: str) -> str:
    if style not in STYLES:
        raise InputError(f"{path}:{n}: style {style!r}; use one of {', '.join(STYLES)}")
    if not text.strip() or any(c in text for c in "\t\r\n"):
        raise InputError(f"{path}:{n}: the question is empty or holds a tab or line break")
    return text


def read_handwritten(path: str = HANDWRITTEN) -> list[Question]:
    out = []
    for n, line in _lines(path):
        style, _, text = line.partition("\t")
        out.append(Question(style, "hand", _checked(path, n, style, text)))
    return out


def build(handwritten: str = HANDWRITTEN) -> list[Question]:
    """Every question of the set: the hand-written ones, then the composed ones; no duplicates."""
    hand = read_handwritten(handwritten)
    composed = [Question(s, "composed", q) for s, q in compose.compose(COMPOSED_PER_STYLE)]
    seen: set[str] = set()
    for q in hand + composed:
        if q.text in seen:
            raise InputError(f"ood: {q.text!r} appears twice")
        seen.add(q.text)
    return hand + composed


def to_tsv(questions: list[Question]) -> str:
    return HEADER + "".join(f"{q.style}\t{q.source}\t{q.text}\n" for q in questions)


def load(path: str = QUESTIONS) -> list[Question]:
    """The committed set (ood/questions.tsv)."""
    out = []
    for n, line in _lines(path):
        parts = line.split("\t")
        if len(parts) != 3 or parts[1] not in ("hand", "composed"):
            raise InputError(f"{path}:{n}: expected <style> TAB <hand|composed> TAB <question>")
        out.append(Question(parts[0], parts[1], _checked(path, n, parts[0], parts[2])))
    return out
