"""Holds a student distilled from a GGUF teacher to that teacher: verify/behaviour/teacher_agreement.py.

    check_teacher_agreement --weights=student.safetensors --metadata=student.json \\
        --tokenizer=tokenizer.json --dataset=kd.jsonl --teacher_gguf=teacher.gguf \\
        --out=teacher_agreement.json

The dataset is the one the student was trained on, captured from this very GGUF (its version-2
header names the teacher's sha256); its held-out prompts and the teacher's replies to them are the
inputs. Writes the result (metrics, the kind-only baseline, the bound and its factor, pass/fail) as
JSON with sorted keys, exits 1 when the gate failed (0 with --noexit_nonzero_on_failed_gate, as a
pipeline stage runs it, so the result is built and `<chain>_teacher_agreement_test` fails on it).
Bad input exits 2 before torch or llama.cpp is loaded, and nothing is written.
"""

import json
import time

from absl import flags, logging

from common import atomic, cli, quiet
from common.errors import InputError
from data import dataset as dataset_lib
from data import tokenizer as tokenizer_lib
from training import checkpoint
from verify.gguf_files import gguf_check

flags.DEFINE_string("weights", None, "Student checkpoint weights (required).")
flags.DEFINE_string("metadata", None, "Student checkpoint metadata JSON (required).")
flags.DEFINE_string("tokenizer", None, "Tokenizer JSON the student was trained with (required).")
flags.DEFINE_string(
    "dataset", None, "The KD dataset the student was trained on, captured from --teacher_gguf (required)."
)
flags.DEFINE_string("teacher_gguf", None, "The teacher's GGUF file the dataset was captured from (required).")
flags.DEFINE_string("out", None, "Output: the result JSON (required).")
flags.DEFINE_bool(
    "exit_nonzero_on_failed_gate", True, "Exit 1 when the gate failed (after writing the result)."
)

FLAGS = flags.FLAGS


def check_inputs(tokenizer, metadata: dict, dataset, teacher_facts: dict) -> None:
    """InputError unless the student, its dataset and the teacher belong together (no torch needed)."""
    if metadata["dataset_sha256"] != checkpoint.sha256_file(FLAGS.dataset):
        raise InputError(
            f"--dataset: {FLAGS.dataset} is not the dataset {FLAGS.metadata} was trained on (its "
            "dataset_sha256 differs); pass the checkpoint's own dataset"
        )
    dataset_lib.check_tokenizer(FLAGS.dataset, dataset.header, tokenizer.digest, FLAGS.tokenizer)
    teacher = dataset.header["teacher"]  # a name in version 1, an object in version 2
    if not isinstance(teacher, dict) or teacher["kind"] != "gguf":
        described = teacher["kind"] if isinstance(teacher, dict) else teacher
        raise InputError(
            f"--dataset: {FLAGS.dataset} was not captured from a GGUF teacher (its teacher is "
            f"{described!r}); the agreement gate compares a student with the GGUF it was distilled from"
        )
    digest = checkpoint.sha256_file(FLAGS.teacher_gguf)
    if teacher["sha256"] != digest:
        raise InputError(
            f"--teacher_gguf: {FLAGS.teacher_gguf} has sha256 {digest}, but {FLAGS.dataset} was captured "
            f"from {teacher['sha256']}; pass the GGUF the dataset was captured from"
        )
    if teacher_facts["vocab_size"] != tokenizer.vocab_size or teacher_facts["tokenizer_sha256"] not in (
        None,
        tokenizer.digest,
    ):
        raise InputError(
            f"--teacher_gguf: {FLAGS.teacher_gguf} has a vocabulary of {teacher_facts['vocab_size']} tokens "
            f"(tokenizer {teacher_facts['tokenizer_sha256']}), the student {tokenizer.vocab_size} "
            f"({tokenizer.digest}); the gate compares distributions over one shared vocabulary, so it "
            "cannot hold a student to a teacher of another tokenizer"
        )


def main(argv: list[str]) -> None:
    del argv
    quiet.own_logs()  # a stage prints nothing on success (common/quiet.py); e2e prints the verdict
    for name in ("weights", "metadata", "tokenizer", "dataset", "teacher_gguf", "out"):
        cli.require_flag(FLAGS[name].value, name)
    cli.check_output_path(FLAGS.out, "out")
    started = time.monotonic()
    tokenizer = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
    metadata = checkpoint.load_metadata(FLAGS.metadata)
    checkpoint.require_tokenizer(metadata, FLAGS.metadata, tokenizer.digest, FLAGS.tokenizer)
    _, cfg = checkpoint.check(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    dataset = dataset_lib.read_dataset(FLAGS.dataset)
    teacher_facts = gguf_check.read_gguf(FLAGS.teacher_gguf)
    check_inputs(tokenizer, metadata, dataset, teacher_facts)
    heldout = sorted(dataset.split("heldout"), key=lambda r: r.id)
    if not heldout:
        raise InputError(f"--dataset: {FLAGS.dataset} has no held-out records to compare on")
    context = min(cfg.max_seq_len, teacher_facts["context_length"])
    for record in heldout:
        length = 1 + len(record.prompt_ids) + len(record.completion_ids) - 1
        if length > context:
            raise InputError(
                f"--dataset: {FLAGS.dataset}: record {record.id}: prompt and reply are {length} tokens, "
                f"more than the {context} the student and the teacher both hold"
            )

    import torch  # only after every check: bad input fails fast

    from verify.behaviour import teacher_agreement

    torch.set_num_threads(1)  # as verification computes: the same numbers on a busy machine
    replies = teacher_agreement.heldout_replies(heldout, tokenizer.bos_id)
    llama = gguf_check.load_llama(FLAGS.teacher_gguf, f32_kv_cache=True, n_threads=1)
    mismatched = gguf_check.tokenize_mismatches(llama, tokenizer, [r.prompt for r in heldout[:50]])
    if mismatched:
        text, theirs, ours = mismatched[0]
        raise InputError(
            f"--teacher_gguf: {FLAGS.teacher_gguf} tokenizes {text!r} as {theirs}, the student's "
            f"tokenizer as {ours}; the gate compares distributions over one shared vocabulary"
        )
    loaded = time.monotonic()
    teacher = teacher_agreement.teacher_logprobs(llama, replies)
    teacher_done = time.monotonic()
    model, _ = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    student = teacher_agreement.student_logprobs(model, replies)
    student_done = time.monotonic()
    result = teacher_agreement.agreement(teacher, student, replies)
    result["inputs"] = {
        "dataset_sha256": metadata["dataset_sha256"],
        "student_weights_sha256": metadata["weights_sha256"],
        "teacher": dict(dataset.header["teacher"]),
        "teacher_kv_cache": "f32",
        "sampling": dict(dataset.header["sampling"]),
    }
    atomic.write_bytes(FLAGS.out, (json.dumps(result, indent=2, sort_keys=True) + "\n").encode())
    logging.info(
        "%s\nteacher (llama.cpp) %.2f s, student (eager) %.2f s, %.2f s in all -> %s",
        teacher_agreement.format_result(result),
        teacher_done - loaded,
        student_done - teacher_done,
        time.monotonic() - started,
        FLAGS.out,
    )
    if not result["ok"] and FLAGS.exit_nonzero_on_failed_gate:
        for line in teacher_agreement.failures(result):
            print(f"FAILED: {line}")
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)
