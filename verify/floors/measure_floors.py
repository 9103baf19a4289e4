"""Measures the numeric floors every verification bound is derived from (verify/floors/floors.py).

    measure_floors --weights=student.safetensors --metadata=student.json --tokenizer=tokenizer.json \\
        --dataset=kd.jsonl --lengths=64,128,256 --out=floors.json

For each precision an artifact computes in (f32, fp16, f16 weights, f16 KV cache, the Q8_0 and
Q4_0 GGUF weights, the Core ML int8 and int4 weights: verify/floors/floors.py METHODS), its emulation in
eager PyTorch is compared with fp32 eager on exactly the inputs verification uses
(verify/inputs.py): each length's rows (each length its own floors), the behaviour replay, and the
decode parity's steps. The independent references of the lossy variants (ref_*) are measured the
same way, at every length and over the replay. The export step turns the floors into the
contract's bounds. The precisions are measured by two forked workers where the process may use two cores
(verify/floors/floors.py, "Two workers"); the file does not depend on it.
Floats are kept to 4 significant digits, so the file is the same on machines whose BLAS differ in
the last bits. Bad input exits 2 before torch is imported, and nothing is written.
"""

import gc
import json
import time

from absl import flags, logging

from common import atomic, cli, quiet
from common.errors import InputError
from conversion import contract as contract_lib
from conversion import gates as gates_lib
from data import dataset as dataset_lib
from data import tokenizer as tokenizer_lib
from training import checkpoint
from verify import inputs as inputs_lib

_DEFAULTS = inputs_lib.Settings()
flags.DEFINE_string("weights", None, "Student checkpoint weights (required).")
flags.DEFINE_string("metadata", None, "Student checkpoint metadata JSON (required).")
flags.DEFINE_string("tokenizer", None, "Tokenizer JSON the student was trained with (required).")
flags.DEFINE_string("dataset", None, "KD dataset JSONL; its held-out split gives the inputs (required).")
flags.DEFINE_string(
    "lengths",
    ",".join(str(t) for t in contract_lib.DEFAULT_LENGTHS),
    "Comma-separated contract lengths (the export step's --lengths).",
)
flags.DEFINE_string("out", None, "Output floors JSON (required).")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the random-ids row at each length.")
flags.DEFINE_integer("text_sequences", _DEFAULTS.text_sequences, "Held-out sequences in the real-text row.")
flags.DEFINE_integer("behaviour_questions", _DEFAULTS.behaviour_questions, "Held-out questions replayed.")
flags.DEFINE_integer("max_new_tokens", _DEFAULTS.max_new_tokens, "Longest eager greedy reply replayed.")

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    # No collector passes: the run loads about half a million long-lived objects (torch, the
    # dataset, coremltools) and makes almost no cyclic garbage. Its passes cost ~0.5 s of CPU
    # before the pool (four full ones over the growing heap) and freed 17 objects; the forwards'
    # tensors are freed by reference counting, and the workers made no pass at all.
    gc.disable()
    quiet.stage()  # prints nothing on success: common/quiet.py
    for name in ("weights", "metadata", "tokenizer", "dataset", "out"):
        cli.require_flag(FLAGS[name].value, name)
    cli.check_output_path(FLAGS.out, "out")
    started = time.monotonic()
    settings = inputs_lib.Settings(
        seed=FLAGS.seed,
        text_sequences=FLAGS.text_sequences,
        behaviour_questions=FLAGS.behaviour_questions,
        max_new_tokens=FLAGS.max_new_tokens,
    )
    for key, value in settings.to_dict().items():
        if value < (0 if key == "seed" else 1):
            raise InputError(f"--{key}: {value}; must be {'>= 0' if key == 'seed' else 'at least 1'}")
    tokenizer = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
    metadata = checkpoint.load_metadata(FLAGS.metadata)
    checkpoint.require_tokenizer(metadata, FLAGS.metadata, tokenizer.digest, FLAGS.tokenizer)
    _, cfg = checkpoint.check(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    lengths = contract_lib.check_lengths(contract_lib.parse_lengths(FLAGS.lengths), None, cfg.max_seq_len)
    dataset = dataset_lib.read_dataset(FLAGS.dataset)
    if dataset.header.get("tokenizer_sha256") != tokenizer.digest:
        raise InputError(f"--dataset: {FLAGS.dataset} was made with another tokenizer than {FLAGS.tokenizer}")
    heldout = sorted(dataset.split("heldout"), key=lambda r: r.id)
    if not heldout:
        raise InputError(f"--dataset: {FLAGS.dataset} has no held-out records to measure floors on")

    import torch  # only after every check: bad input fails fast

    from verify.floors import floors

    torch.set_num_threads(1)  # the same single-thread numbers verification computes
    model, _ = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    rows = inputs_lib.numeric_rows(lengths, tokenizer.vocab_size, tokenizer, heldout, settings)
    prompts = inputs_lib.replay_prompts(tokenizer, heldout, settings)
    continuations = inputs_lib.replay_continuations(model, tokenizer, prompts, settings)
    measured = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, sorted(floors.METHODS))
    doc = {
        "format": gates_lib.FLOORS_FORMAT,
        "version": gates_lib.FLOORS_VERSION,
        "checkpoint_sha256": checkpoint.sha256_file(FLAGS.weights),
        "lengths": lengths,
        "inputs": settings.to_dict(),
        "methods": dict(floors.METHODS),
        "floors": {
            precision: {
                where: {metric: gates_lib.round4_up(value) for metric, value in sorted(metrics.items())}
                for where, metrics in sorted(scopes.items())
            }
            for precision, scopes in sorted(measured.items())
        },
    }
    gates_lib.validate_floors(doc, lengths, FLAGS.out)
    atomic.write_bytes(FLAGS.out, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    logging.info("floors at lengths %s in %.2f s -> %s", lengths, time.monotonic() - started, FLAGS.out)


if __name__ == "__main__":
    cli.run(main)
