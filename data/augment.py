"""Noise for training questions: the same question as people really type it.

The generator's templates (data/generate.py) write every question in one grammar: capitalised,
one question mark, no typos. A student trained on that alone had never seen a lower-case question,
a typo, a long preamble, emoji or another script, and on such questions some replies left the 20
answers. `noisy(question, rng)` rewrites a training question with one to three of the operations
below, each drawn from `rng`; the teacher then answers the rewritten question (its features read
the new text), so the targets stay the teacher's own.

| operation   | what it does                                                              |
| ----------- | ------------------------------------------------------------------------- |
| case        | all lower, all upper, every word capitalised, or letters flipped at random |
| punctuation | the final "?" dropped, doubled, tripled, or "!", ".", " ?", "?!" instead  |
| typo        | one to three letters dropped, doubled, swapped or replaced                |
| preamble    | one (a quarter of the time two) PREAMBLES before, sometimes an AFTERTHOUGHT |
| rephrase    | the question as a request (REQUESTS) or an open question (OPEN_FRAMES)     |
| emoji       | one to three symbols from EMOJI_RANGES put between words                  |
| script      | a few words, or the whole question, in letters of another script          |
|             | (SCRIPT_RANGES): pseudo-words, not a vocabulary of any language           |

The lists here are this module's own; the out-of-distribution test set (ood/) has its own
generator and lists, and //ood:questions_test checks that they share no entry.
"""

import random

PREAMBLES = [
    "Hey,",
    "Quick question:",
    "I was wondering,",
    "Please answer honestly,",
    "Um, so,",
    "Dear magic ball,",
    "I keep thinking about this:",
    "My friend asked me to ask you:",
    "Sorry if this is silly, but",
    "One more time,",
    "Ok here goes,",
    "Before I go to sleep,",
    "I have been worrying about this for days and my family keeps giving me different advice, so",
    "Last night I dreamt about it and woke up confused, so",
]
AFTERTHOUGHTS = [
    "please",
    "honestly",
    "I need to know",
    "be kind",
    "just curious",
    "asking seriously",
    "it matters a lot to me",
]
# Requests and open questions around the generator's subject phrase; "{q}" is the question's body
# without its first word and question mark ("I get rich"), "{Q}" the whole question.
REQUESTS = [
    "Tell me truthfully: {Q}",
    "I want an answer. {Q}",
    "Please say whether {q}.",
    "Predict whether {q}.",
    "Tell me: {q}",
    "Answer this. {Q}",
    "{Q} Tell me.",
]
OPEN_FRAMES = [
    "Why {Q}",
    "How {Q}",
    "What about this: {Q}",
    "When {Q}",
    "Where {Q}",
    "Who knows {Q}",
]
# Code point ranges of emoji and symbols, and of letters in other scripts (a few per script).
EMOJI_RANGES = [
    (0x1F300, 0x1F5FF),
    (0x1F600, 0x1F64F),
    (0x1F680, 0x1F6FF),
    (0x1F900, 0x1F9FF),
    (0x2600, 0x26FF),
]
SCRIPT_RANGES = [
    (0x00E0, 0x00FF),  # Latin-1 letters with accents
    (0x0100, 0x017F),  # Latin Extended-A
    (0x0430, 0x044F),  # Cyrillic
    (0x03B1, 0x03C9),  # Greek
    (0x05D0, 0x05EA),  # Hebrew
    (0x0627, 0x064A),  # Arabic
    (0x0905, 0x0939),  # Devanagari
    (0x0E01, 0x0E2E),  # Thai
    (0x3041, 0x3096),  # Hiragana
    (0x30A1, 0x30FA),  # Katakana
    (0x4E00, 0x9FA5),  # CJK ideographs
    (0xAC00, 0xD7A3),  # Hangul syllables
]
ASCII_LETTERS = "abcdefghijklmnopqrstuvwxyz"
OPERATIONS = ("case", "punctuation", "typo", "preamble", "rephrase", "emoji", "script")


def _case(text: str, rng: random.Random) -> str:
    how = rng.randrange(4)
    if how == 0:
        return text.lower()
    if how == 1:
        return text.upper()
    if how == 2:
        return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))
    return "".join(c.swapcase() if rng.random() < 0.3 else c for c in text)


def _punctuation(text: str, rng: random.Random) -> str:
    body = text.rstrip("?")
    tail = text[len(body) :]
    if not tail:  # a statement: add one
        return body + rng.choice(["?", "??", "!", "..."])
    return body + rng.choice(["", "??", "???", "!", ".", " ?", "?!", "?."])


def _typo(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        letters = [i for i, c in enumerate(chars) if c.isalpha()]
        if not letters:
            break
        i = rng.choice(letters)
        how = rng.randrange(4)
        if how == 0 and len(letters) > 1:
            del chars[i]
        elif how == 1:
            chars.insert(i, chars[i])
        elif how == 2 and i + 1 < len(chars):
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        else:
            chars[i] = rng.choice(ASCII_LETTERS)
    return "".join(chars)


def _preamble(text: str, rng: random.Random) -> str:
    head = " ".join(rng.sample(PREAMBLES, 2 if rng.random() < 0.25 else 1))
    out = f"{head} {text[:1].lower()}{text[1:]}"
    if rng.random() < 0.4:
        out = f"{out.rstrip('?')}, {rng.choice(AFTERTHOUGHTS)}?"
    return out


def _rephrase(text: str, rng: random.Random) -> str:
    words = text.rstrip("?").split(" ")
    body = " ".join(words[1:]) if len(words) > 1 else text
    frame = rng.choice(REQUESTS + OPEN_FRAMES)
    return frame.format(Q=text, q=body)


def _symbol(ranges: list[tuple[int, int]], rng: random.Random) -> str:
    low, high = rng.choice(ranges)
    return chr(rng.randint(low, high))


def _emoji(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randint(0, len(words)), _symbol(EMOJI_RANGES, rng) * rng.randint(1, 2))
    return " ".join(words)


def _pseudo_word(rng: random.Random) -> str:
    low, high = rng.choice(SCRIPT_RANGES)
    return "".join(chr(rng.randint(low, high)) for _ in range(rng.randint(1, 4)))


def _script(text: str, rng: random.Random) -> str:
    if rng.random() < 0.4:  # the whole question in another script
        words = [_pseudo_word(rng) for _ in range(rng.randint(1, 4))]
        return " ".join(words) + rng.choice(["?", "？", "؟", ";", ""])
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        words[rng.randrange(len(words))] = _pseudo_word(rng)
    return " ".join(words)


_APPLY = {
    "case": _case,
    "punctuation": _punctuation,
    "typo": _typo,
    "preamble": _preamble,
    "rephrase": _rephrase,
    "emoji": _emoji,
    "script": _script,
}


def noisy(question: str, rng: random.Random) -> str:
    """`question` rewritten by one to three operations (module docstring), in a random order."""
    out = question
    for name in rng.sample(OPERATIONS, rng.randint(1, 3)):
        out = _APPLY[name](out, rng)
    out = " ".join(out.split())  # one line, no doubled spaces, never empty
    return out or question
