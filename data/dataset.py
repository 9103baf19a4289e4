"""The knowledge-distillation dataset: one JSONL file, a header line then one record per line.

Header (line 1), a JSON object; extra keys are kept and ignored:

    format            "m8b-kd"
    version           1
    teacher           str, names the source of the soft targets (e.g. "m8b-rules-v1")
    tokenizer_sha256  hex sha256 of the tokenizer file the ids below belong to
    topk              int 1..32, the most entries any position's top-k list may have
    vocab_size        int (optional, default 512): every id is below it

Record (every later line), a JSON object with exactly these keys:

    id               int >= 0, unique in the file
    split            "train" | "heldout"
    kind             str, the question kind (data.teacher.question_kind)
    question         str
    prompt           str, data.prompt.format_prompt(question)
    completion       str, the teacher's reply text, e.g. " It is certain. 🌟"
    prompt_ids       [int], encode(prompt) WITHOUT bos (a model input is [bos] + prompt_ids)
    completion_ids   [int], encode(completion) + [eos]: ends with eos (id 2), non-empty
    topk_ids         [[int]], one list per completion position: the teacher's most likely next
                     tokens at the position that predicts completion_ids[i]; 1..topk distinct ids
    topk_logprobs    [[float]], same shape: their natural-log probabilities, finite, <= 0, and
                     together at most probability 1 (the rest of the mass is off the list)

A real LLM teacher plugs in the same way: ask it for the completion with logprobs (top-k per
position), map each of its top tokens to this tokenizer's id (keep those that map to one token,
add the probabilities of tokens that map to the same id), write the log-probabilities here, and
name the model in "teacher". Training only assumes the shape above.

read_dataset() checks all of it and reports the first problem as "file:line: field: problem".
write_dataset() checks the same things and writes atomically with canonical JSON (sorted keys,
no ASCII escaping, fixed separators, "\\n" line ends), so the same records give the same bytes.
"""

import dataclasses
import json
import math
from collections.abc import Iterable

from common import atomic
from common.errors import InputError
from data import tokenizer as tokenizer_lib

FORMAT = "m8b-kd"
VERSION = 1
MAX_TOPK = 32
SPLITS = ("train", "heldout")


@dataclasses.dataclass(frozen=True)
class Record:
    id: int
    split: str
    kind: str
    question: str
    prompt: str
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]
    topk_ids: list[list[int]]
    topk_logprobs: list[list[float]]


FIELDS = tuple(f.name for f in dataclasses.fields(Record))


@dataclasses.dataclass
class Dataset:
    header: dict
    records: list[Record]

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class _Problem(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)
        self.field, self.problem = field, problem


def _is_int(v) -> bool:
    return type(v) is int


def _check_header(header) -> None:
    if not isinstance(header, dict):
        raise _Problem("header", "line 1 must be the header JSON object")
    if "format" not in header:
        hint = " (this looks like a record: the header line is missing)" if "id" in header else ""
        raise _Problem("format", f"missing; line 1 must be a header with format {FORMAT!r}{hint}")
    if header["format"] != FORMAT:
        raise _Problem("format", f"is {header['format']!r}, expected {FORMAT!r}")
    if header.get("version") != VERSION:
        raise _Problem("version", f"is {header.get('version')!r}, this code reads version {VERSION}")
    if not isinstance(header.get("teacher"), str) or not header["teacher"]:
        raise _Problem("teacher", "must be a non-empty string naming the teacher")
    digest = header.get("tokenizer_sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise _Problem("tokenizer_sha256", "must be 64 lower-case hex digits (the tokenizer's digest)")
    topk = header.get("topk")
    if not _is_int(topk) or not 1 <= topk <= MAX_TOPK:
        raise _Problem("topk", f"is {topk!r}; must be an int in 1..{MAX_TOPK}")
    vocab = header.get("vocab_size", tokenizer_lib.VOCAB_SIZE)
    if not _is_int(vocab) or vocab <= tokenizer_lib.FIRST_NORMAL_ID:
        raise _Problem("vocab_size", f"is {vocab!r}; must be an int above {tokenizer_lib.FIRST_NORMAL_ID}")


def _is_logprob(value) -> bool:
    """A finite number <= 0. JSON ints have no size limit: one too big for a float is not a logprob
    (math.isfinite would raise OverflowError on it)."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(value) and value <= 0
    except OverflowError:
        return False


def _check_ids(field: str, ids, vocab: int) -> None:
    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
        raise _Problem(field, "must be a list of ints")
    for i in ids:
        if not 0 <= i < vocab:
            raise _Problem(field, f"id {i} is outside the vocabulary [0, {vocab})")


def _check_record(obj, header: dict) -> Record:
    if not isinstance(obj, dict):
        raise _Problem("record", "must be a JSON object")
    for name in FIELDS:
        if name not in obj:
            raise _Problem(name, "missing")
    extra = sorted(set(obj) - set(FIELDS))
    if extra:
        raise _Problem(extra[0], "unexpected field")
    vocab = header.get("vocab_size", tokenizer_lib.VOCAB_SIZE)
    if not _is_int(obj["id"]) or obj["id"] < 0:
        raise _Problem("id", f"is {obj['id']!r}; must be an int >= 0")
    if obj["split"] not in SPLITS:
        raise _Problem("split", f"is {obj['split']!r}; must be one of {', '.join(SPLITS)}")
    for name in ("kind", "question", "prompt", "completion"):
        if not isinstance(obj[name], str):
            raise _Problem(name, "must be a string")
    _check_ids("prompt_ids", obj["prompt_ids"], vocab)
    _check_ids("completion_ids", obj["completion_ids"], vocab)
    completion_ids = obj["completion_ids"]
    if not completion_ids or completion_ids[-1] != tokenizer_lib.EOS_ID:
        raise _Problem("completion_ids", f"must end with eos (id {tokenizer_lib.EOS_ID})")
    topk_ids, topk_logprobs = obj["topk_ids"], obj["topk_logprobs"]
    for name, value in (("topk_ids", topk_ids), ("topk_logprobs", topk_logprobs)):
        if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
            raise _Problem(name, "must be a list of lists")
        if len(value) != len(completion_ids):
            raise _Problem(name, f"has {len(value)} positions but completion_ids has {len(completion_ids)}")
    for pos, (ids, logprobs) in enumerate(zip(topk_ids, topk_logprobs, strict=True)):
        _check_ids(f"topk_ids[{pos}]", ids, vocab)
        if not 1 <= len(ids) <= header["topk"]:
            raise _Problem(
                f"topk_ids[{pos}]", f"has {len(ids)} entries; must have 1..{header['topk']} (header topk)"
            )
        if len(set(ids)) != len(ids):
            raise _Problem(f"topk_ids[{pos}]", "repeats an id")
        if len(logprobs) != len(ids):
            raise _Problem(
                f"topk_logprobs[{pos}]", f"has {len(logprobs)} entries but topk_ids[{pos}] has {len(ids)}"
            )
        for lp in logprobs:
            if not _is_logprob(lp):
                raise _Problem(f"topk_logprobs[{pos}]", f"{lp!r} is not a finite log-probability <= 0")
        total = math.fsum(math.exp(lp) for lp in logprobs)
        if total > 1.0 + 1e-3:
            raise _Problem(f"topk_logprobs[{pos}]", f"probabilities add up to {total:.4f} > 1")
    return Record(**{name: obj[name] for name in FIELDS})


def _parse_line(line: bytes):
    """One JSONL line as a JSON value; _Problem naming what is wrong with it."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Problem(
            "encoding", f"byte {line[error.start]:#04x} at column {error.start + 1} is not UTF-8"
        ) from None
    if not text.strip():
        raise _Problem("line", "empty line")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _Problem("json", f"not valid JSON ({error.msg} at column {error.colno})") from None
    except (ValueError, RecursionError) as error:
        # A number of over 4300 digits (ValueError) or nesting deeper than Python's recursion limit.
        raise _Problem("json", f"not valid JSON ({type(error).__name__}: {str(error)[:80]})") from None


def _read_lines(path: str, what: str) -> list[bytes]:
    """The file's lines without their newlines; InputError if it is missing, empty or cut short."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} file not found; make it with //data:make_toy_kd") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read {what}: {error.strerror}") from None
    if not raw:
        raise InputError(f"{path}:1: header: the file is empty; expected a header line then records")
    lines = raw.split(b"\n")
    if lines[-1] != b"":
        raise InputError(
            f"{path}:{len(lines)}: line: truncated last line (no newline at the end); "
            "the file is incomplete, regenerate it"
        )
    lines.pop()
    return lines


def read_dataset(path: str) -> Dataset:
    """Reads and validates a dataset file; InputError "file:line: field: problem" on the first problem."""
    lines = _read_lines(path, "dataset")
    header: dict = {}
    records: list[Record] = []
    first_line_of_id: dict[int, int] = {}
    for number, line in enumerate(lines, start=1):
        try:
            obj = _parse_line(line)
            if number == 1:
                _check_header(obj)
                header = obj
                continue
            record = _check_record(obj, header)
            if record.id in first_line_of_id:
                raise _Problem("id", f"{record.id} repeats the id on line {first_line_of_id[record.id]}")
            first_line_of_id[record.id] = number
            records.append(record)
        except _Problem as problem:
            raise InputError(f"{path}:{number}: {problem.field}: {problem.problem}") from None
    return Dataset(header=header, records=records)


def _record_lines(path: str, header: dict, records: Iterable[Record], first_line: int = 2) -> list[str]:
    """Canonical JSON lines of `records`, each checked against `header`; InputError "path:line: ..."."""
    lines = []
    seen: set[int] = set()
    for number, record in enumerate(records, start=first_line):
        obj = dataclasses.asdict(record)
        try:
            _check_record(obj, header)
            if record.id in seen:
                raise _Problem("id", f"{record.id} is used twice")
            seen.add(record.id)
        except _Problem as problem:
            raise InputError(f"{path}:{number}: {problem.field}: {problem.problem}") from None
        lines.append(_dumps(obj))
    return lines


def _checked_header(path: str, header: dict) -> str:
    try:
        _check_header(header)
    except _Problem as problem:
        raise InputError(f"{path}:1: {problem.field}: {problem.problem}") from None
    return _dumps(header)


def write_dataset(path: str, header: dict, records: Iterable[Record]) -> None:
    """Validates, then writes header and records atomically; same input -> same bytes."""
    lines = [_checked_header(path, header), *_record_lines(path, header, records)]
    atomic.write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))


# Sharded generation: shard i of N holds the records with ids in a contiguous range, under a shard
# header that carries the whole dataset's header. merge_shards() turns a complete set back into
# exactly the bytes write_dataset() writes for the unsharded records.
SHARD_FORMAT = "m8b-kd-shard"


def write_shard(
    path: str, header: dict, records: list[Record], shard: int, num_shards: int, ids: range
) -> None:
    """Writes shard `shard` of `num_shards` (records with ids in `ids`, in order) atomically."""
    if [r.id for r in records] != list(ids):
        raise ValueError(f"shard {shard}: records are not ids {ids.start}..{ids.stop - 1} in order")
    shard_header = {
        "format": SHARD_FORMAT,
        "version": VERSION,
        "shard": shard,
        "num_shards": num_shards,
        "first_id": ids.start,
        "stop_id": ids.stop,
        "dataset_header": header,
    }
    _checked_header(path, header)
    lines = [_dumps(shard_header), *_record_lines(path, header, records)]
    atomic.write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def _read_shard(path: str) -> tuple[dict, list[Record]]:
    lines = _read_lines(path, "dataset shard")
    number = 1
    try:
        head = _parse_line(lines[0])
        if not isinstance(head, dict) or head.get("format") != SHARD_FORMAT:
            got = head.get("format") if isinstance(head, dict) else head
            raise _Problem("format", f"is {got!r}, expected {SHARD_FORMAT!r} (a make_toy_kd --shard file)")
        for name in ("shard", "num_shards", "first_id", "stop_id"):
            if not _is_int(head.get(name)) or head[name] < 0:
                raise _Problem(name, f"is {head.get(name)!r}; must be an int >= 0")
        if head.get("version") != VERSION:
            raise _Problem("version", f"is {head.get('version')!r}, this code reads version {VERSION}")
        try:
            _check_header(head.get("dataset_header"))
        except _Problem as problem:
            raise _Problem(f"dataset_header.{problem.field}", problem.problem) from None
        records = []
        for offset, line in enumerate(lines[1:]):
            number = offset + 2  # for the error message below
            records.append(_check_record(_parse_line(line), head["dataset_header"]))
    except _Problem as problem:
        raise InputError(f"{path}:{number}: {problem.field}: {problem.problem}") from None
    ids = [r.id for r in records]
    if ids != list(range(head["first_id"], head["stop_id"])):
        raise InputError(
            f"{path}: records: ids are not {head['first_id']}..{head['stop_id'] - 1} in order, "
            "as its header says; the shard is damaged, regenerate it"
        )
    return head, records


def merge_shards(paths: list[str]) -> tuple[dict, bytes]:
    """(dataset header, dataset bytes) of a complete set of shard files, given in any order."""
    if not paths:
        raise InputError("--shard: no shard files given")
    shards = sorted((_read_shard(path) + (path,) for path in paths), key=lambda item: item[0]["shard"])
    first_head, _, first_path = shards[0]
    header = first_head["dataset_header"]
    expected_id = 0
    for index, (head, _, path) in enumerate(shards):
        if head["dataset_header"] != header or head["num_shards"] != first_head["num_shards"]:
            raise InputError(
                f"{path}: belongs to another dataset than {first_path} (its dataset_header or "
                "num_shards differ); merge the shards of one make_toy_kd setting"
            )
        if head["shard"] != index or head["first_id"] != expected_id:
            raise InputError(
                f"{path}: shard {head['shard']} of {head['num_shards']}: expected shard {index} starting "
                f"at id {expected_id}; pass every shard exactly once"
            )
        expected_id = head["stop_id"]
    if len(shards) != first_head["num_shards"] or expected_id != header.get("num_records", expected_id):
        raise InputError(
            f"--shard: {len(shards)} of {first_head['num_shards']} shards given, "
            f"records 0..{expected_id - 1} of {header.get('num_records')}; pass every shard"
        )
    records = [record for _, shard_records, _ in shards for record in shard_records]
    lines = [_dumps(header), *_record_lines("merged dataset", header, records)]
    return header, "".join(line + "\n" for line in lines).encode("utf-8")


@dataclasses.dataclass(frozen=True)
class TopkSummary:
    """What the teacher's top-k lists hold, over every completion position of some records."""

    positions: int
    coverage: float  # mean over positions of the teacher probability mass inside its top-k list
    longest: int  # ids in the longest list (a list is shorter than k where fewer tokens can follow)
    multi: int  # positions whose list holds two or more ids: only these carry a KL signal

    def kl_is_zero(self) -> bool:
        """True when the top-k KL term (renormalised over each list, training/distill.py) is 0 at
        every position: no list compares two tokens."""
        return self.multi == 0


def topk_summary(records: Iterable[Record]) -> TopkSummary:
    positions = multi = longest = 0
    mass = 0.0
    for record in records:
        for row in record.topk_logprobs:
            positions += 1
            multi += len(row) >= 2
            longest = max(longest, len(row))
            mass += min(1.0, sum(math.exp(lp) for lp in row))
    return TopkSummary(positions, mass / positions if positions else 0.0, longest, multi)
