"""Verification as a library: every artifact against the contract and fp32 eager PyTorch -> a Report.

verify/verify_contracts.py is the binary over it; //tests:gate_power calls it on faulted artifacts.

For each backend the contract names (contract "gates" -> "backends") and each contract length: the
output shape and dtype the contract gives, then the distribution metrics of verify/parity.py
(max and RMS logit error, mean and max KL, top-1 disagreement, RMS dp), each against its bound,
a floor measured on the same model and inputs times a stated factor (conversion/gates.py). The
behaviour replay (eager's greedy replies to held-out questions, one artifact forward each) adds the
same metrics over every replayed position; its argmax flips outside a near tie are counted as
information implied by the replay's max_abs gate (IMPLIED), and the near-tie margin is recorded.
A lossy artifact is also held to its independent reference's KL and top-1 disagreement (quality
bounds, conversion/gates.py) and must not sit far below its own emulation's KL (_check_floor_ratio).
Core ML also gets its interface checked from the spec; GGUF must tokenize every dataset string
exactly as our tokenizer does. Through the backends `ask` and Ollama run (TorchScript, GGUF with
either KV cache), `ask`'s sampled replies with its default sampler, five seeds per question, must be
canonical (verify/behaviour/sampled_behaviour.py). The quantized variants
(verify/behaviour/greedy_agreement.py, MEASURED) also answer every held-out question greedily
themselves: the share whose canonical answer is eager's is reported (information: a decisive
disagreement already fails the replay's max_abs).
A KV-cache artifact (the TorchScript decoder) also decodes token by token through its own cache,
whole replies and up to the longest contract length, against eager's KV cache: identical tokens and
every step's logits within the "decode" bounds (verify/decode_parity.py).

Eager's side of these checks is the same for every backend: computed once (Shared). verify_all,
what verify_contracts runs, loads every backend first (bad input is refused before any work), then
spreads them over forked workers (one per core, at most two), which inherit them: each checks the
backends the parent hands it, costliest first, each into a report of its own; the parent merges
them in the backends' order, so report.json is the same bytes whatever the worker count.
verify() checks backends already loaded, one after another, in this process (//tests:gate_power's
faulted ones).
"""

import dataclasses
import functools
import os
import time
from collections.abc import Callable

import numpy as np
from absl import logging

from common.errors import InputError
from conversion import contract as contract_lib
from conversion import gates as gates_lib
from conversion import torchscript_archive
from data import dataset as dataset_lib
from data import tokenizer as tokenizer_lib
from training import checkpoint
from verify import inputs as inputs_lib
from verify import parity
from verify.behaviour import sampled_behaviour
from verify.coreml import mlpackage_manifest
from verify.report import report as report_lib

TORCHSCRIPT, COREML, COREML_FP32 = "torchscript", "coreml", "coreml_fp32"
TORCHSCRIPT_DECODER = "torchscript_decoder"  # conversion/kv_decoder.py
TORCH_EXPORT = "torch_export"  # conversion/export_program.py
AOTI_DECODER = "aoti_decoder"  # conversion/aoti_decoder.py
GGUF, GGUF_KV_F16, GGUF_F16 = "gguf", "gguf_kv_f16", "gguf_f16"
GGUF_Q8_0, GGUF_Q4_0 = "gguf_q8_0", "gguf_q4_0"
# The Core ML variants with compressed weights -> their compression (conversion/coreml_compress.py).
COREML_INT8, COREML_INT4 = "coreml_int8", "coreml_int4"
COREML_COMPRESSED = {COREML_INT8: "int8", COREML_INT4: "int4"}
COREML_STATEFUL = "coreml_stateful"  # the KV cache as Core ML state (conversion/coreml_stateful.py)
# backend -> the flag (and Paths field) that names its artifact
FLAGS_OF = {
    TORCHSCRIPT: "torchscript",
    TORCHSCRIPT_DECODER: "torchscript_decoder",
    TORCH_EXPORT: "torch_export",
    AOTI_DECODER: "aoti_decoder",
    COREML: "mlpackage",
    COREML_FP32: "mlpackage_fp32",
    GGUF: "gguf",
    GGUF_KV_F16: "gguf",
    GGUF_F16: "gguf_f16",
    GGUF_Q8_0: "gguf_q8_0",
    GGUF_Q4_0: "gguf_q4_0",
    COREML_INT8: "mlpackage_int8",
    COREML_INT4: "mlpackage_int4",
    COREML_STATEFUL: "mlpackage_stateful",
}
# The checks that count argmax flips outside a near tie are implied by the max_abs gate of their
# scope (conversion/gates.py, near_tie_margin): recorded as information with the gate that decides.
IMPLIED = {"replay": "replay_max_abs_diff", "decode": "decode_max_abs_diff"}
# Backends whose runtime returns float32 logits whatever the artifact computes in (the Core ML
# executor casts, llama.cpp's API is float32): output_dtype cannot fail there, so it is information,
# and the Core ML package's declared output type is gated by its spec check.
OUTPUT_DTYPE_IMPLIED_BY = {
    **{name: "spec_output_dtype" for name in (COREML, COREML_FP32, COREML_INT8, COREML_INT4)},
    COREML_STATEFUL: "spec_output_dtypes",
    **{
        name: "llama.cpp's logits API (float32)"
        for name in (GGUF, GGUF_KV_F16, GGUF_F16, GGUF_Q8_0, GGUF_Q4_0)
    },
}
# The Paths fields that name GGUF files (read and checked alike).
GGUF_FIELDS = ("gguf", "gguf_f16", "gguf_q8_0", "gguf_q4_0")


@dataclasses.dataclass(frozen=True)
class Paths:
    contract: str
    weights: str
    metadata: str
    tokenizer: str
    dataset: str
    torchscript: str | None = None
    torchscript_decoder: str | None = None
    mlpackage: str | None = None
    gguf: str | None = None
    mlpackage_fp32: str | None = None
    gguf_f16: str | None = None
    gguf_q8_0: str | None = None
    gguf_q4_0: str | None = None
    mlpackage_int8: str | None = None
    mlpackage_int4: str | None = None
    mlpackage_stateful: str | None = None
    torch_export: str | None = None
    aoti_decoder: str | None = None

    def artifact(self, backend: str) -> str | None:
        return getattr(self, FLAGS_OF[backend])


# The shipped artifacts' file names (pipeline/BUILD.bazel), for tests that verify them in place.
PIPELINE_FILES = {
    "contract": "contract.json",
    "weights": "student.safetensors",
    "metadata": "student.json",
    "tokenizer": "tokenizer.json",
    "dataset": "kd.jsonl",
    "torchscript": "magic-8-ball.pt",
    "torchscript_decoder": "magic-8-ball.decode.pt",
    "mlpackage": "magic-8-ball.mlpackage",
    "gguf": "magic-8-ball.gguf",
    "mlpackage_fp32": "magic-8-ball.fp32.mlpackage",
    "gguf_f16": "magic-8-ball.f16.gguf",
    "gguf_q8_0": "magic-8-ball.Q8_0.gguf",
    "gguf_q4_0": "magic-8-ball.Q4_0.gguf",
    "mlpackage_int8": "magic-8-ball.int8.mlpackage",
    "mlpackage_int4": "magic-8-ball.int4.mlpackage",
    "mlpackage_stateful": "magic-8-ball.stateful.mlpackage",
    "torch_export": "magic-8-ball.pt2",
    "aoti_decoder": "magic-8-ball.decode.pt2",
}


def pipeline_paths(directory: str) -> Paths:
    """Paths of every shipped artifact in `directory`."""
    return Paths(**{key: os.path.join(directory, name) for key, name in PIPELINE_FILES.items()})


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Everything read and cross-checked before any model runtime is imported."""

    paths: Paths
    contract: contract_lib.Contract
    tokenizer: tokenizer_lib.Tokenizer
    heldout: list
    strings: list[str]  # every dataset string, for the GGUF tokenizer check
    settings: inputs_lib.Settings

    @functools.cached_property
    def string_ids(self) -> dict[str, list[int]]:
        """Our tokenizer's ids of every dataset string: encoded once for all the GGUF files."""
        return {text: self.tokenizer.encode(text) for text in self.strings}


@dataclasses.dataclass(frozen=True)
class Backend:
    """An artifact as a logits function, and its own extra checks."""

    name: str
    path: str
    forward: Callable[[np.ndarray], np.ndarray]
    interface_check: Callable | None = None  # (report, contract, eager model) -> None
    # A KV-cache artifact's step function: () -> training.decode.Steps (prefill, then one token per
    # call), checked by the multi-step decode parity (verify/decode_parity.py).
    steps: Callable | None = None


def _require_digest(flag: str, path: str, expected: str, what: str) -> None:
    actual = checkpoint.sha256_file(path)
    if actual != expected:
        raise InputError(
            f"--{flag}: {path} has sha256 {actual}, but {what} is {expected}; "
            "pass the files that belong together (from the same pipeline run)"
        )


def check_inputs(paths: Paths) -> Inputs:
    """Reads and cross-checks every input without torch or coremltools; InputError on any problem."""
    contract = contract_lib.load_contract(paths.contract)
    for backend in contract.gates["backends"]:
        flag = FLAGS_OF[backend]
        if not paths.artifact(backend):
            raise InputError(
                f"--{flag}: missing, but {paths.contract} says {backend} must be verified; "
                "pass every artifact the contract names"
            )
    tokenizer = tokenizer_lib.Tokenizer.load(paths.tokenizer)
    if tokenizer.digest != contract.tokenizer_sha256:
        raise InputError(
            f"--tokenizer: {paths.tokenizer} has sha256 {tokenizer.digest}, but {paths.contract} "
            f"tokenizer_sha256 is {contract.tokenizer_sha256}"
        )
    if "weights" in contract.artifacts:
        _require_digest(
            "weights", paths.weights, contract.artifacts["weights"], f"{paths.contract} artifacts.weights"
        )
    _, cfg = checkpoint.check(paths.weights, paths.metadata, expected_vocab_size=contract.vocab_size)
    if max(contract.lengths) > cfg.max_seq_len:
        raise InputError(
            f"{paths.contract}: lengths: {max(contract.lengths)} is above the model's "
            f"max_seq_len {cfg.max_seq_len}"
        )
    dataset = dataset_lib.read_dataset(paths.dataset)
    if dataset.header.get("tokenizer_sha256") != contract.tokenizer_sha256:
        raise InputError(
            f"--dataset: {paths.dataset} header tokenizer_sha256 is "
            f"{dataset.header.get('tokenizer_sha256')}, but {paths.contract} says {contract.tokenizer_sha256}"
        )
    heldout = sorted(dataset.split("heldout"), key=lambda r: r.id)
    if not heldout:
        raise InputError(f"--dataset: {paths.dataset} has no held-out records to check behaviour on")
    strings = sorted({text for r in dataset.records for text in (r.prompt, r.completion)})
    for archive in (paths.torchscript, paths.torchscript_decoder):
        if archive:
            torchscript_archive.check_file(archive)
    check_pt2_files(paths, contract)
    packages = (paths.mlpackage, paths.mlpackage_fp32, paths.mlpackage_int8, paths.mlpackage_int4)
    for package in (*packages, paths.mlpackage_stateful):
        if package:
            mlpackage_manifest.root_model_path(package)  # the layout; the spec is read later
    for gguf_path in (getattr(paths, field) for field in GGUF_FIELDS):
        if gguf_path:
            from verify.gguf_files import gguf_check

            gguf_check.read_gguf(gguf_path)  # header and tensor table; llama.cpp loads it later
    settings = inputs_lib.Settings(**contract.gates["inputs"])
    return Inputs(paths, contract, tokenizer, heldout, strings, settings)


def first_line(error: BaseException, paths: Paths) -> str:
    """The error's last line (TorchScript puts the real error last), without directories: the report
    must not depend on where the files are."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[-1] if lines else ''}"
    for path in (getattr(paths, field.name) for field in dataclasses.fields(Paths)):
        if path:
            text = text.replace(path, os.path.basename(path.rstrip("/")))
    return text[:300]


def check_coreml_interface(report, contract, path: str, name: str = COREML) -> None:
    """The package's spec against the contract: names, dtypes, exactly the contract's lengths (lengths
    between and beyond them refused: spec_other_lengths_unsupported), an output length not frozen."""
    from verify.coreml import coreml_spec

    for result in coreml_spec.check_spec(
        path,
        list(contract.lengths),
        input_name=contract.inputs[0].name,
        input_dtype=contract.inputs[0].dtype,
        output_name=contract.outputs[0].name,
        output_dtype=contract.outputs[0].dtype,
        default_length=contract.default_length,
    ):
        if result.name == "model_kind":
            # Information: our converter only writes ML Programs, and the executor refuses anything
            # else as bad input before this runs, so as a gate it could never fail.
            report.note(name, report_lib.ALL, "spec_model_kind", result.measured)
            continue
        check = "spec_" + result.name
        report.check(name, report_lib.ALL, check, result.measured, "==", result.expected, ok=result.ok)


def check_coreml_weights(report, program, model, name: str = COREML, prefix: str = "") -> None:
    """The package must carry the checkpoint's weights and RoPE tables, rounded to its own precision
    and otherwise unchanged, every element. Output metrics cannot see a weight fault below the fp16
    compute noise (a tensor scaled by 0.3%, noise of 1e-4: //tests:gate_power); this exact check can."""
    from verify.coreml import mil_executor

    consts = mil_executor.consts(program)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    # Every matrix and table must be there. A norm weight of all ones may be folded away by the
    # converter (multiplying by one is a no-op), so vectors are compared where they are present.
    matrices = sum(1 for tensor in tensors.values() if tensor.ndim >= 2)
    found = changed = 0
    for tensor_name, tensor in sorted(tensors.items()):
        key = prefix + tensor_name.replace(".", "_")
        value = consts.get(key + "_to_fp16", consts.get(key))
        if value is None:
            continue
        found += tensor.ndim >= 2
        value = np.asarray(value)
        expected = tensor.detach().numpy().astype(value.dtype)
        changed += int(expected.size) if expected.shape != value.shape else int((expected != value).sum())
    report.check(name, report_lib.ALL, "weights_matrices_found", found, "==", matrices)
    report.check(name, report_lib.ALL, "weights_elements_changed", changed, "==", 0)


def check_coreml_compressed(report, program, path: str, model, name: str) -> None:
    """A compressed variant (COREML_COMPRESSED): its target, metadata and weight ops from the spec,
    and every weight the package holds against the checkpoint, element for element. Each compressed
    matrix, decompressed by coremltools' own code, must equal the checkpoint quantized as the
    variant says (conversion/coreml_compress, quantize_like_package: what the floors computed with);
    everything held uncompressed (the RoPE tables, norm weights: every floating-point const of more
    than one element) must be the checkpoint's tensor in fp16, as check_coreml_weights holds the
    fp16 package, or a linear's zero bias; a const that is neither counts in
    weights_consts_unaccounted. A corrupted scale, quantized value or table moves some elements;
    the output metrics of a small fault sit below the quantization noise (//tests:gate_power).
    Notes the share of weight elements held compressed."""
    from conversion import coreml_compress
    from verify.coreml import coreml_spec, mil_executor

    compression = COREML_COMPRESSED[name]
    all_ = report_lib.ALL
    for result in coreml_spec.check_compression(path, compression):
        report.check(name, all_, "spec_" + result.name, result.measured, "==", result.expected, ok=result.ok)
    compressed_weights = mil_executor.materialized_weights(program)
    plain = mil_executor.plain_weights(program)
    parameters = dict(model.named_parameters())
    tensors = {**parameters, **dict(model.named_buffers())}
    # Every matrix and table must be there; a norm weight of all ones may be folded away by the
    # converter (multiplying by one is a no-op), so vectors are compared where they are present.
    matrices = sum(1 for tensor in tensors.values() if tensor.ndim >= 2)
    found = changed = 0
    accounted = set()
    for tensor_name, tensor in sorted(tensors.items()):
        key = tensor_name.replace(".", "_")
        names = (key + "_to_fp16_quantized", key + "_to_fp16", key)
        held = next((n for n in names if n in compressed_weights or n in plain), None)
        if held is None:
            continue
        accounted.add(held)
        found += tensor.ndim >= 2
        value = np.asarray(compressed_weights.get(held, plain.get(held)))
        expected = tensor.detach().numpy().astype(np.float16)
        if tensor_name in parameters and tensor.ndim == 2:  # a weight matrix: compressed
            quantized = coreml_compress.quantize_like_package(expected, compression)
            expected = expected if quantized is None else quantized
        changed += int(expected.size) if expected.shape != value.shape else int((expected != value).sum())
    for bias in sorted(mil_executor.linear_biases(program) & (set(plain) - accounted)):
        accounted.add(bias)
        changed += int(np.count_nonzero(plain[bias]))
    unaccounted = sorted(set(plain) - accounted)
    report.check(name, all_, "weights_matrices_found", found, "==", matrices)
    report.check(name, all_, "weights_elements_changed", changed, "==", 0)
    report.check(name, all_, "weights_consts_unaccounted", sum(plain[n].size for n in unaccounted), "==", 0)
    report.note(name, all_, "weights_consts_unaccounted_names", unaccounted[:3])
    compressed, total = mil_executor.compression_share(program)
    report.note(name, all_, "weights_compressed_share", compressed / total if total else 0.0)
    report.note(name, all_, "weights_compressed_elements", compressed)
    report.note(name, all_, "weights_elements", total)


def check_stateful_interface(report, contract, path: str, model, name: str = COREML_STATEFUL) -> None:
    """The stateful package's spec against what the checkpoint's config and the contract's lengths
    say it must declare (conversion/coreml_stateful.py, interface): target, states, inputs, outputs."""
    from conversion import coreml_stateful
    from verify.coreml import coreml_spec

    expected = coreml_stateful.interface(model.cfg, list(contract.lengths))
    for result in coreml_spec.check_stateful_spec(path, **expected):
        report.check(
            name, report_lib.ALL, "spec_" + result.name, result.measured, "==", result.expected, ok=result.ok
        )


def stateful_coreml_backend(path: str, pad_id: int, program=None, steps=None) -> Backend:
    """The stateful package through the MIL executor: a whole sequence as one prefill for the
    stateless checks, and its decode steps (`steps`: a StatefulSteps class, another one for
    //tests:gate_power's cache faults) for the decode parity; its spec and exact weights."""
    from conversion import coreml_stateful
    from verify.coreml import coreml_stateful_steps, mil_executor

    program = program or mil_executor.load_mlpackage(path)
    make = steps or coreml_stateful_steps.StatefulSteps
    return Backend(
        COREML_STATEFUL,
        path,
        coreml_stateful_steps.prefill_forward(program, pad_id),
        lambda report, contract, model: (
            check_stateful_interface(report, contract, path, model),
            # The wrapper holds the Student as `model`, so every const name starts with "model_".
            check_coreml_weights(report, program, model, COREML_STATEFUL, coreml_stateful.WRAPPED + "_"),
        ),
        steps=lambda: make(program, pad_id),
    )


def compressed_coreml_backend(name: str, path: str, contract, program=None) -> Backend:
    """A compressed Core ML variant through the MIL executor (`program`: already loaded, e.g. with a
    fault planted by //tests:gate_power), with its interface and exact weight checks."""
    from verify.coreml import mil_executor

    program = program or mil_executor.load_mlpackage(path)
    return coreml_backend(
        name,
        path,
        contract,
        program,
        lambda report, model: check_coreml_compressed(report, program, path, model, name),
    )


def coreml_backend(name: str, path: str, contract, program, weights_check: Callable) -> Backend:
    """A Core ML package's program through the MIL executor, with the package's interface check and
    `weights_check(report, model)` of what it holds."""
    from verify.coreml import mil_executor

    input_name, output_name = contract.inputs[0].name, contract.outputs[0].name
    return Backend(
        name,
        path,
        lambda ids: mil_executor.run(program, ids, input_name, output_name),
        lambda report, contract, model: (
            check_coreml_interface(report, contract, path, name),
            weights_check(report, model),
        ),
    )


def check_gguf_tokenizer(report, llama, tokenizer, strings, name: str = GGUF, ours_by_text=None) -> None:
    """llama.cpp must tokenize every dataset string (prompts and completions) exactly as we do.
    ours_by_text: our ids of the strings (Inputs.string_ids), or None to encode them here."""
    from verify.gguf_files import gguf_check

    mismatches = gguf_check.tokenize_mismatches(llama, tokenizer, strings, ours_by_text)
    for text, theirs, ours in mismatches[:3]:
        logging.error("llama.cpp tokenizes %r as %s, ours as %s", text, theirs, ours)
    report.note(name, report_lib.ALL, "tokenizer_strings", len(strings))
    report.check(name, report_lib.ALL, "tokenizer_mismatches", len(mismatches), "==", 0)


# The GGUF backends that own a file -> the variant it holds (conversion/gguf_quant.py DTYPES).
GGUF_VARIANTS = {GGUF: "f32", GGUF_F16: "f16", GGUF_Q8_0: "Q8_0", GGUF_Q4_0: "Q4_0"}


def check_gguf_content(report, path: str, model, name: str) -> None:
    """Every tensor of the file against the checkpoint stored as the variant says, exactly
    (verify/gguf_files/gguf_content.py: Q8_0 and Q4_0 blocks against an independent reference of ggml's
    quantizers). A tensor missing, extra or in another type or shape than the variant's plan fails
    weights_tensors_mismatched; every element stored otherwise counts in weights_elements_changed.
    The logits bounds cannot see a small fault in a quantized file (every block scale of a matrix
    x1.003 sits below the quantization noise: //tests:gate_power); this check sees one bit."""
    from verify.gguf_files import gguf_content

    result = gguf_content.check(path, model, GGUF_VARIANTS[name])
    all_ = report_lib.ALL
    report.check(name, all_, "weights_tensors_mismatched", len(result.mismatches), "==", 0)
    report.check(name, all_, "weights_elements_changed", result.changed, "==", 0)
    report.note(name, all_, "weights_elements", result.elements)
    report.note(name, all_, "weights_max_abs_difference", result.max_abs_difference)
    report.note(name, all_, "weights_mismatches", (result.mismatches + result.changed_tensors)[:3])
    for line in result.mismatches + result.changed_tensors:
        logging.error("%s content: %s", name, line)


def backend_names(contract) -> list[str]:
    """The backends the contract names, in the order they are checked and reported."""
    return sorted(contract.gates["backends"], key=list(gates_lib.DEFAULT_BACKENDS).index)


def load_backends(inputs: Inputs) -> list[Backend]:
    """Every backend the contract names, loaded up front: a missing or unreadable artifact is bad
    input before any work. The Core ML packages are loaded first, so that a damaged one is refused
    before the seconds that loading the TorchScript and torch.export artifacts takes; the list is in
    backend_names' order."""
    names = backend_names(inputs.contract)
    coreml = (COREML, COREML_FP32, *COREML_COMPRESSED, COREML_STATEFUL)
    loaded = {name: load_backend(inputs, name) for name in sorted(names, key=lambda name: name not in coreml)}
    return [loaded[name] for name in names]


def load_backend(inputs: Inputs, name: str) -> Backend:
    """One backend the contract names, loaded from its artifact."""
    from conversion import torchscript
    from verify.coreml import mil_executor

    paths, contract = inputs.paths, inputs.contract
    # A package's states and inputs are held to the checkpoint's sizes before anything is allocated.
    bounds = mil_executor.Bounds.for_model(checkpoint.check_metadata(paths.metadata)[1])
    path = paths.artifact(name)
    if name == TORCHSCRIPT:
        return Backend(name, path, torchscript.numpy_forward(torchscript.load(path)))
    if name == TORCHSCRIPT_DECODER:
        return decoder_backend(path, torchscript.load(path), paths.metadata)
    if name == TORCH_EXPORT:
        from conversion import export_program

        return Backend(name, path, export_program.numpy_forward(export_program.load(path)))
    if name == AOTI_DECODER:
        return aoti_backend(path, contract, paths.metadata)
    if name in COREML_COMPRESSED:
        return compressed_coreml_backend(name, path, contract, mil_executor.load_mlpackage(path, bounds))
    if name == COREML_STATEFUL:
        program = mil_executor.load_mlpackage(path, bounds)
        return stateful_coreml_backend(path, inputs.tokenizer.pad_id, program)
    if name in (COREML, COREML_FP32):
        program = mil_executor.load_mlpackage(path, bounds)

        def weights_check(report, model):
            check_coreml_weights(report, program, model, name)

        return coreml_backend(name, path, contract, program, weights_check)
    return gguf_backend(name, path, inputs)


def gguf_backend(name: str, path: str, inputs: Inputs) -> Backend:
    """A GGUF file through llama.cpp (an f16 KV cache for GGUF_KV_F16), with its own checks once per
    file: the tokenizer and the exact content (GGUF_VARIANTS). //tests:gate_power builds faulted
    copies through here."""
    from verify.gguf_files import gguf_check

    llama = gguf_check.load(path, f32_kv_cache=name != GGUF_KV_F16)
    check = None
    if name != GGUF_KV_F16:  # the f32 file again, with another cache: checked under GGUF

        def check(report, contract, model):
            del contract
            check_gguf_tokenizer(report, llama, inputs.tokenizer, inputs.strings, name, inputs.string_ids)
            check_gguf_content(report, path, model, name)

    return Backend(name, path, lambda ids: gguf_check.logits(llama, ids), check)


def decoder_backend(path: str, module, metadata: str, name: str = TORCHSCRIPT_DECODER, steps=None) -> Backend:
    """The TorchScript decoder: its prefill as the logits function, its cache as the step function
    (`steps`: another Steps class over the module, for //tests:gate_power's cache faults)."""
    from conversion import kv_decoder

    _, cfg = checkpoint.check_metadata(metadata)
    make = steps or kv_decoder.TorchScriptSteps
    return Backend(name, path, kv_decoder.prefill_forward(module, cfg), steps=lambda: make(module, cfg))


def check_pt2_files(paths: Paths, contract) -> None:
    """The .pt2 archives held to what the export step writes (conversion/pt2_archive.py), the
    AOTInductor package's shared object to the contract's pin, before anything loads them."""
    from conversion import pt2_archive

    if paths.torch_export:
        pt2_archive.check_export_file(paths.torch_export)
    if paths.aoti_decoder:
        build = contract.compiled.get(AOTI_DECODER)
        if build is None:
            raise InputError(
                f"--aoti_decoder: {paths.contract} records no compile of it (compiled.aoti_decoder), "
                "so its shared object cannot be checked; pass the contract written with it"
            )
        pt2_archive.check_aoti_file(paths.aoti_decoder, build["so_sha256"])


def aoti_backend(path: str, contract, metadata: str, name: str = AOTI_DECODER, steps=None) -> Backend:
    """The AOTInductor decoder, checked as the TorchScript decoder is: its prefill as the logits
    function, its cache as the step function (`steps`: another AOTISteps class for both, for
    //tests:gate_power's runtime faults)."""
    from conversion import aoti_decoder

    build = contract.compiled[AOTI_DECODER]
    blocker = aoti_decoder.runtime_blocker(build)
    if blocker:
        raise InputError(f"--aoti_decoder: {path} cannot run here: {blocker}; verify it where it was built")
    _, cfg = checkpoint.check_metadata(metadata)
    runner = aoti_decoder.load(path, build["so_sha256"])
    make = steps or aoti_decoder.AOTISteps
    forward = aoti_decoder.prefill_forward(runner, cfg, make)
    return Backend(name, path, forward, steps=lambda: make(runner, cfg))


def check_decode(report, backend: Backend, decode_inputs, eos_id: int, contract, paths: Paths) -> None:
    """Multi-step decode parity (verify/decode_parity.py) against the contract's "decode" bounds."""
    from verify import decode_parity

    seqs, eager_tokens, reference = decode_inputs
    all_ = report_lib.ALL
    try:
        margin = gates_lib.near_tie_margin(contract.gates, backend.name)
        result = decode_parity.check(backend.steps, reference, seqs, eager_tokens, eos_id, margin)
    except Exception as error:  # the artifact failed to decode
        report.fail(backend.name, all_, "decode", first_line(error, paths))
        return
    if result.errors:
        report.fail(
            backend.name, all_, "decode", f"{len(result.errors)} sequences failed; {result.errors[0]}"
        )
    if result.comparison is None:
        return
    # The step where a reply parts is compared, so a parting outside a near tie fails decode_max_abs_diff.
    report.note(
        backend.name, all_, "decode_token_mismatches", len(result.token_mismatches), IMPLIED["decode"]
    )
    _check_metrics(report, backend.name, all_, gates_lib.DECODE, result.comparison, contract.gates, "decode_")
    report.note(backend.name, all_, "decode_sequences", result.sequences)
    report.note(backend.name, all_, "decode_steps", result.comparison.positions)
    report.note(backend.name, all_, "decode_longest", result.longest)
    report.note(backend.name, all_, "decode_worst_position", result.worst_position)
    report.note(backend.name, all_, "decode_worst_position_error", result.worst_error)
    report.note(backend.name, all_, "decode_mismatch_examples", list(result.token_mismatches[:3]))
    report.note(backend.name, all_, "decode_near_tie_partings", len(result.near_tie_partings))
    report.note(backend.name, all_, "decode_near_tie_examples", list(result.near_tie_partings[:3]))
    logging.info(
        "%s decode: %d sequences (%d failed), %d steps up to %d positions, %d token mismatches, "
        "max abs %.3g at position %d (%.2f s)",
        backend.name,
        result.sequences,
        len(result.errors),
        result.comparison.positions,
        result.longest,
        len(result.token_mismatches),
        result.worst_error,
        result.worst_position,
        result.seconds,
    )


def check_outputs(report, backend: Backend, contract, rows_by_length, refs_by_length, paths: Paths) -> None:
    """Shape, dtype and every distribution metric against its floor-derived bound, at every length."""
    gates = contract.gates
    for length in contract.lengths:
        where = report_lib.scope(length)
        began = time.monotonic()
        try:
            outs = [np.asarray(backend.forward(row)) for row in rows_by_length[length]]
        except Exception as error:  # an artifact that cannot run at a contract length fails its gate
            report.fail(backend.name, where, "runs", first_line(error, paths))
            continue
        shapes = sorted({tuple(int(d) for d in out.shape) for out in outs})
        dtypes = sorted({str(out.dtype) for out in outs})
        expected_shape = list(contract.output_shape(length))
        report.check(backend.name, where, "output_shape", [list(s) for s in shapes], "==", [expected_shape])
        if backend.name in OUTPUT_DTYPE_IMPLIED_BY:
            report.note(backend.name, where, "output_dtype", dtypes, OUTPUT_DTYPE_IMPLIED_BY[backend.name])
        else:
            report.check(backend.name, where, "output_dtype", dtypes, "==", [contract.outputs[0].dtype])
        if shapes != [tuple(expected_shape)]:
            continue
        comparison = parity.compare_logits(
            np.concatenate(refs_by_length[length], axis=1),
            np.concatenate(outs, axis=1),
            gates_lib.near_tie_margin(gates, backend.name),
        )
        _check_metrics(report, backend.name, where, where, comparison, gates)
        _check_quality(report, backend.name, where, where, comparison, gates)
        _check_floor_ratio(report, backend.name, where, comparison, gates)
        report.note(backend.name, where, "top1_agreement_decisive", comparison.top1_agreement)
        report.note(backend.name, where, "near_tie_positions", comparison.near_ties)
        logging.info(
            "%s T%d: max abs %.3g, rms %.3g, KL mean %.3g max %.3g, same top %.4f (%.2f s)",
            backend.name,
            length,
            comparison.max_abs_diff,
            comparison.rms_abs_diff,
            comparison.kl_mean,
            comparison.kl_max,
            1 - comparison.top1_disagreement,
            time.monotonic() - began,
        )


def _check_metrics(
    report, backend: str, where: str, bounds_scope: str, comparison, gates, prefix: str = ""
) -> None:
    for metric, value in comparison.gated().items():
        entry = gates_lib.entry_for(gates, backend, bounds_scope, metric)
        report.check(backend, where, prefix + metric, value, "<=", entry["bound"], floor=entry["floor"])


def _check_quality(
    report, backend: str, where: str, bounds_scope: str, comparison, gates, prefix: str = ""
) -> None:
    """A lossy backend's KL and top-1 disagreement against its independent reference's, times the
    quality factor (conversion/gates.py, quality bounds). The floor shown is the reference's."""
    bounds = gates_lib.quality_for(gates, backend)
    if bounds is None:
        return
    values = comparison.gated()
    for metric, entry in bounds[bounds_scope].items():
        name = f"{prefix}quality_{metric}"
        report.check(backend, where, name, values[metric], "<=", entry["bound"], floor=entry["floor"])


def _check_floor_ratio(report, backend: str, where: str, comparison, gates) -> None:
    """A lossy backend's mean KL over its emulation's floor at this length, at least 1/FACTOR_LIMIT.

    The artifact and its emulation hold the same weights, so their KLs are of one size; an artifact
    far quieter than its emulation is not what the emulation models (a finer variant shipped under
    a coarser one's name: the Q8_0 file as Q4_0, the fp16 package as int8), and the bounds derived
    from that emulation are too loose to mean anything for it. Gated: the opposite of the upper
    bounds, which such an artifact passes."""
    if gates_lib.quality_for(gates, backend) is None:
        return
    floor = gates_lib.entry_for(gates, backend, where, "kl_mean")["floor"]
    ratio = comparison.kl_mean / floor
    report.check(backend, where, gates_lib.FLOOR_RATIO_CHECK, ratio, ">=", 1.0 / gates_lib.FACTOR_LIMIT)


def check_behaviour(
    report, backend: Backend, eager, contract, prompts, continuations, pad_id, paths: Paths, reference=None
) -> None:
    """`reference`: parity.replay() of eager on these prompts and continuations, computed once for
    every backend (None: computed here)."""
    try:
        result = parity.behaviour_check(
            eager,
            backend.forward,
            prompts,
            continuations,
            contract.lengths,
            pad_id,
            gates_lib.near_tie_margin(contract.gates, backend.name),
            reference=reference,
        )
    except Exception as error:  # the artifact failed to run on a question
        report.fail(backend.name, report_lib.ALL, "behaviour", first_line(error, paths))
        return
    all_ = report_lib.ALL
    report.note(backend.name, all_, "behaviour_questions", result.questions)
    # A flip outside a near tie needs a logit error of half the margin, at least the replay's
    # max_abs bound (conversion/gates.py, near_tie_margin): that gate decides it.
    report.note(backend.name, all_, "behaviour_mismatches", len(result.mismatches), IMPLIED["replay"])
    if result.comparison is None:
        report.fail(backend.name, all_, "behaviour", "no replayed position fits the contract lengths")
        return
    _check_metrics(report, backend.name, all_, gates_lib.REPLAY, result.comparison, contract.gates, "replay_")
    _check_quality(report, backend.name, all_, gates_lib.REPLAY, result.comparison, contract.gates, "replay_")
    report.note(backend.name, all_, "behaviour_positions", result.positions)
    report.note(backend.name, all_, "behaviour_near_tie_flips", result.near_tie_flips)
    for mismatch in result.mismatches[:5]:
        logging.warning("%s behaviour mismatch: %s", backend.name, mismatch)
    logging.info(
        "%s behaviour: %d questions, %d positions, %d mismatches, %d near-tie flips (%.2f s)",
        backend.name,
        result.questions,
        result.positions,
        len(result.mismatches),
        result.near_tie_flips,
        result.seconds,
    )


def padded_memoised(forward: Callable, lengths, pad_id: int) -> Callable:
    """`forward` over [1, n] ids of any n up to the longest length: right-padded to the smallest
    contract length that holds them (the model is causal, so padding changes no earlier logit) and
    cut back to n. Memoised on the padded row, so the greedy agreement's one forward per question
    reuses the behaviour replay's, which pads the same sequence the same way."""
    memo: dict[bytes, np.ndarray] = {}

    def run(ids) -> np.ndarray:
        ids = np.asarray(ids).reshape(1, -1)
        length = parity.smallest_length(ids.shape[1], lengths)
        if length is None:
            raise ValueError(f"{ids.shape[1]} tokens do not fit the longest length {max(lengths)}")
        row = parity.pad_row(ids[0].tolist(), length, pad_id)
        key = np.asarray(row, dtype=np.int64).tobytes()
        if key not in memo:
            memo[key] = np.asarray(forward(row), dtype=np.float32)
        return memo[key][:, : ids.shape[1]]

    return run


def check_greedy_agreement(
    report, backend: Backend, eager, prompts, eager_replies, contract, tokenizer, settings, paths
):
    """The backend's own greedy replies against eager's canonical answers
    (verify/behaviour/greedy_agreement.py):
    the share that agree, and the share among questions that do not part at a near tie, both
    information (greedy_agreement.MEASURED says why)."""
    from verify.behaviour import greedy_agreement

    all_ = report_lib.ALL
    began = time.monotonic()
    try:
        result = greedy_agreement.check(
            backend.forward,
            prompts,
            eager_replies,
            tokenizer,
            settings.max_new_tokens,
            contract.lengths,
            eager,
            gates_lib.near_tie_margin(contract.gates, backend.name),
        )
    except Exception as error:  # the artifact failed to run on a question
        report.fail(backend.name, all_, "behaviour_agreement_decisive", first_line(error, paths))
        return
    report.note(backend.name, all_, "behaviour_agreement", result.rate)
    # A decisive disagreement parts where the replay sees the same logits flip outside a near tie
    # (verify/behaviour/greedy_agreement.py): the replay's max_abs gate fails first, so the product target
    # (MIN_AGREEMENT) is implied by the numeric gates and recorded as information.
    report.note(backend.name, all_, "behaviour_agreement_decisive", result.decisive_rate, IMPLIED["replay"])
    report.note(backend.name, all_, "behaviour_agreement_questions", result.questions)
    report.note(backend.name, all_, "behaviour_agreement_near_ties", result.near_tie_disagreements)
    report.note(
        backend.name,
        all_,
        "behaviour_disagreements",
        [f"question {q}: eager {e!r}, {backend.name} {g!r}" for q, e, g in result.disagreements[:3]],
    )
    logging.info(
        "%s greedy replies: %d of %d give eager's canonical answer, %d part at a near tie, "
        "%d regenerated (%.2f s)",
        backend.name,
        result.agreed,
        result.questions,
        result.near_tie_disagreements,
        result.regenerated,
        time.monotonic() - began,
    )


# What `ask` and Ollama run.
SAMPLED_BACKENDS = (TORCHSCRIPT, TORCHSCRIPT_DECODER, AOTI_DECODER, GGUF, GGUF_KV_F16)


def check_sampled(
    report, backend: Backend, tokenizer, prompts, proposals, max_new_tokens, max_length, bound, paths
):
    """`ask`'s sampled replies (its default sampler, seeds SEEDS) through the backend: canonical rate.

    `bound` is the product target (sampled_behaviour.MIN_CANONICAL_RATE), not a numeric floor."""
    from training import sampling

    settings = sampling.DEFAULT
    try:
        result = sampled_behaviour.check(
            backend.forward,
            prompts,
            sampled_behaviour.SEEDS,
            proposals,
            tokenizer,
            settings,
            max_new_tokens,
            max_length,
        )
    except Exception as error:  # the artifact failed to run on a question
        report.fail(backend.name, report_lib.ALL, "sampled_canonical_rate", first_line(error, paths))
        return
    all_ = report_lib.ALL
    report.check(backend.name, all_, "sampled_canonical_rate", result.rate, ">=", bound)
    report.note(backend.name, all_, "sampled_replies", result.replies)
    report.note(
        backend.name,
        all_,
        "sampled_settings",
        f"temperature {settings.temperature}, top_k {settings.top_k}, top_p {settings.top_p}, "
        f"min_p {settings.min_p}; seeds {', '.join(map(str, sampled_behaviour.SEEDS))}",
    )
    report.note(
        backend.name,
        all_,
        "sampled_non_canonical",
        [f"question {f.question} seed {f.seed}: {f.reply!r}" for f in result.failures[:3]],
    )
    logging.info(
        "%s sampled: %d of %d canonical, %d replayed in one forward (%.2f s)",
        backend.name,
        result.canonical,
        result.replies,
        result.replayed,
        result.seconds,
    )


# The backends with a step function (Backend.steps): they need eager's decode parity inputs.
DECODE_BACKENDS = (TORCHSCRIPT_DECODER, AOTI_DECODER, COREML_STATEFUL)


class Shared:
    """Eager's side of every check, the same for every backend: computed once, before any backend
    is checked (verify_all computes what its backends need before the workers fork, and they
    inherit it). The sampled replies and the decode parity's inputs are computed on first use: a
    verification without a sampled or a KV-cache backend (//tests:gate_power's faults of one
    backend each) does without them."""

    def __init__(self, model, inputs: Inputs):
        contract, tokenizer, settings = inputs.contract, inputs.tokenizer, inputs.settings
        from verify.floors import floors

        self.model, self.inputs = model, inputs
        self.eager = floors.torch_forward(model.eval())  # fp32 eager as a logits function
        self.rows = inputs_lib.numeric_rows(
            contract.lengths, contract.vocab_size, tokenizer, inputs.heldout, settings
        )
        self.refs = {length: [self.eager(row) for row in self.rows[length]] for length in contract.lengths}
        self.prompts = inputs_lib.replay_prompts(tokenizer, inputs.heldout, settings)
        began = time.monotonic()
        self.continuations = inputs_lib.replay_continuations(model, tokenizer, self.prompts, settings)
        logging.info(
            "eager greedy replies to %d questions in %.2f s", len(self.prompts), time.monotonic() - began
        )
        # Eager's side of the behaviour replay, the same for every backend: computed once.
        self.replay_reference = parity.replay(
            self.eager, self.prompts, self.continuations, contract.lengths, tokenizer.pad_id
        )

    @functools.cached_property
    def proposals(self) -> dict:
        """(question, seed) -> eager's sampled reply, for the sampled-behaviour check."""
        from training import sampling

        tokenizer, settings = self.inputs.tokenizer, self.inputs.settings
        began = time.monotonic()
        proposals = sampled_behaviour.proposals_from_eager(
            self.model,
            self.prompts,
            sampled_behaviour.SEEDS,
            tokenizer.eos_id,
            settings.max_new_tokens,
            sampling.DEFAULT,
        )
        logging.info("eager sampled replies (proposals) in %.2f s", time.monotonic() - began)
        return proposals

    @functools.cached_property
    def decode_inputs(self) -> tuple:
        """(sequences, eager's tokens, eager's forced logits) for the decode parity."""
        from verify import decode_parity

        longest = self.rows[max(self.inputs.contract.lengths)]
        seqs, eager_tokens = decode_parity.sequences(self.prompts, self.continuations, longest)
        return seqs, eager_tokens, decode_parity.forced_logits(self.model, seqs)


def _weights_digest(model) -> str:
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().flatten().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# The last Shared made, with the digest of its model's weights: //tests:gate_power verifies one
# faulted backend at a time against the same eager model and inputs, and eager's side (~2.5 s of
# replies and logits) is the same for each.
_last_shared: list = []


def shared_work(model, inputs: Inputs) -> Shared:
    """Shared(model, inputs), or the last one made when the model (the same object, with the same
    weights: a changed weight gives a new one) and the inputs are the same."""
    digest = _weights_digest(model)
    if _last_shared:
        shared, held = _last_shared[0]
        if shared.model is model and shared.inputs is inputs and held == digest:
            return shared
    shared = Shared(model, inputs)
    _last_shared[:] = [(shared, digest)]
    return shared


def _new_report(inputs: Inputs) -> report_lib.Report:
    paths = inputs.paths
    return report_lib.Report(inputs.contract.model_name, checkpoint.sha256_file(paths.contract))


def verify_backend(
    model,
    inputs: Inputs,
    backend: Backend,
    shared: Shared,
    sampled_min_canonical_rate: float,
    agreement: bool,
) -> report_lib.Report:
    """Every check of one backend, into a report of its own (merged in the backends' order)."""
    from verify.behaviour import greedy_agreement

    paths, contract, tokenizer, settings = inputs.paths, inputs.contract, inputs.tokenizer, inputs.settings
    report = _new_report(inputs)
    began = time.monotonic()
    described = report.add_artifact(backend.name, backend.path)
    if backend.name in contract.artifacts:
        expected = contract.artifacts[backend.name]
        report.check(
            backend.name, report_lib.ALL, "sha256_matches_contract", described["sha256"], "==", expected
        )
    margin = gates_lib.near_tie_margin(contract.gates, backend.name)
    report.note(backend.name, report_lib.ALL, "near_tie_margin", margin)
    if backend.interface_check:
        backend.interface_check(report, contract, model)
    if backend.name in greedy_agreement.MEASURED:  # the greedy replies reuse the replay's forwards
        backend = dataclasses.replace(
            backend, forward=padded_memoised(backend.forward, contract.lengths, tokenizer.pad_id)
        )
    check_outputs(report, backend, contract, shared.rows, shared.refs, paths)
    check_behaviour(
        report,
        backend,
        shared.eager,
        contract,
        shared.prompts,
        shared.continuations,
        tokenizer.pad_id,
        paths,
        shared.replay_reference,
    )
    if agreement and backend.name in greedy_agreement.MEASURED:
        check_greedy_agreement(
            report,
            backend,
            shared.eager,
            shared.prompts,
            shared.continuations,
            contract,
            tokenizer,
            settings,
            paths,
        )
    if backend.steps:
        check_decode(report, backend, shared.decode_inputs, tokenizer.eos_id, contract, paths)
    if backend.name in SAMPLED_BACKENDS:
        check_sampled(
            report,
            backend,
            tokenizer,
            shared.prompts,
            shared.proposals,
            settings.max_new_tokens,
            max(contract.lengths),
            sampled_min_canonical_rate,
            paths,
        )
    logging.info("%s verified in %.2f s", backend.name, time.monotonic() - began)
    return report


def _report_with_inputs(inputs: Inputs) -> report_lib.Report:
    report = _new_report(inputs)
    report.add_artifact("weights", inputs.paths.weights)
    report.add_artifact("tokenizer", inputs.paths.tokenizer)
    return report


def verify(
    model,
    inputs: Inputs,
    backends: list[Backend],
    sampled_min_canonical_rate: float | None = None,
    agreement: bool = True,
) -> report_lib.Report:
    """Runs every check of every backend against fp32 eager `model`, one backend after another, in
    this process; returns the report.

    sampled_min_canonical_rate: the sampled-behaviour bound (default: the product target).
    agreement: measure the greedy behaviour agreement (information only, and the slowest part for
    a faulted Core ML variant, whose every reply is regenerated: //tests:gate_power skips it)."""
    if sampled_min_canonical_rate is None:
        sampled_min_canonical_rate = sampled_behaviour.MIN_CANONICAL_RATE
    report = _report_with_inputs(inputs)
    shared = shared_work(model, inputs)
    for backend in backends:
        report.merge(verify_backend(model, inputs, backend, shared, sampled_min_canonical_rate, agreement))
    return report


# Each backend's share of the default student's verification time (CPU seconds, measured on one
# core; a backend not listed counts 1.0): the pool hands out the costliest first, so the last one to
# finish is a short one.
COST = {
    COREML_STATEFUL: 4.7,
    GGUF: 2.6,
    TORCHSCRIPT_DECODER: 2.5,
    GGUF_KV_F16: 2.5,
    AOTI_DECODER: 1.8,
    COREML_INT4: 1.7,
    COREML_INT8: 1.4,
    TORCHSCRIPT: 1.4,
    COREML: 1.2,
}


def default_workers() -> int:
    """One worker per core this process may run on, at most two. Linux only: elsewhere (macOS has
    no sched_getaffinity, and forking a process that has loaded its system frameworks is not safe
    there) the backends are checked in this process."""
    if not hasattr(os, "sched_getaffinity"):
        return 1
    return min(2, len(os.sched_getaffinity(0)))


def verify_all(
    model,
    inputs: Inputs,
    loaded: list[Backend],
    sampled_min_canonical_rate: float | None = None,
    workers: int = 1,
) -> report_lib.Report:
    """verify() of the backends `loaded` (load_backends(inputs)), spread over `workers` forked
    processes; the report is the same bytes whatever the worker count, since each backend's checks
    go into a report of its own, merged in the backends' order. The workers inherit the loaded
    backends."""
    backends = {backend.name: backend for backend in loaded}
    names = list(backends)
    workers = min(workers, len(names))
    if workers <= 1:
        return verify(model, inputs, list(backends.values()), sampled_min_canonical_rate)
    if sampled_min_canonical_rate is None:
        sampled_min_canonical_rate = sampled_behaviour.MIN_CANONICAL_RATE
    report = _report_with_inputs(inputs)
    shared = shared_work(model, inputs)
    _prepare(shared, inputs, names, workers)

    def check(name: str) -> report_lib.Report:
        return verify_backend(model, inputs, backends[name], shared, sampled_min_canonical_rate, True)

    order = sorted(names, key=lambda name: -COST.get(name, 1.0))  # stable: ties keep the contract's order
    fragments = _run_pool(check, order, workers)
    for name in names:
        report.merge(fragments[name])
    return report


def _run_pool(work: Callable, names: list[str], workers: int) -> dict:
    """{name: work(name)} for every name, computed by `workers` forked processes: each takes the next
    name as soon as it is free, in `names`' order. A worker's exception is raised here (its traceback
    added as a note); a worker that dies is a RuntimeError naming the backend it was checking. Either
    ends every worker before raising: nothing is left running or waiting."""
    import multiprocessing
    from multiprocessing import connection

    context = multiprocessing.get_context("fork")
    workers = min(workers, len(names))  # a worker with nothing to do is not started
    pending, results, busy = list(names), {}, {}
    processes = []
    try:
        for _ in range(workers):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_pool_worker, args=(child_end, work), daemon=True)
            process.start()
            child_end.close()  # the parent's copy: without it a dead worker's pipe never reads EOF
            processes.append((process, parent_end))
            busy[parent_end] = pending.pop(0) if pending else None
            parent_end.send(busy[parent_end])
        while len(results) < len(names):
            for end in connection.wait([end for end, name in busy.items() if name is not None]):
                name = busy[end]
                try:
                    outcome = end.recv()
                except EOFError:
                    process = next(p for p, e in processes if e is end)
                    process.join()
                    raise RuntimeError(
                        f"a verification worker died (exit code {process.exitcode}) while checking {name}"
                    ) from None
                if outcome[0] == "error":
                    error, trace = outcome[1], outcome[2]
                    error.add_note(f"in the verification worker checking {name}:\n{trace}")
                    raise error
                results[name] = outcome[1]
                busy[end] = pending.pop(0) if pending else None
                end.send(busy[end])
    finally:
        for process, end in processes:
            if process.is_alive() and busy.get(end) is not None:
                process.terminate()  # only after a failure: a worker still checking is not needed
            process.join()
            end.close()
    return results


def _pool_worker(end, work: Callable) -> None:
    """A forked worker: work(name) for each name the parent sends, until it sends None."""
    import sys
    import traceback

    torch = sys.modules.get("torch")  # loaded before the fork (load_model) when verify_all runs this
    if torch is not None:
        torch.set_num_threads(1)  # as load_model: two workers on two cores, no oversubscription
    while (name := end.recv()) is not None:
        try:
            end.send(("ok", work(name)))
        except BaseException as error:  # every failure goes to the parent, which raises it
            trace = traceback.format_exc()
            try:
                end.send(("error", error, trace))
            except Exception:  # an exception that does not pickle: its text still does
                end.send(("error", RuntimeError(f"{type(error).__name__}: {error}"), trace))
            return
    end.close()


def _prepare(shared: Shared, inputs: Inputs, names: list[str], workers: int) -> None:
    """Computes what the backends will need of eager's side and of the inputs before the workers
    fork, so that each is computed once, not once per worker; the independent pieces side by side in
    forked processes (the sampled replies, the decode parity's inputs, our tokenizer's ids of every
    dataset string: ~3 s one after another), stored where their cached properties keep them."""
    pieces = {}
    if any(name in SAMPLED_BACKENDS for name in names):
        pieces["proposals"] = (shared, lambda: shared.proposals)
    if any(name in DECODE_BACKENDS for name in names):
        pieces["decode_inputs"] = (shared, lambda: shared.decode_inputs)
    if any(name in GGUF_VARIANTS for name in names):  # the GGUF tokenizer checks
        pieces["string_ids"] = (inputs, lambda: inputs.string_ids)
    values = _run_pool(lambda piece: pieces[piece][1](), list(pieces), workers)
    for piece, value in values.items():
        pieces[piece][0].__dict__[piece] = value  # where functools.cached_property keeps it


def load_model(inputs: Inputs):
    """The fp32 eager reference, with one intra-op thread: numbers that do not depend on the thread
    count (a deterministic report), and no OpenMP spinning against another process on 2 cores."""
    import torch

    torch.set_num_threads(1)
    model, _ = checkpoint.load(
        inputs.paths.weights, inputs.paths.metadata, expected_vocab_size=inputs.contract.vocab_size
    )
    return model
