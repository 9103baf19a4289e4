import dataclasses
import json
import os

import pytest

from common.errors import InputError
from data import dataset

HEADER = {
    "format": "m8b-kd",
    "version": 1,
    "teacher": "m8b-rules-v1",
    "tokenizer_sha256": "ab" * 32,
    "topk": 2,
    "vocab_size": 512,
    "seed": 0,
}


def record(**changes) -> dict:
    base = {
        "id": 0,
        "split": "train",
        "kind": "will",
        "question": "Will I win? 🎱",
        "prompt": "Q: Will I win? 🎱\nA:",
        "completion": " Yes. ✨",
        "prompt_ids": [300, 301, 302],
        "completion_ids": [400, 2],
        "topk_ids": [[400, 401], [2]],
        "topk_logprobs": [[-0.5, -1.25], [0.0]],
    }
    base.update(changes)
    return base


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def write_lines(tmp_path, lines, end=b"\n") -> str:
    path = tmp_path / "kd.jsonl"
    raw = b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)
    path.write_bytes(raw + end if lines else b"")
    return str(path)


def read_error(path: str) -> str:
    with pytest.raises(InputError) as error:
        dataset.read_dataset(path)
    return str(error.value)


def test_write_then_read_round_trips_with_canonical_bytes(tmp_path):
    records = [dataset.Record(**record()), dataset.Record(**record(id=1, split="heldout", kind="can"))]
    path = str(tmp_path / "kd.jsonl")
    dataset.write_dataset(path, HEADER, records)
    data = dataset.read_dataset(path)
    assert data.header == HEADER and data.records == records
    assert [r.id for r in data.split("heldout")] == [1] and [r.id for r in data.split("train")] == [0]
    raw = open(path, "rb").read()
    lines = raw.decode().split("\n")
    assert lines[-1] == "" and len(lines) == 4
    assert lines[0] == json.dumps(HEADER, sort_keys=True, separators=(",", ":"))
    assert "🎱" in lines[1] and '"completion":" Yes. ✨","completion_ids":[400,2]' in lines[1]
    second = str(tmp_path / "again.jsonl")
    dataset.write_dataset(second, dict(reversed(HEADER.items())), records)
    assert open(second, "rb").read() == raw


def test_write_rejects_bad_records_and_writes_nothing(tmp_path):
    path = str(tmp_path / "kd.jsonl")
    bad = dataclasses.replace(dataset.Record(**record()), split="test")
    with pytest.raises(InputError, match=r"kd.jsonl:3: split: is 'test'; must be one of train, heldout"):
        dataset.write_dataset(path, HEADER, [dataset.Record(**record(id=5)), bad])
    with pytest.raises(InputError, match=r"kd.jsonl:3: id: 0 is used twice"):
        dataset.write_dataset(path, HEADER, [dataset.Record(**record()), dataset.Record(**record())])
    with pytest.raises(InputError, match=r"kd.jsonl:1: topk: is 0; must be an int in 1..32"):
        dataset.write_dataset(path, dict(HEADER, topk=0), [])
    assert os.listdir(tmp_path) == []


def test_records_may_carry_fewer_than_k_entries_and_ints_as_logprobs(tmp_path):
    path = write_lines(
        tmp_path, [dumps(HEADER), dumps(record(topk_ids=[[400], [2]], topk_logprobs=[[-1], [0]]))]
    )
    assert dataset.read_dataset(path).records[0].topk_logprobs == [[-1], [0]]


def test_missing_file_empty_file_and_missing_header(tmp_path):
    missing = str(tmp_path / "absent.jsonl")
    assert read_error(missing) == f"{missing}: dataset file not found; make it with //data:make_toy_kd"
    path = write_lines(tmp_path, [])
    assert read_error(path) == f"{path}:1: header: the file is empty; expected a header line then records"
    path = write_lines(tmp_path, [dumps(record())])
    assert read_error(path) == (
        f"{path}:1: format: missing; line 1 must be a header with format 'm8b-kd' "
        "(this looks like a record: the header line is missing)"
    )
    path = write_lines(tmp_path, ["[1, 2]"])
    assert read_error(path) == f"{path}:1: header: line 1 must be the header JSON object"


def test_truncated_last_line(tmp_path):
    path = write_lines(tmp_path, [dumps(HEADER), dumps(record()), dumps(record(id=1))[:40]], end=b"")
    assert read_error(path) == (
        f"{path}:3: line: truncated last line (no newline at the end); the file is incomplete, regenerate it"
    )
    # Even a complete-looking JSON object without its newline was cut short.
    path = write_lines(tmp_path, [dumps(HEADER), dumps(record())], end=b"")
    assert read_error(path).startswith(f"{path}:2: line: truncated last line")


def test_non_utf8_bytes_and_broken_json(tmp_path):
    line = dumps(record()).encode()
    path = write_lines(tmp_path, [dumps(HEADER), line[:20] + b"\xff" + line[20:]])
    assert read_error(path) == f"{path}:2: encoding: byte 0xff at column 21 is not UTF-8"
    path = write_lines(tmp_path, [dumps(HEADER), dumps(record()), '{"id": 1,'])
    assert (
        read_error(path)
        == f"{path}:3: json: not valid JSON (Expecting property name enclosed in double quotes at column 10)"
    )
    path = write_lines(tmp_path, [dumps(HEADER), "", dumps(record())])
    assert read_error(path) == f"{path}:2: line: empty line"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "kd"}, "format: is 'kd', expected 'm8b-kd'"),
        ({"version": 2}, "version: is 2, this code reads version 1"),
        ({"teacher": ""}, "teacher: must be a non-empty string naming the teacher"),
        (
            {"tokenizer_sha256": "AB" * 32},
            "tokenizer_sha256: must be 64 lower-case hex digits (the tokenizer's digest)",
        ),
        ({"topk": 33}, "topk: is 33; must be an int in 1..32"),
        ({"topk": True}, "topk: is True; must be an int in 1..32"),
        ({"vocab_size": 100}, "vocab_size: is 100; must be an int above 260"),
    ],
)
def test_bad_headers(tmp_path, changes, message):
    path = write_lines(tmp_path, [dumps(dict(HEADER, **changes)), dumps(record())])
    assert read_error(path) == f"{path}:1: {message}"


NOT_LOGPROB = "is not a finite log-probability <= 0"


def _without(field):
    obj = record()
    del obj[field]
    return obj


@pytest.mark.parametrize(
    "obj, message",
    [
        ([1, 2], "record: must be a JSON object"),
        (_without("question"), "question: missing"),
        (_without("topk_logprobs"), "topk_logprobs: missing"),
        (record(extra=1), "extra: unexpected field"),
        (record(id="0"), "id: is '0'; must be an int >= 0"),
        (record(id=True), "id: is True; must be an int >= 0"),
        (record(id=-1), "id: is -1; must be an int >= 0"),
        (record(split="test"), "split: is 'test'; must be one of train, heldout"),
        (record(kind=3), "kind: must be a string"),
        (record(question=None), "question: must be a string"),
        (record(prompt_ids=[300, 3.0]), "prompt_ids: must be a list of ints"),
        (record(prompt_ids="300"), "prompt_ids: must be a list of ints"),
        (record(prompt_ids=[300, 512]), "prompt_ids: id 512 is outside the vocabulary [0, 512)"),
        (record(prompt_ids=[-1]), "prompt_ids: id -1 is outside the vocabulary [0, 512)"),
        (record(completion_ids=[400, 401]), "completion_ids: must end with eos (id 2)"),
        (
            record(completion_ids=[], topk_ids=[], topk_logprobs=[]),
            "completion_ids: must end with eos (id 2)",
        ),
        (record(topk_ids=[[400]]), "topk_ids: has 1 positions but completion_ids has 2"),
        (record(topk_ids=[400, 2]), "topk_ids: must be a list of lists"),
        (record(topk_logprobs=[[-0.5, -1.25]]), "topk_logprobs: has 1 positions but completion_ids has 2"),
        (
            record(topk_ids=[[400, 401, 402], [2]], topk_logprobs=[[-1, -2, -3], [0.0]]),
            "topk_ids[0]: has 3 entries; must have 1..2 (header topk)",
        ),
        (
            record(topk_ids=[[400, 401], []], topk_logprobs=[[-1, -2], []]),
            "topk_ids[1]: has 0 entries; must have 1..2 (header topk)",
        ),
        (record(topk_ids=[[400, 600], [2]]), "topk_ids[0]: id 600 is outside the vocabulary [0, 512)"),
        (record(topk_ids=[[400, 400], [2]]), "topk_ids[0]: repeats an id"),
        (record(topk_logprobs=[[-0.5], [0.0]]), "topk_logprobs[0]: has 1 entries but topk_ids[0] has 2"),
        (record(topk_logprobs=[[-0.5, 0.25], [0.0]]), "topk_logprobs[0]: 0.25 " + NOT_LOGPROB),
        (record(topk_logprobs=[[-0.5, float("nan")], [0.0]]), "topk_logprobs[0]: nan " + NOT_LOGPROB),
        (record(topk_logprobs=[[-0.5, float("-inf")], [0.0]]), "topk_logprobs[0]: -inf " + NOT_LOGPROB),
        (record(topk_logprobs=[[-0.5, "-1"], [0.0]]), "topk_logprobs[0]: '-1' " + NOT_LOGPROB),
        (record(topk_logprobs=[[-0.5, True], [0.0]]), "topk_logprobs[0]: True " + NOT_LOGPROB),
        (
            record(topk_logprobs=[[-0.5, -1.25], [0.0, 0.0]], topk_ids=[[400, 401], [2, 3]]),
            "topk_logprobs[1]: probabilities add up to 2.0000 > 1",
        ),
    ],
)
def test_bad_records_are_reported_as_file_line_field_problem(tmp_path, obj, message):
    path = write_lines(tmp_path, [dumps(HEADER), dumps(record(id=7)), dumps(obj)])
    assert read_error(path) == f"{path}:3: {message}"


def test_duplicate_ids(tmp_path):
    path = write_lines(
        tmp_path, [dumps(HEADER), dumps(record(id=4)), dumps(record(id=5)), dumps(record(id=4))]
    )
    assert read_error(path) == f"{path}:4: id: 4 repeats the id on line 2"


def test_vocab_size_from_the_header_bounds_the_ids(tmp_path):
    path = write_lines(tmp_path, [dumps(dict(HEADER, vocab_size=300)), dumps(record(prompt_ids=[299, 300]))])
    assert read_error(path) == f"{path}:2: prompt_ids: id 300 is outside the vocabulary [0, 300)"
