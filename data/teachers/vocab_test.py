import pytest

from common.errors import InputError
from data import generate
from data import tokenizer as tk
from data.teachers import vocab


@pytest.fixture(scope="module")
def tok() -> tk.Tokenizer:
    return generate.train_tokenizer()


def _teacher(tok, pieces=None, types=None) -> vocab.Vocabulary:
    return vocab.Vocabulary("teacher.gguf", list(pieces or tok.pieces), list(types or tok.token_types))


def test_the_student_vocabulary_passes(tok):
    assert vocab.first_difference(_teacher(tok), tok) is None
    vocab.check_same(_teacher(tok), tok)


def test_a_changed_piece_names_both_vocabularies_the_id_and_what_to_do(tok):
    pieces = list(tok.pieces)
    index = tok.pieces.index("▁will")
    pieces[index] = "▁wall"
    with pytest.raises(InputError) as error:
        vocab.check_same(_teacher(tok, pieces), tok)
    message = str(error.value)
    assert message.startswith("teacher.gguf: the teacher's vocabulary (512 tokens) is not the student")
    assert f"sha256 {tok.digest}, 512 tokens" in message
    assert f"id {index} is '▁wall' (normal) in the teacher and '▁will' (normal) in the student" in message
    assert "student's tokenizer" in message and "--kd=sequence" in message


def test_a_changed_type_alone_is_a_difference(tok):
    types = list(tok.token_types)
    types[300] = tk.UNUSED
    with pytest.raises(InputError, match=rf"id 300 is {tok.pieces[300]!r} \(unused\) in the teacher"):
        vocab.check_same(_teacher(tok, types=types), tok)


@pytest.mark.parametrize("extra", [-12, 7])
def test_a_shorter_or_longer_teacher_parts_where_the_shorter_one_ends(tok, extra):
    size = tok.vocab_size + extra
    pieces = (list(tok.pieces) + [f"<extra{i}>" for i in range(extra)])[:size]
    types = (list(tok.token_types) + [tk.UNUSED] * max(extra, 0))[:size]
    teacher = _teacher(tok, pieces, types)
    assert vocab.first_difference(teacher, tok) == min(size, tok.vocab_size)
    with pytest.raises(InputError) as error:
        vocab.check_same(teacher, tok)
    assert f"({size} tokens)" in str(error.value)
    side = "teacher" if extra < 0 else "student"
    assert f"absent (only {min(size, tok.vocab_size)} tokens) in the {side}" in str(error.value)


def test_student_ids_is_what_encoding_the_bytes_alone_gives(tok):
    ids = vocab.StudentIds(tok)
    singles = 0
    for token_id in range(tok.vocab_size):
        raw = vocab.token_bytes(tok, token_id)
        if raw is None:
            assert tok.token_types[token_id] in (tk.UNKNOWN, tk.CONTROL, tk.UNUSED)
            continue
        try:
            encoded = tok.encode(raw.decode("utf-8"))
        except UnicodeDecodeError:  # a lone byte of a longer character: only its byte token has it
            assert tok.token_types[token_id] == tk.BYTE and ids(raw) == token_id
            singles += 1
            continue
        # The id encoding gives for exactly these bytes, whichever token the loop is at.
        assert len(encoded) == 1 and ids(raw) == encoded[0], (token_id, raw)
        singles += ids(raw) == token_id
    # Every normal piece is its own bytes' id; byte tokens only for bytes no piece holds.
    normal = tok.token_types.count(tk.NORMAL)
    pieces_of_one_byte = sum(
        1 for i, t in enumerate(tok.token_types) if t == tk.NORMAL and len(vocab.token_bytes(tok, i)) == 1
    )
    assert singles == normal + 256 - pieces_of_one_byte
    assert ids(b" ") == tok.pieces.index("▁") and ids(b"a") == tok.pieces.index("a") != tk.BYTE_OFFSET + 97


def test_student_ids_is_none_where_no_single_token_has_the_bytes(tok):
    ids = vocab.StudentIds(tok)
    assert len(tok.encode("▁")) == 3 and ids("▁".encode()) is None  # a literal ▁ is three byte tokens
    assert ids(b"") is None
    assert ids(b"\xe2\x96") is None  # two bytes of a character: two byte tokens
    assert ids(b"Tokyo") is None and len(tok.encode("Tokyo")) > 1
    assert ids(b"\xff") == tk.BYTE_OFFSET + 0xFF


def test_a_piece_with_a_literal_space_is_never_what_the_tokenizer_writes():
    pieces = tk.SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + [" ", "▁", "a"]
    types = [tk.UNKNOWN] + [tk.CONTROL] * 3 + [tk.BYTE] * 256 + [tk.NORMAL] * 3
    tok = tk.Tokenizer(pieces, [0.0] * len(pieces), types)
    ids = vocab.StudentIds(tok)
    assert tok.encode(" ") == [261] and ids(b" ") == 261


def test_another_tokenizer_model_is_a_difference_even_with_the_same_pieces(tok):
    teacher = vocab.Vocabulary("teacher.gguf", tok.pieces, tok.token_types, model="gpt2")
    with pytest.raises(
        InputError, match=r"^teacher.gguf: the teacher's tokenizer model is 'gpt2' \(512 tokens\)"
    ):
        vocab.check_same(teacher, tok)
    vocab.check_same(vocab.Vocabulary("teacher.gguf", tok.pieces, tok.token_types, model="llama"), tok)
