"""Exports a student checkpoint to TorchScript and writes the contract that travels with the artifacts.

    export_pytorch --weights=student.safetensors --metadata=student.json --tokenizer=tokenizer.json \\
        --out_torchscript=model.pt --out_contract=contract.json [--lengths=64,128,256]

The TorchScript model takes input_ids int32 [1, T] for every T in --lengths (one trace, dynamic
length, proven by torch.export and by running each length) and returns logits float32 [1, T, vocab].
Same inputs and flags -> byte-identical outputs. Bad input exits 2 with one line naming the problem,
and nothing is written.
"""

import hashlib
import io
import os
import time

from absl import flags, logging

from common import atomic, cli
from common.errors import InputError
from conversion import contract as contract_lib
from conversion import torchscript_archive
from data import tokenizer as tokenizer_lib
from training import checkpoint

flags.DEFINE_string("weights", None, "Student checkpoint weights (safetensors) (required).")
flags.DEFINE_string("metadata", None, "Student checkpoint metadata JSON (required).")
flags.DEFINE_string(
    "tokenizer", None, "Tokenizer JSON the student was trained with; its digest must match the checkpoint's."
)
flags.DEFINE_string(
    "lengths",
    ",".join(str(t) for t in contract_lib.DEFAULT_LENGTHS),
    "Comma-separated sequence lengths every artifact must accept (each at most the model's max_seq_len).",
)
flags.DEFINE_integer(
    "default_length", contract_lib.DEFAULT_LENGTH, "The length to trace at; one of --lengths."
)
flags.DEFINE_string("out_torchscript", None, "Output TorchScript archive, e.g. model.pt (required).")
flags.DEFINE_string("out_contract", None, "Output contract JSON, e.g. contract.json (required).")

FLAGS = flags.FLAGS


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--lengths: {text!r} is not a comma-separated list of integers") from None
    if not lengths:
        raise InputError("--lengths: empty; give e.g. 64,128,256")
    return lengths


def main(argv: list[str]) -> None:
    del argv
    for name in ("weights", "metadata", "tokenizer", "out_torchscript", "out_contract"):
        cli.require_flag(FLAGS[name].value, name)
    start = time.monotonic()
    cli.check_distinct_outputs({"out_torchscript": FLAGS.out_torchscript, "out_contract": FLAGS.out_contract})
    cli.check_output_path(FLAGS.out_torchscript, "out_torchscript")
    cli.check_output_path(FLAGS.out_contract, "out_contract")
    lengths = parse_lengths(FLAGS.lengths)
    tokenizer = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
    metadata = checkpoint.load_metadata(FLAGS.metadata)
    checkpoint.require_tokenizer(metadata, FLAGS.metadata, tokenizer.digest, FLAGS.tokenizer)
    _, cfg = checkpoint.check(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    try:
        lengths = contract_lib.check_lengths(lengths, FLAGS.default_length, cfg.max_seq_len)
    except InputError as error:
        raise InputError(f"--lengths/--default_length: {error}") from None

    # torch only now, after every check of flags and files: bad input fails in well under a second
    # instead of after torch's seconds-long import.
    import torch

    from conversion import torchscript

    # One intra-op thread: this tiny model gains nothing from more, the numbers then never depend
    # on the thread count, and on a busy 2-core machine OpenMP's spinning threads made each forward
    # ~50x slower.
    torch.set_num_threads(1)
    model, _ = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    module = torchscript.export(model, lengths, cfg.max_seq_len, FLAGS.default_length)
    data = torchscript.to_bytes(module)
    # The loaders refuse any archive that strays from what export writes: hold our own to that first.
    torchscript_archive.check_archive(io.BytesIO(data))
    contract = contract_lib.make_contract(
        vocab_size=model.cfg.vocab_size,
        tokenizer_sha256=tokenizer.digest,
        lengths=lengths,
        default_length=FLAGS.default_length,
    )
    contract = contract.with_artifact("weights", checkpoint.sha256_file(FLAGS.weights))
    contract = contract.with_artifact("torchscript", hashlib.sha256(data).hexdigest())
    # Both outputs or neither: each write is atomic, and a failed contract write takes the
    # TorchScript file back out.
    atomic.write_bytes(FLAGS.out_torchscript, data)
    try:
        contract.save(FLAGS.out_contract)
    except BaseException:
        os.remove(FLAGS.out_torchscript)
        raise
    logging.info(
        "exported %s (%d bytes) and %s at lengths %s in %.2f s",
        FLAGS.out_torchscript,
        len(data),
        FLAGS.out_contract,
        lengths,
        time.monotonic() - start,
    )


if __name__ == "__main__":
    cli.run(main)
