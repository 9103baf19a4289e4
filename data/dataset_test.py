import dataclasses
import json
import math
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


def with_tails(rec: dataset.Record) -> dataset.Record:
    """`rec` as the reader returns it from a version-1 file: topk_tail computed from its lists."""
    tails = [max(0.0, 1.0 - math.fsum(math.exp(lp) for lp in row)) for row in rec.topk_logprobs]
    return dataclasses.replace(rec, topk_tail=tails)


def test_write_then_read_round_trips_with_canonical_bytes(tmp_path):
    records = [dataset.Record(**record()), dataset.Record(**record(id=1, split="heldout", kind="can"))]
    path = str(tmp_path / "kd.jsonl")
    dataset.write_dataset(path, HEADER, records)
    data = dataset.read_dataset(path)
    assert data.header == HEADER and data.records == [with_tails(r) for r in records]
    assert data.kd == "logits"
    assert data.records[0].topk_tail[0] == pytest.approx(1 - math.exp(-0.5) - math.exp(-1.25), abs=1e-12)
    assert [r.id for r in data.split("heldout")] == [1] and [r.id for r in data.split("train")] == [0]
    raw = open(path, "rb").read()
    lines = raw.decode().split("\n")
    assert lines[-1] == "" and len(lines) == 4
    assert lines[0] == json.dumps(HEADER, sort_keys=True, separators=(",", ":"))
    assert "🎱" in lines[1] and '"completion":" Yes. ✨","completion_ids":[400,2]' in lines[1]
    second = str(tmp_path / "again.jsonl")
    dataset.write_dataset(second, dict(reversed(HEADER.items())), records)
    assert open(second, "rb").read() == raw
    # Version 1 never writes topk_tail: records read back (tails filled) write the same bytes.
    assert "topk_tail" not in raw.decode()
    dataset.write_dataset(second, HEADER, data.records)
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
        ({"version": 3}, "version: is 3, this code reads versions 1 and 2"),
        ({"version": "2"}, "version: is '2', this code reads versions 1 and 2"),
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


# ---- version 2 ---------------------------------------------------------------------------------

TEACHER_GGUF = {
    "kind": "gguf",
    "model": "qwen2.5-0.5b-instruct-q8_0.gguf",
    "sha256": "cd" * 32,
    "endpoint": None,
    "server_model": None,
    "api": None,
}
TEACHER_OPENAI = {
    "kind": "openai",
    "model": "served",
    "sha256": None,
    "endpoint": "http://127.0.0.1:8080/v1",
    "server_model": "qwen2.5-0.5b",
    "api": "completions",
}
HEADER_V2 = {
    "format": "m8b-kd",
    "version": 2,
    "teacher": TEACHER_GGUF,
    "sampling": {"mode": "greedy", "max_tokens": 32},
    "kd": "logits",
    "soft_targets": True,
    "topk": 2,
    "tokenizer_sha256": "ab" * 32,
    "vocab_size": 512,
    "seed": 0,
    "heldout_fraction": 0.5,
    "num_records": 2,
    "num_heldout": 1,
    "noise_fraction": 0.0,
}
SEQUENCE_HEADER = dict(HEADER_V2, kd="sequence", soft_targets=False, topk=0)


def tail(logprobs) -> float:
    """The off-list mass as a teacher writes it: 1 - sum(exp(lp)), clamped at 0, rounded to 6 places."""
    return round(max(0.0, 1.0 - math.fsum(math.exp(lp) for lp in logprobs)), 6) + 0.0


def record_v2(**changes) -> dict:
    base = record(topk_tail=[tail([-0.5, -1.25]), tail([0.0])])
    base.update(changes)
    return base


def sequence_record(**changes) -> dict:
    base = record(topk_ids=[], topk_logprobs=[], topk_tail=[])
    base.update(changes)
    return base


def test_version_2_round_trips_with_stable_bytes(tmp_path):
    records = [dataset.Record(**record_v2()), dataset.Record(**record_v2(id=1, split="heldout"))]
    path = str(tmp_path / "kd.jsonl")
    dataset.write_dataset(path, HEADER_V2, records)
    data = dataset.read_dataset(path)
    assert data.header == HEADER_V2 and data.records == records and data.kd == "logits"
    raw = open(path, "rb").read()
    lines = raw.decode().split("\n")
    assert lines[0] == json.dumps(HEADER_V2, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert f'"topk_tail":[{tail([-0.5, -1.25])},0.0]' in lines[1]
    # Written again from what was read, and from a header with its keys in another order: same bytes.
    again = str(tmp_path / "again.jsonl")
    dataset.write_dataset(again, dict(reversed(HEADER_V2.items())), data.records)
    assert open(again, "rb").read() == raw


def test_version_2_sequence_datasets_carry_no_lists(tmp_path):
    path = str(tmp_path / "kd.jsonl")
    header = dict(SEQUENCE_HEADER, teacher=TEACHER_OPENAI)
    header["sampling"] = {
        "mode": "sample",
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "seed": 3,
        "max_tokens": 24,
    }
    dataset.write_dataset(path, header, [dataset.Record(**sequence_record())])
    data = dataset.read_dataset(path)
    assert data.kd == "sequence" and data.records[0].topk_ids == [] and data.records[0].topk_tail == []
    assert data.header["sampling"]["temperature"] == 0.7


def test_a_truncated_version_2_file_is_refused(tmp_path):
    lines = [dumps(HEADER_V2), dumps(record_v2()), dumps(record_v2(id=1))[:50]]
    path = write_lines(tmp_path, lines, end=b"")
    assert read_error(path) == (
        f"{path}:3: line: truncated last line (no newline at the end); the file is incomplete, regenerate it"
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"teacher": "m8b-rules-v1"}, "teacher: must be an object with keys kind, model, sha256, endpoint"),
        (
            {"teacher": dict(TEACHER_GGUF, kind="hf")},
            "teacher.kind: is 'hf'; must be one of rules, gguf, openai",
        ),
        ({"teacher": dict(TEACHER_GGUF, model="")}, "teacher.model: must be a non-empty string"),
        ({"teacher": {k: v for k, v in TEACHER_GGUF.items() if k != "api"}}, "teacher.api: missing"),
        ({"teacher": dict(TEACHER_GGUF, extra=1)}, "teacher.extra: unexpected field"),
        ({"teacher": dict(TEACHER_GGUF, sha256=None)}, "teacher.sha256: is null; a gguf teacher must record"),
        (
            {"teacher": dict(TEACHER_GGUF, sha256="CD" * 32)},
            "teacher.sha256: must be 64 lower-case hex digits",
        ),
        (
            {"teacher": dict(TEACHER_OPENAI, endpoint=None)},
            "teacher.endpoint: is null; an openai teacher must",
        ),
        (
            {"teacher": dict(TEACHER_OPENAI, api=None)},
            "teacher.api: is null; an openai teacher must record it",
        ),
        ({"teacher": dict(TEACHER_OPENAI, api="embeddings")}, "teacher.api: is 'embeddings'; must be one of"),
        (
            {"teacher": dict(TEACHER_OPENAI, endpoint="ftp://host/v1")},
            "teacher.endpoint: must be an http or https",
        ),
        (
            {"teacher": dict(TEACHER_OPENAI, endpoint="https://bob:hunter2@api.example.test/v1")},
            "teacher.endpoint: holds credentials (user:password@host); record the URL without them",
        ),
        (
            {"teacher": dict(TEACHER_OPENAI, endpoint="https://api.example.test/v1?api_key=hunter2")},
            "teacher.endpoint: has a query parameter named 'api_key', a credential",
        ),
        (
            {"teacher": dict(TEACHER_OPENAI, endpoint="https://api.example.test/v1?Token=hunter2")},
            "teacher.endpoint: has a query parameter named 'Token', a credential",
        ),
        ({"sampling": "greedy"}, "sampling: must be an object"),
        (
            {"sampling": {"mode": "beam", "max_tokens": 4}},
            "sampling.mode: is 'beam'; must be 'greedy' or 'sample'",
        ),
        ({"sampling": {"mode": "greedy", "max_tokens": 0}}, "sampling.max_tokens: is 0; must be an int >= 1"),
        ({"sampling": {"mode": "greedy", "max_tokens": 4, "seed": 1}}, "sampling.seed: unexpected field"),
        ({"sampling": {"mode": "sample", "max_tokens": 4}}, "sampling.temperature: missing"),
        (
            {
                "sampling": {
                    "mode": "sample",
                    "temperature": 0,
                    "top_k": 0,
                    "top_p": 1,
                    "seed": 0,
                    "max_tokens": 4,
                }
            },
            "sampling.temperature: is 0; must be a number > 0",
        ),
        (
            {
                "sampling": {
                    "mode": "sample",
                    "temperature": float("nan"),
                    "top_k": 0,
                    "top_p": 1,
                    "seed": 0,
                    "max_tokens": 4,
                }
            },
            "sampling.temperature: is nan; must be a number > 0",
        ),
        (
            {
                "sampling": {
                    "mode": "sample",
                    "temperature": 1,
                    "top_k": 0,
                    "top_p": 0,
                    "seed": 0,
                    "max_tokens": 4,
                }
            },
            "sampling.top_p: is 0; must be a number in (0, 1]",
        ),
        (
            {
                "sampling": {
                    "mode": "sample",
                    "temperature": 1,
                    "top_k": -1,
                    "top_p": 1,
                    "seed": 0,
                    "max_tokens": 4,
                }
            },
            "sampling.top_k: is -1; must be an int >= 0",
        ),
        ({"kd": "hidden"}, "kd: is 'hidden'; must be one of logits, sequence"),
        ({"soft_targets": False}, "soft_targets: is False; must be true exactly when kd is 'logits'"),
        ({"topk": 0}, "topk: is 0; must be an int in 1..32 with soft targets"),
        ({"kd": "sequence", "soft_targets": False}, "topk: is 2; must be 0 under kd 'sequence'"),
        ({"top_k": 2}, "top_k: unexpected field"),
        ({"noise_fraction": 2.0}, "noise_fraction: is 2.0; must be a fraction in [0, 1]"),
        ({"vocab_size": 100}, "vocab_size: is 100; must be an int above 260"),
    ],
)
def test_bad_version_2_headers(tmp_path, changes, message):
    path = write_lines(tmp_path, [dumps(dict(HEADER_V2, **changes)), dumps(record_v2())])
    error = read_error(path)
    assert error.startswith(f"{path}:1: {message}"), error
    assert "hunter2" not in error  # a credential is never repeated


def test_missing_version_2_header_fields(tmp_path):
    for name in ("teacher", "sampling", "kd", "soft_targets", "topk", "tokenizer_sha256"):
        header = {k: v for k, v in HEADER_V2.items() if k != name}
        path = write_lines(tmp_path, [dumps(header), dumps(record_v2())])
        assert read_error(path) == f"{path}:1: {name}: missing"


def _without_v2(field):
    obj = record_v2()
    del obj[field]
    return obj


def _lists(ids, logprobs, tails) -> dict:
    """A record whose first position holds (ids, logprobs, tail); the eos position stays whole."""
    return record_v2(topk_ids=[ids, [2]], topk_logprobs=[logprobs, [0.0]], topk_tail=[tails, 0.0])


@pytest.mark.parametrize(
    "obj, message",
    [
        # Mass over one, tails outside [0, 1], non-finite values.
        (_lists([400, 401], [-0.01, -0.5], 0.0), "topk_logprobs[0]: probabilities add up to 1.596"),
        (_lists([400, 401], [-0.5, -1.25], -0.01), "topk_tail[0]: -0.01 is not a probability in [0, 1]"),
        (_lists([400, 401], [-0.5, -1.25], 1.5), "topk_tail[0]: 1.5 is not a probability in [0, 1]"),
        (_lists([400, 401], [-0.5, -1.25], float("nan")), "topk_tail[0]: nan is not a probability in [0, 1]"),
        (_lists([400, 401], [-0.5, -1.25], True), "topk_tail[0]: True is not a probability in [0, 1]"),
        (_lists([400, 401], [-0.5, float("-inf")], 0.0), "topk_logprobs[0]: -inf " + NOT_LOGPROB),
        # A tail that disagrees with its list.
        (_lists([400, 401], [-0.5, -1.25], 0.2), "topk_tail[0]: is 0.2 but the list leaves 0.1069"),
        (_lists([400, 401], [-0.5, -1.25], 0.0), "topk_tail[0]: is 0.0 but the list leaves 0.1069"),
        # Ids out of range, repeated, unsorted.
        (
            _lists([400, 600], [-0.5, -1.25], tail([-0.5, -1.25])),
            "topk_ids[0]: id 600 is outside the vocabulary",
        ),
        (_lists([400, 400], [-0.5, -1.25], tail([-0.5, -1.25])), "topk_ids[0]: repeats an id"),
        (
            _lists([401, 400], [-1.25, -0.5], tail([-0.5, -1.25])),
            "topk_logprobs[0]: entry 1 (-0.5) is above entry 0 (-1.25); a list is sorted by log-probability",
        ),
        (
            _lists([401, 400], [-1.0, -1.0], tail([-1.0, -1.0])),
            "topk_ids[0]: ids 401 and 400 have equal log-probabilities; ties list the lower id first",
        ),
        # A wrong k: too long, or short while mass is missing.
        (
            _lists([400, 401, 402], [-0.5, -1.25, -3.0], tail([-0.5, -1.25, -3.0])),
            "topk_ids[0]: has 3 entries; must have 1..2 (header topk)",
        ),
        (
            _lists([400], [-0.5], tail([-0.5])),
            "topk_ids[0]: has 1 entries, fewer than topk 2, yet topk_tail[0] is 0.393469; a list shorter",
        ),
        # Positions that do not line up with the completion.
        (record_v2(topk_tail=[tail([-0.5, -1.25])]), "topk_tail: has 1 positions but completion_ids has 2"),
        (record_v2(topk_tail=0.1), "topk_tail: must be a list of numbers, one per completion position"),
        (_without_v2("topk_tail"), "topk_tail: missing"),
    ],
)
def test_bad_version_2_records(tmp_path, obj, message):
    path = write_lines(tmp_path, [dumps(HEADER_V2), dumps(record_v2(id=7)), dumps(obj)])
    error = read_error(path)
    assert error.startswith(f"{path}:3: {message}"), error


def test_a_short_list_holding_the_whole_distribution_is_fine(tmp_path):
    path = write_lines(tmp_path, [dumps(HEADER_V2), dumps(_lists([400], [0.0], 0.0))])
    assert dataset.read_dataset(path).records[0].topk_ids[0] == [400]


@pytest.mark.parametrize(
    "obj, message",
    [
        (sequence_record(topk_ids=[[400], [2]]), "topk_ids: must be [] under kd 'sequence'"),
        (sequence_record(topk_logprobs=[[]]), "topk_logprobs: must be [] under kd 'sequence'"),
        (sequence_record(topk_tail=[0.0, 0.0]), "topk_tail: must be [] under kd 'sequence'"),
        (sequence_record(topk_tail=None), "topk_tail: must be [] under kd 'sequence'"),
        (sequence_record(completion_ids=[400]), "completion_ids: must end with eos (id 2)"),
    ],
)
def test_bad_sequence_records(tmp_path, obj, message):
    path = write_lines(tmp_path, [dumps(SEQUENCE_HEADER), dumps(sequence_record(id=7)), dumps(obj)])
    assert read_error(path).startswith(f"{path}:3: {message}")


def test_version_1_records_carry_no_tail_and_version_2_records_need_one(tmp_path):
    path = write_lines(tmp_path, [dumps(HEADER), dumps(record(topk_tail=[0.1, 0.0]))])
    assert read_error(path) == f"{path}:2: topk_tail: unexpected field"
    with pytest.raises(InputError, match=r"kd.jsonl:2: topk_tail: must be a list of numbers"):
        dataset.write_dataset(str(tmp_path / "kd.jsonl"), HEADER_V2, [dataset.Record(**record())])


def test_a_header_for_another_tokenizer_is_named(tmp_path):
    for header, rec in ((HEADER, record()), (HEADER_V2, record_v2())):
        path = write_lines(tmp_path, [dumps(header), dumps(rec)])
        with pytest.raises(InputError) as error:
            dataset.read_dataset(path, tokenizer_sha256="ef" * 32, tokenizer_path="tok.json")
        assert str(error.value) == (
            f"{path}:1: tokenizer_sha256: is {'ab' * 32}, but --tokenizer tok.json has {'ef' * 32}; "
            "pass the tokenizer the dataset was made with"
        )
        data = dataset.read_dataset(path, tokenizer_sha256="ab" * 32)
        dataset.check_tokenizer(path, data.header, "ab" * 32, "tok.json")  # the right one passes
        with pytest.raises(InputError, match=r":1: tokenizer_sha256: is abab"):
            dataset.check_tokenizer(path, data.header, "ef" * 32, "tok.json")


def test_shards_hold_version_1_only(tmp_path):
    path = str(tmp_path / "kd.shard-0-of-1.jsonl")
    rec = dataset.Record(**record_v2())
    with pytest.raises(
        InputError, match=r"a shard holds a version-1 dataset .* write a version-2 dataset unsharded"
    ):
        dataset.write_shard(path, HEADER_V2, [rec], 0, 1, range(0, 1))
    assert not os.path.exists(path)
    # A shard file claiming a version-2 dataset header is refused by the merge.
    shard_header = {
        "format": "m8b-kd-shard",
        "version": 1,
        "shard": 0,
        "num_shards": 1,
        "first_id": 0,
        "stop_id": 1,
        "dataset_header": HEADER_V2,
    }
    write_lines(tmp_path, [dumps(shard_header), dumps(record_v2())])
    with pytest.raises(InputError, match=r"kd.jsonl:1: dataset_header.version: is 2; shards hold version-1"):
        dataset.merge_shards([str(tmp_path / "kd.jsonl")])
