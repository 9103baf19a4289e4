"""Exports a student checkpoint to TorchScript and writes the contract that travels with the artifacts.

    export_pytorch --weights=student.safetensors --metadata=student.json --tokenizer=tokenizer.json \\
        --out_torchscript=model.pt --out_decoder=model.decode.pt --out_contract=contract.json \\
        [--lengths=64,128,256] [--default_length=128]

The TorchScript model takes input_ids int32 [1, T] for every T in --lengths (one trace, dynamic
length, proven by torch.export and by running each length) and returns logits float32 [1, T, vocab].
It is traced at --default_length, which the contract records (Core ML's default shape); without
the flag it is the middle of --lengths, so any lengths work.
The decoder is the same student with a fixed-size KV cache passed in and out (conversion/kv_decoder.py),
checked against eager for a prefill at every length and a decode step at every position. The
contract pins both files by sha256 ("torchscript", "torchscript_decoder").
Same inputs and flags -> byte-identical outputs. Bad input exits 2 with one line naming the problem,
and nothing is written.
"""

import hashlib
import io
import json
import os
import time

from absl import flags, logging

from common import atomic, cli, quiet
from common.errors import InputError
from conversion import contract as contract_lib
from conversion import gates as gates_lib
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
    "default_length",
    None,
    "The length to trace at and Core ML's default shape; one of --lengths. Default: the middle of "
    "--lengths (the lower middle one for an even count): 128 for 64,128,256 and for 64,128,256,512.",
)
flags.DEFINE_string(
    "floors", None, "floors.json from //verify:measure_floors for this checkpoint and --lengths (required)."
)
flags.DEFINE_list(
    "verify_backends",
    sorted(gates_lib.DEFAULT_BACKENDS),
    "Artifacts the contract says must be verified: any of "
    + ", ".join(sorted(gates_lib.DEFAULT_BACKENDS))
    + ".",
)
flags.DEFINE_string("out_torchscript", None, "Output TorchScript archive, e.g. model.pt (required).")
flags.DEFINE_string(
    "out_decoder", None, "Output TorchScript KV-cache decoder, e.g. model.decode.pt (required)."
)
flags.DEFINE_string("out_contract", None, "Output contract JSON, e.g. contract.json (required).")

FLAGS = flags.FLAGS


def _gates(lengths: list[int], weights_sha256: str) -> dict:
    """The contract's gates from --floors: bounds = floors x gates_lib.FACTOR_LIMIT."""
    unknown = sorted(set(FLAGS.verify_backends) - set(gates_lib.DEFAULT_BACKENDS))
    if unknown or not FLAGS.verify_backends:
        raise InputError(
            f"--verify_backends: {unknown or 'empty'}; "
            f"choose from {', '.join(sorted(gates_lib.DEFAULT_BACKENDS))}"
        )
    try:
        with open(FLAGS.floors, "rb") as handle:
            doc = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"--floors: {FLAGS.floors} not found; build it with //verify:measure_floors"
        ) from None
    except (OSError, ValueError, RecursionError) as error:
        raise InputError(f"--floors: {FLAGS.floors} is not readable JSON ({str(error)[:200]})") from None
    gates_lib.validate_floors(doc, lengths, FLAGS.floors)
    if doc["checkpoint_sha256"] != weights_sha256:
        raise InputError(
            f"--floors: {FLAGS.floors} was measured on checkpoint {doc['checkpoint_sha256'][:12]}, "
            f"not on --weights ({weights_sha256[:12]}); measure the floors of this checkpoint"
        )
    backends = {name: gates_lib.DEFAULT_BACKENDS[name] for name in FLAGS.verify_backends}
    return gates_lib.make_gates(doc, backends)


def middle_length(lengths: list[int]) -> int:
    """The default length of a contract: the middle of the sorted lengths, the lower middle one for
    an even count, so a configuration's lengths need not include 128 (64,128,256 and 64,128,256,512
    keep 128, as before)."""
    ordered = sorted(lengths)
    return ordered[(len(ordered) - 1) // 2]


def main(argv: list[str]) -> None:
    del argv
    quiet.stage()  # prints nothing on success: common/quiet.py
    outputs = ("out_torchscript", "out_decoder", "out_contract")
    for name in ("weights", "metadata", "tokenizer", "floors", *outputs):
        cli.require_flag(FLAGS[name].value, name)
    start = time.monotonic()
    cli.check_distinct_outputs({name: FLAGS[name].value for name in outputs})
    for name in outputs:
        cli.check_output_path(FLAGS[name].value, name)
    lengths = contract_lib.parse_lengths(FLAGS.lengths)
    tokenizer = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
    metadata = checkpoint.load_metadata(FLAGS.metadata)
    checkpoint.require_tokenizer(metadata, FLAGS.metadata, tokenizer.digest, FLAGS.tokenizer)
    _, cfg = checkpoint.check(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    try:
        lengths = contract_lib.check_lengths(lengths, None, cfg.max_seq_len)
    except InputError as error:
        raise InputError(f"--lengths: {error}") from None
    default_length = middle_length(lengths) if FLAGS.default_length is None else FLAGS.default_length
    if default_length not in lengths:
        raise InputError(
            f"--default_length: {default_length} is not one of --lengths {lengths}; "
            "name one of them, or leave the flag out for the middle one"
        )
    gates = _gates(lengths, checkpoint.sha256_file(FLAGS.weights))

    # torch only now, after every check of flags and files: bad input fails in well under a second
    # instead of after torch's seconds-long import.
    import torch

    from conversion import kv_decoder, torchscript

    # One intra-op thread: this tiny model gains nothing from more, the numbers then never depend
    # on the thread count, and on a busy 2-core machine OpenMP's spinning threads made each forward
    # ~50x slower.
    torch.set_num_threads(1)
    model, _ = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    module = torchscript.export(model, lengths, cfg.max_seq_len, default_length)
    data = torchscript.to_bytes(module)
    decoder = torchscript.to_bytes(kv_decoder.export(model, lengths))
    # The loaders refuse any archive that strays from what export writes: hold our own to that first.
    torchscript_archive.check_archive(io.BytesIO(data))
    torchscript_archive.check_archive(io.BytesIO(decoder))
    contract = contract_lib.make_contract(
        vocab_size=model.cfg.vocab_size,
        tokenizer_sha256=tokenizer.digest,
        lengths=lengths,
        default_length=default_length,
        gates=gates,
    )
    contract = contract.with_artifact("weights", checkpoint.sha256_file(FLAGS.weights))
    contract = contract.with_artifact("torchscript", hashlib.sha256(data).hexdigest())
    contract = contract.with_artifact("torchscript_decoder", hashlib.sha256(decoder).hexdigest())
    # Every output or none: each write is atomic, and a failed later write takes the earlier ones
    # back out.
    written = []
    try:
        for path, payload in ((FLAGS.out_torchscript, data), (FLAGS.out_decoder, decoder)):
            atomic.write_bytes(path, payload)
            written.append(path)
        contract.save(FLAGS.out_contract)
    except BaseException:
        for path in written:
            os.remove(path)
        raise
    logging.info(
        "exported %s (%d bytes), %s (%d bytes) and %s at lengths %s in %.2f s",
        FLAGS.out_torchscript,
        len(data),
        FLAGS.out_decoder,
        len(decoder),
        FLAGS.out_contract,
        lengths,
        time.monotonic() - start,
    )


if __name__ == "__main__":
    cli.run(main)
