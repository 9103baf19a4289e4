import collections
import math
import random

import pytest

from common.errors import InputError
from data import dataset, generate, prompt, teacher
from data import tokenizer as tk


@pytest.fixture(scope="module")
def tok() -> tk.Tokenizer:
    return generate.train_tokenizer()


@pytest.fixture(scope="module")
def default_data(tok):
    return generate.generate(6000, 0, 0.2, 8, tokenizer=tok)


def test_question_space_is_templates_x_subjects_x_wordings_x_emoji():
    space = generate.question_space()
    assert len(space) == len(generate.TEMPLATES) * len(generate.SUBJECTS) * 4 * 5
    texts = [text for _, _, text in space]
    assert len(set(texts)) == len(texts)
    assert ((0, 0), "will", "Will I get rich?") in space
    assert ((0, 0), "will", "Won't I get rich? 🔮") in space
    assert ((5, 1), "can", "Can I really win the lottery? ✨") in space
    assert ((18, 6), "other", "Tell me if I will maybe find true love.") in space


def test_every_template_kind_is_what_the_teacher_reads():
    for _, kind, text in generate.question_space():
        assert teacher.question_kind(text) == kind, text


def test_wordings_reach_the_teacher_features():
    names = {name for _, _, text in generate.question_space() for name, _ in teacher.features(text)}
    for expected in ["negation", "intensifier", "hedge", "no-question-mark", "emoji:🎱", "emoji:🌟"]:
        assert expected in names
    assert {n for n in names if n.startswith("topic:")} == {f"topic:{t}" for t in teacher.TOPICS}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_heldout_combinations_are_seeded_and_leave_every_template_and_subject_in_training(seed):
    held = generate.heldout_combinations(seed, 0.2)
    n_combos = len(generate.TEMPLATES) * len(generate.SUBJECTS)
    assert len(held) == round(0.2 * n_combos)
    assert held == generate.heldout_combinations(seed, 0.2)
    train = {(t, s) for t in range(len(generate.TEMPLATES)) for s in range(len(generate.SUBJECTS))} - held
    assert {t for t, _ in train} == set(range(len(generate.TEMPLATES)))
    assert {s for _, s in train} == set(range(len(generate.SUBJECTS)))
    assert held != generate.heldout_combinations(seed + 1, 0.2)


def test_default_dataset_sizes_and_disjoint_splits(default_data):
    _, header, records = default_data
    assert header["num_records"] == len(records) == 6000
    counts = collections.Counter(r.split for r in records)
    assert counts == {"train": 4800, "heldout": 1200} and header["num_heldout"] == 1200
    assert [r.id for r in records] == list(range(6000))
    combo_of = {text: combo for combo, _, text in generate.question_space()}
    held = generate.heldout_combinations(0, 0.2)
    train_questions = {r.question for r in records if r.split == "train"}
    heldout_questions = [r.question for r in records if r.split == "heldout"]
    assert all(combo_of[q] in held for q in heldout_questions)  # held-out questions are clean
    clean = {q for q in train_questions if q in combo_of}
    assert all(combo_of[q] not in held for q in clean)
    assert not train_questions & set(heldout_questions)
    # About NOISE_FRACTION of the training questions were rewritten by data/augment.py.
    noisy = len([r for r in records if r.split == "train" and r.question not in combo_of])
    assert abs(noisy / 4800 - generate.NOISE_FRACTION) < 0.05
    assert len(set(heldout_questions)) == 1200  # drawn without replacement while the pool lasts


def test_records_are_consistent_with_prompt_tokenizer_and_teacher(tok, default_data):
    _, header, records = default_data
    assert header["tokenizer_sha256"] == tok.digest and header["teacher"] == teacher.NAME
    token_teacher = teacher.TokenTeacher(tok)
    for r in records[::97]:
        assert r.prompt == prompt.format_prompt(r.question)
        assert r.prompt_ids == tok.encode(r.prompt)
        assert r.completion_ids == tok.encode(r.completion) + [tok.eos_id]
        answer = teacher.canonical_answer(r.completion)
        assert answer is not None
        assert r.completion == teacher.completion_text(answer)
        ids, logprobs = token_teacher.top_k(teacher.answer_distribution(r.question), answer, 8)
        assert r.topk_ids == ids
        assert all(
            math.isclose(a, b, abs_tol=1e-6)
            for x, y in zip(r.topk_logprobs, logprobs, strict=True)
            for a, b in zip(x, y, strict=True)
        )
        assert all(0 < len(row) <= 8 for row in r.topk_ids)


def test_noise_fraction_zero_gives_only_template_questions(tok):
    _, header, records = generate.generate(200, 0, 0.2, 8, tok, noise_fraction=0.0)
    space = {text for _, _, text in generate.question_space()}
    assert header["noise_fraction"] == 0.0 and all(r.question in space for r in records)
    with pytest.raises(InputError, match="--noise_fraction"):
        generate.generate(200, 0, 0.2, 8, tok, noise_fraction=1.5)


def test_sampled_answers_follow_the_teacher(default_data):
    _, _, records = default_data
    # Over the dataset, the mean teacher probability of the sampled answer beats a uniform pick.
    picked = [
        teacher.answer_distribution(r.question)[teacher.canonical_answer(r.completion)] for r in records
    ]
    assert sum(picked) / len(picked) > 1.3 / 20


def test_tokenizer_covers_every_string_without_byte_fallback_and_lengths_stay_short(tok):
    longest_prompt = 0
    for _, _, text in generate.question_space():
        ids = tok.encode(prompt.format_prompt(text))
        assert min(ids) >= tk.FIRST_NORMAL_ID, text
        longest_prompt = max(longest_prompt, len(ids))
    completions = [tok.encode(teacher.completion_text(a)) for a in range(20)]
    assert all(min(ids) >= tk.FIRST_NORMAL_ID for ids in completions)
    longest = 1 + longest_prompt + max(len(ids) for ids in completions) + 1
    assert longest <= 48, longest  # well inside the smallest exported length, 64
    for emoji in teacher.FLAIRS:
        assert tok.encode(emoji) == [tok.pieces.index(emoji)]


def test_regeneration_is_byte_identical_and_the_seed_matters(tok, tmp_path):
    paths = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        _, header, records = generate.generate(200, seed, 0.25, 4, tokenizer=tok)
        paths.append(str(tmp_path / f"{name}.jsonl"))
        dataset.write_dataset(paths[-1], header, records)
    a, b, c = (open(p, "rb").read() for p in paths)
    assert a == b and a != c
    assert dataset.read_dataset(paths[0]).header["topk"] == 4
    assert generate.train_tokenizer().to_bytes() == tok.to_bytes()


def test_tiny_datasets_work_and_draws_cycle_only_when_the_pool_runs_out(tok):
    _, header, records = generate.generate(10, 0, 0.5, 1, tokenizer=tok)
    assert collections.Counter(r.split for r in records) == {"train": 5, "heldout": 5}
    assert all(len(row) == 1 for r in records for row in r.topk_ids) and header["topk"] == 1
    drawn = generate._draw([1, 2, 3], 7, random.Random(0))
    assert sorted(drawn[:3]) == [1, 2, 3] and sorted(drawn[3:6]) == [1, 2, 3] and len(drawn) == 7


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 0, 0.2, 8), "--n is 0; need at least 2 records"),
        ((1, 0, 0.2, 8), "--n is 1; need at least 2 records"),
        ((100, -1, 0.2, 8), "--seed is -1; use a seed >= 0"),
        ((100, 0, 0.0, 8), "--heldout_fraction is 0.0; use a fraction strictly between 0 and 1"),
        ((100, 0, 1.0, 8), "--heldout_fraction is 1.0; use a fraction strictly between 0 and 1"),
        ((100, 0, 0.2, 0), "--topk is 0; use 1..32"),
        ((100, 0, 0.2, 40), "--topk is 40; use 1..32"),
        (
            (3, 0, 0.1, 8),
            "--n 3 with --heldout_fraction 0.1 gives 0 held-out records; both splits need at least one",
        ),
    ],
)
def test_bad_options(args, message):
    with pytest.raises(InputError) as error:
        generate.generate(*args)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("noise_fraction", [0.5, 0.0])
def test_questions_are_the_ones_generate_asks(tok, noise_fraction):
    _, _, records = generate.generate(300, 2, 0.3, 4, tok, noise_fraction=noise_fraction)
    asked = generate.questions(300, 2, 0.3, noise_fraction)
    assert [(q.id, q.split, q.kind, q.question) for q in asked] == [
        (r.id, r.split, r.kind, r.question) for r in records
    ]
    assert generate.questions(300, 2, 0.3, noise_fraction, ids=range(40, 60)) == asked[40:60]
    assert generate.questions(300, 2, 0.3, noise_fraction, ids=range(0)) == []
    # Another seed asks other questions.
    assert generate.questions(300, 3, 0.3, noise_fraction) != asked
    with pytest.raises(InputError, match="--heldout_fraction is 1.0"):
        generate.questions(300, 2, 1.0)


def test_round_logprob_keeps_six_decimals_and_never_writes_minus_zero():
    assert generate.round_logprob(-1.23456789) == -1.234568
    assert str(generate.round_logprob(-0.0000001)) == "0.0"
