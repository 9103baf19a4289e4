"""Exports a student checkpoint to a llama-architecture GGUF file and its Ollama Modelfile.

    export_gguf --weights=student.safetensors --metadata=student.json --tokenizer=tokenizer.json \\
        --out=magic-8-ball.gguf --modelfile_out=Modelfile [--dtype=f32|f16|Q8_0|Q4_0]

Matrices are stored in f32 by default; --dtype=f16 halves them, Q8_0 and Q4_0 quantize them in
blocks of 32 values (conversion/gguf_quant.py: which tensor gets which type; norm weights always
f32). K-quants (Q4_K_M, Q6_K, ...) are refused: they need rows of 256 values, the student's are
shorter, and llama.cpp would silently store other types under the name. The
tokenizer must be the one the checkpoint was trained with (its sha256 equals the checkpoint
metadata's tokenizer_sha256). Same inputs and flags -> byte-identical outputs. Bad input exits 2
with one line naming the problem, and nothing is written.
"""

import os
import time

from absl import flags, logging

from common import atomic, cli, quiet
from common.errors import InputError
from conversion import gguf_quant, modelfile
from data import tokenizer as tokenizer_lib
from training import checkpoint

flags.DEFINE_string("weights", None, "Student checkpoint weights (safetensors) (required).")
flags.DEFINE_string("metadata", None, "Student checkpoint metadata JSON (required).")
flags.DEFINE_string(
    "tokenizer", None, "Tokenizer JSON the student was trained with; its digest must match the checkpoint's."
)
flags.DEFINE_string("out", None, "Output GGUF file, e.g. magic-8-ball.gguf (required).")
flags.DEFINE_string(
    "modelfile_out",
    None,
    "Output Ollama Modelfile (required); in the same directory as --out, since it says FROM ./<gguf>.",
)
# A string, not an enum: a K-quant or unknown name gets an InputError (exit 2) that says why and
# lists the allowed values (gguf_quant.check_dtype), not absl's usage dump.
flags.DEFINE_string(
    "dtype",
    "f32",
    "Storage type of the weight matrices: one of f32, f16, Q8_0, Q4_0 (Q8_0/Q4_0: blocks of 32 values "
    "per row; K-quants are not written, since they need rows of 256 values and this student's are "
    "shorter).",
)

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    quiet.stage()  # prints nothing on success: common/quiet.py
    for name in ("weights", "metadata", "tokenizer", "out", "modelfile_out"):
        cli.require_flag(FLAGS[name].value, name)
    start = time.monotonic()
    cli.check_distinct_outputs({"out": FLAGS.out, "modelfile_out": FLAGS.modelfile_out})
    cli.check_output_path(FLAGS.out, "out")
    cli.check_output_path(FLAGS.modelfile_out, "modelfile_out")
    if os.path.dirname(os.path.abspath(FLAGS.out)) != os.path.dirname(os.path.abspath(FLAGS.modelfile_out)):
        raise InputError(
            f"--modelfile_out: {FLAGS.modelfile_out} is not in the directory of --out {FLAGS.out}; "
            "the Modelfile's FROM ./<gguf> is relative to its own directory, so put both in one directory"
        )
    tokenizer = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
    metadata = checkpoint.load_metadata(FLAGS.metadata)
    checkpoint.require_tokenizer(metadata, FLAGS.metadata, tokenizer.digest, FLAGS.tokenizer)
    _, cfg = checkpoint.check(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    try:
        gguf_quant.check_dtype(FLAGS.dtype, {"d_model": cfg.d_model, "ffn_hidden": cfg.ffn_hidden})
    except InputError as error:
        raise InputError(f"--{error}") from None  # the message starts "dtype: ..."; name the flag
    try:
        # num_ctx is the checkpoint's context, as is the GGUF's context_length (gguf_export).
        text = modelfile.render(os.path.basename(FLAGS.out), cfg.max_seq_len)
    except ValueError as error:
        raise InputError(f"--out: {error}") from None

    # torch and gguf only now, after every check of flags and files: bad input fails in well under a
    # second instead of after torch's seconds-long import.
    import torch

    from conversion import gguf_export

    torch.set_num_threads(1)
    model, _ = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    data = gguf_export.to_bytes(model, tokenizer, dtype=FLAGS.dtype, tokenizer_sha256=tokenizer.digest)
    # Both outputs or neither: each write is atomic, and a failed Modelfile write takes the GGUF back out.
    atomic.write_bytes(FLAGS.out, data)
    try:
        atomic.write_text(FLAGS.modelfile_out, text)
    except BaseException:
        os.remove(FLAGS.out)
        raise
    logging.info(
        "exported %s (%s, %d bytes) and %s in %.2f s",
        FLAGS.out,
        FLAGS.dtype,
        len(data),
        FLAGS.modelfile_out,
        time.monotonic() - start,
    )


if __name__ == "__main__":
    cli.run(main)
