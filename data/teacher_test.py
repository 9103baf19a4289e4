import math

import numpy as np
import pytest

from common.errors import InputError
from data import teacher
from data import tokenizer as tk


def mass(question: str, group) -> float:
    return float(teacher.answer_distribution(question)[list(group)].sum())


@pytest.fixture(scope="module")
def tok() -> tk.Tokenizer:
    corpus = [teacher.completion_text(a) for a in range(20)] * 5 + ["Q: Will I pass my exams?\nA:"]
    return tk.train(corpus, vocab_size=400)


@pytest.fixture(scope="module")
def token_teacher(tok) -> teacher.TokenTeacher:
    return teacher.TokenTeacher(tok)


def test_answers_and_groups():
    assert len(teacher.ANSWERS) == len(set(teacher.ANSWERS)) == 20
    assert teacher.ANSWERS[0] == "It is certain." and teacher.ANSWERS[19] == "Very doubtful."
    groups = [teacher.STRONG_YES, teacher.SOFT_YES, teacher.HAZY, teacher.STRONG_NO, teacher.SOFT_NO]
    assert sorted(i for g in groups for i in g) == list(range(20))
    assert sorted(teacher.POSITIVE + teacher.HAZY + teacher.NEGATIVE) == list(range(20))
    assert teacher.FLAIRS == ["🎱", "🔮", "✨", "🌟"]


@pytest.mark.parametrize(
    "question, kind",
    [
        ("Will I pass?", "will"),
        ("won't I pass?", "will"),
        ("Won’t I pass?", "will"),
        ("Shall we dance?", "will"),
        ("Should I go?", "should"),
        ("Shouldn't I go?", "should"),
        ("Is it true?", "is"),
        ("Isn't it true?", "is"),
        ("Can I win?", "can"),
        ("Can't I win?", "can"),
        ("Cannot I win?", "can"),
        ("Could I win?", "could"),
        ("Do you know?", "do"),
        ("Don't you know?", "do"),
        ("Does it matter?", "does"),
        ("Did it work?", "did"),
        ("Am I right?", "am"),
        ("Are we there?", "are"),
        ("Aren't we there?", "are"),
        ("Would it help?", "would"),
        ("May I ask?", "may"),
        ("  WILL I pass?", "will"),
        ("What is love?", "other"),
        ("Tell me.", "other"),
        ("", "other"),
        ("🎱", "other"),
    ],
)
def test_question_kind_reads_the_first_word(question, kind):
    assert teacher.question_kind(question) == kind


def test_distribution_is_a_deterministic_probability_vector():
    p = teacher.answer_distribution("Will I pass my exams? 🔮")
    assert p.shape == (20,) and p.dtype == np.float64
    assert np.all(p > 0) and math.isclose(p.sum(), 1.0, abs_tol=1e-12)
    teacher.answer_distribution("Can't I get rich?")  # no hidden state between calls
    assert teacher.answer_distribution("Will I pass my exams? 🔮").tobytes() == p.tobytes()


def test_wording_decides_the_distribution_not_a_hash_of_the_text():
    # Same features (kind will, no topic) -> exactly the same distribution.
    assert np.array_equal(
        teacher.answer_distribution("Will I adopt a puppy?"),
        teacher.answer_distribution("Will I find my keys?"),
    )
    assert np.array_equal(
        teacher.answer_distribution("Will I pass my exams?"),
        teacher.answer_distribution("WILL I PASS MY EXAMS?"),
    )
    # A different kind changes it.
    assert not np.allclose(
        teacher.answer_distribution("Will I adopt a puppy?"),
        teacher.answer_distribution("Can I adopt a puppy?"),
    )


@pytest.mark.parametrize(
    "plain, negated",
    [
        ("Will I pass my exams?", "Won't I pass my exams?"),
        ("Can I get rich?", "Can I not get rich?"),
        ("Should I travel to Japan?", "Should I never travel to Japan?"),
        ("Is it my destiny to find love?", "Isn't it my destiny to find love?"),
        ("What are the odds?", "What are the odds I never win?"),
    ],
)
def test_negation_moves_mass_to_negative_answers(plain, negated):
    assert mass(negated, teacher.NEGATIVE) > mass(plain, teacher.NEGATIVE) + 0.15
    assert mass(negated, teacher.POSITIVE) < mass(plain, teacher.POSITIVE) - 0.15
    assert mass("Won't I never pass my exams?", teacher.NEGATIVE) > mass(
        "Won't I pass my exams?", teacher.NEGATIVE
    )


def test_topics_intensifiers_hedges_and_emoji_have_their_documented_effects():
    base = "Will I adopt a puppy?"
    strong = teacher.STRONG_YES + teacher.STRONG_NO
    assert mass("Will I really adopt a puppy?", strong) > mass(base, strong) + 0.1
    assert mass("Will I maybe adopt a puppy?", teacher.HAZY) > mass(base, teacher.HAZY) + 0.1
    assert mass("Will I find love?", teacher.POSITIVE) > mass(base, teacher.POSITIVE) + 0.1
    assert mass("Will I get rich?", teacher.NEGATIVE) > mass(base, teacher.NEGATIVE) + 0.1
    assert mass("Will it rain?", teacher.HAZY) > mass(base, teacher.HAZY) + 0.1
    assert mass("Will I stay healthy?", teacher.POSITIVE) > mass(base, teacher.POSITIVE) + 0.1
    exams = teacher.answer_distribution("Will I pass my exams?")
    assert int(np.argmax(exams)) == teacher.ANSWERS.index("Concentrate and ask again.")
    assert mass(base + " 🔮", teacher.HAZY) > mass(base, teacher.HAZY) + 0.1
    assert mass(base + " 🌟", teacher.STRONG_YES) > mass(base, teacher.STRONG_YES) + 0.1
    assert mass(base + " ✨", teacher.POSITIVE) > mass(base, teacher.POSITIVE) + 0.1
    assert mass(base + " 🎱", teacher.STRONG_NO) > mass(base, teacher.STRONG_NO) + 0.05
    # No question mark: the ball asks you to concentrate.
    concentrate = teacher.ANSWERS.index("Concentrate and ask again.")
    assert (
        teacher.answer_distribution("Will I adopt a puppy")[concentrate]
        > 2 * teacher.answer_distribution(base)[concentrate]
    )
    assert (
        teacher.answer_distribution("Will I adopt a puppy? 🔮")[concentrate]
        < teacher.answer_distribution("Will I adopt a puppy 🔮")[concentrate]
    )


def test_repeated_modifiers_are_capped():
    assert np.array_equal(
        teacher.answer_distribution("Will I really really adopt a puppy?"),
        teacher.answer_distribution("Will I really really really adopt a puppy?"),
    )


def test_features_explain_the_logits():
    names = [name for name, _ in teacher.features("Won't I really get rich? 🔮")]
    assert names == ["kind:will", "topic:money", "negation", "intensifier", "emoji:🔮"]
    assert [name for name, _ in teacher.features("tell me about the weather")] == [
        "kind:other",
        "topic:weather",
        "no-question-mark",
    ]


def test_completion_text():
    assert teacher.completion_text(0) == " It is certain. 🌟"
    assert teacher.completion_text(5) == " As I see it, yes. ✨"
    assert teacher.completion_text(10) == " Reply hazy, try again. 🔮"
    assert teacher.completion_text(19) == " Very doubtful. 🎱"
    with pytest.raises(ValueError):
        teacher.completion_text(20)


def test_a_canonical_reply_is_an_answer_its_flair_and_the_end_token(tok):
    """The definition of issue 17: one of the 20 answers, the flair of its group, the end token."""
    eos = tok.eos_id
    for a in range(20):
        ids = tok.encode(teacher.completion_text(a))
        assert teacher.canonical_reply([*ids, eos], tok) == a
        assert teacher.canonical_answer(teacher.completion_text(a)) == a
        assert teacher.canonical_reply(ids, tok) is None  # no end token
        assert teacher.canonical_reply([*ids, eos, eos], tok) is None  # something after it
        assert teacher.canonical_reply([*tok.encode(" " + teacher.ANSWERS[a]), eos], tok) is None  # no flair
        assert teacher.canonical_reply([*ids[:-1], eos], tok) is None  # truncated
        assert teacher.canonical_reply([tok.pad_id, *ids, eos], tok) is None  # a hidden control token
        # Every other group's flair is refused.
        for f in set(teacher.FLAIRS) - {teacher.flair(a)}:
            assert teacher.canonical_answer(f" {teacher.ANSWERS[a]} {f}") is None
    assert teacher.canonical_reply([*tok.encode(" Yes. 🎱"), eos], tok) is None  # "Yes." is soft yes: ✨
    assert teacher.canonical_reply([], tok) is None
    assert teacher.canonical_reply([eos], tok) is None


def test_hybrids_and_near_misses_are_not_canonical(tok):
    hybrids = [
        " It is certain. ✨",  # strong-yes answer, soft-yes flair
        " It is decidedly no. 🎱",  # starts one answer, ends like another
        " My reply is certain. 🌟",
        " Outlook good so good. ✨",
        " Yes definitely. Very doubtful. 🎱",  # two answers
        " Yes. ✨ ✨",
        " Yes.  ✨",
        " yes. ✨",
        " Yes ✨",
        "Yes. ✨",  # the leading space the teacher writes is part of the reply
        " Yes. ✨ ",
        "",
    ]
    for text in hybrids:
        assert teacher.canonical_answer(text) is None, text
        assert teacher.canonical_reply([*tok.encode(text), tok.eos_id], tok) is None, text


def test_next_token_distributions_are_normalised_and_multiply_back_to_the_answer(token_teacher):
    probs = teacher.answer_distribution("Should I really travel to Japan? ✨")
    for a in range(20):
        dists = token_teacher.next_token_distributions(probs, a)
        assert len(dists) == len(token_teacher.sequences[a])
        product = 1.0
        for dist, token in zip(dists, token_teacher.sequences[a], strict=True):
            assert math.isclose(math.fsum(dist.values()), 1.0, abs_tol=1e-12)
            product *= dist[token]
        assert math.isclose(product, probs[a], rel_tol=1e-9)
        assert dists[-1] == {2: 1.0}  # after the flair only eos is possible


def test_first_position_marginalises_over_answers_sharing_a_first_token(token_teacher):
    probs = teacher.answer_distribution("Will I win?")
    first = token_teacher.next_token_distributions(probs, 0)[0]
    expected: dict[int, float] = {}
    for a, seq in enumerate(token_teacher.sequences):
        expected[seq[0]] = expected.get(seq[0], 0.0) + probs[a]
    assert first.keys() == expected.keys()
    assert all(math.isclose(first[x], expected[x], rel_tol=1e-12) for x in expected)
    assert len(first) < 20  # some answers share a first token ("▁Yes", "▁It", ...)


def test_top_k_has_the_llm_api_shape(token_teacher):
    probs = teacher.answer_distribution("Can I get a raise? 🎱")
    answer = 16
    dists = token_teacher.next_token_distributions(probs, answer)
    for k in (1, 3, 32):
        ids, logprobs = token_teacher.top_k(probs, answer, k)
        assert len(ids) == len(logprobs) == len(token_teacher.sequences[answer])
        for pos, (row_ids, row_lp) in enumerate(zip(ids, logprobs, strict=True)):
            assert 1 <= len(row_ids) == len(row_lp) <= k
            assert row_lp == sorted(row_lp, reverse=True) and all(lp <= 0 for lp in row_lp)
            for x, lp in zip(row_ids, row_lp, strict=True):
                assert math.isclose(math.exp(lp), dists[pos][x], rel_tol=1e-12)
            assert row_ids[0] == max(dists[pos], key=lambda x: (dists[pos][x], -x))
        if k == 32:
            assert all(set(row) == set(d) for row, d in zip(ids, dists, strict=True))
    for bad in (0, 33):
        with pytest.raises(InputError, match="use 1..32"):
            token_teacher.top_k(probs, answer, bad)


def test_token_teacher_uses_the_tokenizers_completion_ids(tok, token_teacher):
    assert token_teacher.sequences[7] == tok.encode(" Outlook good. ✨") + [tok.eos_id]
    assert all(seq[-1] == tok.eos_id and tok.eos_id not in seq[:-1] for seq in token_teacher.sequences)
