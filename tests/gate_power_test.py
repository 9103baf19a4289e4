"""//tests:gate_power: every realistic fault turns gates_ok false, and the shipped artifacts pass.

Prints the fault table (fault x artifact -> the checks that caught it); each shard runs and prints
its share of the cases. No false alarms: the untouched artifacts of three student seeds pass every
gate (//pipeline:gates_test for the shipped seed 0, //pipeline:seed1_gates_test and
//pipeline:seed2_gates_test for seeds 1 and 2).
"""

import os

import pytest

from tests import gate_faults, gate_power
from verify import verification

ARTIFACTS = {
    "contract": "contract.json",
    "weights": "student.safetensors",
    "metadata": "student.json",
    "tokenizer": "tokenizer.json",
    "dataset": "kd.jsonl",
    "torchscript": "magic-8-ball.pt",
    "mlpackage": "magic-8-ball.mlpackage",
    "gguf": "magic-8-ball.gguf",
}
SHARD = int(os.environ.get("TEST_SHARD_INDEX", "0")), int(os.environ.get("TEST_TOTAL_SHARDS", "1"))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    if os.environ.get("TEST_SHARD_STATUS_FILE"):
        open(os.environ["TEST_SHARD_STATUS_FILE"], "w").close()  # this test shards itself
    root = os.path.join(os.environ.get("TEST_SRCDIR", ""), os.environ.get("TEST_WORKSPACE", ""), "pipeline")
    paths = verification.Paths(**{key: os.path.join(root, name) for key, name in ARTIFACTS.items()})
    return gate_power.shipped(paths, str(tmp_path_factory.mktemp("faults")))


def test_every_fault_is_caught(shipped):
    cases = [(f.name, a) for f in gate_faults.FAULTS for a in f.inject]
    mine = {case for i, case in enumerate(cases) if i % SHARD[1] == SHARD[0]}
    faults = [
        gate_faults.Fault(f.name, f.what, {a: inj for a, inj in f.inject.items() if (f.name, a) in mine})
        for f in gate_faults.FAULTS
    ]
    rows = gate_power.run_faults(shipped, [f for f in faults if f.inject])
    print("\n" + gate_power.table(rows))
    missed = [f"{row.fault} x {row.artifact}" for row in rows if row.gates_ok]
    assert not missed, f"faults that left gates_ok true: {missed}"
