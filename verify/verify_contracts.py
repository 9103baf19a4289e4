"""Verifies every exported artifact against the contract and fp32 eager PyTorch; writes the report.

    verify_contracts --contract=contract.json --weights=student.safetensors --metadata=student.json \\
        --tokenizer=tokenizer.json --dataset=kd.jsonl --torchscript=model.pt \\
        --mlpackage=student.mlpackage [--gguf=student.gguf] --out_report=report.json

For each artifact and each contract length: the output shape and dtype the contract gives, the
largest logit difference from eager and the top-1 agreement, against the contract's bounds. Core ML
also gets its interface checked from the spec (enumerated lengths, output length not frozen, a
length between two contract lengths reported unsupported) and is run through the NumPy MIL
executor. Then behaviour: eager's greedy replies to held-out questions, replayed through each
artifact once per question (verify/parity.py), and `ask`'s sampled replies (its default sampler,
five seeds per question) through TorchScript and GGUF, which must be canonical
(verify/sampled_behaviour.py).

Exit status: 0 when every gate passes, 1 when any gate fails (the report is still written and
says which), 2 for bad input (missing or unreadable files, digests that tie the inputs together
do not match). Timings go to the log, never to the report, which is byte-deterministic.
"""

import os

# Before NumPy loads OpenBLAS: one BLAS thread. The Core ML executor's matmuls are small, and on a
# busy 2-core machine OpenBLAS's spinning threads made each forward 5-20x slower (0.13-0.5 s
# instead of 0.03 s at T64). An explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import dataclasses
import sys
import time
from collections.abc import Callable

import numpy as np
from absl import flags, logging

from common import cli
from common.errors import InputError
from conversion import contract as contract_lib
from conversion import torchscript_archive
from data import dataset as dataset_lib
from data import tokenizer as tokenizer_lib
from training import checkpoint, sampling
from verify import mlpackage_manifest, parity, sampled_behaviour
from verify import report as report_lib

# torch, coremltools (behind mil_executor and coreml_spec) and llama.cpp are imported where they
# are used, after _check_inputs(): a bad flag or file then fails in well under a second, not after
# ten seconds of imports.

flags.DEFINE_string("contract", None, "contract.json written by the export step (required).")
flags.DEFINE_string(
    "weights", None, "The student checkpoint weights the contract was exported from (required)."
)
flags.DEFINE_string("metadata", None, "The student checkpoint metadata JSON (required).")
flags.DEFINE_string("tokenizer", None, "Tokenizer JSON; its sha256 must be the contract's tokenizer_sha256.")
flags.DEFINE_string("dataset", None, "KD dataset JSONL; its held-out questions drive the behaviour checks.")
flags.DEFINE_string("torchscript", None, "TorchScript archive from the export step (required).")
flags.DEFINE_string("mlpackage", None, "Core ML .mlpackage directory (required).")
flags.DEFINE_string("gguf", None, "GGUF file (optional): checked through llama.cpp when given.")
flags.DEFINE_string("out_report", None, "Output report JSON (required).")
flags.DEFINE_integer("behaviour_questions", 200, "Held-out questions replayed through every artifact (>= 1).")
flags.DEFINE_integer("text_sequences", 40, "Held-out sequences that fill the real-text row at each length.")
flags.DEFINE_integer("seed", 0, "Seed for the random-ids row at each length.")
flags.DEFINE_bool(
    "exit_nonzero_on_failed_gates",
    True,
    "Exit 1 when a gate fails. The pipeline turns this off so the report of a failed run is still "
    "built and cached; //pipeline:gates_test then fails on it.",
)
flags.DEFINE_integer("max_new_tokens", 32, "Longest eager greedy reply in the behaviour checks.")
flags.DEFINE_float(
    "sampled_min_canonical_rate",
    sampled_behaviour.MIN_CANONICAL_RATE,
    "Share of `ask`'s sampled replies (TorchScript, GGUF) that must be canonical, in [0, 1]. The "
    "tests lower it for untrained students, whose replies are not Magic 8 Ball answers.",
)

FLAGS = flags.FLAGS

TORCHSCRIPT, COREML, GGUF = "torchscript", "coreml", "gguf"


@dataclasses.dataclass(frozen=True)
class Backend:
    """An artifact as a logits function, the contract's bounds for it, and its own extra checks."""

    name: str
    path: str
    forward: Callable[[np.ndarray], np.ndarray]
    max_abs_key: str
    top1_key: str | None  # None: top-1 agreement is reported, not gated (max abs already pins it)
    interface_check: Callable | None = None  # (report, contract) -> None


def _first_line(error: BaseException) -> str:
    """The error's last line (TorchScript puts the real error last), without directories: the report
    must not depend on where the files are."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[-1] if lines else ''}"
    for path in (FLAGS.torchscript, FLAGS.mlpackage, FLAGS.gguf):
        if path:
            text = text.replace(path, os.path.basename(path.rstrip("/")))
    return text[:300]


def _require_digest(flag: str, path: str, expected: str, what: str) -> None:
    actual = checkpoint.sha256_file(path)
    if actual != expected:
        raise InputError(
            f"--{flag}: {path} has sha256 {actual}, but {what} is {expected}; "
            "pass the files that belong together (from the same pipeline run)"
        )


def _check_inputs():
    """Reads and cross-checks every input without torch or coremltools; InputError on any problem."""
    contract = contract_lib.load_contract(FLAGS.contract)
    tokenizer = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
    if tokenizer.digest != contract.tokenizer_sha256:
        raise InputError(
            f"--tokenizer: {FLAGS.tokenizer} has sha256 {tokenizer.digest}, but {FLAGS.contract} "
            f"tokenizer_sha256 is {contract.tokenizer_sha256}"
        )
    if "weights" in contract.artifacts:
        _require_digest(
            "weights", FLAGS.weights, contract.artifacts["weights"], f"{FLAGS.contract} artifacts.weights"
        )
    _, cfg = checkpoint.check(FLAGS.weights, FLAGS.metadata, expected_vocab_size=contract.vocab_size)
    if max(contract.lengths) > cfg.max_seq_len:
        raise InputError(
            f"{FLAGS.contract}: lengths: {max(contract.lengths)} is above the model's max_seq_len "
            f"{cfg.max_seq_len}"
        )
    dataset = dataset_lib.read_dataset(FLAGS.dataset)
    if dataset.header.get("tokenizer_sha256") != contract.tokenizer_sha256:
        raise InputError(
            f"--dataset: {FLAGS.dataset} header tokenizer_sha256 is "
            f"{dataset.header.get('tokenizer_sha256')}, but {FLAGS.contract} says {contract.tokenizer_sha256}"
        )
    heldout = sorted(dataset.split("heldout"), key=lambda r: r.id)
    if not heldout:
        raise InputError(f"--dataset: {FLAGS.dataset} has no held-out records to check behaviour on")
    strings = sorted({text for r in dataset.records for text in (r.prompt, r.completion)})
    torchscript_archive.check_file(FLAGS.torchscript)
    mlpackage_manifest.root_model_path(FLAGS.mlpackage)  # the package's layout; its spec comes later
    if FLAGS.gguf:
        _gguf_checker().read_gguf(FLAGS.gguf)  # the header and tensor table; llama.cpp loads it later
    return contract, tokenizer, heldout, strings


def _check_outputs(report, backend: Backend, contract, rows_by_length, refs_by_length) -> None:
    """Shape, dtype, max abs diff and top-1 agreement at every contract length."""
    tolerances = contract.tolerances
    for length in contract.lengths:
        where = report_lib.scope(length)
        began = time.monotonic()
        try:
            outs = [np.asarray(backend.forward(row)) for row in rows_by_length[length]]
        except Exception as error:  # an artifact that cannot run at a contract length fails its gate
            report.fail(backend.name, where, "runs", _first_line(error))
            continue
        shapes = sorted({tuple(int(d) for d in out.shape) for out in outs})
        dtypes = sorted({str(out.dtype) for out in outs})
        expected_shape = list(contract.output_shape(length))
        report.check(backend.name, where, "output_shape", [list(s) for s in shapes], "==", [expected_shape])
        report.check(backend.name, where, "output_dtype", dtypes, "==", [contract.outputs[0].dtype])
        if shapes != [tuple(expected_shape)]:
            continue
        comparison = parity.compare_logits(
            np.concatenate(refs_by_length[length], axis=1),
            np.concatenate(outs, axis=1),
            tolerances["near_tie_margin"],
        )
        bound = tolerances[backend.max_abs_key]
        report.check(backend.name, where, "max_abs_diff", comparison.max_abs_diff, "<=", bound)
        if backend.top1_key:
            bound = tolerances[backend.top1_key]
            report.check(backend.name, where, "top1_agreement", comparison.top1_agreement, ">=", bound)
        else:
            report.note(backend.name, where, "top1_agreement", comparison.top1_agreement)
        report.note(backend.name, where, "top1_agreement_all_positions", comparison.top1_agreement_all)
        report.note(backend.name, where, "near_tie_positions", comparison.near_ties)
        logging.info(
            "%s T%d: max abs %.3g, top-1 %.4f (%.4f with %d near ties) (%.2f s)",
            backend.name,
            length,
            comparison.max_abs_diff,
            comparison.top1_agreement,
            comparison.top1_agreement_all,
            comparison.near_ties,
            time.monotonic() - began,
        )


def _check_behaviour(report, backend: Backend, eager, contract, prompts, continuations, pad_id) -> None:
    try:
        result = parity.behaviour_check(
            eager,
            backend.forward,
            prompts,
            continuations,
            contract.lengths,
            pad_id,
            contract.tolerances["near_tie_margin"],
        )
    except Exception as error:  # the artifact failed to run on a question
        report.fail(backend.name, report_lib.ALL, "behaviour", _first_line(error))
        return
    all_ = report_lib.ALL
    report.check(backend.name, all_, "behaviour_questions", result.questions, "==", len(prompts))
    report.check(backend.name, all_, "behaviour_mismatches", len(result.mismatches), "==", 0)
    report.note(backend.name, all_, "behaviour_positions", result.positions)
    report.note(backend.name, all_, "behaviour_agreement", result.agreement)
    report.note(backend.name, all_, "behaviour_near_tie_positions", result.near_tie_positions)
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


def _check_sampled(report, backend: Backend, tokenizer, prompts, proposals, max_length: int) -> None:
    """`ask`'s sampled replies (its default sampler, seeds SEEDS) through the backend: canonical rate."""
    settings = sampling.DEFAULT
    try:
        result = sampled_behaviour.check(
            backend.forward,
            prompts,
            sampled_behaviour.SEEDS,
            proposals,
            tokenizer,
            settings,
            FLAGS.max_new_tokens,
            max_length,
        )
    except Exception as error:  # the artifact failed to run on a question
        report.fail(backend.name, report_lib.ALL, "sampled_canonical_rate", _first_line(error))
        return
    all_ = report_lib.ALL
    bound = FLAGS.sampled_min_canonical_rate
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


def _unsupported_probe(lengths) -> int:
    """A length between the two shortest contract lengths (96 for 64, 128), else one past the longest."""
    ordered = sorted(lengths)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b - a > 1:
            return (a + b) // 2
    return ordered[-1] + 1


def _check_coreml_interface(report, contract, program) -> None:
    """The package's spec against the contract, and a length between two contract lengths refused."""
    from verify import coreml_spec, mil_executor

    for result in coreml_spec.check_spec(
        FLAGS.mlpackage,
        list(contract.lengths),
        input_name=contract.inputs[0].name,
        input_dtype=contract.inputs[0].dtype,
        output_name=contract.outputs[0].name,
        output_dtype=contract.outputs[0].dtype,
        default_length=contract.default_length,
    ):
        name = "spec_" + result.name
        report.check(COREML, report_lib.ALL, name, result.measured, "==", result.expected, ok=result.ok)
    probe = _unsupported_probe(contract.lengths)
    spec, _ = coreml_spec.read_spec(FLAGS.mlpackage)
    supported = coreml_spec.supports_length(spec, probe, contract.inputs[0].name)
    report.check(COREML, report_lib.scope(probe), "spec_supports_length", supported, "==", False)
    try:
        mil_executor.run(program, np.zeros((1, probe), dtype=np.int32))
        rejected = False
    except InputError:
        rejected = True
    report.check(COREML, report_lib.scope(probe), "executor_rejects_length", rejected, "==", True)


def _check_gguf_tokenizer(report, gguf_check, llama, tokenizer, strings) -> None:
    """llama.cpp must tokenize every dataset string (prompts and completions) exactly as we do."""
    mismatches = gguf_check.tokenize_mismatches(llama, tokenizer, strings)
    for text, theirs, ours in mismatches[:3]:
        logging.error("llama.cpp tokenizes %r as %s, ours as %s", text, theirs, ours)
    report.note(GGUF, report_lib.ALL, "tokenizer_strings", len(strings))
    report.check(GGUF, report_lib.ALL, "tokenizer_mismatches", len(mismatches), "==", 0)


def _gguf_checker():
    try:
        from verify import gguf_check  # optional: only when --gguf is given
    except ModuleNotFoundError as error:
        if error.name != "verify.gguf_check":
            raise
        raise InputError("--gguf: this build has no GGUF checker (verify/gguf_check.py)") from None
    return gguf_check


def _load_backends(contract, tokenizer, strings) -> list[Backend]:
    """Every artifact loaded up front, so a missing or unreadable one is bad input before any work."""
    from conversion import torchscript
    from verify import mil_executor

    module = torchscript.load(FLAGS.torchscript)
    backends = [
        Backend(
            TORCHSCRIPT, FLAGS.torchscript, torchscript.numpy_forward(module), "torchscript_max_abs", None
        )
    ]

    program = mil_executor.load_mlpackage(FLAGS.mlpackage)
    input_name, output_name = contract.inputs[0].name, contract.outputs[0].name
    backends.append(
        Backend(
            COREML,
            FLAGS.mlpackage,
            lambda ids: mil_executor.run(program, ids, input_name, output_name),
            "coreml_fp16_max_abs",
            "coreml_top1_agreement_min",
            interface_check=lambda report, contract: _check_coreml_interface(report, contract, program),
        )
    )

    if FLAGS.gguf:
        gguf_check = _gguf_checker()
        model = gguf_check.load(FLAGS.gguf)
        backends.append(
            Backend(
                GGUF,
                FLAGS.gguf,
                lambda ids: gguf_check.logits(model, ids),
                "gguf_max_abs",
                "gguf_top1_agreement_min",
                interface_check=lambda report, contract: _check_gguf_tokenizer(
                    report, gguf_check, model, tokenizer, strings
                ),
            )
        )
    return backends


def main(argv: list[str]) -> None:
    del argv
    required = (
        "contract",
        "weights",
        "metadata",
        "tokenizer",
        "dataset",
        "torchscript",
        "mlpackage",
        "out_report",
    )
    for name in required:
        cli.require_flag(FLAGS[name].value, name)
    cli.check_output_path(FLAGS.out_report, "out_report")  # before minutes of checks, not after
    if FLAGS.behaviour_questions < 1:
        raise InputError(f"--behaviour_questions: {FLAGS.behaviour_questions}; must be at least 1")
    if not 0 <= FLAGS.sampled_min_canonical_rate <= 1:
        raise InputError(
            f"--sampled_min_canonical_rate: {FLAGS.sampled_min_canonical_rate}; must be in [0, 1]"
        )
    started = time.monotonic()
    contract, tokenizer, heldout, strings = _check_inputs()
    import torch  # only now: see the note at the imports

    from conversion import torchscript
    from training.generate import greedy_batch

    # One intra-op thread: numbers that do not depend on the thread count (a deterministic
    # report), and no OpenMP spinning against the other process on a busy 2-core machine.
    torch.set_num_threads(1)
    model, _ = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=contract.vocab_size)
    backends = _load_backends(contract, tokenizer, strings)

    report = report_lib.Report(contract.model_name, checkpoint.sha256_file(FLAGS.contract))
    report.add_artifact("weights", FLAGS.weights)
    report.add_artifact("tokenizer", FLAGS.tokenizer)
    for backend in backends:
        described = report.add_artifact(backend.name, backend.path)
        if backend.name in contract.artifacts:
            expected = contract.artifacts[backend.name]
            report.check(
                backend.name, report_lib.ALL, "sha256_matches_contract", described["sha256"], "==", expected
            )
    eager = torchscript.numpy_forward(model)

    # Numeric inputs per length: seeded random ids, then held-out prompts + teacher replies.
    sequences = [
        [tokenizer.bos_id, *r.prompt_ids, *r.completion_ids] for r in heldout[: FLAGS.text_sequences]
    ]
    rows = {
        length: parity.numeric_inputs(length, contract.vocab_size, FLAGS.seed, sequences, tokenizer.pad_id)
        for length in contract.lengths
    }
    refs = {length: [eager(row) for row in rows[length]] for length in contract.lengths}

    # Behaviour inputs: eager's own greedy replies (behaviour_check cuts them to the longest length).
    questions = heldout[: FLAGS.behaviour_questions]
    prompts = [[tokenizer.bos_id, *r.prompt_ids] for r in questions]
    began = time.monotonic()
    continuations = greedy_batch(
        model, prompts, eos_id=tokenizer.eos_id, max_new_tokens=FLAGS.max_new_tokens, batch_size=64
    )
    logging.info("eager greedy replies to %d questions in %.2f s", len(prompts), time.monotonic() - began)
    began = time.monotonic()
    proposals = sampled_behaviour.proposals_from_eager(
        model, prompts, sampled_behaviour.SEEDS, tokenizer.eos_id, FLAGS.max_new_tokens, sampling.DEFAULT
    )
    logging.info("eager sampled replies (proposals) in %.2f s", time.monotonic() - began)

    for backend in backends:
        began = time.monotonic()
        if backend.interface_check:
            backend.interface_check(report, contract)
        _check_outputs(report, backend, contract, rows, refs)
        _check_behaviour(report, backend, eager, contract, prompts, continuations, tokenizer.pad_id)
        if backend.name in (TORCHSCRIPT, GGUF):  # the backends `ask` has
            _check_sampled(report, backend, tokenizer, prompts, proposals, max(contract.lengths))
        logging.info("%s verified in %.2f s", backend.name, time.monotonic() - began)

    report.save(FLAGS.out_report)
    print(report.summary())
    logging.info("verification took %.2f s; report %s", time.monotonic() - started, FLAGS.out_report)
    if not report.gates_ok and FLAGS.exit_nonzero_on_failed_gates:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
