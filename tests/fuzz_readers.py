"""Hypothesis fuzzing of the two readers users feed their own files to: the KD dataset reader
(data/dataset.py) and the contract reader (conversion/contract.py).

The only outcomes allowed are a valid parse or InputError; any other exception is a crash that a
user would see as a traceback. Inputs start from valid files and are damaged two ways:
  - structurally: a field replaced by any JSON value (edge values included), deleted, or added;
  - as bytes: flipped, cut, inserted, lines duplicated or swapped, raw text that JSON parsers choke
    on (a 5000-digit number, nesting deeper than the recursion limit).
The dataset starting points are a version-1 file (the rules teacher's), a version-2 file with soft
targets (an OpenAI-compatible teacher's header, sorted lists and their tails) and a version-2 file
without them (kd sequence).
Used by fuzz_readers_test.py (a bounded number of examples, derandomized) and fuzz_long.py (many).
"""

import functools
import json
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import InputError
from conversion import contract as contract_lib
from conversion import gates_testing
from data import dataset, dataset_testing, generate

# Values that have broken JSON readers before: floats that overflow, ints too big for a float or for
# int() parsing, negative zero, NaN and infinities (Python's json reads them), odd strings.
EDGE_VALUES = [0, -1, 1, 2**31, 2**63, -(2**63), 10**400, -(10**400), 0.5, -0.0, 1e308, -1e308, float("nan")]
EDGE_VALUES += [float("inf"), float("-inf"), "", "T", "\ud800", "a" * 300, True, False, None, [], {}]
# Raw JSON text a serializer would never write, pasted in place of a value or a line.
RAW_TEXT = [
    "1" * 5000,  # int() refuses more than 4300 digits: ValueError, not JSONDecodeError
    "[" * 50000 + "]" * 50000,  # deeper than the recursion limit: RecursionError
    '{"a":' * 3000 + "1" + "}" * 3000,
    "NaN",
    "-Infinity",
    "1e999",
    '"\\ud800"',
    "",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(EDGE_VALUES),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)


# ---- valid starting points -----------------------------------------------------------------------


DATASET_KINDS = ("v1", "v2", "sequence")


@functools.cache
def valid_dataset_lines(kind: str = "v1") -> tuple[str, ...]:
    """A small real dataset as JSON lines: header, then records of both splits. kind: one of
    DATASET_KINDS."""
    _, header, records = generate.generate(n=6, seed=0, heldout_fraction=0.5, topk=3)
    if kind != "v1":
        header, records = dataset_testing.as_version_2(
            header, records, "logits" if kind == "v2" else "sequence"
        )
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "kd.jsonl")
        dataset.write_dataset(path, header, records)
        with open(path, encoding="utf-8") as handle:
            return tuple(handle.read().splitlines())


@functools.cache
def valid_contract_text() -> str:
    contract = contract_lib.make_contract(512, "ab" * 32, gates=gates_testing.gates()).with_artifact(
        "weights", "cd" * 32
    )
    return contract.to_bytes().decode("utf-8")


# ---- structural damage ---------------------------------------------------------------------------


def _paths(value, prefix=()):
    """Every path (tuple of keys/indexes) into a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _replace(doc, path, new):
    if not path:
        return new
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return doc


def _delete(doc, path):
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return doc


@st.composite
def damaged_json(draw, text: str) -> str:
    """`text` (one JSON document) with one structural change, serialized as our writers would not."""
    doc = json.loads(text)
    paths = list(_paths(doc))
    path = draw(st.sampled_from(paths))
    action = draw(st.sampled_from(["replace", "delete", "add", "raw"]))
    if action == "delete" and path:
        doc = _delete(doc, path)
    elif action == "add" and isinstance(doc, dict):
        doc[draw(st.text(max_size=10))] = draw(json_values)
    elif action == "raw" and path:
        marker = "\u0000RAW\u0000"
        doc = _replace(doc, path, marker)
        return json.dumps(doc).replace(json.dumps(marker), draw(st.sampled_from(RAW_TEXT)))
    else:
        doc = _replace(doc, path, draw(json_values))
    return json.dumps(doc, ensure_ascii=draw(st.booleans()), allow_nan=True)


# ---- byte damage ---------------------------------------------------------------------------------


@st.composite
def damaged_bytes(draw, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "delete", "raw"]))
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[where] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[where:]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 64))]
        else:
            data[where:where] = draw(st.sampled_from(RAW_TEXT)).encode()
    return bytes(data)


@st.composite
def dataset_files(draw) -> bytes:
    lines = list(valid_dataset_lines(draw(st.sampled_from(DATASET_KINDS))))
    kind = draw(st.sampled_from(["field", "bytes", "lines"]))
    if kind == "field":
        index = draw(st.integers(0, len(lines) - 1))
        lines[index] = draw(damaged_json(lines[index]))
    elif kind == "lines":
        index = draw(st.integers(0, len(lines) - 1))
        other = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["duplicate", "swap", "drop", "raw"]))
        if action == "duplicate":
            lines.insert(other, lines[index])
        elif action == "swap":
            lines[index], lines[other] = lines[other], lines[index]
        elif action == "drop":
            del lines[index]
        else:
            lines[index] = draw(st.sampled_from(RAW_TEXT))
    data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")
    return draw(damaged_bytes(data)) if kind == "bytes" else data


@st.composite
def contract_files(draw) -> bytes:
    text = valid_contract_text()
    if draw(st.booleans()):
        return draw(damaged_json(text)).encode("utf-8", "surrogatepass")
    return draw(damaged_bytes(text.encode()))


# ---- the property --------------------------------------------------------------------------------


def _read_with(reader, data: bytes) -> None:
    """reader(path) on `data`: returns, or raises InputError; anything else propagates (a failure)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "input")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            reader(path)
        except InputError as error:
            assert str(error).startswith(path), f"the message does not name the file: {error}"


def check_dataset(data: bytes) -> None:
    _read_with(dataset.read_dataset, data)


def check_contract(data: bytes) -> None:
    _read_with(contract_lib.load_contract, data)


def fuzz_settings(examples: int):
    # derandomize: the same examples every run (a CI failure reproduces); database=None: nothing is
    # written to the source tree or the sandbox; deadline=None: a busy 2-core machine is slow.
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


def dataset_property(examples: int):
    return fuzz_settings(examples)(given(dataset_files())(check_dataset))


def contract_property(examples: int):
    return fuzz_settings(examples)(given(contract_files())(check_contract))
