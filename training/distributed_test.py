"""Data-parallel training on CPU: 2 gloo ranks (1 thread each) against one process, via torchrun.

Runs the trainer as users do (torchrun, and the --nproc launcher) on a small generated dataset
for a few steps, and checks what training/parallel.py promises:
- one process and torchrun with 1 rank write byte-identical weights (the split changes nothing);
- 2 ranks, twice: byte-identical checkpoints and histories (determinism for a fixed world size);
- 1 rank against 2: weights within WEIGHT_TOLERANCE, held-out metrics within METRIC_TOLERANCE
  (only the order of the gradient sums differs);
- rank 0 alone writes: each rank runs in a directory of its own, and rank 1's stays empty;
- a SIGKILLed rank ends the job with exit status 1, a clear error and no output or temporary file;
- bad input (world size above the global batch, NCCL without GPUs) exits 2 before training, and
  --compile without a C++ compiler warns once and trains eagerly, to the same bytes.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

import pytest
import safetensors.torch

from common import child_python
from data import dataset
from data import generate as make_data

# The test prints the measured differences (`bazel test //training:distributed_test
# --test_output=all`); the bounds leave room above them, yet a wrong loss scaling (a per-rank mean
# of means) or a skipped all-reduce is orders of magnitude above them.
WEIGHT_TOLERANCE = 1e-4
METRIC_TOLERANCE = 1e-5
SHORT = ["--steps=6", "--batch_size=16", "--warmup=2", "--heldout_every=3", "--threads=1"]
NAMES = {"out_weights": "w.safetensors", "out_metadata": "meta.json", "out_history": "history.csv"}


def _env(**extra) -> dict:
    env = child_python.child_env(OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return dict(env, **extra)


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def _trainer() -> list[str]:
    return [sys.executable, "-m", "training.run_toy_distill"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    tokenizer, header, records = make_data.generate(n=100, seed=0, heldout_fraction=0.2, topk=8)
    dataset.write_dataset(str(root / "kd.jsonl"), header, records)
    tokenizer.save(str(root / "tokenizer.json"))
    return [f"--in={root / 'kd.jsonl'}", f"--tokenizer={root / 'tokenizer.json'}"]


def _outputs(directory) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    return [f"--{flag}={directory / name}" for flag, name in NAMES.items()]


def _run(command: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=_env(**env), timeout=600, check=False)


def _read(directory) -> dict:
    return {name: (directory / name).read_bytes() for name in NAMES.values()}


@pytest.fixture(scope="module")
def runs(toy, tmp_path_factory):
    """Checkpoints of: one process; torchrun 1 rank; --nproc=2; torchrun 2 ranks, one cwd each."""
    root = tmp_path_factory.mktemp("runs")
    results = {}
    commands = {
        "single": _trainer(),
        "torchrun1": _torchrun(1) + ["-m", "training.run_toy_distill"],
        "nproc2": _trainer() + ["--nproc=2"],
    }
    for name, command in commands.items():
        result = _run(command + toy + _outputs(root / name) + SHORT)
        assert result.returncode == 0, result.stderr[-3000:]
        results[name] = (root / name, result)
    # Every rank in a directory of its own, outputs given as relative paths: whatever rank 1 wrote
    # would land in rank1/.
    for rank in (0, 1):
        os.makedirs(root / f"rank{rank}")
    relative = [f"--{flag}={name}" for flag, name in NAMES.items()]
    script = f'cd "{root}/rank$RANK" && exec {shlex.join(_trainer() + toy + relative + SHORT)}'
    result = _run(_torchrun(2) + ["--no-python", "sh", "-c", script])
    assert result.returncode == 0, result.stderr[-3000:]
    results["torchrun2"] = (root / "rank0", result)
    results["rank1_dir"] = root / "rank1"
    return results


def test_one_rank_under_torchrun_writes_the_single_process_weights(runs):
    single, torchrun1 = _read(runs["single"][0]), _read(runs["torchrun1"][0])
    assert single["w.safetensors"] == torchrun1["w.safetensors"]
    assert single["history.csv"] == torchrun1["history.csv"]
    meta_single, meta_one = json.loads(single["meta.json"]), json.loads(torchrun1["meta.json"])
    assert "distributed" not in meta_single["training"]  # a default run's metadata is unchanged
    assert meta_one["training"]["distributed"] == {"world_size": 1, "backend": "gloo"}


def test_two_ranks_are_deterministic_and_rank_0_alone_writes(runs):
    launched, direct = _read(runs["nproc2"][0]), _read(runs["torchrun2"][0])
    assert launched == direct  # --nproc=2 and torchrun: the same job, the same bytes
    assert json.loads(direct["meta.json"])["training"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert os.listdir(runs["rank1_dir"]) == []
    assert sorted(os.listdir(runs["torchrun2"][0])) == sorted(NAMES.values())
    # One rank's progress lines: rank 1 logs warnings only.
    assert runs["nproc2"][1].stdout.count("parameters: 623,232") == 1


def test_world_sizes_1_and_2_agree_within_tolerance(runs):
    one, two = runs["single"][0], runs["nproc2"][0]
    w1 = safetensors.torch.load_file(str(one / "w.safetensors"))
    w2 = safetensors.torch.load_file(str(two / "w.safetensors"))
    assert sorted(w1) == sorted(w2)
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    moved = max(float((w1[k] - w2[k]).abs().max()) for k in w1 if k.endswith("weight"))
    assert worst < WEIGHT_TOLERANCE, worst
    assert moved > 0 or _read(one)["w.safetensors"] == _read(two)["w.safetensors"]
    m1, m2 = (json.loads((d / "meta.json").read_text()) for d in (one, two))
    diffs = {
        key: abs(m1[key] - m2[key])
        for key in ("heldout_loss", "heldout_kl", "heldout_ce", "final_train_loss")
    }
    print(
        f"world size 1 vs 2: max |weight difference| {worst:.3g} (bound {WEIGHT_TOLERANCE:g}); "
        f"metrics {diffs}"
    )
    for key in ("heldout_loss", "heldout_kl", "heldout_ce", "final_train_loss"):
        assert abs(m1[key] - m2[key]) <= METRIC_TOLERANCE * max(1.0, abs(m1[key])), key


def _pids_with(marker: str, rank: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                env = handle.read().split(b"\0")
        except OSError:
            continue
        if f"M8B_JOB={marker}".encode() in env and f"RANK={rank}".encode() in env:
            pids.append(int(entry))
    return pids


def test_a_killed_rank_ends_the_job_with_an_error_and_no_checkpoint(toy, tmp_path):
    marker = uuid.uuid4().hex
    # Enough steps that the job is still training when rank 1 dies.
    flags = ["--steps=5000", "--batch_size=16", "--heldout_every=0", "--threads=1", "--nproc=2"]
    job = subprocess.Popen(
        _trainer() + toy + _outputs(tmp_path / "out") + flags,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(M8B_JOB=marker),
    )
    try:
        deadline = time.monotonic() + 240
        victims = []
        while not victims and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.5)
            victims = _pids_with(marker, "1")
        assert victims, "rank 1 never started"
        time.sleep(3)  # into the training steps
        for pid in victims:  # the worker itself (no launcher between torchrun and it)
            os.kill(pid, signal.SIGKILL)
        _, stderr = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 1, stderr[-3000:]
    assert "Signal 9 (SIGKILL)" in stderr, stderr[-3000:]
    assert "error: the 2-rank training job failed" in stderr
    assert os.listdir(tmp_path / "out") == []  # no checkpoint, no temporary file
    assert not _pids_with(marker, "0")  # rank 0 did not outlive the job


def test_bad_input_exits_2_before_training(toy, tmp_path):
    outputs = _outputs(tmp_path)
    result = _run(_trainer() + toy + outputs + ["--nproc=4", "--batch_size=3"])
    assert result.returncode == 2
    assert (
        "error: --nproc: world size 4 is above the 3 records of a global batch (--batch_size=3)"
        in result.stderr
    )
    # 80 train records: a batch of 100 holds 80, so 81 ranks cannot each get one.
    result = _run(_trainer() + toy + outputs + ["--nproc=81", "--batch_size=100"])
    assert (
        result.returncode == 2
        and "above the 80 records of a global batch (80 train records)" in result.stderr
    )
    result = _run(_trainer() + toy + outputs + ["--nproc=2", "--backend=nccl"])
    assert result.returncode == 2 and "error: --backend=nccl: not available here" in result.stderr
    result = _run(_trainer() + toy + outputs + ["--backend=mpi"])
    assert result.returncode == 2 and "--backend" in result.stderr
    assert os.listdir(tmp_path) == []


def test_compile_without_a_compiler_warns_once_and_trains_eagerly(toy, runs, tmp_path):
    result = _run(_trainer() + toy + _outputs(tmp_path) + SHORT + ["--compile"], CXX="/nonexistent/c++")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("--compile: no C++ compiler") == 1
    assert _read(tmp_path) == _read(runs["single"][0])
