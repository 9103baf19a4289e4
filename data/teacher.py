"""The teacher: a rule-based Magic 8 Ball whose answer distribution depends on the question's wording.

answer_distribution(question) = softmax(SCALE * logits) over the 20 classic answers, where the
logits are a sum of feature vectors chosen by reading the question. Nothing is hashed: two
questions get the same distribution exactly when they trigger the same features.

Answers are grouped:  STRONG_YES 0-4 · SOFT_YES 5-9 · HAZY 10-14 · STRONG_NO 15,16,19 · SOFT_NO 17,18
(POSITIVE = 0-9, NEGATIVE = 15-19). Words are the lower-cased runs of [a-z0-9'] ("’" counts as "'").
Any text is a question to it: the training noise (data/augment.py) and the out-of-distribution set
(ood/) are read by the same rules, so a question in another script (no such words) is kind
"other" with no topic, and the teacher stays a pure function of the text.

| feature (how it is read)                        | added to the logits                                   |
| ----------------------------------------------- | ----------------------------------------------------- |
| kind = first word, contraction undone           | KIND_RULES[kind], e.g. will: Outlook good/not so good |
|   (won't -> will, can't -> can; else "other")   |   +0.6; is: It is certain +0.7; other: HAZY +1.0      |
| topic: any word of TOPICS[topic], each topic    | TOPIC_RULES[topic], e.g. money: NEGATIVE +0.5;        |
|   counted once (money, love, weather, exams,    |   love: POSITIVE +0.6; weather: HAZY +0.6;            |
|   health, travel, work, luck)                   |   exams: Concentrate and ask again +0.9               |
| negation: not, never, cannot, *n't (max 2)      | per word: POSITIVE -0.9, NEGATIVE +1.1, HAZY +0.2     |
| intensifier: really, truly, definitely, ...     | per word: STRONG_YES/STRONG_NO +0.6, HAZY -0.5        |
|   (max 2)                                       |                                                       |
| hedge: maybe, perhaps, possibly, ... (max 2)    | per word: HAZY +0.6, SOFT_YES/SOFT_NO +0.3,           |
|                                                 |   STRONG_YES/STRONG_NO -0.3                           |
| emoji 🎱 / 🔮 / ✨ / 🌟 (each counted once)     | STRONG_NO +0.5 & My reply is no +0.4 / HAZY +0.5 &    |
|                                                 |   Cannot predict now +0.6 / POSITIVE +0.5 /           |
|                                                 |   STRONG_YES +0.8                                     |
| no "?" at the end (emoji and spaces ignored)    | HAZY +0.3, Concentrate and ask again +0.7             |

The exact vectors are the *_RULES tables below. SCALE = 1.5 sharpens the softmax a little: over
the generated questions the top answer carries 11-40% of the mass (5th-95th percentile), soft
enough that the whole distribution is worth distilling.

A completion is " {answer} {flair}" with the flair fixed by the answer's group (🌟 strong yes,
✨ soft yes, 🔮 hazy, 🎱 no), so the answer distribution is also a distribution over completions.
TokenTeacher turns it into the exact next-token distribution at each completion position under a
tokenizer, and its top-k (ids, log-probabilities): the shape an LLM API's logprobs return.
"""

import math
import re
from collections.abc import Sequence

import numpy as np

from common.errors import InputError
from data import tokenizer as tokenizer_types

NAME = "m8b-rules-v1"  # the dataset header's "teacher"

ANSWERS = [
    "It is certain.",
    "It is decidedly so.",
    "Without a doubt.",
    "Yes definitely.",
    "You may rely on it.",
    "As I see it, yes.",
    "Most likely.",
    "Outlook good.",
    "Yes.",
    "Signs point to yes.",
    "Reply hazy, try again.",
    "Ask again later.",
    "Better not tell you now.",
    "Cannot predict now.",
    "Concentrate and ask again.",
    "Don't count on it.",
    "My reply is no.",
    "My sources say no.",
    "Outlook not so good.",
    "Very doubtful.",
]
FLAIRS = ["🎱", "🔮", "✨", "🌟"]

STRONG_YES = (0, 1, 2, 3, 4)
SOFT_YES = (5, 6, 7, 8, 9)
HAZY = (10, 11, 12, 13, 14)
STRONG_NO = (15, 16, 19)
SOFT_NO = (17, 18)
POSITIVE = STRONG_YES + SOFT_YES
NEGATIVE = (15, 16, 17, 18, 19)
SCALE = 1.5

# A rule is a list of (answers, weight); the weight is added to each listed answer's logit.
Rule = list[tuple[Sequence[int], float]]

KIND_RULES: dict[str, Rule] = {
    "will": [(SOFT_YES, 0.3), ((7, 18), 0.6), ((13,), 0.4)],
    "should": [((5,), 0.6), ((12,), 0.8), ((15,), 0.4), ((4,), 0.3)],
    "can": [((8, 2), 0.6), ((19,), 0.4)],
    "could": [((6,), 0.6), ((8,), 0.3), ((19,), 0.4)],
    "do": [((9, 16), 0.6), ((3,), 0.3)],
    "does": [((9, 17), 0.6)],
    "did": [((17,), 0.7), ((1,), 0.5), ((13,), -0.3)],
    "is": [((0,), 0.7), ((1,), 0.5), ((17,), 0.4)],
    "are": [((1,), 0.5), ((9, 18), 0.4)],
    "am": [((4,), 0.6), ((5,), 0.5), ((19,), 0.3)],
    "would": [((6,), 0.7), ((10,), 0.4)],
    "may": [((4,), 0.8), ((11,), 0.4)],
    "other": [(HAZY, 1.0), ((14,), 0.5)],
}
# First word -> kind. Contractions are undone first (won't -> will, can't -> can).
_KIND_OF_WORD = {k: k for k in KIND_RULES if k != "other"} | {
    "shall": "will",
    "cannot": "can",
    "might": "may",
}
_CONTRACTIONS = {"won't": "will", "can't": "can", "shan't": "shall"}

TOPICS: dict[str, frozenset[str]] = {
    "money": frozenset("money rich lottery raise salary debt pay cash house buy save savings".split()),
    "love": frozenset("love crush date marry soulmate romance partner heart kiss".split()),
    "weather": frozenset("weather rain snow sun sunshine sunny storm winter summer".split()),
    "exams": frozenset("exam exams test grade grades pass school homework graduate study math".split()),
    "health": frozenset("health healthy sick better doctor sleep marathon cold recover gym".split()),
    "travel": frozenset("travel trip flight vacation japan paris visit journey abroad".split()),
    "work": frozenset("job work boss promoted promotion project career interview".split()),
    "luck": frozenset("luck lucky win game games odds".split()),
}
TOPIC_RULES: dict[str, Rule] = {
    "money": [(NEGATIVE, 0.5), ((15,), 0.6), (POSITIVE, -0.2)],
    "love": [(POSITIVE, 0.6), ((9,), 0.4)],
    "weather": [(HAZY, 0.6), ((10,), 0.6), ((7, 18), 0.5)],
    "exams": [((14,), 0.9), (STRONG_YES, 0.3)],
    "health": [(POSITIVE, 0.5), ((4,), 0.4), (STRONG_NO, -0.4)],
    "travel": [(SOFT_YES, 0.5), ((11,), 0.5)],
    "work": [((6,), 0.5), (HAZY, 0.3), ((17,), 0.3)],
    "luck": [(NEGATIVE, 0.3), ((19,), 0.6), (STRONG_YES, 0.2)],
}

NEGATIONS = frozenset({"not", "never", "cannot"})  # plus every word ending in "n't"
INTENSIFIERS = frozenset("really truly definitely absolutely surely certainly ever totally very so".split())
HEDGES = frozenset("maybe perhaps possibly might someday probably somehow".split())
MAX_REPEATS = 2  # "really really really" says no more than "really really"

NEGATION_RULE: Rule = [(POSITIVE, -0.9), (NEGATIVE, 1.1), (HAZY, 0.2)]
INTENSIFIER_RULE: Rule = [(STRONG_YES + STRONG_NO, 0.6), (HAZY, -0.5)]
HEDGE_RULE: Rule = [(HAZY, 0.6), (SOFT_YES + SOFT_NO, 0.3), (STRONG_YES + STRONG_NO, -0.3)]
EMOJI_RULES: dict[str, Rule] = {
    "🎱": [(STRONG_NO, 0.5), ((16,), 0.4)],
    "🔮": [(HAZY, 0.5), ((13,), 0.6)],
    "✨": [(POSITIVE, 0.5)],
    "🌟": [(STRONG_YES, 0.8)],
}
NO_QUESTION_MARK_RULE: Rule = [(HAZY, 0.3), ((14,), 0.7)]

_WORD = re.compile(r"[a-z0-9']+")


def _words(question: str) -> list[str]:
    return _WORD.findall(question.lower().replace("\u2019", "'"))


def question_kind(question: str) -> str:
    """The auxiliary the question starts with (will, should, is, can, do, am, are, ...) or "other"."""
    words = _words(question)
    if not words:
        return "other"
    first = _CONTRACTIONS.get(words[0], words[0])
    if first.endswith("n't"):
        first = first[:-3]
    return _KIND_OF_WORD.get(first, "other")


def features(question: str) -> list[tuple[str, Rule]]:
    """The (name, rule) pairs the question triggers, in a fixed order: what explains its distribution."""
    words = _words(question)
    found: list[tuple[str, Rule]] = [(f"kind:{question_kind(question)}", KIND_RULES[question_kind(question)])]
    present = set(words)
    found += [(f"topic:{t}", TOPIC_RULES[t]) for t in TOPICS if present & TOPICS[t]]
    negations = sum(1 for w in words if w in NEGATIONS or w.endswith("n't"))
    found += [("negation", NEGATION_RULE)] * min(negations, MAX_REPEATS)
    found += [("intensifier", INTENSIFIER_RULE)] * min(sum(w in INTENSIFIERS for w in words), MAX_REPEATS)
    found += [("hedge", HEDGE_RULE)] * min(sum(w in HEDGES for w in words), MAX_REPEATS)
    found += [(f"emoji:{e}", EMOJI_RULES[e]) for e in FLAIRS if e in question]
    if not question.rstrip(" " + "".join(FLAIRS)).endswith("?"):
        found.append(("no-question-mark", NO_QUESTION_MARK_RULE))
    return found


def _probabilities(question: str) -> list[float]:
    logits = [0.0] * len(ANSWERS)
    for _, rule in features(question):
        for answers, weight in rule:
            for a in answers:
                logits[a] += weight
    # Plain Python floats and math.exp: the same bits on every machine (NumPy's SIMD exp may not be).
    top = max(logits)
    weights = [math.exp(SCALE * (x - top)) for x in logits]
    total = math.fsum(weights)
    return [w / total for w in weights]


def answer_distribution(question: str) -> np.ndarray:
    """float64 [20]: the teacher's probability of each of ANSWERS for `question`; sums to 1."""
    return np.array(_probabilities(question), dtype=np.float64)


def flair(answer_index: int) -> str:
    if answer_index in STRONG_YES:
        return "🌟"
    if answer_index in SOFT_YES:
        return "✨"
    return "🔮" if answer_index in HAZY else "🎱"


def completion_text(answer_index: int) -> str:
    """ " {answer} {flair}": what the model should write after "A:" (then eos)."""
    if not 0 <= answer_index < len(ANSWERS):
        raise ValueError(f"answer index {answer_index} is not in [0, {len(ANSWERS)})")
    return f" {ANSWERS[answer_index]} {flair(answer_index)}"


# The one definition of a canonical reply (issue 17): exactly one of the 20 answers, then the flair
# of that answer's group, then the end token. What the teacher writes, exactly: a hybrid, a
# truncation, a missing or wrong-group flair, or anything around it is not canonical.
_COMPLETIONS = {completion_text(a): a for a in range(len(ANSWERS))}


def canonical_answer(text: str) -> int | None:
    """a when `text` is exactly completion_text(a) (" " + ANSWERS[a] + " " + flair(a)), else None.

    `text` is what the model wrote after "A:" before the end token; `ask` prints it stripped.
    """
    return _COMPLETIONS.get(text)


def canonical_reply(reply_ids: Sequence[int], tokenizer) -> int | None:
    """The answer index of a canonical reply, else None.

    Canonical: reply_ids ends with the tokenizer's eos (its only eos), every id before it writes
    text (no control, unknown or unused token hides in it), and that text is canonical_answer's.
    """
    ids = [int(i) for i in reply_ids]
    if not ids or ids[-1] != tokenizer.eos_id or tokenizer.eos_id in ids[:-1]:
        return None
    writes = (tokenizer_types.NORMAL, tokenizer_types.BYTE)
    if not all(0 <= i < tokenizer.vocab_size and tokenizer.token_types[i] in writes for i in ids[:-1]):
        return None
    return canonical_answer(tokenizer.decode(ids[:-1]))


class TokenTeacher:
    """The teacher seen one token at a time, under a given tokenizer.

    Every answer has one token sequence, encode(completion_text(a)) + [eos]. After a prefix of
    answer a's sequence, the next-token distribution marginalises over the answers whose sequences
    share that prefix: p(x | prefix) = sum of p(b) over those b whose next token is x, normalised.
    The product of these along a's sequence is exactly p(a).
    """

    def __init__(self, tokenizer):
        self.sequences = [
            tokenizer.encode(completion_text(a)) + [tokenizer.eos_id] for a in range(len(ANSWERS))
        ]
        if len({tuple(s) for s in self.sequences}) != len(ANSWERS):
            raise InputError(
                "tokenizer: two answers encode to the same tokens; the teacher cannot tell them apart"
            )

    def next_token_distributions(self, probs: Sequence[float], answer_index: int) -> list[dict[int, float]]:
        """For each position of answer_index's sequence: {token id: probability} (only nonzero ids)."""
        target = self.sequences[answer_index]
        alive = [a for a in range(len(ANSWERS)) if probs[a] > 0]
        out = []
        for t, token in enumerate(target):
            mass: dict[int, float] = {}
            for a in alive:
                mass[self.sequences[a][t]] = mass.get(self.sequences[a][t], 0.0) + float(probs[a])
            total = math.fsum(mass.values())
            out.append({x: m / total for x, m in mass.items()})
            alive = [a for a in alive if self.sequences[a][t] == token]
        return out

    def top_k(
        self, probs: Sequence[float], answer_index: int, k: int
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Per completion position, the k most likely next tokens (ties: lower id) and their log-probs."""
        if not 1 <= k <= 32:
            raise InputError(f"top-k: k is {k}; use 1..32")
        ids, logprobs = [], []
        for dist in self.next_token_distributions(probs, answer_index):
            best = sorted(dist.items(), key=lambda item: (-item[1], item[0]))[:k]
            ids.append([x for x, _ in best])
            logprobs.append([min(0.0, math.log(p)) for _, p in best])
        return ids, logprobs
