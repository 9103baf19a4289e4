import pytest

from common.errors import InputError
from data import prompt
from data import tokenizer as tk


@pytest.fixture(scope="module")
def tok() -> tk.Tokenizer:
    return tk.train(["Q: Will I win?\nA:", " Yes. ✨"] * 3, vocab_size=300)


def test_format_prompt():
    assert prompt.format_prompt("Will I win?") == "Q: Will I win?\nA:"
    assert prompt.format_prompt("Will I win? 🎱") == "Q: Will I win? 🎱\nA:"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "Will I\nwin?",
        "Will I win?\r",
        "Will\tI win?",
        "Will I \x1b[31mwin?",
        "Will\x00",
        "Win\x85?",
    ],
)
def test_format_prompt_rejects_empty_and_multi_line_questions(bad):
    with pytest.raises(InputError, match="^question: "):
        prompt.format_prompt(bad)


def test_a_control_character_is_named_with_its_position():
    with pytest.raises(InputError, match=r"control character U\+0007 at position 4; remove it"):
        prompt.format_prompt("Will\x07 I win?")
    assert (
        prompt.format_prompt("Will I win? 👩\u200d💻") == "Q: Will I win? 👩\u200d💻\nA:"
    )  # ZWJ is not a control


def test_model_input_is_bos_then_the_encoded_prompt(tok):
    ids = prompt.build_model_input(tok, "Will I win?")
    assert ids == [tok.bos_id, *tok.encode("Q: Will I win?\nA:")]
    assert tok.decode(ids) == "Q: Will I win?\nA:"


def test_training_sequence_appends_completion_and_eos(tok):
    ids = prompt.build_training_sequence(tok, "Will I win?", " Yes. ✨")
    head = prompt.build_model_input(tok, "Will I win?")
    assert ids == [*head, *tok.encode(" Yes. ✨"), tok.eos_id]
    assert tok.decode(ids) == "Q: Will I win?\nA: Yes. ✨"
