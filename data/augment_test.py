import random

from data import augment, generate, teacher

QUESTIONS = [text for _, _, text in generate.question_space()][::97]


def test_noisy_is_deterministic_one_line_and_changes_the_question():
    for i, q in enumerate(QUESTIONS):
        a = augment.noisy(q, random.Random(i))
        assert a == augment.noisy(q, random.Random(i))
        assert a and "\n" not in a and "\r" not in a and "  " not in a
        a.encode("utf-8")  # no lone surrogates
    changed = sum(augment.noisy(q, random.Random(i)) != q for i, q in enumerate(QUESTIONS))
    assert changed >= 0.95 * len(QUESTIONS)


def test_every_operation_is_used_and_does_what_it_says():
    q = "Will I get a raise?"
    rng = random.Random(0)
    assert any(augment._case(q, rng) in (q.lower(), q.upper()) for _ in range(20))
    assert {augment._punctuation(q, rng)[len("Will I get a raise") :] for _ in range(200)} >= {"", "??", "!"}
    assert sum(augment._typo(q, rng) != q for _ in range(100)) >= 80
    assert all(augment._preamble(q, rng).endswith("?") for _ in range(50))
    assert any(not augment._rephrase(q, rng).endswith("?") for _ in range(50))  # requests
    assert all(any(ord(c) > 0x2500 for c in augment._emoji(q, rng)) for _ in range(50))
    assert all(any(ord(c) > 0xDF for c in augment._script(q, rng)) for _ in range(50))


def test_the_teacher_answers_noisy_questions():
    for i, q in enumerate(QUESTIONS):
        probs = teacher.answer_distribution(augment.noisy(q, random.Random(i)))
        assert abs(probs.sum() - 1) < 1e-12 and probs.min() > 0
