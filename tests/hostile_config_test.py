"""Hostile metadata is refused before any allocation (SECURITY.md: memory cannot be exhausted).

Every binary that loads a checkpoint or a contract gets the pipeline's good inputs with one hostile
student.json (or contract.json): a 1e9-token context (whose RoPE tables alone would be hundreds of
GB), zero and negative sizes, a huge vocabulary, sizes that are not integers, a missing field, an
unknown field, no weights digest. Each run has an address-space limit (RLIMIT_AS) of 1 GiB beyond
what this interpreter, torch imported, already maps: a loader that built anything from the hostile
config would fail to allocate and crash. Each must exit 2 with one `error:` line naming the file
and the field, no traceback, and nothing in its output directory.
"""

import os
import resource
import subprocess
import sys

import pytest
import torch  # noqa: F401  (imported so that the baseline below includes what the loaders map too)

from tests import harness, spoil

A = harness.artifact
GIB = 1 << 30

# The loaders of a checkpoint or contract, beyond harness.BINARIES (which the bad-input table uses).
LOADERS = {
    **{name: harness.BINARIES[name] for name in ("export_pytorch", "convert_coreml", "export_gguf")},
    "verify_contracts": harness.BINARIES["verify_contracts"],
    "ask": harness.BINARIES["ask"],
    "measure_floors": "verify/measure_floors",
    "render_report": "verify/render_report",
    "bench": "bench/all",
}
EXTRA_ARTIFACTS = {
    "report": "pipeline/report.json",
    "history": "pipeline/loss_history.jsonl",
}


def _flags(loader: str, out: str) -> dict:
    """Good inputs and outputs (in `out`) for each loader: with these it would succeed."""
    extra = {name: harness.runfile(rel) for name, rel in EXTRA_ARTIFACTS.items()}
    checkpoint = {"weights": A("weights"), "metadata": A("metadata")}
    o = lambda name: os.path.join(out, name)  # noqa: E731
    return {
        "export_pytorch": {
            **checkpoint,
            "tokenizer": A("tokenizer"),
            "floors": A("floors"),
            "out_torchscript": o("m.pt"),
            "out_decoder": o("m.decode.pt"),
            "out_contract": o("contract.json"),
        },
        "convert_coreml": {**checkpoint, "contract": A("contract"), "out": o("m.mlpackage")},
        "export_gguf": {
            **checkpoint,
            "tokenizer": A("tokenizer"),
            "out": o("m.gguf"),
            "modelfile_out": o("Modelfile"),
        },
        "verify_contracts": {**harness.verify_contracts_flags(A("dataset")), "out_report": o("report.json")},
        "ask": {
            **harness.ask_flags(),
        },
        "measure_floors": {
            **checkpoint,
            "tokenizer": A("tokenizer"),
            "dataset": A("dataset"),
            "out": o("f.json"),
        },
        "render_report": {
            **checkpoint,
            "report": extra["report"],
            "contract": A("contract"),
            "history": extra["history"],
            "tokenizer": A("tokenizer"),
            "dataset": A("dataset"),
            "out_html": o("report.html"),
        },
        "bench": {
            **checkpoint,
            "tokenizer": A("tokenizer"),
            "dataset": A("dataset"),
            "torchscript": A("torchscript"),
        },
    }[loader]


def _config(field, value):
    def edit(doc):
        if value is _DROP:
            del doc["config"][field]
        else:
            doc["config"][field] = value

    return edit


_DROP = object()

# name -> (edit of student.json, the field the error line must name)
METADATA_CASES = {
    "context 1e9": (_config("max_seq_len", 10**9), "config.max_seq_len"),
    "zero width": (_config("d_model", 0), "config.d_model"),
    "negative depth": (_config("n_layers", -3), "config.n_layers"),
    "huge vocabulary": (_config("vocab_size", 10**9), "config.vocab_size"),
    "vocabulary over the parameter limit": (_config("vocab_size", 600_000), "config: "),
    "fractional width": (_config("d_model", 128.5), "config.d_model"),
    "heads as a string": (_config("n_heads", "4"), "config.n_heads"),
    "missing field": (_config("ffn_hidden", _DROP), "config.ffn_hidden"),
    "unknown field": (_config("n_experts", 64), "config.n_experts"),
    "no weights digest": (lambda doc: doc.pop("weights_sha256") and None, "weights_sha256"),
}

# Contract loaders: lengths and vocabulary are sizes too.
CONTRACT_CASES = {
    "contract length 1e9": (lambda doc: doc.update(lengths=[64, 128, 10**9]), "lengths"),
    "contract vocabulary 1e9": (lambda doc: doc.update(vocab_size=10**9), "vocab_size"),
}


def _vm_bytes() -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


def _run_limited(loader: str, flags: dict) -> subprocess.CompletedProcess:
    limit = _vm_bytes() + GIB

    def limit_memory():  # runs in the child, before exec; the limit holds for the loader
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    argv = ("Will it rain tomorrow?",) if loader == "ask" else ()
    args = [f"--{name}={value}" for name, value in flags.items()]
    return subprocess.run(
        [harness.runfile(LOADERS[loader]), *args, *argv],
        capture_output=True,
        text=True,
        errors="replace",
        env=harness.binary_env(),
        timeout=harness.TIMEOUT_S,
        check=False,
        preexec_fn=limit_memory,
    )


@pytest.fixture(scope="module")
def spoiler(tmp_path_factory):
    return spoil.Spoiler(str(tmp_path_factory.mktemp("hostile")))


# (loader, the flag whose file is hostile, case): every loader of a checkpoint gets every metadata
# case; the contract loaders get the contract cases.
RUNS = [(loader, "metadata", case) for loader in sorted(LOADERS) for case in sorted(METADATA_CASES)]
RUNS += [
    (loader, "contract", case) for loader in ("convert_coreml", "verify_contracts") for case in CONTRACT_CASES
]


@pytest.mark.parametrize("loader, slot, case", RUNS, ids=[f"{r[0]}-{r[2].replace(' ', '_')}" for r in RUNS])
def test_hostile_file_exits_2_under_a_memory_limit(loader, slot, case, spoiler, tmp_path):
    edit, field = (METADATA_CASES if slot == "metadata" else CONTRACT_CASES)[case]
    out = harness.fresh_dir(str(tmp_path / "out"))
    hostile = spoiler.json_edit(A(slot), f"{case.replace(' ', '_')}.json", edit)
    result = _run_limited(loader, dict(_flags(loader, out), **{slot: hostile}))
    outcome = harness.Outcome(result.returncode, result.stderr, harness.leftovers(out))
    harness.assert_clean_failure(outcome, [hostile, field], f"{loader} {case}")
    print(f"{loader} {case}: {harness.error_line(result.stderr)}")


def test_the_limit_is_real():
    """The same limit stops a child that does allocate what a hostile config asks for (the
    default max_seq_len's RoPE tables scaled to 1e9 positions): the limit, not luck, is tested."""
    script = "import torch; torch.zeros(10**9, 32, dtype=torch.float64)"
    limit = _vm_bytes() + GIB
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(harness.binary_env(), PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
        timeout=120,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert result.returncode != 0 and "memory" in result.stderr.lower(), result.stderr[-2000:]
