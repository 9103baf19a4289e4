"""The contract: one JSON file that says what every exported artifact must be and how close it must be.

    {"format": "m8b-contract", "version": 2,
     "model_name": "magic-8-ball", "model_type": "magic-8-ball",
     "vocab_size": 512, "tokenizer_sha256": "...",
     "lengths": [64, 128, 256], "default_length": 128,
     "inputs":  [{"name": "input_ids", "dtype": "int32",   "shape": [1, "T"]}],
     "outputs": [{"name": "logits",    "dtype": "float32", "shape": [1, "T", 512]}],
     "artifacts": {"weights": "<sha256>", "torchscript": "<sha256>"},
     "gates": {...}}

"T" stands for each of `lengths`. Verification reads shapes and bounds from here; nothing downstream
re-derives them by probing an artifact (docs/architecture.md, "The contract").

Which digests live in `artifacts`: the contract is written once, by the export step, and never
rewritten. It pins the checkpoint it was exported from ("weights") and the TorchScript file written
next to it ("torchscript"). Later stages (Core ML, GGUF) read the contract but do not add their
digests to it: a file that several stages rewrite changes its bytes at every stage, so every
consumer would have to know which version it holds, and Bazel would see a different contract
depending on how far the chain had run. Instead the verification report (verify/report/report.py) records
the sha256 and size of every artifact it checked, Core ML and GGUF included; the report is the final
manifest, and it names the contract by digest. `with_artifact` returns a new contract (the export
step builds its contract with it); it never edits a saved file.

Gates ("gates", conversion/gates.py): the artifacts to verify, the precision each computes in, and
every numeric bound with the floor it was derived from and its factor. Floors are measured on the
same model and inputs by //verify:measure_floors (verify/floors/floors.py explains each one); the export
step turns them into bounds when it writes the contract.
"""

import dataclasses
import hashlib
import json
import re

from common import atomic
from common.errors import InputError
from conversion import gates as gates_lib
from training.config import DEFAULT_LENGTHS, MAX_SEQ_LEN, MAX_VOCAB_SIZE, MODEL_TYPE

FORMAT = "m8b-contract"
VERSION = 3  # 2: "gates" (bounds from floors) replaced fixed "tolerances"; 3: bounds per length, "quality"
MODEL_NAME = "magic-8-ball"
DEFAULT_LENGTH = DEFAULT_LENGTHS[1]  # the length TorchScript is traced at
INPUT_NAME = "input_ids"
OUTPUT_NAME = "logits"
LENGTH_SYMBOL = "T"

_FIELDS = (
    "format",
    "version",
    "model_name",
    "model_type",
    "vocab_size",
    "tokenizer_sha256",
    "lengths",
    "default_length",
    "inputs",
    "outputs",
    "artifacts",
    "gates",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ARTIFACT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# "compiled" (optional): for an artifact holding machine code (the AOTInductor decoder,
# conversion/aoti_decoder.py), what its compile baked in and the sha256 of its shared object, which
# the loaders check before the file is opened (conversion/pt2_archive.py). Written only when such an
# artifact is, so contracts without one keep their bytes.
COMPILED = "compiled"
COMPILED_KEYS = ("compiler", "isa", "machine", "march", "so_sha256", "threads", "torch")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # ints and the symbol "T"

    def concrete(self, length: int) -> tuple[int, ...]:
        return tuple(length if d == LENGTH_SYMBOL else d for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class Contract:
    model_name: str
    model_type: str
    vocab_size: int
    tokenizer_sha256: str
    lengths: tuple[int, ...]
    default_length: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    artifacts: dict  # name -> sha256 hex; read-only by convention (the dataclass is frozen)
    gates: dict  # see conversion/gates.py
    compiled: dict = dataclasses.field(default_factory=dict)  # artifact -> COMPILED_KEYS

    def input_shape(self, length: int) -> tuple[int, ...]:
        return self.inputs[0].concrete(length)

    def output_shape(self, length: int) -> tuple[int, ...]:
        return self.outputs[0].concrete(length)

    def with_compiled(self, name: str, build: dict) -> "Contract":
        """A new contract that also records how artifact `name` was compiled (COMPILED_KEYS)."""
        compiled = dict(self.compiled)
        compiled[name] = dict(sorted(build.items()))
        return _validated(dataclasses.replace(self, compiled=compiled), "contract")

    def with_artifact(self, name: str, sha256: str) -> "Contract":
        """A new contract that also pins artifact `name` to `sha256` (a saved file is never edited)."""
        artifacts = dict(self.artifacts)
        artifacts[name] = sha256
        return _validated(dataclasses.replace(self, artifacts=artifacts), "contract")

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_name": self.model_name,
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "tokenizer_sha256": self.tokenizer_sha256,
            "lengths": list(self.lengths),
            "default_length": self.default_length,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "artifacts": dict(sorted(self.artifacts.items())),
            "gates": self.gates,
            **({COMPILED: dict(sorted(self.compiled.items()))} if self.compiled else {}),
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, two-space indent, trailing newline. Equal contracts, equal bytes."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @property
    def digest(self) -> str:
        """sha256 hex of the canonical bytes, which is the sha256 of the saved file."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: str) -> None:
        atomic.write_bytes(path, self.to_bytes())


def parse_lengths(text: str, flag: str = "lengths") -> list[int]:
    """`64,128,256` -> [64, 128, 256]; InputError naming --flag otherwise."""
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--{flag}: {text!r} is not a comma-separated list of integers") from None
    if not lengths:
        raise InputError(f"--{flag}: empty; give e.g. 64,128,256")
    return lengths


def check_lengths(lengths, default_length: int | None, max_seq_len: int) -> list[int]:
    """Sorted lengths; InputError for an empty list, repeats, lengths outside 1..max_seq_len, or a
    default_length (None: not checked) that is not one of them. Every artifact must accept each."""
    lengths = list(lengths)
    if not lengths:
        raise InputError("lengths: empty; give at least one sequence length")
    if len(set(lengths)) != len(lengths):
        raise InputError(f"lengths: {lengths} repeats a length")
    for length in lengths:
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise InputError(f"lengths: {length!r} is not a positive integer")
        if length > max_seq_len:
            raise InputError(
                f"lengths: {length} is above the model's max_seq_len {max_seq_len}; "
                "drop it from the contract or train a model with a longer context"
            )
    if default_length is not None and default_length not in lengths:
        raise InputError(f"default_length: {default_length} is not one of the lengths {sorted(lengths)}")
    return sorted(lengths)


def make_contract(
    vocab_size: int,
    tokenizer_sha256: str,
    lengths=DEFAULT_LENGTHS,
    default_length: int = DEFAULT_LENGTH,
    artifacts: dict | None = None,
    gates: dict | None = None,
) -> Contract:
    """A validated contract for the student's one input and one output."""
    contract = Contract(
        model_name=MODEL_NAME,
        model_type=MODEL_TYPE,
        vocab_size=vocab_size,
        tokenizer_sha256=tokenizer_sha256,
        lengths=tuple(sorted(lengths)),
        default_length=default_length,
        inputs=(TensorSpec(INPUT_NAME, "int32", (1, LENGTH_SYMBOL)),),
        outputs=(TensorSpec(OUTPUT_NAME, "float32", (1, LENGTH_SYMBOL, vocab_size)),),
        artifacts=dict(artifacts or {}),
        gates=gates,
    )
    return _validated(contract, "contract")


def load_contract(path: str) -> Contract:
    """Reads and validates a contract file; InputError naming the file and field otherwise."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise InputError(f"{path}: contract not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a contract JSON file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the contract: {error.strerror}") from None
    try:
        values = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        # ValueError covers bad UTF-8, bad JSON and numbers of over 4300 digits; RecursionError deep nesting.
        raise InputError(f"{path}: not valid JSON ({str(error)[:200]}); re-run the export step") from None
    return from_dict(values, path)


def from_dict(values, where: str = "contract") -> Contract:
    if not isinstance(values, dict):
        raise InputError(f"{where}: a contract must be a JSON object")
    unknown = sorted(set(values) - {*_FIELDS, COMPILED})
    if unknown:
        raise InputError(f"{where}: {unknown[0]}: unknown field; expected only {', '.join(_FIELDS)}")
    for field in _FIELDS:
        if field not in values:
            raise InputError(f"{where}: {field}: missing")
    if values["format"] != FORMAT:
        raise InputError(f"{where}: format: is {values['format']!r}, expected {FORMAT!r}")
    if values["version"] != VERSION:
        raise InputError(f"{where}: version: is {values['version']!r}, this code reads version {VERSION}")
    contract = Contract(
        model_name=values["model_name"],
        model_type=values["model_type"],
        vocab_size=values["vocab_size"],
        tokenizer_sha256=values["tokenizer_sha256"],
        lengths=_int_list(values["lengths"], where, "lengths"),
        default_length=values["default_length"],
        inputs=_specs(values["inputs"], where, "inputs"),
        outputs=_specs(values["outputs"], where, "outputs"),
        artifacts=values["artifacts"],
        gates=values["gates"],
        compiled=values.get(COMPILED, {}),
    )
    return _validated(contract, where)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_list(value, where: str, field: str) -> tuple:
    if not isinstance(value, list):
        raise InputError(f"{where}: {field}: must be a list of integers, got {value!r}")
    return tuple(value)


def _specs(value, where: str, field: str) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list):
        raise InputError(f"{where}: {field}: must be a list of tensor specs")
    specs = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or sorted(item) != ["dtype", "name", "shape"]:
            raise InputError(f"{where}: {field}[{i}]: must be an object with exactly name, dtype, shape")
        shape = item["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) or d == LENGTH_SYMBOL for d in shape):
            raise InputError(f"{where}: {field}[{i}].shape: must be a list of integers and {LENGTH_SYMBOL!r}")
        specs.append(TensorSpec(item["name"], item["dtype"], tuple(item["shape"])))
    return tuple(specs)


def _validated(c: Contract, where: str) -> Contract:
    """Checks every field; the message names the field, what is wrong and what was expected."""
    if c.model_name != MODEL_NAME:
        raise InputError(f"{where}: model_name: is {c.model_name!r}, expected {MODEL_NAME!r}")
    if c.model_type != MODEL_TYPE:
        raise InputError(
            f"{where}: model_type: is {c.model_type!r}, expected {MODEL_TYPE!r}; "
            "this contract is not for a Magic 8 Ball model"
        )
    # The same limits as a checkpoint's config (training/config.py): a contract sizes buffers too.
    if not _is_int(c.vocab_size) or not 1 <= c.vocab_size <= MAX_VOCAB_SIZE:
        raise InputError(
            f"{where}: vocab_size: must be an integer in 1..{MAX_VOCAB_SIZE}, got {c.vocab_size!r}"
        )
    if not isinstance(c.tokenizer_sha256, str) or not _SHA256.match(c.tokenizer_sha256):
        raise InputError(f"{where}: tokenizer_sha256: must be 64 lowercase hex digits")
    if not c.lengths or not all(_is_int(t) and 1 <= t <= MAX_SEQ_LEN for t in c.lengths):
        raise InputError(
            f"{where}: lengths: must be a non-empty list of integers in 1..{MAX_SEQ_LEN}, "
            f"got {list(c.lengths)[:8]}"
        )
    if list(c.lengths) != sorted(set(c.lengths)):
        raise InputError(f"{where}: lengths: must be increasing without repeats, got {list(c.lengths)}")
    if not _is_int(c.default_length) or c.default_length not in c.lengths:
        raise InputError(
            f"{where}: default_length: {c.default_length!r} is not one of lengths {list(c.lengths)}"
        )
    expected_in = (TensorSpec(INPUT_NAME, "int32", (1, LENGTH_SYMBOL)),)
    if c.inputs != expected_in:
        raise InputError(
            f"{where}: inputs: {[s.to_dict() for s in c.inputs]}, "
            f"expected {[s.to_dict() for s in expected_in]}"
        )
    expected_out = (TensorSpec(OUTPUT_NAME, "float32", (1, LENGTH_SYMBOL, c.vocab_size)),)
    if c.outputs != expected_out:
        raise InputError(
            f"{where}: outputs: {[s.to_dict() for s in c.outputs]}, "
            f"expected {[s.to_dict() for s in expected_out]} (vocab_size {c.vocab_size})"
        )
    if not isinstance(c.artifacts, dict):
        raise InputError(f"{where}: artifacts: must be an object of name -> sha256")
    for name, sha in c.artifacts.items():
        if not _ARTIFACT_NAME.match(name):
            raise InputError(f"{where}: artifacts.{name}: names are lowercase identifiers")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise InputError(f"{where}: artifacts.{name}: must be 64 lowercase hex digits")
    gates_lib.validate_gates(c.gates, c.lengths, f"{where}: gates")
    _check_compiled(c, where)
    return c


def _check_compiled(c: Contract, where: str) -> None:
    if not isinstance(c.compiled, dict):
        raise InputError(f"{where}: {COMPILED}: must be an object of artifact -> build")
    for name, build in c.compiled.items():
        at = f"{where}: {COMPILED}.{name}"
        if name not in c.artifacts:
            raise InputError(f"{at}: the contract pins no artifact {name!r}")
        if not isinstance(build, dict) or sorted(build) != sorted(COMPILED_KEYS):
            raise InputError(f"{at}: must be an object with exactly {', '.join(COMPILED_KEYS)}")
        if not isinstance(build["so_sha256"], str) or not _SHA256.match(build["so_sha256"]):
            raise InputError(f"{at}.so_sha256: must be 64 lowercase hex digits")
        if not _is_int(build["threads"]) or not 1 <= build["threads"] <= 1024:
            raise InputError(f"{at}.threads: must be an integer in 1..1024, got {build['threads']!r}")
        for key in ("compiler", "isa", "machine", "march", "torch"):
            value = build[key]
            if not isinstance(value, str) or not 0 < len(value) <= 200 or not value.isprintable():
                raise InputError(f"{at}.{key}: must be a short printable string")
