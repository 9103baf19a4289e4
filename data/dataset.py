"""The knowledge-distillation dataset: one JSONL file, a header line then one record per line.

Two versions share the file layout. Version 1 is what the rules teacher writes (make_toy_kd, the
default pipeline); version 2 is what any teacher writes (data/teachers/source.py: a teacher's
Reply is one record's completion_ids, topk_ids, topk_logprobs and topk_tail).

Version 1 header (line 1), a JSON object; extra keys are kept and ignored:

    format            "m8b-kd"
    version           1
    teacher           str, names the source of the soft targets (e.g. "m8b-rules-v1")
    tokenizer_sha256  hex sha256 of the tokenizer file the ids below belong to
    topk              int 1..32, the most entries any position's top-k list may have
    vocab_size        int (optional, default 512): every id is below it

Version 2 header, a JSON object with exactly these keys (the last six optional):

    format            "m8b-kd"
    version           2
    teacher           {"kind": "rules" | "gguf" | "openai",
                       "model": non-empty str, the model's name,
                       "sha256": 64 lower-case hex digits (a GGUF file's digest) or null,
                       "endpoint": the server's URL or null; never credentials: a URL with
                                   user:password@ or a query parameter named like a key or token
                                   is refused,
                       "server_model": str (the model id the server reports) or null,
                       "api": "completions" | "chat" | null}
                      every key present; kind "gguf" needs sha256, kind "openai" endpoint and api
    sampling          {"mode": "greedy", "max_tokens": int >= 1} or
                      {"mode": "sample", "temperature": number > 0, "top_k": int >= 0,
                       "top_p": number in (0, 1], "seed": int >= 0, "max_tokens": int >= 1}
    kd                "logits" (soft targets per position) | "sequence" (the reply text alone)
    soft_targets      bool, true exactly when kd is "logits"
    topk              int 1..32 when soft_targets, 0 when not
    tokenizer_sha256  as in version 1
    vocab_size, seed, heldout_fraction, num_records, num_heldout, noise_fraction
                      optional, as make_toy_kd writes them (vocab_size as in version 1)

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
    topk_tail        version 2 only: [float], one per completion position, the probability mass
                     off the list, max(0, 1 - sum(exp(topk_logprobs[i])))

Version 2 asks more of the lists (version 1 is read exactly as before): each list is sorted by
log-probability, highest first (equal log-probabilities: lower id first); its mass is at most
1 + TAIL_TOLERANCE; its tail is a probability within TAIL_TOLERANCE of the mass the list leaves
off; a list shorter than topk holds the whole distribution (tail at most TAIL_TOLERANCE). Under
kd "sequence" the three lists are [] and the completion is the only signal.

Record.topk_tail is filled for version-1 files too, computed from the lists as above, so training
sees one shape; writing a version-1 file never writes it.

read_dataset() checks all of it and reports the first problem as "file:line: field: problem".
write_dataset() checks the same things and writes atomically with canonical JSON (sorted keys,
no ASCII escaping, fixed separators, "\\n" line ends), so the same records give the same bytes.
check_tokenizer() says when a dataset's ids belong to another tokenizer than the one given.
"""

import dataclasses
import json
import math
import urllib.parse
from collections.abc import Iterable

from common import atomic
from common.errors import InputError
from data import tokenizer as tokenizer_lib

FORMAT = "m8b-kd"
VERSION = 1  # what the rules teacher writes (data/generate.py); byte for byte the format it always had
VERSION_2 = 2  # any teacher: data/teachers/source.py
MAX_TOPK = 32
SPLITS = ("train", "heldout")
TEACHER_KINDS = ("rules", "gguf", "openai")
TEACHER_APIS = ("completions", "chat")
KD_MODES = ("logits", "sequence")
# How far a version-2 list's mass may exceed 1 and its tail may stray from 1 - mass. Logprobs are
# written rounded to 6 decimals: each rounding scales its probability by at most exp(5e-7), so a
# list's mass moves by at most ~5e-7, and a tail rounded the same way by another 5e-7; a teacher
# computing in float32 adds about 1e-7 per entry (~3e-6 over 32 entries). 1e-4 leaves a margin of
# 25 over all of that, and still catches a list that leaves out a token of probability 1e-4 or more.
TAIL_TOLERANCE = 1e-4

# A query parameter whose name holds one of these is taken for a credential (api_key, token, ...).
_SECRET_PARAMETERS = ("key", "token", "secret", "password", "auth", "signature")


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
    topk_tail: list[float] | None = None  # off-list mass per position; filled when read (any version)


FIELDS = tuple(f.name for f in dataclasses.fields(Record) if f.name != "topk_tail")  # version 1
FIELDS_V2 = (*FIELDS, "topk_tail")


@dataclasses.dataclass
class Dataset:
    header: dict
    records: list[Record]

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]

    @property
    def kd(self) -> str:
        """ "logits" (the records carry soft targets) or "sequence" (the reply text alone)."""
        return kd_mode(self.header)


def kd_mode(header: dict) -> str:
    """A checked header's kd mode: version 1 always carries soft targets ("logits")."""
    return header["kd"] if header.get("version") == VERSION_2 else "logits"


def tail_of(logprobs: list[float]) -> float:
    """The probability mass off a top-k list: max(0, 1 - sum(exp(logprobs))), summed exactly."""
    return max(0.0, 1.0 - math.fsum(math.exp(lp) for lp in logprobs))


def check_tokenizer(path: str, header: dict, digest: str, tokenizer_path: str) -> None:
    """InputError unless the dataset's ids belong to the tokenizer with sha256 `digest` (any version)."""
    expected = header.get("tokenizer_sha256")
    if expected != digest:
        raise InputError(
            f"{path}:1: tokenizer_sha256: is {expected}, but --tokenizer {tokenizer_path} has "
            f"{digest}; pass the tokenizer the dataset was made with"
        )


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class _Problem(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)
        self.field, self.problem = field, problem


def _is_int(v) -> bool:
    return type(v) is int


def _is_number(v) -> bool:
    """A finite JSON number (not a bool). An int too big for a float is not finite here
    (math.isfinite would raise OverflowError on it)."""
    if type(v) not in (int, float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _check_header(header) -> None:
    if not isinstance(header, dict):
        raise _Problem("header", "line 1 must be the header JSON object")
    if "format" not in header:
        hint = " (this looks like a record: the header line is missing)" if "id" in header else ""
        raise _Problem("format", f"missing; line 1 must be a header with format {FORMAT!r}{hint}")
    if header["format"] != FORMAT:
        raise _Problem("format", f"is {header['format']!r}, expected {FORMAT!r}")
    version = header.get("version")
    if version == VERSION:
        _check_header_v1(header)
    elif _is_int(version) and version == VERSION_2:
        _check_header_v2(header)
    else:
        raise _Problem("version", f"is {version!r}, this code reads versions {VERSION} and {VERSION_2}")


def _check_tokenizer_fields(header: dict) -> None:
    digest = header.get("tokenizer_sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise _Problem("tokenizer_sha256", "must be 64 lower-case hex digits (the tokenizer's digest)")


def _check_vocab(header: dict) -> None:
    vocab = header.get("vocab_size", tokenizer_lib.VOCAB_SIZE)
    if not _is_int(vocab) or vocab <= tokenizer_lib.FIRST_NORMAL_ID:
        raise _Problem("vocab_size", f"is {vocab!r}; must be an int above {tokenizer_lib.FIRST_NORMAL_ID}")


def _check_header_v1(header: dict) -> None:
    if not isinstance(header.get("teacher"), str) or not header["teacher"]:
        raise _Problem("teacher", "must be a non-empty string naming the teacher")
    _check_tokenizer_fields(header)
    topk = header.get("topk")
    if not _is_int(topk) or not 1 <= topk <= MAX_TOPK:
        raise _Problem("topk", f"is {topk!r}; must be an int in 1..{MAX_TOPK}")
    _check_vocab(header)


HEADER_V2 = ("format", "version", "teacher", "sampling", "kd", "soft_targets", "topk", "tokenizer_sha256")
HEADER_V2_OPTIONAL = (
    "vocab_size",
    "seed",
    "heldout_fraction",
    "num_records",
    "num_heldout",
    "noise_fraction",
)
TEACHER_FIELDS = ("kind", "model", "sha256", "endpoint", "server_model", "api")
SAMPLING_FIELDS = {
    "greedy": ("mode", "max_tokens"),
    "sample": ("mode", "temperature", "top_k", "top_p", "seed", "max_tokens"),
}


def _check_keys(obj: dict, prefix: str, required: Iterable[str], optional: Iterable[str] = ()) -> None:
    required = tuple(required)
    for name in required:
        if name not in obj:
            raise _Problem(f"{prefix}{name}", "missing")
    extra = sorted(set(obj) - set(required) - set(optional), key=str)
    if extra:
        raise _Problem(f"{prefix}{extra[0]}", "unexpected field")


def _check_header_v2(header: dict) -> None:
    _check_keys(header, "", HEADER_V2, HEADER_V2_OPTIONAL)
    _check_teacher(header["teacher"])
    _check_sampling(header["sampling"])
    kd = header["kd"]
    if kd not in KD_MODES:
        raise _Problem("kd", f"is {kd!r}; must be one of {', '.join(KD_MODES)}")
    soft = header["soft_targets"]
    if type(soft) is not bool or soft != (kd == "logits"):
        raise _Problem(
            "soft_targets", f"is {soft!r}; must be true exactly when kd is 'logits' (kd is {kd!r})"
        )
    topk = header["topk"]
    if soft and (not _is_int(topk) or not 1 <= topk <= MAX_TOPK):
        raise _Problem("topk", f"is {topk!r}; must be an int in 1..{MAX_TOPK} with soft targets")
    if not soft and not (_is_int(topk) and topk == 0):
        raise _Problem("topk", f"is {topk!r}; must be 0 under kd 'sequence' (no soft targets)")
    _check_tokenizer_fields(header)
    _check_vocab(header)
    for name in ("seed", "num_records", "num_heldout"):
        if name in header and not (_is_int(header[name]) and header[name] >= 0):
            raise _Problem(name, f"is {header[name]!r}; must be an int >= 0")
    for name in ("heldout_fraction", "noise_fraction"):
        if name in header and not (_is_number(header[name]) and 0 <= header[name] <= 1):
            raise _Problem(name, f"is {header[name]!r}; must be a fraction in [0, 1]")


def _check_teacher(teacher) -> None:
    if not isinstance(teacher, dict):
        raise _Problem("teacher", f"must be an object with keys {', '.join(TEACHER_FIELDS)} in version 2")
    _check_keys(teacher, "teacher.", TEACHER_FIELDS)
    kind = teacher["kind"]
    if kind not in TEACHER_KINDS:
        raise _Problem("teacher.kind", f"is {kind!r}; must be one of {', '.join(TEACHER_KINDS)}")
    if not isinstance(teacher["model"], str) or not teacher["model"]:
        raise _Problem("teacher.model", "must be a non-empty string naming the model")
    digest = teacher["sha256"]
    if digest is not None and not (
        isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    ):
        raise _Problem("teacher.sha256", "must be 64 lower-case hex digits (the GGUF file's digest) or null")
    if teacher["endpoint"] is not None:
        _check_endpoint(teacher["endpoint"])
    if teacher["server_model"] is not None and not isinstance(teacher["server_model"], str):
        raise _Problem("teacher.server_model", "must be a string (the model id the server reports) or null")
    if teacher["api"] is not None and teacher["api"] not in TEACHER_APIS:
        raise _Problem(
            "teacher.api", f"is {teacher['api']!r}; must be one of {', '.join(TEACHER_APIS)} or null"
        )
    if kind == "gguf" and digest is None:
        raise _Problem("teacher.sha256", "is null; a gguf teacher must record its file's sha256")
    if kind == "openai":
        for name in ("endpoint", "api"):
            if teacher[name] is None:
                raise _Problem(f"teacher.{name}", "is null; an openai teacher must record it")


def _check_endpoint(url) -> None:
    """An http(s) URL with a host and no credentials. The message never repeats the URL: it may
    hold a secret."""
    if not isinstance(url, str):
        raise _Problem("teacher.endpoint", "must be a URL string or null")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise _Problem("teacher.endpoint", "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise _Problem("teacher.endpoint", "must be an http or https URL with a host")
    if "@" in parts.netloc:
        raise _Problem(
            "teacher.endpoint", "holds credentials (user:password@host); record the URL without them"
        )
    for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if any(word in name.lower() for word in _SECRET_PARAMETERS):
            raise _Problem(
                "teacher.endpoint",
                f"has a query parameter named {name[:40]!r}, a credential; record the URL without it",
            )


def _check_sampling(sampling) -> None:
    if not isinstance(sampling, dict):
        raise _Problem("sampling", "must be an object: {mode: greedy | sample, ...}")
    mode = sampling.get("mode")
    if mode not in SAMPLING_FIELDS:
        raise _Problem("sampling.mode", f"is {mode!r}; must be 'greedy' or 'sample'")
    _check_keys(sampling, "sampling.", SAMPLING_FIELDS[mode])
    if not (_is_int(sampling["max_tokens"]) and sampling["max_tokens"] >= 1):
        raise _Problem("sampling.max_tokens", f"is {sampling['max_tokens']!r}; must be an int >= 1")
    if mode == "greedy":
        return
    if not (_is_number(sampling["temperature"]) and sampling["temperature"] > 0):
        raise _Problem("sampling.temperature", f"is {sampling['temperature']!r}; must be a number > 0")
    if not (_is_number(sampling["top_p"]) and 0 < sampling["top_p"] <= 1):
        raise _Problem("sampling.top_p", f"is {sampling['top_p']!r}; must be a number in (0, 1]")
    for name in ("top_k", "seed"):
        if not (_is_int(sampling[name]) and sampling[name] >= 0):
            raise _Problem(f"sampling.{name}", f"is {sampling[name]!r}; must be an int >= 0")


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


def _check_text_fields(obj, header: dict, fields: tuple[str, ...]) -> None:
    """What both versions ask of a record besides its top-k lists."""
    if not isinstance(obj, dict):
        raise _Problem("record", "must be a JSON object")
    for name in fields:
        if name not in obj:
            raise _Problem(name, "missing")
    extra = sorted(set(obj) - set(fields))
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


def _check_positions(obj, names: tuple[str, ...]) -> None:
    count = len(obj["completion_ids"])
    for name in names:
        value = obj[name]
        if name != "topk_tail" and (
            not isinstance(value, list) or not all(isinstance(r, list) for r in value)
        ):
            raise _Problem(name, "must be a list of lists")
        if name == "topk_tail" and not isinstance(value, list):
            raise _Problem(name, "must be a list of numbers, one per completion position")
        if len(value) != count:
            raise _Problem(name, f"has {len(value)} positions but completion_ids has {count}")


def _check_list(pos: int, ids, logprobs, header: dict) -> None:
    """One position's top-k list: distinct ids in the vocabulary, 1..topk of them, with as many
    finite log-probabilities <= 0 (both versions)."""
    vocab = header.get("vocab_size", tokenizer_lib.VOCAB_SIZE)
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


def _check_record(obj, header: dict) -> Record:
    if header.get("version") == VERSION_2:
        return _check_record_v2(obj, header)
    _check_text_fields(obj, header, FIELDS)
    _check_positions(obj, ("topk_ids", "topk_logprobs"))
    for pos, (ids, logprobs) in enumerate(zip(obj["topk_ids"], obj["topk_logprobs"], strict=True)):
        _check_list(pos, ids, logprobs, header)
        total = math.fsum(math.exp(lp) for lp in logprobs)
        if total > 1.0 + 1e-3:
            raise _Problem(f"topk_logprobs[{pos}]", f"probabilities add up to {total:.4f} > 1")
    tails = [tail_of(logprobs) for logprobs in obj["topk_logprobs"]]
    return Record(**{name: obj[name] for name in FIELDS}, topk_tail=tails)


def _check_record_v2(obj, header: dict) -> Record:
    _check_text_fields(obj, header, FIELDS_V2)
    if not header["soft_targets"]:
        for name in ("topk_ids", "topk_logprobs", "topk_tail"):
            if not (isinstance(obj[name], list) and not obj[name]):
                raise _Problem(name, "must be [] under kd 'sequence' (the dataset has no soft targets)")
        return Record(**{name: obj[name] for name in FIELDS_V2})
    _check_positions(obj, ("topk_ids", "topk_logprobs", "topk_tail"))
    topk = header["topk"]
    for pos, (ids, logprobs, tail) in enumerate(
        zip(obj["topk_ids"], obj["topk_logprobs"], obj["topk_tail"], strict=True)
    ):
        _check_list(pos, ids, logprobs, header)
        for index in range(1, len(ids)):
            before, after = (logprobs[index - 1], ids[index - 1]), (logprobs[index], ids[index])
            if before[0] < after[0]:
                raise _Problem(
                    f"topk_logprobs[{pos}]",
                    f"entry {index} ({after[0]!r}) is above entry {index - 1} ({before[0]!r}); "
                    "a list is sorted by log-probability, highest first",
                )
            if before[0] == after[0] and before[1] > after[1]:
                raise _Problem(
                    f"topk_ids[{pos}]",
                    f"ids {before[1]} and {after[1]} have equal log-probabilities; "
                    "ties list the lower id first",
                )
        if not (_is_number(tail) and 0 <= tail <= 1):
            raise _Problem(f"topk_tail[{pos}]", f"{tail!r} is not a probability in [0, 1]")
        total = math.fsum(math.exp(lp) for lp in logprobs)
        if total > 1.0 + TAIL_TOLERANCE:
            raise _Problem(
                f"topk_logprobs[{pos}]",
                f"probabilities add up to {total:.6f} > 1 (tolerance {TAIL_TOLERANCE})",
            )
        off_list = max(0.0, 1.0 - total)
        if abs(tail - off_list) > TAIL_TOLERANCE:
            raise _Problem(
                f"topk_tail[{pos}]",
                f"is {tail!r} but the list leaves {off_list:.6f} off it "
                f"(1 - sum of exp(topk_logprobs[{pos}])); they must agree within {TAIL_TOLERANCE}",
            )
        if len(ids) < topk and tail > TAIL_TOLERANCE:
            raise _Problem(
                f"topk_ids[{pos}]",
                f"has {len(ids)} entries, fewer than topk {topk}, yet topk_tail[{pos}] is {tail!r}; "
                "a list shorter than k must hold the whole distribution (tail 0)",
            )
    return Record(**{name: obj[name] for name in FIELDS_V2})


def _record_object(record: Record, header: dict) -> dict:
    """The record as its version's JSON object: version 1 never carries topk_tail. Its lists as they
    are: the object is only serialised (dataclasses.asdict's deep copy of every top-k list took a
    fifth of a GGUF teacher's dataset time)."""
    fields = FIELDS_V2 if header.get("version") == VERSION_2 else FIELDS
    return {name: getattr(record, name) for name in fields}


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


def read_dataset(path: str, tokenizer_sha256: str | None = None, tokenizer_path: str = "") -> Dataset:
    """Reads and validates a dataset file; InputError "file:line: field: problem" on the first problem.

    With tokenizer_sha256, a header naming another tokenizer is refused at line 1 (check_tokenizer),
    before any record is read; tokenizer_path names that tokenizer in the message.
    """
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
                if tokenizer_sha256 is not None:
                    check_tokenizer(path, header, tokenizer_sha256, tokenizer_path)
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
        obj = _record_object(record, header)
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
    """Writes shard `shard` of `num_shards` (records with ids in `ids`, in order) atomically.
    Version-1 datasets only: sharded generation is the rules teacher's (make_toy_kd)."""
    if header.get("version") != VERSION:
        raise InputError(
            f"{path}: a shard holds a version-{VERSION} dataset (the rules teacher's), not version "
            f"{header.get('version')!r}; write a version-{VERSION_2} dataset unsharded"
        )
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
        if head["dataset_header"].get("version") != VERSION:
            raise _Problem(
                "dataset_header.version",
                f"is {head['dataset_header'].get('version')!r}; shards hold version-{VERSION} datasets only",
            )
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
    multi: int  # positions whose list holds two or more ids: they compare tokens with each other

    def kl_is_zero(self) -> bool:
        """True when every list holds one id. The name is from the loss that renormalised over each
        list, whose KL was then 0 everywhere; the tail-bucket KL (training/distill.py) still weighs
        the one id against the rest of the mass, the least a soft target can say."""
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
