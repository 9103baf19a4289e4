"""A teacher GGUF file's facts, read and checked in Python before llama.cpp ever opens it.

llama.cpp's loader can abort the whole process on a damaged file; here a missing, foreign or
damaged file is an InputError naming it. The gguf package's reader memory-maps the file and parses
its key/value section in place: every array element it visits occupies at least one byte of the
file, so a crafted header claiming a huge array costs at most a pass over the file and fails at its
end. Only the vocabulary arrays are turned into Python lists, and only after their element counts
are checked against MAX_VOCAB.

Any architecture llama.cpp runs may teach (--kd=sequence needs nothing else); the vocabulary
handshake (data/teachers/vocab.py) decides whether its ids are the student's.
"""

import dataclasses
import os

from common import digest, gguf_reader
from common.errors import InputError
from data.teachers import vocab

MAX_VOCAB = 1 << 22  # the largest real vocabularies hold a few hundred thousand tokens


@dataclasses.dataclass(frozen=True)
class TeacherFile:
    path: str
    sha256: str
    architecture: str
    name: str | None  # general.name
    context_length: int
    vocabulary: vocab.Vocabulary
    bos_id: int | None
    eos_id: int | None


def _bad(path: str, why: str) -> InputError:
    return InputError(f"{path}: not a readable GGUF file ({why}); give the teacher's .gguf file")


def _scalar(fields: dict, key: str, kind: type):
    field = fields.get(key)
    if field is None:
        return None
    value = field.contents()
    return value if type(value) is kind else None


def _array(path: str, fields: dict, key: str, kind: type) -> list | None:
    field = fields.get(key)
    if field is None:
        return None
    if len(field.data) > MAX_VOCAB:  # element count, known without building the list
        raise InputError(f"{path}: {key}: {len(field.data)} entries; at most {MAX_VOCAB} are read")
    values = field.contents()
    if not isinstance(values, list) or not all(type(v) is kind for v in values):
        raise InputError(f"{path}: {key}: must be an array of {kind.__name__}")
    return values


def read(path: str) -> TeacherFile:
    """Validates `path` as a GGUF file and returns what the teacher needs; InputError if anything is off."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: teacher GGUF file not found; give --teacher=gguf:PATH of a .gguf file")
    reader = gguf_reader.open_checked(path, lambda why: _bad(path, why))
    if not reader.tensors:
        raise _bad(path, "it holds no tensors")
    fields = dict(reader.fields)

    architecture = _scalar(fields, "general.architecture", str)
    if not architecture:
        raise InputError(f"{path}: general.architecture: missing; not a model llama.cpp can run")
    context = _scalar(fields, f"{architecture}.context_length", int)
    if context is None or context < 1:
        raise InputError(f"{path}: {architecture}.context_length: missing or not a positive integer")
    pieces = _array(path, fields, "tokenizer.ggml.tokens", str)
    if not pieces:
        raise InputError(f"{path}: tokenizer.ggml.tokens: missing or empty; the teacher needs its vocabulary")
    types = _array(path, fields, "tokenizer.ggml.token_type", int)
    if types is None:
        types = [0] * len(pieces)  # "undefined": what llama.cpp assumes without the key
    if len(types) != len(pieces):
        raise InputError(f"{path}: tokenizer.ggml.token_type: {len(types)} entries for {len(pieces)} tokens")
    special = {}
    for name in ("bos", "eos"):
        value = _scalar(fields, f"tokenizer.ggml.{name}_token_id", int)
        if value is not None and not 0 <= value < len(pieces):
            raise InputError(
                f"{path}: tokenizer.ggml.{name}_token_id: {value} is outside the vocabulary "
                f"[0, {len(pieces)})"
            )
        special[name] = value
    model = _scalar(fields, "tokenizer.ggml.model", str)
    return TeacherFile(
        path=path,
        sha256=digest.sha256_file(path),
        architecture=architecture,
        name=_scalar(fields, "general.name", str),
        context_length=context,
        vocabulary=vocab.Vocabulary(f"{path}", pieces, types, model=model or "(none)"),
        bos_id=special["bos"],
        eos_id=special["eos"],
    )
