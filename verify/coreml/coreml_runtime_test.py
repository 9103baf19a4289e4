"""macOS only: the real Core ML runtime runs the shipped package at every enumerated length.

MLModel.predict exists only on macOS, so Bazel constrains this test to @platforms//os:macos and
reports it SKIPPED elsewhere; on Linux, verification runs the same package through the NumPy MIL
executor (verify/coreml/mil_executor.py). This test takes the pipeline's own artifacts (the shipped
magic-8-ball.mlpackage, its int8 and int4 variants, their checkpoint and contract) and compares
the runtime's logits with fp32 eager PyTorch on exactly the rows verification uses
(verify/inputs.py), with the same metrics (verify/parity.py) against each package's bounds in the
contract (floor x factor, conversion/gates.py); the variants' floors are the fp16 model computing
with their weights.

Those floors come from a float16 emulation with float32 matmul accumulation. On the CPU that is
how Core ML computes an fp16 program; the GPU and Neural Engine may accumulate in float16, so with
compute units "all" the error can be larger. This test has not run on a Mac yet: if "all" exceeds
the bounds there, the device needs a floor of its own (measured, then recorded in the contract),
not a wider constant.

The stateful package decodes through make_state() and predict(..., state=...) with the same steps
the executor takes on Linux (verify/coreml/coreml_stateful_steps.py), against eager at every step.
"""

import os

import coremltools as ct
import numpy as np
import pytest

from verify import inputs as inputs_lib
from verify import parity, verification
from verify.coreml import coreml_stateful_steps, mil_executor

COMPUTE_UNITS = {"all": ct.ComputeUnit.ALL, "cpu_only": ct.ComputeUnit.CPU_ONLY}
# The fp16 package and the compressed variants (verify/verification.py backend names).
PACKAGES = ("coreml", "coreml_int8", "coreml_int4")


@pytest.fixture(scope="module")
def shipped():
    root = os.path.join(os.environ["TEST_SRCDIR"], os.environ["TEST_WORKSPACE"], "pipeline")
    paths = verification.pipeline_paths(root)  # every artifact: the contract names them all
    inputs = verification.check_inputs(paths)
    model = verification.load_model(inputs)
    contract = inputs.contract
    rows = inputs_lib.numeric_rows(
        contract.lengths, contract.vocab_size, inputs.tokenizer, inputs.heldout, inputs.settings
    )
    return inputs, model, rows


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("units", sorted(COMPUTE_UNITS))
def test_predict_meets_the_contract_at_every_enumerated_length(shipped, units, package):
    from conversion import gates as gates_lib
    from verify.floors import floors

    inputs, model, rows = shipped
    mlmodel = ct.models.MLModel(inputs.paths.artifact(package), compute_units=COMPUTE_UNITS[units])
    eager = floors.torch_forward(model)
    bounds = gates_lib.bounds_for(inputs.contract.gates, package)
    for length in inputs.contract.lengths:
        refs = np.concatenate([eager(row) for row in rows[length]], axis=1)
        got = np.concatenate([mlmodel.predict({"input_ids": row})["logits"] for row in rows[length]], axis=1)
        assert got.shape == refs.shape, f"T{length}: output shape {got.shape}"
        measured = parity.compare_logits(refs, got).gated()
        over = {m: (v, bounds[f"T{length}"][m]) for m, v in measured.items() if v > bounds[f"T{length}"][m]}
        assert not over, f"{package} {units} T{length}: metric (value, bound) over its bounds: {over}"


@pytest.mark.parametrize("package", PACKAGES)
def test_runtime_agrees_with_the_numpy_executor(shipped, package):
    # The executor is Linux's stand-in for this runtime: check the stand-in where both exist. Both
    # compute the same fp16 program; they may differ by rounding order, so the bound is the
    # contract's fp16 max-abs bound against eager.
    from conversion import gates as gates_lib

    inputs, _, rows = shipped
    path = inputs.paths.artifact(package)
    mlmodel = ct.models.MLModel(path, compute_units=ct.ComputeUnit.CPU_ONLY)
    program = mil_executor.load_mlpackage(path)
    bounds = gates_lib.bounds_for(inputs.contract.gates, package)
    for length in inputs.contract.lengths:
        for row in rows[length]:
            runtime = mlmodel.predict({"input_ids": row})["logits"].astype(np.float32)
            reference = mil_executor.run(program, row)
            diff = float(np.abs(runtime - reference).max())
            assert diff <= bounds[f"T{length}"]["max_abs_diff"], f"{package} T{length}: {diff}"


class RuntimeSteps(coreml_stateful_steps.StatefulSteps):
    """The executor's decode steps through the Core ML runtime: make_state() for each sequence and
    predict(..., state=...) for each call (the program gives the step lengths and cache length)."""

    def __init__(self, mlmodel, program, pad_id: int):
        super().__init__(program, pad_id)
        self.mlmodel = mlmodel

    def new_state(self):
        return self.mlmodel.make_state()

    def predict(self, feeds):
        return self.mlmodel.predict(feeds, state=self.state)["logits"]


@pytest.mark.parametrize("units", sorted(COMPUTE_UNITS))
def test_stateful_package_decodes_like_eager_at_every_step(shipped, units):
    """The multi-step decode parity verification runs through the executor (verify/decode_parity.py),
    here through the runtime: every held-out question of the replay answered greedily (eager's
    tokens, every step's logits against eager's cached decoding) and the longest rows fed one token
    per call from position 0, against the package's "decode" bounds in the contract."""
    from conversion import gates as gates_lib
    from verify import decode_parity

    inputs, model, rows = shipped
    name = "coreml_stateful"
    path = inputs.paths.artifact(name)
    program = mil_executor.load_mlpackage(path)
    mlmodel = ct.models.MLModel(path, compute_units=COMPUTE_UNITS[units])
    prompts = inputs_lib.replay_prompts(inputs.tokenizer, inputs.heldout, inputs.settings)
    replies = inputs_lib.replay_continuations(model, inputs.tokenizer, prompts, inputs.settings)
    seqs, eager_tokens = decode_parity.sequences(prompts, replies, rows[max(inputs.contract.lengths)])
    result = decode_parity.check(
        lambda: RuntimeSteps(mlmodel, program, inputs.tokenizer.pad_id),
        decode_parity.forced_logits(model, seqs),
        seqs,
        eager_tokens,
        inputs.tokenizer.eos_id,
        gates_lib.near_tie_margin(inputs.contract.gates, name),  # a parting at a near tie is counted apart
    )
    assert not result.errors, f"{units}: {result.errors[:3]}"
    assert not result.token_mismatches, f"{units}: {result.token_mismatches[:3]}"
    bounds = gates_lib.bounds_for(inputs.contract.gates, name)[gates_lib.DECODE]
    measured = result.comparison.gated()
    over = {m: (v, bounds[m]) for m, v in measured.items() if v > bounds[m]}
    assert not over, f"{units}: metric (value, bound) over the decode bounds: {over}"
