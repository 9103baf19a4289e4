"""The vocabulary handshake between a teacher and the student tokenizer, and the bytes -> student id map.

Soft targets name token ids. A teacher's top-k lists mean something to the student only when the
teacher's id i is the student's id i, so before the first record a teacher that states its
vocabulary (a GGUF file: tokenizer.ggml.tokens and tokenizer.ggml.token_type) is compared with the
student tokenizer token by token: same count, and at every id the same piece and the same type.
Any difference is bad input naming both vocabularies and the first id where they part, with what to
do: give the teacher the student's tokenizer, or distil from the reply text alone (--kd=sequence).

A teacher that gives tokens as bytes instead (an OpenAI-compatible server's logprobs) maps each one
with StudentIds: the student id whose token is exactly those bytes, a normal piece before a byte
token (the tokenizer writes a single byte as a byte token only when no piece holds it), and None
where no single student token has those bytes.
"""

import dataclasses
from collections.abc import Sequence

from common.errors import InputError
from data import tokenizer as tokenizer_lib

# llama.cpp's token types (LLAMA_TOKEN_TYPE_*), named for messages.
TYPE_NAMES = {
    0: "undefined",
    1: "normal",
    2: "unknown",
    3: "control",
    4: "user-defined",
    5: "unused",
    6: "byte",
}
STUDENT_MODEL = "llama"  # data/tokenizer.py: llama.cpp's SentencePiece tokenizer
WHAT_TO_DO = (
    "give the teacher the student's tokenizer (a GGUF exported with the student tokenizer.json), "
    "or use --kd=sequence, which distils from the reply text and needs no shared vocabulary"
)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A teacher's token list as its file states it."""

    name: str  # where it comes from, e.g. the GGUF path
    pieces: Sequence[str]
    types: Sequence[int]
    model: str | None = None  # the tokenizer model (GGUF tokenizer.ggml.model) where stated


def describe_student(tokenizer: tokenizer_lib.Tokenizer) -> str:
    return f"the student tokenizer (sha256 {tokenizer.digest}, {tokenizer.vocab_size} tokens)"


def _show(pieces: Sequence[str], types: Sequence[int], index: int) -> str:
    if index >= len(pieces):
        return f"absent (only {len(pieces)} tokens)"
    kind = TYPE_NAMES.get(types[index], f"type {types[index]}")
    return f"{pieces[index]!r} ({kind})"


def first_difference(teacher: Vocabulary, tokenizer: tokenizer_lib.Tokenizer) -> int | None:
    """The first id whose piece or type differs (the shorter list's length if one is a prefix of
    the other), or None when the two vocabularies are the same."""
    if len(teacher.pieces) != len(teacher.types):
        raise ValueError(f"{teacher.name}: {len(teacher.pieces)} pieces but {len(teacher.types)} types")
    student = list(zip(tokenizer.pieces, tokenizer.token_types, strict=True))
    theirs = list(zip(teacher.pieces, teacher.types, strict=True))
    for index, (ours, pair) in enumerate(zip(student, theirs, strict=False)):  # to the shorter's end
        if ours != pair:
            return index
    if len(teacher.pieces) != tokenizer.vocab_size:
        return min(len(teacher.pieces), tokenizer.vocab_size)
    return None


def check_same(teacher: Vocabulary, tokenizer: tokenizer_lib.Tokenizer) -> None:
    """InputError naming both vocabularies and the first differing id, unless they are the same."""
    if teacher.model is not None and teacher.model != STUDENT_MODEL:
        raise InputError(
            f"{teacher.name}: the teacher's tokenizer model is {teacher.model!r} ({len(teacher.pieces)} "
            f"tokens), {describe_student(tokenizer)} is {STUDENT_MODEL!r} (SentencePiece); " + WHAT_TO_DO
        )
    index = first_difference(teacher, tokenizer)
    if index is None:
        return
    raise InputError(
        f"{teacher.name}: the teacher's vocabulary ({len(teacher.pieces)} tokens) is not "
        f"{describe_student(tokenizer)}: id {index} is {_show(teacher.pieces, teacher.types, index)} "
        f"in the teacher and {_show(tokenizer.pieces, tokenizer.token_types, index)} in the student; "
        + WHAT_TO_DO
    )


def token_bytes(tokenizer: tokenizer_lib.Tokenizer, token_id: int) -> bytes | None:
    """The bytes a student token stands for: a normal piece with its spaces back, a byte token's
    byte; None for control, unknown and unused tokens (they stand for no text)."""
    kind = tokenizer.token_types[token_id]
    if kind == tokenizer_lib.NORMAL:
        return tokenizer.pieces[token_id].replace(tokenizer_lib.SPACE, " ").encode("utf-8")
    if kind == tokenizer_lib.BYTE:
        return bytes([token_id - tokenizer_lib.BYTE_OFFSET])
    return None


class StudentIds:
    """bytes -> the student id whose token is exactly those bytes, or None (module docstring).

    Normal pieces are entered first, in id order, then byte tokens only where no piece holds that
    byte: encoding a one-byte text gives the piece when there is one, and a byte token otherwise. A
    piece holding a literal " " is left out: encoding turns every space into "\u2581" first, so
    the tokenizer never writes such a piece.
    """

    def __init__(self, tokenizer: tokenizer_lib.Tokenizer):
        table: dict[bytes, int] = {}
        for wanted in (tokenizer_lib.NORMAL, tokenizer_lib.BYTE):
            for token_id, kind in enumerate(tokenizer.token_types):
                if kind == wanted and " " not in tokenizer.pieces[token_id]:
                    table.setdefault(token_bytes(tokenizer, token_id), token_id)
        self._table = table

    def __call__(self, raw: bytes) -> int | None:
        return self._table.get(bytes(raw))

    def __len__(self) -> int:
        return len(self._table)
