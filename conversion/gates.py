"""The contract's gates: which artifacts are verified, in which precision, and every bound with its floor.

    "gates": {
      "inputs":   {"seed": 0, "text_sequences": 40, "behaviour_questions": 200, "max_new_tokens": 32},
      "backends": {"torchscript": "f32", "coreml": "fp16", "gguf": "ggml_f32", "gguf_kv_f16": "kv_f16"},
      "methods":  {"f32": "float64 eager vs float32 eager", ...},
      "bounds":   {"f32": {"T64": {"kl_max": {"floor": 1.05e-12, "factor": 4.0, "bound": 4.2e-12},
                                   ...}, ..., "replay": {...}, "decode": {...}}, ...},
      "quality":  {"gguf_q4_0": {"reference": "ref_q4_0",
                                 "bounds": {"T64": {"kl_mean": {"floor": ..., "factor": ...,
                                                                "bound": ..., "why": ...}, ...},
                                            ..., "replay": {...}}}, ...}
    }

Every backend named here must be verified at every contract length (missing_checks below, which
pipeline/gates_test.py and pipeline/e2e.py apply), against the bounds of its precision; "decode"
bounds the multi-step decode parity of a KV-cache artifact (verify/decode_parity.py). A bound is its
floor (measured by verify/floors/floors.py on the same model and inputs) times its factor; a factor above
FACTOR_LIMIT needs a "why". Every scope has its own floors: each contract length its own, measured
on that length's rows only (verify/floors/floors.py says why nothing is pooled across lengths). The floors
file is written by //verify:measure_floors and read here, when the export step writes the contract.

Quality bounds ("quality"): a lossy artifact (its precision in REFERENCES) is also held to an
independent reference quantization of the same checkpoint (verify/floors/floors.py): its KL and top-1
disagreement against fp32 eager, at every length and over the replay, at most the reference's times
QUALITY_FACTORS. Its own emulation (the "bounds") computes with the exporter's plan and quantizer,
so a regression there would move the floor and the artifact together; the reference, written apart
from the format's definition, does not move.

The GGUF bounds (f32 and kv_f16) hold for llama.cpp through ggml's CPU backend: the only one our
llama-cpp-python build has, on Linux and on macOS alike (third_party/python/llama_cpp_minimal.cmake
turns Metal, BLAS and Accelerate off). Their ratio to the floors was measured on Linux x86-64 (AVX2
kernels); a Mac runs the NEON kernels of the same backend, not measured there. A Metal build would
compute in other kernels and need floors of its own.
"""

import math

from common.errors import InputError

FACTOR_LIMIT = 4.0
FLOORS_FORMAT = "m8b-floors"
FLOORS_VERSION = 2  # 2: floors per length (nothing pooled across lengths), and the lossy references
METRICS = ("max_abs_diff", "rms_abs_diff", "kl_mean", "kl_max", "top1_disagreement", "rms_dp")
REPLAY = "replay"
DECODE = "decode"  # multi-step decoding through a KV cache (verify/decode_parity.py)
INPUT_KEYS = ("seed", "text_sequences", "behaviour_questions", "max_new_tokens")
# The artifacts and the precision each computes in. gguf_kv_f16 is the f32 GGUF file as llama.cpp
# and Ollama run it by default, with an f16 KV cache; gguf_f16 the f16-weight GGUF with an f32 cache;
# gguf_q8_0 and gguf_q4_0 the quantized GGUF variants (conversion/gguf_quant.py), with an f32 cache,
# each against the floor of its own emulation (verify/floors/floors.py, w_q8_0 and w_q4_0).
DEFAULT_BACKENDS = {
    "torchscript": "f32",
    # The TorchScript decoder (conversion/kv_decoder.py): prefill checked like the model, and its
    # KV-cache decoding step by step against eager (verify/decode_parity.py, the "decode" scope).
    "torchscript_decoder": "f32",
    # The torch.export program (conversion/export_program.py, magic-8-ball.pt2) and the AOTInductor
    # KV-cache decoder (conversion/aoti_decoder.py, magic-8-ball.decode.pt2), checked as the two
    # above; the export step names them only when it writes them (the default chain).
    "torch_export": "f32",
    "aoti_decoder": "f32",
    "coreml": "fp16",
    "coreml_fp32": "f32",
    "gguf": "ggml_f32",  # f32 with llama.cpp's RoPE (verify/floors/floors.py)
    "gguf_kv_f16": "kv_f16",
    "gguf_f16": "w_f16",
    "gguf_q8_0": "w_q8_0",
    "gguf_q4_0": "w_q4_0",
    # The Core ML variants with compressed weights (conversion/coreml_compress.py), each bounded by
    # the fp16 model computing with exactly the package's weights (verify/floors/floors.py).
    "coreml_int8": "int8",
    "coreml_int4": "int4",
    # The KV cache held as Core ML state (conversion/coreml_stateful.py): an fp16 program.
    "coreml_stateful": "fp16",
}
_BOUND_KEYS = ("bound", "factor", "floor")
_GATES_KEYS = ("backends", "bounds", "inputs", "methods", "quality")
# Each lossy precision -> its independent reference (verify/floors/floors.py: ggml's Q8_0 and Q4_0
# through verify/gguf_files/gguf_reference.py, Core ML's int8 and int4 through
# verify/coreml/coreml_reference.py). A reference is measured at every length and over the replay;
# it bounds no KV cache, so it has no decode scope.
REFERENCES = {"w_q8_0": "ref_q8_0", "w_q4_0": "ref_q4_0", "int8": "ref_int8", "int4": "ref_int4"}
REFERENCE_PRECISIONS = tuple(sorted(REFERENCES.values()))
QUALITY_METRICS = ("kl_mean", "top1_disagreement")
# Why these factors. An artifact that follows the format and the plan holds exactly its reference's
# weights, so the two differ only in how the runtime computes, far below the quantization noise: on
# the five verified chains every lossy artifact's KL was within 7% of its reference's, so the KL
# factor is tighter than FACTOR_LIMIT. A wrong type for one tensor (a Q8_0 file with its output
# projection in Q4_0, an int4 package with its token embedding quantized per tensor) moves the KL
# well past it (//tests:gate_power). Top-1 disagreement counts positions, and where quantized logits
# nearly tie a few flip either way (from_wide's int8 and Q8_0 artifacts flipped two of 256 positions
# at T128 where the reference flipped none): its factor is FACTOR_LIMIT, the emulation's, so the
# independent reference bounds it where the exporter's plan moves the emulation.
QUALITY_FACTORS = {"kl_mean": 1.25, "top1_disagreement": FACTOR_LIMIT}
QUALITY_WHY = "the artifact holds its reference's weights; only the runtime's arithmetic differs"


def round4(value: float) -> float:
    """4 significant digits: floors measured on another machine's BLAS differ in the last bits, and
    the contract (a cache key for every later stage) must not."""
    return float(f"{value:.4g}")


def scope_names(lengths, decode: bool = True) -> list[str]:
    return [f"T{length}" for length in lengths] + [REPLAY] + ([DECODE] if decode else [])


def round4_up(value: float) -> float:
    """round4, but never below `value`: a floor or bound rounded down would fail an artifact that sits
    exactly at floor x factor (a top-1 rate of whole positions: two of 256 against 1/256 x 2, where
    1/256 rounded down to 0.003906 gave a bound of 0.007812 < 2/256)."""
    rounded = round4(value)
    if rounded < value:
        step = 10.0 ** (math.floor(math.log10(abs(value))) - 3)
        rounded = round4(rounded + step)
    return rounded


def _bound(floor: float, factor: float) -> dict:
    return {"floor": floor, "factor": factor, "bound": round4_up(floor * factor)}


def make_gates(floors: dict, backends: dict, factor: float = FACTOR_LIMIT) -> dict:
    """Gates from a validated floors document: every floor of every backend's precision x factor,
    and every lossy backend's quality bounds (its reference's floors x QUALITY_FACTORS)."""
    bounds = {}
    for precision in sorted(set(backends.values())):
        if precision not in floors["floors"]:
            raise InputError(f"floors: no floors for precision {precision!r} (backends {backends})")
        bounds[precision] = {
            where: {metric: _bound(floor, factor) for metric, floor in sorted(metrics.items())}
            for where, metrics in sorted(floors["floors"][precision].items())
        }
    quality = {}
    for backend, precision in sorted(backends.items()):
        reference = REFERENCES.get(precision)
        if reference is None:
            continue
        if reference not in floors["floors"]:
            raise InputError(f"floors: no floors for {reference!r}, the reference of {backend} ({precision})")
        quality[backend] = {
            "reference": reference,
            "bounds": {
                where: {
                    metric: {**_bound(metrics[metric], QUALITY_FACTORS[metric]), "why": QUALITY_WHY}
                    for metric in QUALITY_METRICS
                }
                for where, metrics in sorted(floors["floors"][reference].items())
            },
        }
    precisions = sorted({*bounds, *(entry["reference"] for entry in quality.values())})
    return {
        "inputs": dict(floors["inputs"]),
        "backends": dict(sorted(backends.items())),
        "methods": {p: floors["methods"][p] for p in precisions},
        "bounds": bounds,
        "quality": quality,
    }


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:
        return False


def _check_inputs(inputs, where: str) -> None:
    if not isinstance(inputs, dict) or sorted(inputs) != sorted(INPUT_KEYS):
        raise InputError(f"{where}.inputs: must be an object with exactly {', '.join(INPUT_KEYS)}")
    for key in INPUT_KEYS:
        value = inputs[key]
        if not _is_int(value) or value < (0 if key == "seed" else 1):
            raise InputError(
                f"{where}.inputs.{key}: must be a {'non-negative' if key == 'seed' else 'positive'} "
                f"integer, got {value!r}"
            )


def _check_scopes(scopes, lengths, where: str, check_leaf, decode: bool = True, metrics=METRICS) -> None:
    expected = scope_names(lengths, decode)
    if not isinstance(scopes, dict) or sorted(scopes) != sorted(expected):
        got = sorted(scopes) if isinstance(scopes, dict) else scopes
        raise InputError(
            f"{where}: scopes {got}, expected one per contract length and {expected[len(lengths) :]}"
        )
    for name in expected:
        values = scopes[name]
        if not isinstance(values, dict) or sorted(values) != sorted(metrics):
            raise InputError(f"{where}.{name}: must hold exactly the metrics {', '.join(metrics)}")
        for metric in metrics:
            check_leaf(values[metric], f"{where}.{name}.{metric}")


def validate_floors(doc, lengths, where: str) -> dict:
    """A floors document from //verify:measure_floors, checked against the contract's lengths."""
    if not isinstance(doc, dict):
        raise InputError(f"{where}: must be a JSON object")
    expected = ("checkpoint_sha256", "floors", "format", "inputs", "lengths", "methods", "version")
    if sorted(doc) != sorted(expected):
        raise InputError(f"{where}: fields {sorted(doc)}, expected {list(expected)}; re-run measure_floors")
    if doc["format"] != FLOORS_FORMAT or doc["version"] != FLOORS_VERSION:
        raise InputError(
            f"{where}: format/version {doc['format']!r}/{doc['version']!r}, "
            f"expected {FLOORS_FORMAT!r}/{FLOORS_VERSION}; re-run measure_floors"
        )
    if doc["lengths"] != list(lengths):
        raise InputError(
            f"{where}: lengths: floors were measured at {doc['lengths']}, the contract has {list(lengths)}; "
            "give both stages the same --lengths"
        )
    _check_inputs(doc["inputs"], where)
    floors = doc["floors"]
    if not isinstance(floors, dict) or not floors or not isinstance(doc["methods"], dict):
        raise InputError(f"{where}: floors and methods must be non-empty objects keyed by precision")

    def leaf(value, at):
        if not _positive_number(value):
            raise InputError(f"{at}: a floor must be a positive finite number, got {value!r}")

    for precision, scopes in floors.items():
        if not isinstance(doc["methods"].get(precision), str):
            raise InputError(f"{where}.methods.{precision}: missing; say how this floor was measured")
        decode = precision not in REFERENCE_PRECISIONS
        _check_scopes(scopes, lengths, f"{where}.floors.{precision}", leaf, decode)
    return doc


def validate_gates(gates, lengths, where: str) -> None:
    """InputError naming the field for any bound without a floor, or bound/floor above the limit, or
    a lossy backend without its quality bounds."""
    if not isinstance(gates, dict) or sorted(gates) != list(_GATES_KEYS):
        raise InputError(f"{where}: must be an object with exactly {', '.join(_GATES_KEYS)}")
    _check_inputs(gates["inputs"], where)
    backends, bounds, methods = gates["backends"], gates["bounds"], gates["methods"]
    if not isinstance(backends, dict) or not backends:
        raise InputError(f"{where}.backends: must name at least one artifact and its precision")
    if not isinstance(bounds, dict) or not isinstance(methods, dict):
        raise InputError(f"{where}.bounds and {where}.methods must be objects keyed by precision")
    for backend, precision in backends.items():
        if precision not in bounds:
            raise InputError(f"{where}.backends.{backend}: precision {precision!r} has no bounds")
    for precision, scopes in bounds.items():
        if not isinstance(methods.get(precision), str):
            raise InputError(f"{where}.methods.{precision}: missing; say how the floor was measured")
        _check_scopes(scopes, lengths, f"{where}.bounds.{precision}", _check_bound)
    _check_quality(gates["quality"], backends, methods, lengths, f"{where}.quality")


def _check_quality(quality, backends: dict, methods: dict, lengths, where: str) -> None:
    if not isinstance(quality, dict):
        raise InputError(f"{where}: must be an object keyed by backend")
    lossy = sorted(b for b, p in backends.items() if p in REFERENCES)
    if sorted(quality) != lossy:
        raise InputError(
            f"{where}: bounds for {sorted(quality)}, expected exactly the lossy backends {lossy}: "
            "each is held to its independent reference"
        )
    for backend in lossy:
        entry, reference = quality[backend], REFERENCES[backends[backend]]
        if not isinstance(entry, dict) or sorted(entry) != ["bounds", "reference"]:
            raise InputError(f"{where}.{backend}: must be an object with exactly bounds, reference")
        if entry["reference"] != reference:
            raise InputError(f"{where}.{backend}.reference: {entry['reference']!r}, expected {reference!r}")
        if not isinstance(methods.get(reference), str):
            raise InputError(f"{where}.{backend}: methods.{reference} missing; say how it was measured")
        _check_scopes(
            entry["bounds"], lengths, f"{where}.{backend}.bounds", _check_bound, False, QUALITY_METRICS
        )


def _check_bound(entry, at: str) -> None:
    if (
        not isinstance(entry, dict)
        or not set(_BOUND_KEYS) <= set(entry)
        or not set(entry) <= {*_BOUND_KEYS, "why"}
    ):
        raise InputError(
            f"{at}: must be {{floor, factor, bound}} (and a 'why' for a factor above {FACTOR_LIMIT:g})"
        )
    for key in _BOUND_KEYS:
        if not _positive_number(entry[key]):
            raise InputError(f"{at}.{key}: must be a positive finite number, got {entry[key]!r}")
    if entry["factor"] > FACTOR_LIMIT and not (isinstance(entry.get("why"), str) and entry["why"].strip()):
        raise InputError(
            f"{at}.factor: {entry['factor']} is above the limit {FACTOR_LIMIT:g}; "
            "lower it or say why in 'why'"
        )
    if not math.isclose(entry["bound"], entry["floor"] * entry["factor"], rel_tol=1e-3):
        raise InputError(
            f"{at}.bound: {entry['bound']} is not floor x factor ({entry['floor']} x {entry['factor']}); "
            "bounds come from floors, re-run the export step"
        )


def bounds_for(gates: dict, backend: str) -> dict:
    """{scope: {metric: bound}} for one backend."""
    precision = gates["backends"][backend]
    return {
        where: {metric: entry["bound"] for metric, entry in metrics.items()}
        for where, metrics in gates["bounds"][precision].items()
    }


def entry_for(gates: dict, backend: str, where: str, metric: str) -> dict:
    return gates["bounds"][gates["backends"][backend]][where][metric]


def quality_for(gates: dict, backend: str) -> dict | None:
    """{scope: {metric: {floor, factor, bound, why}}}: the backend's quality bounds, None if it has none."""
    entry = gates["quality"].get(backend)
    return entry["bounds"] if entry else None


def near_tie_margin(gates: dict, backend: str) -> float:
    """Twice the backend's largest max_abs bound: an error of d per logit flips an argmax only where
    the top two logits are closer than 2d, so a flip at a wider margin is a real disagreement. With
    every scope's max_abs bound at most half this margin, such a flip also fails that scope's
    max_abs_diff: the checks that count flips outside a near tie are implied by the numeric gates
    (verification records them as information, IMPLIED)."""
    return 2.0 * max(metrics["max_abs_diff"] for metrics in bounds_for(gates, backend).values())


# --- Completeness: every check the contract implies, per artifact ---------------------------------
# What verification must record for each backend the contract names (verify/verification.py runs
# them). Written here, apart from the code that runs them, so a check that stops running is missed
# by missing_checks and the verdict turns false (pipeline/gates_test.py, pipeline/e2e.py). GATE
# entries must carry a verdict; NOTE entries are information (implied by another gate, or a fact)
# and must carry a value.
GATE, NOTE = "gate", "note"
QUALITY_CHECKS = tuple(f"quality_{metric}" for metric in QUALITY_METRICS)
FLOOR_RATIO_CHECK = "kl_mean_floor_ratio"  # a lossy artifact much quieter than its emulation fails
SAMPLED_BACKENDS = ("torchscript", "torchscript_decoder", "aoti_decoder", "gguf", "gguf_kv_f16")
KV_CACHE_BACKENDS = ("torchscript_decoder", "aoti_decoder", "coreml_stateful")
GGUF_FILE_BACKENDS = ("gguf", "gguf_f16", "gguf_q8_0", "gguf_q4_0")  # gguf_kv_f16 runs gguf's file
COREML_BACKENDS = ("coreml", "coreml_fp32", "coreml_int8", "coreml_int4")
COMPRESSED_BACKENDS = ("coreml_int8", "coreml_int4")
AGREEMENT_BACKENDS = ("gguf_q8_0", "gguf_q4_0", "coreml_int8", "coreml_int4")
# Backends whose runtime hands back whatever dtype the artifact computes in: output_dtype gates
# them. The Core ML executor and llama.cpp return float32 whatever the artifact holds (the package's
# declared output type is gated by its spec checks), so there output_dtype is a note.
DTYPE_GATED_BACKENDS = ("torchscript", "torchscript_decoder", "torch_export", "aoti_decoder")
COREML_SPEC_CHECKS = tuple(
    "spec_" + name
    for name in (
        "input_names",
        "input_dtype",
        "input_enumerated_shapes",
        "input_default_shape",
        "contract_lengths_supported",
        "other_lengths_unsupported",
        "output_names",
        "output_dtype",
        "output_shape_not_frozen",
        "program_output_length_dynamic",
    )
)
COMPRESSION_SPEC_CHECKS = (
    "spec_deployment_target",
    "spec_compression_metadata",
    "spec_compressed_weight_ops",
)
STATEFUL_SPEC_CHECKS = tuple(
    "spec_" + name
    for name in (
        "deployment_target",
        "state_names",
        "state_shapes",
        "state_dtypes",
        "input_names",
        "input_dtypes",
        "input_shapes",
        "output_names",
        "output_dtypes",
        "state_metadata",
    )
)
# A failed check that stands for others it kept from running: (scope kind, name) -> covered checks.
_IN_PLACE_OF = {
    "runs": "length",  # the artifact could not run at that length
    "output_shape": "length",  # the metrics need the contract's shape
    "behaviour": "replay",  # the artifact could not run a replayed question
    "decode": "decode",  # the artifact could not decode
    "behaviour_agreement_decisive": "agreement",
}


def expected_checks(backend: str, lengths, pinned: bool = False) -> dict[str, dict[str, str]]:
    """{scope: {check: GATE or NOTE}} that a report must hold for `backend` (pinned: the contract
    pins the artifact's sha256). Unknown backends get the checks every artifact gets."""
    precision = DEFAULT_BACKENDS.get(backend)
    lossy = precision in REFERENCES
    per_length = {"output_shape": GATE, "output_dtype": GATE if backend in DTYPE_GATED_BACKENDS else NOTE}
    per_length.update({metric: GATE for metric in METRICS})
    if lossy:
        per_length.update({name: GATE for name in (*QUALITY_CHECKS, FLOOR_RATIO_CHECK)})
    whole = {f"replay_{metric}": GATE for metric in METRICS}
    whole.update(behaviour_mismatches=NOTE, near_tie_margin=NOTE)
    if lossy:
        whole.update({f"replay_{name}": GATE for name in QUALITY_CHECKS})
    if backend in KV_CACHE_BACKENDS:
        whole.update({f"decode_{metric}": GATE for metric in METRICS}, decode_token_mismatches=NOTE)
    if backend in SAMPLED_BACKENDS:
        whole["sampled_canonical_rate"] = GATE
    if backend in GGUF_FILE_BACKENDS:
        whole.update(
            tokenizer_mismatches=GATE, weights_tensors_mismatched=GATE, weights_elements_changed=GATE
        )
    if backend in COREML_BACKENDS:
        whole.update({name: GATE for name in COREML_SPEC_CHECKS})
        whole.update(weights_matrices_found=GATE, weights_elements_changed=GATE)
    if backend in COMPRESSED_BACKENDS:
        whole.update({name: GATE for name in COMPRESSION_SPEC_CHECKS}, weights_consts_unaccounted=GATE)
    if backend == "coreml_stateful":
        whole.update({name: GATE for name in STATEFUL_SPEC_CHECKS})
        whole.update(weights_matrices_found=GATE, weights_elements_changed=GATE)
    if backend in AGREEMENT_BACKENDS:
        whole.update(behaviour_agreement=NOTE, behaviour_agreement_decisive=NOTE)
    if pinned:
        whole["sha256_matches_contract"] = GATE
    return {**{f"T{length}": dict(per_length) for length in lengths}, "all": whole}


def _kind(scope: str, check: str) -> str:
    if scope != "all":
        return "length"
    if check.startswith("decode_"):
        return "decode"
    if check.startswith("replay_") or check == "behaviour_mismatches":
        return "replay"
    if check.startswith("behaviour_agreement"):
        return "agreement"
    return check


def missing_checks(report: dict, contract: dict) -> list[str]:
    """One line, "<artifact> <scope>: no <check>, ...", for every check the contract implies
    (expected_checks) that the report does not show as run: a gate without a verdict, a note
    without a value. A check that failed in place of others (it could not run them: _IN_PLACE_OF)
    stands for them."""
    results = report.get("results", {})
    missing = []
    for backend in sorted(contract["gates"]["backends"]):
        scopes = results.get(backend)
        if scopes is None:
            missing.append(f"{backend}: not verified at all")
            continue
        pinned = backend in contract.get("artifacts", {})
        for scope, checks in expected_checks(backend, contract["lengths"], pinned).items():
            recorded = scopes.get(scope, {})
            covered = {
                _IN_PLACE_OF[name]
                for name, entry in recorded.items()
                if name in _IN_PLACE_OF and entry.get("ok") is False
            }
            absent = []
            for check, kind in checks.items():
                entry = recorded.get(check, {})
                if _kind(scope, check) in covered or "error" in entry:
                    continue
                if ("ok" not in entry) if kind == GATE else ("value" not in entry):
                    absent.append(check)
            if absent:
                missing.append(f"{backend} {scope}: no {', '.join(absent)}")
    return missing
