import math

import pytest

from data import dataset, generate
from data.remote import response_shapes as shapes
from data.remote import student_targets as targets
from data.teachers import source


@pytest.fixture(scope="module")
def tok():
    return generate.train_tokenizer()


@pytest.fixture(scope="module")
def token_map(tok):
    return targets.TokenMap(tok)


def t(text, lp, raw=None):
    return shapes.Token(text, text.encode() if raw is None else raw, lp)


def test_tokens_map_by_bytes_and_textless_or_eos_text_ones_are_the_end(tok, token_map):
    assert token_map(t(" will", -1.0)) == tok.pieces.index("▁will")
    assert token_map(t("", -1.0)) == tok.eos_id
    assert token_map(t("</s>", -1.0)) == tok.eos_id
    assert token_map(t("ꙮ", -1.0)) is None
    # A byte the student writes as a byte token (no piece holds it) maps there.
    assert token_map(t("", -1.0, b"\xf0")) == 4 + 0xF0


def test_requested_alternatives():
    assert [targets.requested_alternatives(k) for k in (1, 4, 8, 10, 12, 20, 32)] == [
        2,
        8,
        16,
        20,
        20,
        20,
        32,
    ]


def test_same_student_id_adds_probabilities_and_unmapped_go_to_the_tail(tok, token_map):
    position = shapes.Position(
        t(" It", -0.5),
        (t(" It", -0.5), t("I", -2.0), t("I", -3.0, b"I"), t("ꙮ", -2.5), t(" is", -4.0), t("", -5.0)),
    )
    ids, logprobs, tail, unmapped = targets.row(position, token_map, 3, 16, 0, strict=False)
    i_piece = tok.pieces.index("I")
    merged = math.log(math.exp(-2.0) + math.exp(-3.0))
    assert ids == [tok.pieces.index("▁It"), i_piece, tok.pieces.index("▁is")]
    assert logprobs == [-0.5, round(merged, 6), -4.0]
    assert tail == generate.round_logprob(dataset.tail_of(logprobs))
    assert unmapped == 1
    with pytest.raises(targets.TargetError, match="the alternative 'ꙮ' is no single token"):
        targets.row(position, token_map, 3, 16, 0, strict=True)


def test_only_the_requested_most_likely_alternatives_count(tok, token_map):
    # The server added the chosen token beyond its top 2: it is not part of the list.
    position = shapes.Position(t(" is", -6.0), (t(" It", -0.1), t(" will", -0.2), t(" is", -6.0)))
    ids, _, _, _ = targets.row(position, token_map, 2, 2, 0, strict=True)
    assert tok.pieces.index("▁is") not in ids


def test_a_list_short_of_k_with_mass_off_it_is_refused(token_map):
    position = shapes.Position(t(" It", -0.5), (t(" It", -0.5), t("I", -2.0), t("I", -3.0)))
    with pytest.raises(targets.TargetError, match=r"give 2 distinct student ids, fewer than --topk=3"):
        targets.row(position, token_map, 3, 16, 4, strict=False)
    # ...unless the list holds the whole distribution.
    whole = shapes.Position(t(" It", math.log(0.9)), (t(" It", math.log(0.9)), t("I", math.log(0.1))))
    ids, logprobs, tail, _ = targets.row(whole, token_map, 3, 16, 4, strict=False)
    assert len(ids) == 2 and tail == 0.0


def test_the_rows_are_what_every_teacher_writes(token_map):
    position = shapes.Position(t(" It", -0.1234567), (t(" It", -0.1234567), t(" is", -0.1234571)))
    ids, logprobs, tail, _ = targets.row(position, token_map, 2, 4, 0, strict=True)
    assert (ids, logprobs, tail) == source.rounded_row(ids, [-0.1234567, -0.1234571])


def test_a_reply_token_without_text_or_student_id_is_refused(token_map):
    with pytest.raises(targets.TargetError, match=r"position 3: the server's token '' writes no text"):
        targets.chosen_id(shapes.Position(t("", -1.0), ()), token_map, 3)
    with pytest.raises(targets.TargetError, match=r"the token 'ꙮ' is no single token"):
        targets.chosen_id(shapes.Position(t("ꙮ", -1.0), ()), token_map, 0)
    assert "(bytes f0)" in targets.show(t("", -1.0, b"\xf0"))


def test_greedy_is_the_most_likely_listed_token():
    targets.check_greedy(shapes.Position(t("a", -0.5), (t("a", -0.5), t("b", -0.5))), 0)  # a tie
    with pytest.raises(targets.TargetError, match=r"chose 'a' \(log-probability -0.700000\) over 'b'"):
        targets.check_greedy(shapes.Position(t("a", -0.7), (t("a", -0.7), t("b", -0.6))), 0)
