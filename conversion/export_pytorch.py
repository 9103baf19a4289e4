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

With --out_export and --out_aoti_decoder it also writes the student as a torch.export program
(conversion/export_program.py, "torch_export") and the KV-cache decoder compiled by AOTInductor
(conversion/aoti_decoder.py, "aoti_decoder"), each loaded back through its archive check and run
against eager (every length; the decoder also a decode step at every position) before anything is
written. The contract pins both files, names them for verification, and records what the decoder's
compile baked in ("compiled": the sha256 of its shared object, vector ISA, threads, torch, compiler).
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
flags.DEFINE_string(
    "out_export", None, "Output torch.export program (torch.export.save), e.g. model.pt2 (optional)."
)
flags.DEFINE_string(
    "out_aoti_decoder",
    None,
    "Output AOTInductor KV-cache decoder package, e.g. model.decode.pt2 (optional; a C++ compile, "
    "about a minute).",
)
# The .pt2 artifacts -> the flag that writes each: the contract names one for verification only when
# it is written.
PT2_OUTPUTS = {"torch_export": "out_export", "aoti_decoder": "out_aoti_decoder"}

FLAGS = flags.FLAGS


def _verify_backends() -> list[str]:
    """--verify_backends; by default without the .pt2 artifacts that are not written."""
    names = list(FLAGS.verify_backends)
    written = {name for name, flag in PT2_OUTPUTS.items() if FLAGS[flag].value}
    if not FLAGS["verify_backends"].present:
        names = [name for name in names if name not in PT2_OUTPUTS or name in written]
    unwritten = sorted(set(names) & set(PT2_OUTPUTS) - written)
    if unwritten:
        raise InputError(
            f"--verify_backends: {unwritten[0]} is not written; add --{PT2_OUTPUTS[unwritten[0]]}"
        )
    return names


def _gates(lengths: list[int], weights_sha256: str) -> dict:
    """The contract's gates from --floors: bounds = floors x gates_lib.FACTOR_LIMIT."""
    unknown = sorted(set(FLAGS.verify_backends) - set(gates_lib.DEFAULT_BACKENDS))
    if unknown or not FLAGS.verify_backends:
        raise InputError(
            f"--verify_backends: {unknown or 'empty'}; "
            f"choose from {', '.join(sorted(gates_lib.DEFAULT_BACKENDS))}"
        )
    verify_backends = _verify_backends()
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
    backends = {name: gates_lib.DEFAULT_BACKENDS[name] for name in verify_backends}
    return gates_lib.make_gates(doc, backends)


def _start_aoti_compile(model):
    """The AOTInductor compile of the decoder, started in a child process (conversion/aoti_decoder.py)
    so that the TorchScript exports run meanwhile; None without --out_aoti_decoder."""
    if not FLAGS.out_aoti_decoder:
        return None
    import concurrent.futures

    from conversion import aoti_decoder

    program = aoti_decoder.export_program(model)
    began = time.monotonic()

    def compile_timed():
        package, build = aoti_decoder.compile_package(program)
        logging.info("AOTInductor compile: %.1f s (%s)", time.monotonic() - began, build)
        return package, build

    pool = concurrent.futures.ThreadPoolExecutor(1)  # a thread that waits on the child process
    future = pool.submit(compile_timed)
    pool.shutdown(wait=False)
    return future


def _pt2_artifacts(
    model, lengths: list[int], default_length: int, aoti_compile
) -> list[tuple[str, str, bytes, dict | None]]:
    """(flag, contract name, bytes, compiled build or None) of each .pt2 output asked for, each
    loaded back from a file through its archive check and run against eager first. aoti_compile:
    _start_aoti_compile's future."""
    import tempfile

    from conversion import aoti_decoder, export_program, pt2_archive

    out = []
    with tempfile.TemporaryDirectory(prefix="m8b-pt2-") as tmp:
        if FLAGS.out_export:
            program = export_program.export(model, lengths, model.cfg.max_seq_len, default_length)
            data = export_program.to_bytes(program)
            path = os.path.join(tmp, "program.pt2")
            atomic.write_bytes(path, data)
            export_program.check_lengths_match(export_program.load(path), model, lengths)
            out.append(("out_export", "torch_export", data, None))
        if aoti_compile is not None:
            package, build = aoti_compile.result()
            build = {**build, "so_sha256": pt2_archive.so_sha256(package)}
            path = os.path.join(tmp, "decoder.pt2")
            atomic.write_bytes(path, package)
            runner = aoti_decoder.load(path, build["so_sha256"])
            aoti_decoder.check_against_eager(runner, model, lengths)
            out.append(("out_aoti_decoder", "aoti_decoder", package, build))
    return out


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
    outputs += tuple(flag for flag in PT2_OUTPUTS.values() if FLAGS[flag].value)
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
    aoti_compile = _start_aoti_compile(model)  # a C++ build in a child process: first, in parallel
    module = torchscript.export(model, lengths, cfg.max_seq_len, default_length)
    data = torchscript.to_bytes(module)
    decoder = torchscript.to_bytes(kv_decoder.export(model, lengths))
    # The loaders refuse any archive that strays from what export writes: hold our own to that first.
    torchscript_archive.check_archive(io.BytesIO(data))
    torchscript_archive.check_archive(io.BytesIO(decoder))
    pt2 = _pt2_artifacts(model, lengths, default_length, aoti_compile)
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
    for _, name, payload, build in pt2:
        contract = contract.with_artifact(name, hashlib.sha256(payload).hexdigest())
        if build is not None:
            contract = contract.with_compiled(name, build)
    # Every output or none: each write is atomic, and a failed later write takes the earlier ones
    # back out.
    written = []
    try:
        files = [(FLAGS.out_torchscript, data), (FLAGS.out_decoder, decoder)]
        for path, payload in files + [(FLAGS[flag].value, payload) for flag, _, payload, _ in pt2]:
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
