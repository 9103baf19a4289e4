import collections
import re

import pytest

from common.errors import InputError
from data import augment, generate
from ood import compose, questions


@pytest.fixture(scope="module")
def ood():
    return questions.load()


def _normal(text: str) -> str:
    """Lower case, letters and digits only: two questions that differ only in case or punctuation match."""
    return " ".join(re.findall(r"\w+", text.lower()))


def test_the_committed_set_is_what_its_sources_build(ood):
    assert ood == questions.build(), "ood/questions.tsv is stale: bazel run //ood:write_questions"


def test_size_and_styles(ood):
    assert len(ood) >= 300
    counts = collections.Counter((q.style, q.source) for q in ood)
    for style in questions.STYLES:
        assert counts[(style, "hand")] >= 15, style
        assert counts[(style, "composed")] >= 20, style
    assert len({q.text for q in ood}) == len(ood)


def test_no_question_is_in_the_training_space(ood):
    space = {text for _, _, text in generate.question_space()}
    assert not space & {q.text for q in ood}
    normal_space = {_normal(text) for text in space}
    same = [q.text for q in ood if _normal(q.text) in normal_space]
    assert not same, same


def _phrases(*lists) -> set[str]:
    out = set()
    for items in lists:
        for item in items:
            flat = item if isinstance(item, str) else " ".join(item)
            out.add(_normal(flat.replace("{w}", "").replace("{s}", "").replace("{q}", "").replace("{Q}", "")))
    return out - {""}


def test_the_generator_shares_no_template_or_vocabulary_with_data():
    ours = _phrases(
        compose.FRAMES,
        compose.WISHES,
        compose.STATEMENTS,
        compose.OPEN_QUESTIONS,
        compose.FOREIGN,
        compose.FILLERS,
        compose.FILLER_TAILS,
    )
    theirs = _phrases(
        [t[1:] for t in generate.TEMPLATES],
        generate.SUBJECTS,
        augment.PREAMBLES,
        augment.AFTERTHOUGHTS,
        augment.REQUESTS,
        augment.OPEN_FRAMES,
    )
    assert not ours & theirs, ours & theirs


def test_compose_is_deterministic_and_distinct():
    assert compose.compose(5) == compose.compose(5)
    with pytest.raises(ValueError):
        compose.compose(len(compose.FOREIGN) + 1)


def test_a_bad_line_is_named(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("casing\thand\tok?\nweird\thand\tno\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"q.tsv:2: style 'weird'"):
        questions.load(str(path))
    path.write_text("casing\tok?\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"q.tsv:1: expected"):
        questions.load(str(path))
