"""Builds the toy KD dataset: questions from templates x subjects, answers and soft targets from the teacher.

A question is TEMPLATES[t] filled with SUBJECTS[s], in one of four wordings (plain, negated,
intensified with "really", hedged with "maybe") and with an optional trailing emoji, so each
(template, subject) combination gives 20 questions; the template fixes the question kind.

Held-out split: a fraction of the (template, subject) combinations, drawn from the seed, is kept
for held-out records only, so no held-out question shares its combination with a training question.
Every template and every subject still appears in some training combination.

Noise: a share (`noise_fraction`) of the training records get their question rewritten by
data/augment.py (casing, punctuation, typos, preambles, requests and open questions, emoji, other
scripts), drawn from a generator of their own per record id, so the clean records and every shard
are computed alike. Held-out records stay clean: they measure the held-out targets on the
generator's own grammar.

Records: each split draws its questions without replacement (cycling when it needs more than it
has), then the teacher samples an answer from answer_distribution(question); the record keeps the
completion text, its ids and the teacher's top-k next-token log-probabilities at every position.

The tokenizer is trained on every string the templates can produce: all prompts of all questions,
plus the 20 completions, each repeated as often as a uniform answer would appear. So it depends
on nothing but this file and the teacher, and none of these strings needs byte fallback. The noisy
questions are not in its corpus: where they hold a character it never saw (upper-case letters,
emoji, other scripts) they are written as byte tokens, which the student then learns to read.
"""

import dataclasses
import random

from common.errors import InputError
from data import augment, dataset, prompt, teacher
from data import tokenizer as tokenizer_lib

# (kind, plain form, negated form); "{s}" is the subject.
TEMPLATES = [
    ("will", "Will I {s}?", "Won't I {s}?"),
    ("will", "Will I {s} soon?", "Will I never {s}?"),
    ("will", "Shall I {s}?", "Shall I not {s}?"),
    ("should", "Should I try to {s}?", "Should I not try to {s}?"),
    ("should", "Should I hope to {s}?", "Shouldn't I hope to {s}?"),
    ("can", "Can I {s}?", "Can't I {s}?"),
    ("could", "Could I {s} this year?", "Couldn't I {s} this year?"),
    ("do", "Do you think I will {s}?", "Don't you think I will {s}?"),
    ("does", "Does fate want me to {s}?", "Doesn't fate want me to {s}?"),
    ("is", "Is it likely that I will {s}?", "Isn't it likely that I will {s}?"),
    ("is", "Is it my destiny to {s}?", "Is it not my destiny to {s}?"),
    ("am", "Am I going to {s}?", "Am I never going to {s}?"),
    ("am", "Am I ready to {s}?", "Am I not ready to {s}?"),
    ("are", "Are the stars aligned for me to {s}?", "Aren't the stars aligned for me to {s}?"),
    ("are", "Are my chances good that I will {s}?", "Aren't my chances good that I will {s}?"),
    ("would", "Would it be wise to {s}?", "Wouldn't it be wise to {s}?"),
    ("did", "Did the universe plan for me to {s}?", "Didn't the universe plan for me to {s}?"),
    ("may", "May I hope to {s}?", "May I not {s}?"),
    ("other", "Tell me if I will {s}.", "Tell me if I will never {s}."),
    ("other", "What are the odds that I {s}?", "What are the odds that I never {s}?"),
]

# Verb phrases, grouped by the teacher topic their words trigger (the last group triggers none).
SUBJECTS = [
    "get rich", "win the lottery", "get a raise", "pay off my debt", "buy a house", "save enough money",
    "find true love", "marry my crush", "get a second date", "meet my soulmate", "fall in love",
    "see sunshine tomorrow", "stay dry in the rain", "get snow this winter", "enjoy sunny weather",
    "dodge the storm",
    "pass my exams", "ace the math test", "get good grades", "graduate on time", "finish my homework",
    "feel better", "run a marathon", "sleep well tonight", "stay healthy", "recover from this cold",
    "travel to Japan", "catch my flight", "go on vacation", "visit Paris", "take a road trip",
    "get the job", "get promoted", "finish the project", "impress my boss", "ace the interview",
    "win the game", "make new friends", "learn to play guitar", "adopt a puppy", "find my lost keys",
]  # fmt: skip

WORDINGS = ("plain", "negated", "intensified", "hedged")
EMOJI_SUFFIXES = ("", " 🎱", " 🔮", " ✨", " 🌟")
NOISE_FRACTION = 0.5  # default share of training records whose question data/augment.py rewrites
LOGPROB_DECIMALS = 6  # enough for training; fewer digits keep files small and stable across libms


def question_text(template: int, subject: int, wording: str, emoji: str) -> str:
    _, plain, negated = TEMPLATES[template]
    s = SUBJECTS[subject]
    if wording == "negated":
        return negated.format(s=s) + emoji
    adverb = {"plain": "", "intensified": "really ", "hedged": "maybe "}[wording]
    return plain.format(s=adverb + s) + emoji


def question_space() -> list[tuple[tuple[int, int], str, str]]:
    """Every question the generator can ask, as ((template, subject), kind, text), in a fixed order."""
    return [
        ((t, s), TEMPLATES[t][0], question_text(t, s, wording, emoji))
        for t in range(len(TEMPLATES))
        for s in range(len(SUBJECTS))
        for wording in WORDINGS
        for emoji in EMOJI_SUFFIXES
    ]


def training_corpus() -> list[str]:
    """The strings the tokenizer learns from (module docstring)."""
    space = question_space()
    prompts = [prompt.format_prompt(text) for _, _, text in space]
    per_answer = len(space) // len(teacher.ANSWERS)
    return prompts + [teacher.completion_text(a) for a in range(len(teacher.ANSWERS))] * per_answer


def train_tokenizer() -> tokenizer_lib.Tokenizer:
    return tokenizer_lib.train(training_corpus(), tokenizer_lib.VOCAB_SIZE)


def heldout_combinations(seed: int, heldout_fraction: float) -> set[tuple[int, int]]:
    """The (template, subject) pairs reserved for held-out records, drawn from `seed`."""
    combos = [(t, s) for t in range(len(TEMPLATES)) for s in range(len(SUBJECTS))]
    random.Random(f"m8b-heldout-{seed}").shuffle(combos)
    target = round(len(combos) * heldout_fraction)
    # Keep at least one training combination per template and per subject.
    train_left = {("t", t): len(SUBJECTS) for t in range(len(TEMPLATES))}
    train_left |= {("s", s): len(TEMPLATES) for s in range(len(SUBJECTS))}
    held: set[tuple[int, int]] = set()
    for t, s in combos:
        if len(held) == target:
            break
        if train_left[("t", t)] > 1 and train_left[("s", s)] > 1:
            held.add((t, s))
            train_left[("t", t)] -= 1
            train_left[("s", s)] -= 1
    return held


def check_options(
    n: int, seed: int, heldout_fraction: float, topk: int, noise_fraction: float = NOISE_FRACTION
) -> None:
    """InputError naming the option (the make_toy_kd flag of the same name) when one is unusable."""
    check_question_options(n, seed, heldout_fraction, noise_fraction)
    if not 1 <= topk <= dataset.MAX_TOPK:
        raise InputError(f"--topk is {topk}; use 1..{dataset.MAX_TOPK}")


def check_question_options(n: int, seed: int, heldout_fraction: float, noise_fraction: float) -> None:
    """check_options without --topk: what choosing the questions needs."""
    if not 0.0 <= noise_fraction <= 1.0:
        raise InputError(f"--noise_fraction is {noise_fraction}; use a fraction in [0, 1]")
    if n < 2:
        raise InputError(f"--n is {n}; need at least 2 records (one train, one held out)")
    if seed < 0:
        raise InputError(f"--seed is {seed}; use a seed >= 0")
    if not 0.0 < heldout_fraction < 1.0:
        raise InputError(f"--heldout_fraction is {heldout_fraction}; use a fraction strictly between 0 and 1")
    n_heldout = round(n * heldout_fraction)
    if not 1 <= n_heldout <= n - 1:
        raise InputError(
            f"--n {n} with --heldout_fraction {heldout_fraction} gives {n_heldout} held-out records; "
            "both splits need at least one"
        )


def _draw(pool: list, count: int, rng: random.Random) -> list:
    out: list = []
    while len(out) < count:
        batch = list(pool)
        rng.shuffle(batch)
        out += batch[: count - len(out)]
    return out


def sample_answer(probs: list[float], u: float) -> int:
    """The answer index the uniform draw u picks from the answer probabilities (cumulative, in order)."""
    total = 0.0
    for i, p in enumerate(probs):
        total += p
        if u < total:
            return i
    return len(probs) - 1


def shard_range(n: int, shard: int, num_shards: int) -> range:
    """The record ids of shard `shard` of `num_shards`: contiguous, in order, together 0..n-1."""
    if not 1 <= num_shards <= n:
        raise InputError(f"--num_shards is {num_shards}; use 1..{n} (--n: at most one shard per record)")
    if not 0 <= shard < num_shards:
        raise InputError(f"--shard is {shard}; use 0..{num_shards - 1} (--num_shards is {num_shards})")
    return range(n * shard // num_shards, n * (shard + 1) // num_shards)


@dataclasses.dataclass(frozen=True)
class Question:
    """One record's question, as every teacher is asked it (the rules teacher and the others alike)."""

    id: int
    split: str  # "train" | "heldout"
    kind: str  # data.teacher.question_kind(question)
    question: str


def _plan(n: int, seed: int, heldout_fraction: float) -> tuple[list, list[float]]:
    """(split and question-space entry per record id, the rules teacher's answer draw per record id).

    One draw per record, in record order, whichever records are computed: the teacher's work (the
    expensive part) is what a shard skips, never the random stream.
    """
    held = heldout_combinations(seed, heldout_fraction)
    space = question_space()
    n_heldout = round(n * heldout_fraction)
    rng = random.Random(f"m8b-records-{seed}")
    chosen = [("train", q) for q in _draw([q for q in space if q[0] not in held], n - n_heldout, rng)]
    chosen += [("heldout", q) for q in _draw([q for q in space if q[0] in held], n_heldout, rng)]
    draws = [rng.random() for _ in chosen]
    return chosen, draws


def _question(index: int, chosen, seed: int, noise_fraction: float) -> Question:
    split, (_, kind, question) = chosen
    noise = random.Random(f"m8b-noise-{seed}-{index}")
    if split == "train" and noise.random() < noise_fraction:
        question = augment.noisy(question, noise)
        kind = teacher.question_kind(question)
    return Question(id=index, split=split, kind=kind, question=question)


def questions(
    n: int,
    seed: int,
    heldout_fraction: float,
    noise_fraction: float = NOISE_FRACTION,
    ids: range | None = None,
) -> list[Question]:
    """The questions of records `ids` (default 0..n-1): exactly those generate() asks the rules
    teacher with the same options, so every teacher answers the same prompts."""
    check_question_options(n, seed, heldout_fraction, noise_fraction)
    chosen, _ = _plan(n, seed, heldout_fraction)
    ids = range(n) if ids is None else ids
    return [_question(index, chosen[index], seed, noise_fraction) for index in ids]


def answer_draws(n: int, seed: int, heldout_fraction: float) -> list[float]:
    """The uniform draw per record id from which the rules teacher samples its answer."""
    check_question_options(n, seed, heldout_fraction, NOISE_FRACTION)
    return _plan(n, seed, heldout_fraction)[1]


def generate(
    n: int,
    seed: int,
    heldout_fraction: float,
    topk: int,
    tokenizer: tokenizer_lib.Tokenizer | None = None,
    ids: range | None = None,
    noise_fraction: float = NOISE_FRACTION,
) -> tuple[tokenizer_lib.Tokenizer, dict, list[dataset.Record]]:
    """(tokenizer, header, records): train records first, then held-out ones; ids 0..n-1.

    `ids` (a sub-range of 0..n-1, see shard_range) computes only those records, each exactly as
    the full run computes it: the header is the full dataset's, so shards concatenate into it.
    """
    check_options(n, seed, heldout_fraction, topk, noise_fraction)
    tok = tokenizer if tokenizer is not None else train_tokenizer()
    token_teacher = teacher.TokenTeacher(tok)
    n_heldout = round(n * heldout_fraction)
    chosen, draws = _plan(n, seed, heldout_fraction)
    ids = range(n) if ids is None else ids

    records = []
    for index in ids:
        asked = _question(index, chosen[index], seed, noise_fraction)
        probs = teacher.answer_distribution(asked.question).tolist()
        answer = sample_answer(probs, draws[index])
        completion = teacher.completion_text(answer)
        text = prompt.format_prompt(asked.question)
        topk_ids, logprobs = token_teacher.top_k(probs, answer, topk)
        records.append(
            dataset.Record(
                id=index,
                split=asked.split,
                kind=asked.kind,
                question=asked.question,
                prompt=text,
                completion=completion,
                prompt_ids=tok.encode(text),
                completion_ids=list(token_teacher.sequences[answer]),
                topk_ids=topk_ids,
                topk_logprobs=[[round_logprob(lp) for lp in row] for row in logprobs],
            )
        )
    header = {
        "format": dataset.FORMAT,
        "version": dataset.VERSION,
        "teacher": teacher.NAME,
        "tokenizer_sha256": tok.digest,
        "topk": topk,
        "vocab_size": tok.vocab_size,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "num_records": n,
        "num_heldout": n_heldout,
        "noise_fraction": noise_fraction,
    }
    return tok, header, records


def round_logprob(value: float) -> float:
    """A log-probability as datasets store it: LOGPROB_DECIMALS decimals, never -0.0 (it would print
    as -0.0)."""
    return round(value, LOGPROB_DECIMALS) + 0.0
