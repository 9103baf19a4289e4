"""Converts a student checkpoint to a Core ML .mlpackage with the contract's enumerated lengths.

    convert_coreml --weights=student.safetensors --metadata=student.json \\
        --contract=contract.json --out=student.mlpackage [--precision=fp16|fp32] \\
        [--compress=none|int8|int4] [--target=iOS16|iOS17|iOS18] [--stateful]

--compress writes a variant with compressed weights (conversion/coreml_compress.py): int8 per
channel, or int4 per block of 32, which needs --target=iOS18 (the default target for int4; iOS16
otherwise). An unknown variant or a target too old for it exits 2 with the allowed values.
--stateful writes the package with a KV cache held as Core ML state (conversion/coreml_stateful.py):
fp16, iOS18, uncompressed; other --precision, --compress or --target values exit 2.

Same inputs and flags -> byte-identical package. The package is written atomically: bad input
exits 2 with one line naming the problem, and nothing is written. On success it prints nothing:
coremltools' log and progress bars are off (common/quiet.py); --verbosity=0 shows this tool's log.
"""

import os

from absl import flags, logging

from common import cli, quiet
from common.errors import InputError
from conversion import contract as contract_lib
from training import checkpoint

flags.DEFINE_string("weights", None, "Student checkpoint weights (safetensors) (required).")
flags.DEFINE_string("metadata", None, "Student checkpoint metadata JSON (required).")
flags.DEFINE_string("contract", None, "contract.json from the export step: lengths and names (required).")
flags.DEFINE_string("out", None, "Output package directory; must end in .mlpackage (required).")
# The names of conversion.coreml.PRECISIONS, spelled out so that reading flags needs no coremltools.
flags.DEFINE_enum("precision", "fp16", ["fp16", "fp32"], "Core ML compute precision.")
# Checked by conversion.coreml_compress.check_variant, which lists the allowed values (mirrored in
# COMPRESSIONS and TARGETS below so that reading flags needs no coremltools).
flags.DEFINE_string("compress", "none", "Weight compression: none, int8 (per channel) or int4 (per block).")
flags.DEFINE_string(
    "target", None, "Deployment target: iOS16, iOS17 or iOS18 (default: the oldest the variant runs on)."
)
flags.DEFINE_string("model_version", "1", "Version string stored in the package metadata.")
flags.DEFINE_bool(
    "stateful", False, "Prefill and one-token decode against a KV cache held as Core ML state (fp16, iOS18)."
)

FLAGS = flags.FLAGS

# Variant -> the oldest deployment target it runs on; conversion/coreml_compress.py COMPRESSIONS
# holds the same (coreml_compress_test checks they agree).
COMPRESSIONS = {"int8": "iOS16", "int4": "iOS18"}
TARGETS = ("iOS16", "iOS17", "iOS18")

DESCRIPTION = "Magic 8 Ball student: input_ids int32 [1, T] -> next-token logits float32 [1, T, vocab]"
STATEFUL_DESCRIPTION = (
    "Magic 8 Ball student with a KV cache as state: input_ids int32 [1, S] at position int32 [1] -> "
    "next-token logits float32 [1, S, vocab]; states k_cache, v_cache"
)


def check_stateful(stateful: bool, compress: str, target: str | None, precision: str) -> None:
    """InputError for a flag the stateful package cannot honour (it is fp16, iOS18, uncompressed)."""
    if not stateful:
        return
    if precision != "fp16":
        raise InputError(f"--stateful: the stateful package is fp16; drop --precision={precision}")
    if compress != "none":
        raise InputError(f"--stateful: the stateful package is not compressed; drop --compress={compress}")
    if target not in (None, "iOS18"):
        raise InputError(f"--stateful: Core ML states need iOS18; drop --target={target}")


def check_variant(compress: str, target: str | None, precision: str) -> tuple[str | None, str]:
    """(compression or None, deployment target); InputError listing the allowed values."""
    if compress not in ("none", *COMPRESSIONS):
        raise InputError(
            f"--compress: {compress!r} is not a Core ML variant; allowed: none, {', '.join(COMPRESSIONS)}"
        )
    compression = None if compress == "none" else compress
    if compression and precision != "fp16":
        raise InputError(f"--compress={compress}: compresses an fp16 program; use --precision=fp16")
    oldest = COMPRESSIONS.get(compression, TARGETS[0])
    allowed = list(TARGETS[TARGETS.index(oldest) :])
    if target is None:
        return compression, oldest
    if target not in TARGETS:
        raise InputError(f"--target: {target!r}; allowed: {', '.join(TARGETS)}")
    if target not in allowed:
        raise InputError(
            f"--target: {target} is too old for --compress={compress} (4-bit per-block weights need "
            f"{oldest}); allowed targets for {compress}: {', '.join(allowed)}"
        )
    return compression, target


def main(argv: list[str]) -> None:
    del argv
    quiet.stage()  # before coremltools is imported: it logs and warns at import
    for name in ("weights", "metadata", "contract", "out"):
        cli.require_flag(FLAGS[name].value, name)
    if not FLAGS.out.endswith(".mlpackage"):
        raise InputError(f"--out: {FLAGS.out} must end in .mlpackage")
    # The package is a directory that replaces any old one; check its parent before converting.
    parent = os.path.dirname(os.path.abspath(FLAGS.out))
    if not os.path.isdir(parent):
        raise InputError(f"--out: output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"--out: output directory {parent} is not writable")
    check_stateful(FLAGS.stateful, FLAGS.compress, FLAGS.target, FLAGS.precision)
    compression, target = check_variant(FLAGS.compress, FLAGS.target, FLAGS.precision)
    contract = contract_lib.load_contract(FLAGS.contract)
    meta, cfg = checkpoint.check(FLAGS.weights, FLAGS.metadata, expected_vocab_size=contract.vocab_size)
    weights_sha256 = checkpoint.sha256_file(FLAGS.weights)
    pinned = contract.artifacts.get("weights")
    if pinned is not None and pinned != weights_sha256:
        raise InputError(
            f"{FLAGS.weights}: sha256 differs from {FLAGS.contract} artifacts.weights; "
            "convert the checkpoint the contract was exported from"
        )
    if meta["tokenizer_sha256"] != contract.tokenizer_sha256:
        raise InputError(
            f"{FLAGS.metadata}: tokenizer_sha256 differs from {FLAGS.contract}'s; "
            "the contract was exported from another checkpoint"
        )
    lengths = list(contract.lengths)
    try:
        contract_lib.check_lengths(lengths, contract.default_length, cfg.max_seq_len)
    except InputError as error:
        raise InputError(f"{FLAGS.contract}: {error}") from None
    metadata = {
        "short_description": STATEFUL_DESCRIPTION if FLAGS.stateful else DESCRIPTION,
        "version": FLAGS.model_version,
        "user_defined": {
            "contract_sha256": checkpoint.sha256_file(FLAGS.contract),
            "tokenizer_sha256": contract.tokenizer_sha256,
            "weights_sha256": weights_sha256,
        },
    }
    logging.info(
        "converting at lengths %s (default %d), %s, %s, compression %s%s",
        lengths,
        contract.default_length,
        FLAGS.precision,
        "iOS18" if FLAGS.stateful else target,
        compression or "none",
        ", KV cache as state" if FLAGS.stateful else "",
    )
    # coremltools and torch only now, after every check of flags and files: bad input fails in well
    # under a second instead of after their seconds-long imports.
    from conversion import coreml, coreml_compress, coreml_stateful

    model, _ = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=contract.vocab_size)
    if FLAGS.stateful:
        mlmodel = coreml_stateful.convert(model, lengths, contract.default_length, metadata)
    else:
        mlmodel = coreml.convert(
            model,
            lengths,
            contract.default_length,
            FLAGS.precision,
            metadata,
            coreml_compress.TARGETS[target],
        )
    if compression:
        mlmodel = coreml_compress.compress(mlmodel, compression)
    coreml.save_mlpackage(mlmodel, FLAGS.out)
    logging.info("wrote %s", FLAGS.out)


if __name__ == "__main__":
    cli.run(main)
