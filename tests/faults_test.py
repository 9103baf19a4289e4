"""Faults: a training job killed with SIGKILL, and a disk that fills up during a write.

Either way an output path holds a complete file or nothing. Killed runs may leave hidden temporary
files (`.<name>.<random>.tmp`, what common/atomic.py writes before its rename) but never a partial
file at an output path, and a rerun writes exactly what an uninterrupted run writes.
"""

import os
import random
import signal
import subprocess
import time

import pytest

from tests import harness, mounts

A = harness.artifact

TRAIN_FLAGS = {"steps": 30, "batch_size": 8, "warmup": 5, "heldout_every": 10, "threads": 1, "seed": 3}
OUTPUTS = ("out_weights", "out_metadata", "out_history")


def _train_flags(data: dict, out: str) -> dict:
    names = {
        "out_weights": "student.safetensors",
        "out_metadata": "student.json",
        "out_history": "history.csv",
    }
    return {**data, **TRAIN_FLAGS, **{flag: os.path.join(out, name) for flag, name in names.items()}}


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> dict:
    """A small dataset from make_toy_kd itself (a second or two)."""
    root = str(tmp_path_factory.mktemp("toy"))
    flags = {"out": os.path.join(root, "kd.jsonl"), "tokenizer_out": os.path.join(root, "tok.json"), "n": 80}
    result = harness.run("make_toy_kd", flags, count=False)
    assert result.returncode == 0, result.stderr
    return {"in": flags["out"], "tokenizer": flags["tokenizer_out"]}


def _temp_of(name: str):
    """Event: common/atomic.py's temporary file for output `name` exists (the write is under way)."""
    return lambda names: any(n.startswith(f".{name}.") and n.endswith(".tmp") for n in names)


# Where each run is killed: two seeded random points in the run, then three moments inside the
# writes themselves, which a random point almost never hits (they last milliseconds).
KILLS = [
    ("random", None),
    ("random", None),
    ("while writing the history", _temp_of("history.csv")),
    ("while writing the weights", _temp_of("student.safetensors")),
    ("between weights and metadata", lambda names: "student.safetensors" in names),
]


def test_sigkill_during_training_never_leaves_a_partial_checkpoint(toy_data, tmp_path):
    reference_dir = harness.fresh_dir(str(tmp_path / "reference"))
    reference_flags = _train_flags(toy_data, reference_dir)
    started = time.monotonic()
    result = harness.run("run_toy_distill", reference_flags)
    duration = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    reference = {flag: _read(reference_flags[flag]) for flag in OUTPUTS}

    rng = random.Random(7)
    seen = []
    for index, (when, event) in enumerate(KILLS):
        point = rng.uniform(0.2, 0.95)
        if event is None:
            when = f"at {point:.2f} of the run"
        out = harness.fresh_dir(str(tmp_path / f"killed{index}"))
        flags = _train_flags(toy_data, out)
        harness.CASES_TRIED["run_toy_distill"] += 1
        process = subprocess.Popen(
            harness.command("run_toy_distill", flags),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=harness.binary_env(),
        )
        deadline = time.monotonic() + point * duration
        # Watch the output paths while it runs: whatever is there must be the complete file.
        while process.poll() is None:
            names = os.listdir(out)
            if event(names) if event else time.monotonic() >= deadline:
                process.send_signal(signal.SIGKILL)
                break
            _assert_complete_or_absent(flags, reference, f"while running (kill {when})")
            time.sleep(0.0005 if event else 0.005)
        landed = process.wait(timeout=60) == -signal.SIGKILL
        _assert_complete_or_absent(flags, reference, f"after SIGKILL {when}")
        left = harness.leftovers(out)
        stray = [p for p in left if os.path.basename(p) not in _basenames(flags)]
        assert all(os.path.basename(p).startswith(".") and p.endswith(".tmp") for p in stray), stray
        seen.append(
            f"{when}: {'killed' if landed else 'had finished'}, left {sorted(map(os.path.basename, left))}"
        )

        if left:  # a rerun over what the kill left writes what an uninterrupted run writes
            result = harness.run("run_toy_distill", flags)
            assert result.returncode == 0, result.stderr
            for flag in OUTPUTS:
                assert _read(flags[flag]) == reference[flag], (
                    f"--{flag}: the rerun after a kill {when} differs"
                )
    harness.NOTES.append(
        f"SIGKILL during a {duration:.1f} s training run (no partial output, reruns identical):"
    )
    harness.NOTES.extend("  " + line for line in seen)


def _basenames(flags: dict) -> set[str]:
    return {os.path.basename(flags[flag]) for flag in OUTPUTS}


def _assert_complete_or_absent(flags: dict, reference: dict, when: str) -> None:
    for flag in OUTPUTS:
        data = _read(flags[flag])
        assert data is None or data == reference[flag], f"--{flag}: a partial file at the output path {when}"


# ---- a full disk ---------------------------------------------------------------------------------


def _gguf_flags(out: str) -> dict:
    return {
        "weights": A("weights"),
        "metadata": A("metadata"),
        "tokenizer": A("tokenizer"),
        "out": os.path.join(out, "magic-8-ball.gguf"),
        "modelfile_out": os.path.join(out, "Modelfile"),
    }


def _pages(size: int) -> str:
    return str((size + 4095) // 4096 * 4096)


# binary -> (flags for an output directory, tmpfs size, the output path the message must name)
FULL_DISK = {
    # The GGUF (2.5 MB) cannot fit in 1 MiB.
    "export_gguf": (_gguf_flags, "1m", "out"),
    # The GGUF fits exactly, its Modelfile does not: the GGUF must go too (both or neither).
    "export_gguf_second_output": (_gguf_flags, "gguf_pages", "modelfile_out"),
    "export_pytorch": (
        lambda out: {
            "weights": A("weights"),
            "metadata": A("metadata"),
            "tokenizer": A("tokenizer"),
            "floors": A("floors"),
            "out_torchscript": os.path.join(out, "magic-8-ball.pt"),
            "out_decoder": os.path.join(out, "magic-8-ball.decode.pt"),
            "out_contract": os.path.join(out, "contract.json"),
        },
        "1m",
        "out_torchscript",
    ),
    "convert_coreml": (
        lambda out: {
            "weights": A("weights"),
            "metadata": A("metadata"),
            "contract": A("contract"),
            "out": os.path.join(out, "magic-8-ball.mlpackage"),
        },
        "512k",
        "out",
    ),
    "make_toy_kd": (
        lambda out: {
            "out": os.path.join(out, "kd.jsonl"),
            "tokenizer_out": os.path.join(out, "tok.json"),
            "n": 400,
        },
        "128k",
        "out",
    ),
}


@pytest.mark.parametrize("case", sorted(FULL_DISK))
def test_a_full_disk_is_reported_and_leaves_nothing(case, tmp_path):
    mounts.require()
    make_flags, size, named = FULL_DISK[case]
    binary = case.removesuffix("_second_output")
    if size == "gguf_pages":
        size = _pages(os.path.getsize(A("gguf")))
    out = str(tmp_path / "disk")
    flags = make_flags(out)
    harness.CASES_TRIED[binary] += 1
    result, left = mounts.run_on_tmpfs(harness.command(binary, flags), out, size=size)
    outcome = harness.Outcome(result.returncode, result.stderr, left)
    harness.assert_clean_failure(
        outcome, [flags[named], "no space left on device"], f"{case} on a {size} disk"
    )
