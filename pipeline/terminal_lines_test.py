"""A cold `bazel run //pipeline:e2e` prints fewer than 80 lines after Bazel's own, and a configuration
whose lengths leave out 128 runs through every stage.

What a cold run prints, besides Bazel's own progress and summary: for every stage action that
prints anything, Bazel's header line ("INFO: From <mnemonic> //pipeline:<stage>:") and the
action's stdout and stderr; then what e2e prints. Bazel cannot run inside a test, so this test
runs the same thing piece by piece: every stage tool of the default chain (pipeline/BUILD.bazel,
19 actions), each from its own launcher with the environment its action has (pipeline/defs.bzl's
env, the strict action PATH, no HOME), in the chain's order, each on the outputs of the ones before;
then e2e over the results with the artifact list the real `e2e` prints ($M8B_E2E_ARTIFACTS, set
by the BUILD file from ARTIFACTS). It counts each tool's lines, plus one header line for each tool
that printed anything, plus e2e's lines, and holds the sum under LINE_BUDGET. It also holds every
stage to one line at most: a stage that succeeds prints nothing a user does not need.

What differs from the real chain is size, so that the test takes minutes, not the pipeline's
quarter of an hour: a 60-record dataset, a student of one layer trained for two steps, and the
contract lengths 48, 96, 192, none of them 128 (a user's configuration once failed at export for
that: conversion/export_pytorch.py takes the middle length as the default). An untrained student
writes no canonical reply, so verification runs with --sampled_min_canonical_rate=0; every other
flag is the pipeline's. Library chatter does not depend on the size: coremltools converts the
same ops, torch and llama.cpp start the same way, matplotlib draws the same figures.

Inputs: the tools' launchers and e2e's, in the runfiles; $M8B_E2E_ARTIFACTS ("label=stage=gate"
separated by ";"). Run with -s to see what each stage printed.
"""

import os
import subprocess
import time

import pytest

LINE_BUDGET = 80  # the target for a cold `bazel run //pipeline:e2e`, Bazel's own lines aside
TIMEOUT_S = 900

# The launchers, relative to the runfiles root.
TOOLS = {
    "make_toy_kd": "data/make_toy_kd",
    "merge_kd_shards": "data/merge_kd_shards",
    "run_toy_distill": "training/run_toy_distill",
    "measure_floors": "verify/measure_floors",
    "export_pytorch": "conversion/export_pytorch",
    "convert_coreml": "conversion/convert_coreml",
    "export_gguf": "conversion/export_gguf",
    "verify_contracts": "verify/verify_contracts",
    "render_report": "verify/render_report",
    "e2e": "pipeline/e2e",
}

# A stage's action environment: pipeline/defs.bzl's env on top of Bazel's strict action environment
# (.bazelrc: --incompatible_strict_action_env), which has PATH and nothing else: no HOME.
ACTION_ENV = {
    "PATH": "/bin:/usr/bin:/usr/local/bin",
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}

SHARDS = 3  # pipeline/BUILD.bazel DATASET_SHARDS
DATASET_ARGS = ["--n=60", "--seed=0", "--heldout_fraction=0.2", "--topk=8"]
TRAIN_ARGS = [
    "--steps=2",
    "--d_model=32",
    "--n_layers=1",
    "--n_heads=2",
    "--n_kv_heads=1",
    "--ffn_hidden=64",
    "--max_seq_len=192",
    "--rope_theta=5000",
    "--tie_embeddings",
]
LENGTHS = [48, 96, 192]  # no 128, and no --default_length anywhere: a user's lengths
GGUF_VARIANTS = ["Q8_0", "Q4_0"]  # pipeline/defs.bzl GGUF_VARIANTS


def _stage(name, mnemonic, tool, inputs=None, outputs=None, dirs=None, args=()) -> tuple:
    return name, mnemonic, tool, inputs or {}, outputs or {}, dirs or {}, list(args)


def _stages() -> list[tuple[str, str, str, dict, dict, dict, list[str]]]:
    """(stage, mnemonic, tool, inputs {flag: file or [files]}, outputs {flag: file}, output dirs
    {flag: dir}, args) of every action `e2e` depends on, in pipeline/BUILD.bazel's order. Files are
    names in one directory; an input that is a stage's directory output is named by the stage, as
    its label is."""
    checkpoint = {"weights": "student.safetensors", "metadata": "student.json"}
    lengths = "--lengths=" + ",".join(str(length) for length in LENGTHS)
    coreml = dict(checkpoint, contract="contract.json")
    gguf = dict(checkpoint, tokenizer="tokenizer.json")
    shards = [f"kd.shard-{i}-of-{SHARDS}.jsonl" for i in range(SHARDS)]
    stages = [_stage("tokenizer", "M8bTokenizer", "make_toy_kd", outputs={"tokenizer_out": "tokenizer.json"})]
    stages += [
        _stage(
            f"dataset_shard_{i}",
            "M8bDatasetShard",
            "make_toy_kd",
            outputs={"out": shards[i]},
            args=[*DATASET_ARGS, f"--shard={i}", f"--num_shards={SHARDS}"],
        )
        for i in range(SHARDS)
    ]
    stages += [
        _stage(
            "dataset",
            "M8bDataset",
            "merge_kd_shards",
            inputs={"tokenizer": "tokenizer.json", "shard": shards},
            outputs={"out": "kd.jsonl"},
        ),
        _stage(
            "checkpoint",
            "M8bTrain",
            "run_toy_distill",
            inputs={"in": "kd.jsonl", "tokenizer": "tokenizer.json"},
            outputs={
                "out_weights": "student.safetensors",
                "out_metadata": "student.json",
                "out_history": "loss_history.jsonl",
            },
            args=TRAIN_ARGS,
        ),
        _stage(
            "floors",
            "M8bFloors",
            "measure_floors",
            inputs=dict(checkpoint, tokenizer="tokenizer.json", dataset="kd.jsonl"),
            outputs={"out": "floors.json"},
            args=[lengths],
        ),
        _stage(
            "torchscript",
            "M8bTorchScript",
            "export_pytorch",
            inputs=dict(checkpoint, tokenizer="tokenizer.json", floors="floors.json"),
            outputs={
                "out_torchscript": "magic-8-ball.pt",
                "out_decoder": "magic-8-ball.decode.pt",
                "out_contract": "contract.json",
                "out_export": "magic-8-ball.pt2",
                "out_aoti_decoder": "magic-8-ball.decode.pt2",
            },
            args=[lengths],
        ),
        _stage(
            "coreml",
            "M8bCoreML",
            "convert_coreml",
            coreml,
            dirs={"out": "magic-8-ball.mlpackage"},
            args=["--precision=fp16"],
        ),
        _stage(
            "gguf",
            "M8bGGUF",
            "export_gguf",
            gguf,
            {"out": "magic-8-ball.gguf", "modelfile_out": "Modelfile"},
            args=["--dtype=f32"],
        ),
        _stage(
            "coreml_fp32",
            "M8bCoreML",
            "convert_coreml",
            coreml,
            dirs={"out": "magic-8-ball.fp32.mlpackage"},
            args=["--precision=fp32"],
        ),
    ]
    for variant in ("f16", *GGUF_VARIANTS):
        files = {"out": f"magic-8-ball.{variant}.gguf", "modelfile_out": f"Modelfile.{variant}"}
        stages.append(
            _stage(
                f"gguf_{variant.lower()}", "M8bGGUF", "export_gguf", gguf, files, args=[f"--dtype={variant}"]
            )
        )
    stages += [
        _stage(
            "coreml_int8",
            "M8bCoreMLInt8",
            "convert_coreml",
            coreml,
            dirs={"out": "magic-8-ball.int8.mlpackage"},
            args=["--compress=int8"],
        ),
        _stage(
            "coreml_int4",
            "M8bCoreMLInt4",
            "convert_coreml",
            coreml,
            dirs={"out": "magic-8-ball.int4.mlpackage"},
            args=["--compress=int4", "--target=iOS18"],
        ),
        _stage(
            "coreml_stateful",
            "M8bCoreMLStateful",
            "convert_coreml",
            coreml,
            dirs={"out": "magic-8-ball.stateful.mlpackage"},
            args=["--stateful"],
        ),
    ]
    verified = {
        "contract": "contract.json",
        "tokenizer": "tokenizer.json",
        "dataset": "kd.jsonl",
        "torchscript": "magic-8-ball.pt",
        "torchscript_decoder": "magic-8-ball.decode.pt",
        "torch_export": "magic-8-ball.pt2",
        "aoti_decoder": "magic-8-ball.decode.pt2",
        "mlpackage": "coreml",
        "gguf": "magic-8-ball.gguf",
        "mlpackage_fp32": "coreml_fp32",
        "gguf_f16": "magic-8-ball.f16.gguf",
        "gguf_q8_0": "magic-8-ball.Q8_0.gguf",
        "gguf_q4_0": "magic-8-ball.Q4_0.gguf",
        "mlpackage_int8": "coreml_int8",
        "mlpackage_int4": "coreml_int4",
        "mlpackage_stateful": "coreml_stateful",
    }
    page_inputs = {"report": "report.json", "contract": "contract.json", "history": "loss_history.jsonl"}
    stages += [
        _stage(
            "verify",
            "M8bVerify",
            "verify_contracts",
            dict(checkpoint, **verified),
            {"out_report": "report.json"},
            args=["--noexit_nonzero_on_failed_gates", "--sampled_min_canonical_rate=0"],
        ),
        _stage(
            "report_html",
            "M8bReportHtml",
            "render_report",
            dict(checkpoint, **page_inputs, tokenizer="tokenizer.json", dataset="kd.jsonl"),
            {"out_html": "report.html"},
        ),
    ]
    return stages


def _runfiles_root() -> str:
    srcdir, workspace = os.environ.get("TEST_SRCDIR"), os.environ.get("TEST_WORKSPACE")
    return os.path.join(srcdir, workspace) if srcdir and workspace else os.getcwd()


def _launcher(tool: str) -> str:
    path = os.path.join(_runfiles_root(), TOOLS[tool])
    if not os.path.exists(path):
        pytest.fail(f"{TOOLS[tool]} is not in the runfiles; add its target to the test's data")
    return path


def _run(tool: str, args: list[str], cwd: str) -> tuple[int, list[str]]:
    """Exit status and printed lines (stdout, then stderr) of one launcher in ACTION_ENV."""
    done = subprocess.run(
        [_launcher(tool), *args],
        cwd=cwd,
        env=ACTION_ENV,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT_S,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).splitlines()


def _e2e_artifacts() -> list[tuple[str, str]]:
    """(label, "stage=gate") of each artifact the real `e2e` prints, in its order."""
    text = os.environ.get("M8B_E2E_ARTIFACTS", "")
    if not text:
        pytest.fail(
            "set M8B_E2E_ARTIFACTS (label=stage=gate;...); pipeline/BUILD.bazel sets it from ARTIFACTS"
        )
    return [tuple(item.split("=", 1)) for item in text.split(";") if item]


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    """{stage or "e2e": (lines, seconds)} of a cold run of the small chain; fails at a failed stage."""
    work = str(tmp_path_factory.mktemp("chain"))
    printed = {}
    paths = {}  # label -> path: each output file by its name, each directory output by its stage

    def path(name: str) -> str:
        return paths.get(":" + name, os.path.join(work, name))

    for stage, mnemonic, tool, inputs, outputs, dirs, args in _stages():
        flags = []
        for flag, names in {**inputs, **outputs, **dirs}.items():
            flags += [f"--{flag}={path(name)}" for name in ([names] if isinstance(names, str) else names)]
        began = time.monotonic()
        status, lines = _run(tool, [*flags, *args], work)
        printed[stage] = (lines, time.monotonic() - began)
        assert status == 0, f"{mnemonic} //pipeline:{stage} exited {status}:\n" + "\n".join(lines[-30:])
        paths.update({":" + name: os.path.join(work, name) for name in outputs.values()})
        for name in dirs.values():
            paths[":" + stage] = os.path.join(work, name)
    artifacts = []
    for label, spec in _e2e_artifacts():
        assert label in paths, f"e2e prints {label}, which this test's chain does not build: add its stage"
        artifacts.append(f"--artifact={spec}={paths[label]}")
    began = time.monotonic()
    args = [f"--report={paths[':report.json']}", f"--out_dir={os.path.join(work, 'dist')}", *artifacts]
    status, lines = _run("e2e", args, work)
    printed["e2e"] = (lines, time.monotonic() - began)
    assert status == 0, f"e2e exited {status}:\n" + "\n".join(lines)
    for name, (lines, seconds) in printed.items():
        print(f"--- {name}: {len(lines)} lines, {seconds:.1f} s")
        for line in lines:
            print("  | " + line)
    return printed


def _total(printed: dict) -> int:
    stages = sum(len(lines) + 1 for name, (lines, _) in printed.items() if name != "e2e" and lines)
    return stages + len(printed["e2e"][0])


def test_a_cold_e2e_prints_fewer_lines_than_the_budget(cold_run):
    total = _total(cold_run)
    print(f"a cold `bazel run //pipeline:e2e` would print {total} lines after Bazel's own")
    assert total < LINE_BUDGET, f"{total} lines; the budget is {LINE_BUDGET} (run with -s to see them)"


def test_a_stage_that_succeeds_prints_a_line_at_most(cold_run):
    loud = {name: lines for name, (lines, _) in cold_run.items() if name != "e2e" and len(lines) > 1}
    assert not loud, "stages printing more than one line:\n" + "\n".join(
        f"{name}: {len(lines)} lines, first: {lines[0]}" for name, lines in loud.items()
    )


def test_e2e_prints_the_verdict_table_and_a_passing_verdict(cold_run):
    lines, _ = cold_run["e2e"]
    assert lines[0].split() == ["stage", "artifact", "size", "sha256", "gate"]
    assert len(lines) - 1 >= len(_e2e_artifacts())  # a row per artifact, then the verdict
    assert any(line.startswith("gates_ok: true") for line in lines), "\n".join(lines)
