"""Every binary, every class of bad input: exit 2, a message naming the file or flag and the problem,
no traceback, and nothing left in the output directory.

One table, one row per case. A row names the binary, spoils one of the good inputs (the pipeline's
own artifacts) or flags, and lists what the `error:` line must mention; "{flag}" in a mention
stands for that flag's value (usually the spoiled file's path). Each row is one real run of the
binary's launcher, as a user would type it.
"""

import dataclasses
import hashlib
import json
import os
import socket
from collections.abc import Callable

import numpy as np
import pytest

from data import dataset_testing
from tests import harness, mounts, spoil

A = harness.artifact


def _outputs(binary: str, out: str) -> dict:
    """The output flags of each binary, all inside `out`."""
    o = lambda name: os.path.join(out, name)  # noqa: E731
    return {
        "make_toy_kd": {"out": o("kd.jsonl"), "tokenizer_out": o("tokenizer.json")},
        "run_toy_distill": {
            "out_weights": o("student.safetensors"),
            "out_metadata": o("student.json"),
            "out_history": o("loss_history.csv"),
        },
        "export_pytorch": {
            "out_torchscript": o("magic-8-ball.pt"),
            "out_decoder": o("magic-8-ball.decode.pt"),
            "out_contract": o("contract.json"),
        },
        "convert_coreml": {"out": o("magic-8-ball.mlpackage")},
        "export_gguf": {"out": o("magic-8-ball.gguf"), "modelfile_out": o("Modelfile")},
        "verify_contracts": {"out_report": o("report.json")},
        "ask": {},
        "run_mlpackage": {"out": o("outputs.npz"), "state_out": o("state.npz")},
    }[binary]


def _inputs(binary: str, s: spoil.Spoiler) -> dict:
    """Good inputs and flags: with these every binary would succeed (and quickly)."""
    checkpoint = {"weights": A("weights"), "metadata": A("metadata")}
    return {
        "make_toy_kd": {"n": 40},
        "run_toy_distill": {
            "in": s.small,
            "tokenizer": A("tokenizer"),
            "steps": 1,
            "batch_size": 4,
            "threads": 1,
        },
        "export_pytorch": {**checkpoint, "tokenizer": A("tokenizer"), "floors": A("floors")},
        "convert_coreml": {**checkpoint, "contract": A("contract")},
        "export_gguf": {**checkpoint, "tokenizer": A("tokenizer")},
        "verify_contracts": harness.verify_contracts_flags(s.small),
        "ask": {
            **harness.ask_flags(),
            "max_new_tokens": 4,
        },
        "run_mlpackage": {"mlpackage": A("mlpackage_stateful"), "inputs": s.feeds},
    }[binary]


@dataclasses.dataclass(frozen=True)
class Case:
    binary: str
    name: str
    # (spoiler, output directory) -> flag overrides; None removes a flag.
    spoil: Callable[[spoil.Spoiler, str], dict]
    mention: tuple[str, ...]
    argv: tuple[str, ...] | None = None  # None: the binary's usual arguments (ask: a question)
    readonly_out: bool = False  # the output directory is a read-only filesystem

    @property
    def id(self) -> str:
        return f"{self.binary}-{self.name.replace(' ', '_')}"


def _case(binary, name, spoil_fn, *mention, argv=None, readonly_out=False) -> Case:
    return Case(binary, name, spoil_fn, tuple(mention), None if argv is None else tuple(argv), readonly_out)


# ---- spoiled inputs shared by several rows -------------------------------------------------------


def _record(s, name, edit, line=2):
    """The small dataset with record line `line` (the first train record) changed by edit(obj)."""
    return s.record_edit(s.small, name, line, edit)


def _set(key, value):
    def edit(obj):
        obj[key] = value

    return edit


def _drop(key):
    def edit(obj):
        del obj[key]

    return edit


def _tail_edit(value):
    def edit(obj):
        obj["topk_tail"][0] = value

    return edit


def _closed_port() -> int:
    """A localhost port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _metadata(s, name, edit):
    return s.json_edit(A("metadata"), name, edit)


def _repinned(s, weights):
    """The damaged `weights` and a metadata copy whose weights_sha256 is that file's digest."""
    with open(weights, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    name = "pinned_" + os.path.basename(weights) + ".json"
    return {"weights": weights, "metadata": _metadata(s, name, _set("weights_sha256", digest))}


def _contract(s, name, edit):
    return s.json_edit(A("contract"), name, edit)


def _gates_edit(key, value):
    """One bound of the fp16 gates edited: its floor dropped (value None), or its factor changed
    with the bound kept floor x factor, so only the factor limit can refuse it."""

    def edit(doc):
        entry = doc["gates"]["bounds"]["fp16"]["T64"]["kl_max"]
        if value is None:
            del entry[key]
        else:
            entry[key] = value
            entry["bound"] = entry["floor"] * entry["factor"]

    return edit


def _other_vocab(doc):
    doc["config"]["vocab_size"] = 1000


def _contract_lengths(lengths):
    """The contract's lengths changed, its gates given the same bounds at the new lengths (so the
    gates stay well-formed and the lengths are what a reader must refuse)."""

    def edit(doc):
        doc["lengths"] = lengths
        if isinstance(lengths, list):
            # Per-artifact bounds by scope, and each lossy artifact's quality bounds by scope.
            quality = [per_artifact["bounds"] for per_artifact in doc["gates"].get("quality", {}).values()]
            for scopes in [*doc["gates"]["bounds"].values(), *quality]:
                any_length = next(v for k, v in scopes.items() if k.startswith("T"))
                for key in [k for k in scopes if k.startswith("T")]:
                    del scopes[key]
                scopes.update({f"T{t}": any_length for t in lengths})

    return edit


def _mlpackage(s, name, damage):
    """A copy of the pipeline's .mlpackage with one of its files damaged by damage(package dir)."""
    package = s.package_copy(A("mlpackage"), name + ".mlpackage")
    damage(package)
    return package


def _model_file(package):
    return os.path.join(package, "Data", "com.apple.CoreML", "model.mlmodel")


def _weight_file(package):
    return os.path.join(package, "Data", "com.apple.CoreML", "weights", "weight.bin")


def _rewrite(path, change):
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(change(data))


def _flip(offsets):
    def change(data):
        data = bytearray(data)
        for offset in offsets:
            data[offset] ^= 0xFF
        return bytes(data)

    return change


def _cut(fraction):
    return lambda data: data[: int(len(data) * fraction)]


NON_UTF8 = b"\xff\xfe not UTF-8 \xc3\x28"
LONG_PROMPT = list(range(300, 400)) * 3  # 300 ids: longer than the 256 the model (and contract) allow


# ---- the table -----------------------------------------------------------------------------------

CASES = [
    # make_toy_kd: only flags and outputs.
    # Without --out, make_toy_kd writes the tokenizer alone (the pipeline's tokenizer stage); with
    # neither output there is nothing to write.
    _case(
        "make_toy_kd",
        "missing both outputs",
        lambda s, o: {"out": None, "tokenizer_out": None},
        "--tokenizer_out is required",
    ),
    _case(
        "make_toy_kd", "shard without --out", lambda s, o: {"out": None, "num_shards": 3}, "--out is required"
    ),
    _case(
        "make_toy_kd",
        "same output twice",
        lambda s, o: {"tokenizer_out": os.path.join(o, "kd.jsonl")},
        "--out and --tokenizer_out",
        "same file",
    ),
    _case("make_toy_kd", "n below 2", lambda s, o: {"n": 1}, "--n", "at least 2"),
    _case("make_toy_kd", "n not an int", lambda s, o: {"n": "many"}, "--n", "many"),
    _case(
        "make_toy_kd", "heldout fraction 1.5", lambda s, o: {"heldout_fraction": 1.5}, "--heldout_fraction"
    ),
    _case("make_toy_kd", "topk 33", lambda s, o: {"topk": 33}, "--topk", "1..32"),
    _case(
        "make_toy_kd",
        "noise fraction 1.5",
        lambda s, o: {"noise_fraction": 1.5},
        "--noise_fraction",
        "[0, 1]",
    ),
    _case(
        "make_toy_kd",
        "output dir missing",
        lambda s, o: {"out": os.path.join(o, "absent", "kd.jsonl")},
        "--out",
        "does not exist",
    ),
    # make_toy_kd's teachers: a GGUF file that is not one, a server that is down.
    _case(
        "make_toy_kd",
        "teacher gguf truncated",
        lambda s, o: {"teacher": "gguf:" + s.truncated(A("gguf"), "teacher_cut.gguf", 0.5)},
        "teacher_cut.gguf",
        "not a readable GGUF file",
    ),
    _case(
        "make_toy_kd",
        "teacher endpoint down",
        lambda s, o: {
            "teacher": f"openai:http://127.0.0.1:{_closed_port()}/v1",
            "model": "m",
            "max_retries": 0,
        },
        "http://127.0.0.1:",
        "cannot connect",
    ),
    _case("make_toy_kd", "output is a directory", lambda s, o: {"out": o}, "--out", "is a directory"),
    _case("make_toy_kd", "positional argument", lambda s, o: {}, "unexpected arguments", argv=["extra"]),
    _case("make_toy_kd", "read-only output dir", lambda s, o: {}, "not writable", readonly_out=True),
    # run_toy_distill: the dataset (every record rule), the tokenizer, flags, outputs.
    _case(
        "run_toy_distill",
        "dataset missing",
        lambda s, o: {"in": s.missing("absent.jsonl")},
        "{in}",
        "not found",
    ),
    _case("run_toy_distill", "dataset empty", lambda s, o: {"in": s.empty("empty.jsonl")}, "{in}:1", "empty"),
    _case(
        "run_toy_distill",
        "dataset truncated",
        lambda s, o: {"in": s.truncated(s.small, "cut.jsonl", 0.5)},
        "{in}:",
        "truncated last line",
    ),
    _case(
        "run_toy_distill",
        "v2 dataset truncated",
        lambda s, o: {"in": s.truncated(s.small_v2, "cut_v2.jsonl", 0.5)},
        "{in}:",
        "truncated last line",
    ),
    _case(
        "run_toy_distill",
        "v2 header claims another tokenizer",
        lambda s, o: {"in": s.record_edit(s.small_v2, "tok_v2.jsonl", 1, _set("tokenizer_sha256", "0" * 64))},
        "{in}:1",
        "tokenizer_sha256",
    ),
    _case(
        "run_toy_distill",
        "v2 tail disagrees with its list",
        lambda s, o: {"in": s.record_edit(s.small_v2, "tail_v2.jsonl", 2, _tail_edit(0.9))},
        "{in}:2",
        "topk_tail[0]",
    ),
    _case(
        "run_toy_distill",
        "dataset not utf8",
        lambda s, o: {
            "in": s.lines_edit(s.small, "latin.jsonl", 2, lambda raw: raw[:40] + NON_UTF8 + raw[40:])
        },
        "{in}:2",
        "not UTF-8",
    ),
    _case(
        "run_toy_distill",
        "dataset not json",
        lambda s, o: {"in": s.lines_edit(s.small, "junk.jsonl", 3, lambda raw: b"{not json")},
        "{in}:3",
        "not valid JSON",
    ),
    _case(
        "run_toy_distill",
        "record wrong type",
        lambda s, o: {"in": _record(s, "type.jsonl", _set("prompt_ids", "Q: hi"))},
        "{in}:2",
        "prompt_ids",
        "list of ints",
    ),
    _case(
        "run_toy_distill",
        "record missing field",
        lambda s, o: {"in": _record(s, "field.jsonl", _drop("topk_logprobs"))},
        "{in}:2",
        "topk_logprobs",
        "missing",
    ),
    _case(
        "run_toy_distill",
        "header missing field",
        lambda s, o: {"in": _record(s, "header.jsonl", _drop("tokenizer_sha256"), line=1)},
        "{in}:1",
        "tokenizer_sha256",
    ),
    _case(
        "run_toy_distill",
        "token id out of range",
        lambda s, o: {"in": _record(s, "id.jsonl", lambda r: r["prompt_ids"].append(600))},
        "{in}:2",
        "600",
        "outside the vocabulary",
    ),
    _case(
        "run_toy_distill",
        "token id beyond model vocab",
        # The header claims a bigger vocabulary, so the file is valid; the model's 512 is not.
        lambda s, o: {
            "in": s.record_edit(
                _record(s, "vocab0.jsonl", lambda r: r["prompt_ids"].append(600)),
                "vocab.jsonl",
                1,
                _set("vocab_size", 1024),
            )
        },
        "{in}",
        "token id 600",
        "vocabulary of 512",
    ),
    _case(
        "run_toy_distill",
        "sequence too long",
        lambda s, o: {"in": _record(s, "long.jsonl", _set("prompt_ids", LONG_PROMPT))},
        "{in}",
        "longer than the model's 256",
    ),
    _case(
        "run_toy_distill",
        "tokenizer truncated",
        lambda s, o: {"tokenizer": s.truncated(A("tokenizer"), "tokenizer_cut.json")},
        "{tokenizer}",
        "not a tokenizer JSON file",
    ),
    _case(
        "run_toy_distill",
        "tokenizer wrong type",
        lambda s, o: {"tokenizer": s.json_edit(A("tokenizer"), "tok_type.json", _set("pieces", "abc"))},
        "{tokenizer}",
        "pieces",
    ),
    _case(
        "run_toy_distill",
        "tokenizer not the dataset's",
        lambda s, o: {"in": _record(s, "digest.jsonl", _set("tokenizer_sha256", "0" * 64), line=1)},
        "{in}:1",
        "tokenizer_sha256",
    ),
    _case(
        "run_toy_distill",
        "conflicting loss weights",
        lambda s, o: {"kl_weight": 0, "ce_weight": 0},
        "--kl_weight and --ce_weight",
    ),
    _case("run_toy_distill", "steps zero", lambda s, o: {"steps": 0}, "--steps", "> 0"),
    _case(
        "run_toy_distill",
        "same output twice",
        lambda s, o: {"out_metadata": os.path.join(o, "student.safetensors")},
        "--out_weights",
        "--out_metadata",
        "same file",
    ),
    _case(
        "run_toy_distill",
        "output dir missing",
        lambda s, o: {"out_weights": os.path.join(o, "absent", "w.safetensors")},
        "--out_weights",
        "does not exist",
    ),
    _case("run_toy_distill", "read-only output dir", lambda s, o: {}, "not writable", readonly_out=True),
    # export_pytorch: the checkpoint (weights + metadata), the tokenizer, lengths.
    _case(
        "export_pytorch",
        "weights missing",
        lambda s, o: {"weights": s.missing("absent.safetensors")},
        "{weights}",
        "not found",
    ),
    _case(
        "export_pytorch",
        "weights empty",
        lambda s, o: {"weights": s.empty("empty.safetensors")},
        "{weights}",
        "truncated or were changed",
    ),
    _case(
        "export_pytorch",
        "weights truncated",
        lambda s, o: {"weights": s.truncated(A("weights"), "cut.safetensors")},
        "{weights}",
        "truncated or were changed",
    ),
    _case(
        "export_pytorch",
        "weights a directory",
        lambda s, o: {"weights": s.directory("dir.safetensors")},
        "{weights}",
        "cannot read checkpoint weights",
    ),
    _case(
        "export_pytorch",
        "metadata not utf8",
        lambda s, o: {"metadata": s.write("latin.json", b'{"model_type": "' + NON_UTF8 + b'"}')},
        "{metadata}",
        "not valid JSON",
    ),
    _case(
        "export_pytorch",
        "metadata missing field",
        lambda s, o: {"metadata": _metadata(s, "nomodel.json", _drop("model_type"))},
        "{metadata}",
        "model_type: missing",
    ),
    _case(
        "export_pytorch",
        "metadata another model type",
        lambda s, o: {"metadata": _metadata(s, "llama.json", _set("model_type", "llama-7b"))},
        "{metadata}",
        "not a Magic 8 Ball checkpoint",
    ),
    _case(
        "export_pytorch",
        "metadata another vocabulary",
        lambda s, o: {"metadata": _metadata(s, "vocab.json", _other_vocab)},
        "{metadata}",
        "vocab_size",
        "1000",
    ),
    _case(
        "export_pytorch",
        "metadata config wrong type",
        lambda s, o: {"metadata": _metadata(s, "dmodel.json", lambda d: d["config"].update(d_model="128"))},
        "{metadata}",
        "d_model",
    ),
    _case(
        "export_pytorch",
        "metadata not an object",
        lambda s, o: {"metadata": s.write("list.json", b"[1, 2, 3]\n")},
        "{metadata}",
        "JSON object",
    ),
    _case(
        "export_pytorch",
        "tokenizer not the checkpoint's",
        lambda s, o: {"metadata": _metadata(s, "tok.json", _set("tokenizer_sha256", "0" * 64))},
        "--tokenizer",
        "0000000000",
    ),
    _case("export_pytorch", "length above max", lambda s, o: {"lengths": "64,128,512"}, "--lengths", "512"),
    _case("export_pytorch", "lengths not ints", lambda s, o: {"lengths": "64,big"}, "--lengths", "64,big"),
    _case(
        "export_pytorch",
        "conflicting default length",
        lambda s, o: {"lengths": "64,256", "default_length": 128},
        "default_length",
        "128",
    ),
    _case(
        "export_pytorch",
        "same output twice",
        lambda s, o: {"out_contract": os.path.join(o, "magic-8-ball.pt")},
        "--out_torchscript",
        "--out_contract",
        "same file",
    ),
    _case(
        "export_pytorch",
        "output dir missing",
        lambda s, o: {"out_contract": os.path.join(o, "absent", "contract.json")},
        "--out_contract",
        "does not exist",
    ),
    _case("export_pytorch", "read-only output dir", lambda s, o: {}, "not writable", readonly_out=True),
    # convert_coreml: checkpoint and contract (every contract rule reachable from a file).
    _case(
        "convert_coreml",
        "contract missing",
        lambda s, o: {"contract": s.missing("absent.json")},
        "{contract}",
        "contract not found",
    ),
    _case(
        "convert_coreml",
        "contract empty",
        lambda s, o: {"contract": s.empty("empty_contract.json")},
        "{contract}",
        "not valid JSON",
    ),
    _case(
        "convert_coreml",
        "contract truncated",
        lambda s, o: {"contract": s.truncated(A("contract"), "cut_contract.json")},
        "{contract}",
        "not valid JSON",
    ),
    _case(
        "convert_coreml",
        "contract not utf8",
        lambda s, o: {"contract": s.write("latin_contract.json", NON_UTF8)},
        "{contract}",
        "not valid JSON",
    ),
    _case(
        "convert_coreml",
        "contract wrong type",
        lambda s, o: {"contract": _contract(s, "type_contract.json", _contract_lengths("64,128"))},
        "{contract}",
        "lengths",
    ),
    _case(
        "convert_coreml",
        "contract missing field",
        lambda s, o: {"contract": _contract(s, "nofield_contract.json", _drop("gates"))},
        "{contract}",
        "gates: missing",
    ),
    _case(
        "verify_contracts",
        "contract bound without floor",
        lambda s, o: {"contract": _contract(s, "nofloor_contract.json", _gates_edit("floor", None))},
        "{contract}",
        "gates.bounds.fp16.T64.kl_max",
    ),
    _case(
        "verify_contracts",
        "contract bound 8x its floor",
        lambda s, o: {"contract": _contract(s, "factor_contract.json", _gates_edit("factor", 8.0))},
        "{contract}",
        "gates.bounds.fp16.T64.kl_max.factor",
    ),
    _case(
        "convert_coreml",
        "contract length above max",
        lambda s, o: {"contract": _contract(s, "long_contract.json", _contract_lengths([64, 128, 512]))},
        "{contract}",
        "512",
    ),
    _case(
        "convert_coreml",
        "contract length zero",
        lambda s, o: {"contract": _contract(s, "zero_contract.json", _contract_lengths([0, 128]))},
        "{contract}",
        "lengths",
    ),
    _case(
        "convert_coreml",
        "contract another model type",
        lambda s, o: {"contract": _contract(s, "type2_contract.json", _set("model_type", "llama"))},
        "{contract}",
        "model_type",
    ),
    _case(
        "convert_coreml",
        "metadata another model type",
        lambda s, o: {"metadata": _metadata(s, "gpt.json", _set("model_type", "gpt2"))},
        "{metadata}",
        "not a Magic 8 Ball checkpoint",
    ),
    _case(
        "convert_coreml",
        "weights bytes flipped",
        lambda s, o: {"weights": s.flipped(A("weights"), "flip.safetensors", [100, -100])},
        "{weights}",
        "truncated or were changed",
    ),
    _case(
        "convert_coreml",
        "out not mlpackage",
        lambda s, o: {"out": os.path.join(o, "m.zip")},
        "--out",
        ".mlpackage",
    ),
    _case("convert_coreml", "precision unknown", lambda s, o: {"precision": "fp8"}, "--precision", "fp8"),
    _case(
        "convert_coreml",
        "output dir missing",
        lambda s, o: {"out": os.path.join(o, "absent", "m.mlpackage")},
        "does not exist",
    ),
    _case("convert_coreml", "read-only output dir", lambda s, o: {}, "not writable", readonly_out=True),
    # export_gguf: checkpoint, tokenizer, the two outputs.
    _case(
        "export_gguf",
        "weights truncated",
        lambda s, o: {"weights": s.truncated(A("weights"), "cut.safetensors", 0.9)},
        "{weights}",
        "truncated or were changed",
    ),
    _case(
        "export_gguf",
        "repinned weights cut",
        # weights_sha256 pinned to the damaged file: the safetensors layout check must catch the cut.
        lambda s, o: _repinned(s, s.truncated(A("weights"), "cut2.safetensors", 0.9)),
        "{weights}",
        "safetensors",
    ),
    _case(
        "export_gguf",
        "repinned weights header flipped",
        lambda s, o: _repinned(s, s.flipped(A("weights"), "flip2.safetensors", [0, 9, 20])),
        "{weights}",
        "safetensors",
    ),
    _case(
        "export_gguf",
        "tokenizer not utf8",
        lambda s, o: {"tokenizer": s.write("latin_tok.json", NON_UTF8)},
        "{tokenizer}",
        "not a tokenizer JSON file",
    ),
    _case(
        "export_gguf",
        "tokenizer missing field",
        lambda s, o: {"tokenizer": s.json_edit(A("tokenizer"), "nofield_tok.json", _drop("scores"))},
        "{tokenizer}",
        "scores: missing",
    ),
    _case(
        "export_gguf",
        "metadata another vocabulary",
        lambda s, o: {"metadata": _metadata(s, "vocab.json", _other_vocab)},
        "{metadata}",
        "vocab_size",
    ),
    _case(
        "export_gguf",
        "same output twice",
        lambda s, o: {"modelfile_out": os.path.join(o, "magic-8-ball.gguf")},
        "--out",
        "--modelfile_out",
        "same file",
    ),
    _case("export_gguf", "dtype unknown", lambda s, o: {"dtype": "q4_0"}, "--dtype", "q4_0"),
    _case(
        "export_gguf",
        "outputs in two dirs",
        lambda s, o: {"modelfile_out": s.path("Modelfile")},
        "--modelfile_out",
        "not in the directory of --out",
    ),
    _case("export_gguf", "read-only output dir", lambda s, o: {}, "not writable", readonly_out=True),
    # verify_contracts: every artifact damaged, cross-file mismatches, flags.
    _case(
        "verify_contracts",
        "torchscript truncated",
        lambda s, o: {"torchscript": s.truncated(A("torchscript"), "cut.pt")},
        "{torchscript}",
        "not a TorchScript archive",
    ),
    _case(
        "verify_contracts",
        "torchscript bytes flipped",
        lambda s, o: {"torchscript": s.flipped(A("torchscript"), "flip.pt", [2000, 50000])},
        "{torchscript}",
        "CRC mismatch",
    ),
    _case(
        "verify_contracts",
        "torchscript empty",
        lambda s, o: {"torchscript": s.empty("empty.pt")},
        "{torchscript}",
        "not a TorchScript archive",
    ),
    _case(
        "verify_contracts",
        "mlpackage model cut",
        lambda s, o: {"mlpackage": _mlpackage(s, "cut_model", lambda p: _rewrite(_model_file(p), _cut(0.5)))},
        "cut_model.mlpackage",
    ),
    _case(
        "verify_contracts",
        "mlpackage model flipped",
        lambda s, o: {
            "mlpackage": _mlpackage(s, "flip_model", lambda p: _rewrite(_model_file(p), _flip([0, 1, 2])))
        },
        "flip_model.mlpackage",
    ),
    _case(
        "verify_contracts",
        "mlpackage weights cut",
        lambda s, o: {
            "mlpackage": _mlpackage(s, "cut_weights", lambda p: _rewrite(_weight_file(p), _cut(0.5)))
        },
        "cut_weights.mlpackage",
    ),
    _case(
        "verify_contracts",
        "mlpackage weights header flipped",
        # weight.bin starts with a header, then each blob with a 0xDEADBEEF sentinel: flip those.
        lambda s, o: {
            "mlpackage": _mlpackage(s, "flip_weights", lambda p: _rewrite(_weight_file(p), _flip([64, 65])))
        },
        "flip_weights.mlpackage",
    ),
    _case(
        "verify_contracts",
        "mlpackage manifest not json",
        lambda s, o: {
            "mlpackage": _mlpackage(
                s, "manifest", lambda p: _rewrite(os.path.join(p, "Manifest.json"), _cut(0.3))
            )
        },
        "Manifest.json",
        "corrupt package manifest",
    ),
    _case(
        "verify_contracts",
        "mlpackage manifest escapes",
        lambda s, o: {
            "mlpackage": _mlpackage(s, "escape", lambda p: _escape_manifest(os.path.join(p, "Manifest.json")))
        },
        "escape.mlpackage",
        "outside the package",
    ),
    _case(
        "verify_contracts",
        "stateless package as the stateful one",
        lambda s, o: {"mlpackage_stateful": A("mlpackage")},
        "{mlpackage_stateful}",
        "not the stateful package",
    ),
    _case(
        "verify_contracts",
        "mlpackage not a directory",
        lambda s, o: {"mlpackage": s.write("file.mlpackage", b"PK\x03\x04")},
        "{mlpackage}",
        "not found",
    ),
    _case(
        "verify_contracts",
        "gguf truncated",
        lambda s, o: {"gguf": s.truncated(A("gguf"), "cut.gguf")},
        "{gguf}",
        "not a readable GGUF file",
    ),
    _case(
        "verify_contracts",
        "gguf magic flipped",
        lambda s, o: {"gguf": s.flipped(A("gguf"), "magic.gguf", [0])},
        "{gguf}",
        "magic",
    ),
    _case(
        "verify_contracts",
        "gguf header count flipped",
        # Byte 15 is the top byte of the tensor count: a count no file can hold.
        lambda s, o: {"gguf": s.flipped(A("gguf"), "count.gguf", [15])},
        "{gguf}",
        "not a readable GGUF file",
    ),
    _case(
        "verify_contracts",
        "gguf too short",
        lambda s, o: {"gguf": s.write("short.gguf", b"GGUF\x03\x00")},
        "{gguf}",
        "shorter than",
    ),
    _case(
        "verify_contracts",
        "contract another vocabulary",
        lambda s, o: {"contract": _contract(s, "vocab_contract.json", _contract_vocab(1000))},
        "{metadata}",
        "vocab_size",
    ),
    _case(
        "verify_contracts",
        "contract length above max",
        lambda s, o: {"contract": _contract(s, "long_contract.json", _contract_lengths([64, 128, 512]))},
        "{contract}",
        "512",
    ),
    _case(
        "verify_contracts",
        "dataset token id out of range",
        lambda s, o: {"dataset": _record(s, "vid.jsonl", lambda r: r["completion_ids"].insert(0, 9999))},
        "{dataset}:2",
        "9999",
    ),
    _case(
        "verify_contracts",
        "weights not the contract's",
        lambda s, o: {"weights": s.flipped(A("weights"), "other.safetensors", [-1])},
        "--weights",
        "artifacts.weights",
    ),
    _case(
        "verify_contracts",
        "sampled rate above one",
        lambda s, o: {"sampled_min_canonical_rate": 1.5},
        "--sampled_min_canonical_rate",
    ),
    _case(
        "verify_contracts",
        "output dir missing",
        lambda s, o: {"out_report": os.path.join(o, "absent", "report.json")},
        "--out_report",
        "does not exist",
    ),
    _case("verify_contracts", "read-only output dir", lambda s, o: {}, "not writable", readonly_out=True),
    # ask: the question itself, the artifacts it loads, flags.
    _case("ask", "no question", lambda s, o: {}, "no question", argv=[]),
    _case("ask", "question with newline", lambda s, o: {}, "question", "line break", argv=["Will it\nrain?"]),
    _case("ask", "whitespace question", lambda s, o: {}, "no question", argv=["   ", "\t "]),
    _case(
        "ask",
        "question too long",
        lambda s, o: {},
        "question",
        "a shorter question",
        argv=["Will it rain? " * 60],
    ),
    _case("ask", "question with tab", lambda s, o: {}, "question", "U+0009", argv=["Will\tit rain?"]),
    _case(
        "ask", "question with escape", lambda s, o: {}, "question", "U+001B", argv=["Will it \x1b[2Jrain?"]
    ),
    _case(
        "ask", "question with NUL-like DEL", lambda s, o: {}, "question", "U+007F", argv=["Will it\x7f rain?"]
    ),
    _case(
        "ask",
        "question not utf8",
        lambda s, o: {},
        "question",
        "UTF-8",
        argv=[os.fsdecode(b"Will it rain \xff\xfe?")],
    ),
    _case(
        "ask",
        "sampling at temperature zero",
        lambda s, o: {"greedy": "false", "temperature": 0},
        "--temperature",
        "--greedy",
    ),
    _case("ask", "max new tokens zero", lambda s, o: {"max_new_tokens": 0}, "--max_new_tokens", "at least 1"),
    _case(
        "ask",
        "max new tokens negative",
        lambda s, o: {"max_new_tokens": -5},
        "--max_new_tokens",
        "at least 1",
    ),
    _case(
        "ask",
        "constrain with too few tokens",
        lambda s, o: {"constrain": "true", "max_new_tokens": 3},
        "--max_new_tokens",
        "--constrain needs",
    ),
    # Each sampling flag out of range: the message gives the allowed range.
    _case("ask", "top_p zero", lambda s, o: {"top_p": 0}, "--top_p", "(0, 1]"),  # even with --greedy
    _case("ask", "top_p above one", lambda s, o: {"greedy": "false", "top_p": 1.5}, "--top_p", "(0, 1]"),
    _case("ask", "top_k negative", lambda s, o: {"greedy": "false", "top_k": -1}, "--top_k", ">= 0"),
    _case("ask", "min_p one", lambda s, o: {"greedy": "false", "min_p": 1}, "--min_p", "[0, 1)"),
    _case("ask", "min_p negative", lambda s, o: {"greedy": "false", "min_p": -0.5}, "--min_p", "[0, 1)"),
    _case("ask", "seed negative", lambda s, o: {"greedy": "false", "seed": -3}, "--seed", ">= 0"),
    _case("ask", "backend unknown", lambda s, o: {"backend": "onnx"}, "--backend", "onnx"),
    _case(
        "ask",
        "tokenizer empty",
        lambda s, o: {"tokenizer": s.empty("empty_tok.json")},
        "{tokenizer}",
        "not a tokenizer JSON file",
    ),
    _case(
        "ask",
        "decoder truncated",
        lambda s, o: {
            "backend": "torchscript",
            "torchscript_decoder": s.truncated(A("torchscript_decoder"), "ask_cut.pt", 0.7),
        },
        "{torchscript_decoder}",
        "not a TorchScript archive",
    ),
    _case(
        "ask",
        "decoder bytes flipped",
        lambda s, o: {
            "backend": "torchscript",
            "torchscript_decoder": s.flipped(A("torchscript_decoder"), "ask_flip.pt", [3000]),
        },
        "{torchscript_decoder}",
        "CRC mismatch",
    ),
    _case(
        "ask",
        "aoti decoder truncated",
        lambda s, o: {"aoti_decoder": s.truncated(A("aoti_decoder"), "ask_cut.decode.pt2", 0.7)},
        "{aoti_decoder}",
        "zip",
    ),
    _case(
        "ask",
        "gguf truncated",
        lambda s, o: {"backend": "gguf", "gguf": s.truncated(A("gguf"), "ask_cut.gguf", 0.6)},
        "{gguf}",
        "not a readable GGUF file",
    ),
    _case(
        "ask",
        "unknown gguf variant",
        lambda s, o: {"backend": "gguf", "variant": "Q4_K_M"},
        "--variant",
        "f32, f16, Q8_0, Q4_0",
    ),
    _case(
        "export_gguf",
        "k-quant dtype",
        lambda s, o: {"dtype": "Q4_K_M"},
        "K-quant",
        "256",
    ),
    _case(
        "ask",
        "gguf version flipped",
        lambda s, o: {"backend": "gguf", "gguf": s.flipped(A("gguf"), "ask_version.gguf", [4])},
        "{gguf}",
        "version",
    ),
    # run_mlpackage: the stateful package once, its feeds and states as .npz files.
    _case(
        "run_mlpackage",
        "state of the wrong shape",
        lambda s, o: {"state_in": _npz(s, "short_cache.npz", k_cache=_cache(128), v_cache=_cache(256))},
        "--state_in",
        "state 'k_cache' is float16 (2, 1, 2, 128, 32)",
    ),
    _case(
        "run_mlpackage",
        "state missing",
        lambda s, o: {"state_in": _npz(s, "k_only.npz", k_cache=_cache(256))},
        "--state_in",
        "['v_cache']",
    ),
    _case(
        "run_mlpackage",
        "state for a stateless package",
        lambda s, o: {
            "mlpackage": A("mlpackage"),
            "state_in": _npz(s, "any_state.npz", k_cache=_cache(256), v_cache=_cache(256)),
        },
        "{mlpackage}",
        "has no states",
    ),
    _case(
        "run_mlpackage",
        "input length not enumerated",
        lambda s, o: {
            "inputs": _npz(
                s, "three.npz", input_ids=np.zeros((1, 3), np.int32), position=np.zeros(1, np.int32)
            )
        },
        "--inputs",
        "'input_ids' is int32 (1, 3)",
    ),
    _case(
        "run_mlpackage",
        "inputs pickled",
        lambda s, o: {"inputs": _npz(s, "objects.npz", input_ids=np.array([{"x": 1}], dtype=object))},
        "{inputs}",
        "Python objects",
    ),
    _case(
        "run_mlpackage",
        "inputs not npz",
        lambda s, o: {"inputs": s.empty("empty.npz")},
        "{inputs}",
        "not an .npz",
    ),
    _case(
        "run_mlpackage",
        "inputs missing",
        lambda s, o: {"inputs": s.missing("absent.npz")},
        "--inputs",
        "not found",
    ),
    _case(
        "run_mlpackage",
        "no package",
        lambda s, o: {"mlpackage": s.missing("absent.mlpackage")},
        "--mlpackage",
    ),
    _case(
        "run_mlpackage",
        "same output twice",
        lambda s, o: {"state_out": os.path.join(o, "outputs.npz")},
        "--out and --state_out",
        "same file",
    ),
]


def _npz(s, name, **arrays):
    path = s.path(name)
    np.savez(path, **arrays)
    return path


def _cache(length):
    """A KV-cache state of the stateful package's layout with `length` slots (the package has 256)."""
    return np.zeros((2, 1, 2, length, 32), np.float16)


def _contract_vocab(vocab):
    def edit(doc):
        doc["vocab_size"] = vocab
        doc["outputs"][0]["shape"][2] = vocab

    return edit


def _escape_manifest(path):
    """Points the package's root model at a file outside the package (a path traversal)."""
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    root = manifest["rootModelIdentifier"]
    manifest["itemInfoEntries"][root]["path"] = "../../../../../../../../etc/hostname"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)


@pytest.fixture(scope="session")
def spoiler(tmp_path_factory):
    s = spoil.Spoiler(str(tmp_path_factory.mktemp("spoiled")))
    s.small = spoil.small_dataset(A("dataset"), s.path("kd_small.jsonl"))
    s.small_v2 = dataset_testing.version_2_copy(s.small, s.path("kd_small_v2.jsonl"))
    s.feeds = _npz(s, "feeds.npz", input_ids=np.array([[5]], np.int32), position=np.array([0], np.int32))
    return s


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_cleanly(case: Case, spoiler, tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    flags = {**_inputs(case.binary, spoiler), **_outputs(case.binary, out)}
    flags.update(case.spoil(spoiler, out))
    argv = case.argv
    if argv is None:
        argv = ("Will it rain tomorrow?",) if case.binary == "ask" else ()
    mention = [text.format(**{k: v for k, v in flags.items() if v is not None}) for text in case.mention]

    if case.readonly_out:
        mounts.require()
        harness.CASES_TRIED[case.binary] += 1
        result, left = mounts.run_on_tmpfs(harness.command(case.binary, flags, argv), out, readonly=True)
    else:
        result = harness.run(case.binary, flags, argv)
        left = harness.leftovers(out)
    harness.assert_clean_failure(harness.Outcome(result.returncode, result.stderr, left), mention, case.id)


# The frameworks that take seconds to import. Every binary checks its flags and inputs before
# importing them, so that bad input fails in well under a second (and this suite stays fast).
HEAVY_MODULES = ("torch", "coremltools", "llama_cpp")


@pytest.mark.parametrize("binary", sorted(harness.BINARIES))
def test_bad_input_fails_before_the_heavy_imports(binary, spoiler, tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    flags = {**_inputs(binary, spoiler), **_outputs(binary, out)}
    # A missing input file: the checks that run before the heavy imports read it.
    slot = next(name for name in ("tokenizer", "in", "weights", "out") if name in flags)
    flags[slot] = os.path.join(out, "absent", "file")
    argv = ("Will it rain tomorrow?",) if binary == "ask" else ()
    env = {**harness.binary_env(), "PYTHONPROFILEIMPORTTIME": "1"}  # Python logs every import
    result = harness.run(binary, flags, argv, count=False, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    loaded = sorted(set(HEAVY_MODULES) & imported)
    assert not loaded, f"{binary} imported {loaded} before failing on a missing --{slot}"
