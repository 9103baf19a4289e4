"""The contract's gates: which artifacts are verified, in which precision, and every bound with its floor.

    "gates": {
      "inputs":   {"seed": 0, "text_sequences": 40, "behaviour_questions": 200, "max_new_tokens": 32},
      "backends": {"torchscript": "f32", "coreml": "fp16", "gguf": "f32", "gguf_kv_f16": "kv_f16"},
      "methods":  {"f32": "float64 eager vs float32 eager", ...},
      "bounds":   {"f32": {"T64": {"kl_max": {"floor": 1.05e-12, "factor": 4.0, "bound": 4.2e-12},
                                   ...}, ..., "replay": {...}, "decode": {...}}, ...}
    }

Every backend named here must be verified at every contract length (pipeline/gates_test.py fails
otherwise), against the bounds of its precision; "decode" bounds the multi-step decode parity of a
KV-cache artifact (verify/decode_parity.py). A bound is its floor (measured by
verify/floors.py on the same model and inputs) times its factor; a factor above FACTOR_LIMIT needs
a "why". The floors file is written by //verify:measure_floors and read here, when the export step
writes the contract.

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
FLOORS_VERSION = 1
METRICS = ("max_abs_diff", "rms_abs_diff", "kl_mean", "kl_max", "top1_disagreement", "rms_dp")
REPLAY = "replay"
DECODE = "decode"  # multi-step decoding through a KV cache (verify/decode_parity.py)
INPUT_KEYS = ("seed", "text_sequences", "behaviour_questions", "max_new_tokens")
# The artifacts and the precision each computes in. gguf_kv_f16 is the f32 GGUF file as llama.cpp
# and Ollama run it by default, with an f16 KV cache; gguf_f16 the f16-weight GGUF with an f32 cache;
# gguf_q8_0 and gguf_q4_0 the quantized GGUF variants (conversion/gguf_quant.py), with an f32 cache,
# each against the floor of its own emulation (verify/floors.py, w_q8_0 and w_q4_0).
DEFAULT_BACKENDS = {
    "torchscript": "f32",
    # The TorchScript decoder (conversion/kv_decoder.py): prefill checked like the model, and its
    # KV-cache decoding step by step against eager (verify/decode_parity.py, the "decode" scope).
    "torchscript_decoder": "f32",
    "coreml": "fp16",
    "coreml_fp32": "f32",
    "gguf": "f32",
    "gguf_kv_f16": "kv_f16",
    "gguf_f16": "w_f16",
    "gguf_q8_0": "w_q8_0",
    "gguf_q4_0": "w_q4_0",
    # The Core ML variants with compressed weights (conversion/coreml_compress.py), each bounded by
    # the fp16 model computing with exactly the package's weights (verify/floors.py).
    "coreml_int8": "int8",
    "coreml_int4": "int4",
    # The KV cache held as Core ML state (conversion/coreml_stateful.py): an fp16 program.
    "coreml_stateful": "fp16",
}
_BOUND_KEYS = ("bound", "factor", "floor")


def round4(value: float) -> float:
    """4 significant digits: floors measured on another machine's BLAS differ in the last bits, and
    the contract (a cache key for every later stage) must not."""
    return float(f"{value:.4g}")


def scope_names(lengths) -> list[str]:
    return [f"T{length}" for length in lengths] + [REPLAY, DECODE]


def make_gates(floors: dict, backends: dict, factor: float = FACTOR_LIMIT) -> dict:
    """Gates from a validated floors document: every floor of every backend's precision x factor."""
    bounds = {}
    for precision in sorted(set(backends.values())):
        if precision not in floors["floors"]:
            raise InputError(f"floors: no floors for precision {precision!r} (backends {backends})")
        bounds[precision] = {
            where: {
                metric: {"floor": floor, "factor": factor, "bound": round4(floor * factor)}
                for metric, floor in sorted(metrics.items())
            }
            for where, metrics in sorted(floors["floors"][precision].items())
        }
    return {
        "inputs": dict(floors["inputs"]),
        "backends": dict(sorted(backends.items())),
        "methods": {p: floors["methods"][p] for p in sorted(bounds)},
        "bounds": bounds,
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


def _check_scopes(scopes, lengths, where: str, check_leaf) -> None:
    expected = scope_names(lengths)
    if not isinstance(scopes, dict) or sorted(scopes) != sorted(expected):
        got = sorted(scopes) if isinstance(scopes, dict) else scopes
        raise InputError(
            f"{where}: scopes {got}, expected one per contract length, {REPLAY!r} and {DECODE!r}: {expected}"
        )
    for name in expected:
        metrics = scopes[name]
        if not isinstance(metrics, dict) or sorted(metrics) != sorted(METRICS):
            raise InputError(f"{where}.{name}: must hold exactly the metrics {', '.join(METRICS)}")
        for metric in METRICS:
            check_leaf(metrics[metric], f"{where}.{name}.{metric}")


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
            f"expected {FLOORS_FORMAT!r}/{FLOORS_VERSION}"
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
    for precision, scopes in floors.items():
        if not isinstance(doc["methods"].get(precision), str):
            raise InputError(f"{where}.methods.{precision}: missing; say how this floor was measured")

        def leaf(value, at):
            if not _positive_number(value):
                raise InputError(f"{at}: a floor must be a positive finite number, got {value!r}")

        _check_scopes(scopes, lengths, f"{where}.floors.{precision}", leaf)
    return doc


def validate_gates(gates, lengths, where: str) -> None:
    """InputError naming the field for any bound without a floor, or bound/floor above the limit."""
    if not isinstance(gates, dict) or sorted(gates) != ["backends", "bounds", "inputs", "methods"]:
        raise InputError(f"{where}: must be an object with exactly backends, bounds, inputs, methods")
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


def near_tie_margin(gates: dict, backend: str) -> float:
    """Twice the backend's largest max_abs bound: an error of d per logit flips an argmax only where
    the top two logits are closer than 2d, so a flip at a wider margin is a real disagreement."""
    return 2.0 * max(metrics["max_abs_diff"] for metrics in bounds_for(gates, backend).values())
