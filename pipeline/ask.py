"""`bazel run //pipeline:ask -- "Will it rain tomorrow?"`: the exported model answers a question.

--backend=aoti (the default) runs the AOTInductor decoder (magic-8-ball.decode.pt2,
conversion/aoti_decoder.py): the question runs once, then each new token is one call against its KV
cache, compiled code throughout. Its archive is checked before it is loaded (conversion/pt2_archive.py:
the layout, and the shared object's sha256 against the pin in --contract; a package that fails is
bad input, exit 2, and nothing in it runs). Where a sound package cannot run (compiled for another
machine, vector ISA or torch: the contract records which), ask says so in one warning and answers
through the TorchScript decoder instead. --backend=torchscript runs the TorchScript decoder
(magic-8-ball.decode.pt, conversion/kv_decoder.py) the same way. A question that
leaves no room in the context (max_seq_len) for a reply is refused (exit 2), never truncated; a
reply stops at the context's end. --backend=gguf runs the GGUF file through
llama.cpp (its logits; the sampling is ours, so both backends pick alike), in the weight type
--variant names (f32, f16, Q8_0, Q4_0: magic-8-ball.<variant>.gguf; f32 is magic-8-ball.gguf).
Greedy with --greedy, otherwise sampling as llama.cpp chains it: --top_k, then --top_p, then --min_p, then
--temperature (training/sampling.py). The defaults are Ollama's, and the Modelfile beside the GGUF
file states the same values.

--constrain decodes only token paths that spell a canonical reply (data/canonical_trie.py): a
guarantee layered on top of the model, for both backends (for GGUF the same mask over llama.cpp's
logits; --print_grammar prints it as a llama.cpp GBNF grammar for llama.cpp's own tools).

Odd input: an empty or whitespace-only question, a control character, bytes that are not UTF-8,
a question that leaves no room in the context for the longest reply, --max_new_tokens below 1
(below the longest canonical reply with --constrain): each one line "error: ..." and exit 2.

Seed rule: the draws come from a generator seeded with (--seed, sha256 of the question's token
ids). The same seed and question give the same answer; another question gets other draws.

--batch reads the questions from standard input, one per line, and prints one reply per line, line i
for question i, with the model loaded once: each reply is the one `ask` gives that question alone
with the same flags (the seed rule is per question). Every line is checked before anything is
loaded or printed: a bad one (empty, a control character, too long for the context, not UTF-8) is
one "error: standard input line N: ..." and exit 2, with no reply printed. A line break the model
writes inside a reply is printed as the two characters \\n, so that the lines stay aligned.
"""

import sys

import numpy as np
from absl import flags

from common import cli
from common.errors import InputError
from conversion import contract as contract_lib
from conversion import pt2_archive, torchscript_archive
from data import canonical_trie, prompt
from data.tokenizer import Tokenizer
from training import checkpoint, sampling

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "backend",
    "aoti",
    ["aoti", "torchscript", "gguf"],
    "Which exported artifact answers: the AOTInductor decoder (falling back to the TorchScript one "
    "where it cannot run), the TorchScript decoder, or a GGUF file through llama.cpp.",
)
flags.DEFINE_string(
    "torchscript_decoder", None, "TorchScript KV-cache decoder artifact (set by the BUILD file)."
)
flags.DEFINE_string("aoti_decoder", None, "AOTInductor KV-cache decoder package (set by the BUILD file).")
flags.DEFINE_string(
    "contract",
    None,
    "contract.json of the export: pins the AOTInductor package's shared object (set by the BUILD file).",
)
AOTI = "aoti_decoder"  # the contract's name for the package (conversion/gates.py)
flags.DEFINE_string("gguf", None, "GGUF artifact, f32 weights (set by the BUILD file).")
# --variant -> the flag naming its file. A string flag, not an enum: an unknown name is an InputError
# (exit 2) listing these.
GGUF_VARIANTS = {"f32": "gguf", "f16": "gguf_f16", "Q8_0": "gguf_q8_0", "Q4_0": "gguf_q4_0"}
for _variant, _flag in GGUF_VARIANTS.items():
    if _flag != "gguf":
        flags.DEFINE_string(_flag, None, f"GGUF artifact, {_variant} weights (set by the BUILD file).")
flags.DEFINE_string(
    "variant", "f32", f"With --backend=gguf: which GGUF file answers, one of {', '.join(GGUF_VARIANTS)}."
)
flags.DEFINE_string("tokenizer", None, "Tokenizer JSON (set by the BUILD file).")
flags.DEFINE_string(
    "metadata",
    None,
    "Checkpoint metadata JSON the artifacts were exported from: its max_seq_len caps a reply.",
)
_D = sampling.DEFAULT
flags.DEFINE_bool("greedy", False, "Always take the most likely token (ignores the sampling flags).")
flags.DEFINE_float("temperature", _D.temperature, "Sampling temperature (> 0), applied last.")
flags.DEFINE_integer("top_k", _D.top_k, "Keep the k most likely tokens (>= 0; 0 keeps all), applied first.")
flags.DEFINE_float("top_p", _D.top_p, "Then keep the smallest set holding this much probability, in (0, 1].")
flags.DEFINE_float("min_p", _D.min_p, "Then drop tokens below min_p x the top probability, in [0, 1).")
flags.DEFINE_integer(
    "seed",
    0,
    "Sampling seed (>= 0), mixed with a sha256 of the question's tokens: the same seed and question "
    "give the same answer, and different questions get different draws.",
)
flags.DEFINE_integer("max_new_tokens", 32, "Longest answer, in tokens (at least 1).")
flags.DEFINE_bool(
    "constrain",
    False,
    "Decode only token paths that spell a canonical reply (one of the 20 answers, its group's flair, "
    "the end token; a trie exact through the tokenizer). A guarantee layered on top of the model: the "
    "quality numbers (robustness_test, student_quality_test) measure the model without it.",
)
flags.DEFINE_bool(
    "batch",
    False,
    "Read the questions from standard input, one per line, and print one reply per line (the model "
    "loads once; each reply is the one the question gets alone).",
)
flags.DEFINE_bool(
    "print_grammar",
    False,
    "Print the canonical replies as a llama.cpp grammar (GBNF, for llama.cpp's --grammar-file) and exit.",
)


# The model runtimes (torch, llama.cpp) are imported only once the question, the tokenizer and the
# artifact have been checked: bad input fails in well under a second instead of after their imports.


def torchscript_steps(path: str, cfg):
    """The decoder as training.decode.Steps: prefill the question, then one token per call."""
    torchscript_archive.check_file(path)
    from conversion import kv_decoder, torchscript

    return kv_decoder.TorchScriptSteps(torchscript.load(path), cfg)


def aoti_build(contract_path: str, metadata_path: str) -> dict:
    """What --contract records of the package's compile (its .so's sha256, ISA, threads, torch),
    after checking that the contract and --metadata belong to one checkpoint (the package's cache
    shapes come from --metadata's config)."""
    contract = contract_lib.load_contract(contract_path)
    build = contract.compiled.get(AOTI)
    if build is None:
        raise InputError(
            f"--contract: {contract_path} records no AOTInductor decoder; pass the export's contract"
        )
    weights = checkpoint.load_metadata(metadata_path).get("weights_sha256")
    if contract.artifacts.get("weights") != weights:
        raise InputError(
            f"--metadata: {metadata_path} is for checkpoint {str(weights)[:12]}, but {contract_path} "
            f"pins {str(contract.artifacts.get('weights'))[:12]}; pass the files of one export"
        )
    return build


def aoti_steps(path: str, build: dict, cfg, fallback: str):
    """The AOTInductor decoder as training.decode.Steps; the TorchScript decoder at `fallback`, with
    one warning, where the package cannot run here. The archive was checked already (main)."""
    from conversion import aoti_decoder

    reason = aoti_decoder.runtime_blocker(build)
    if reason is None:
        try:
            return aoti_decoder.AOTISteps(aoti_decoder.load(path, build["so_sha256"]), cfg)
        except InputError as error:  # the archive passed its check: this machine cannot load it
            reason = str(error)
    cli.require_flag(fallback, "torchscript_decoder")
    print(
        f"warning: the AOTInductor decoder cannot run here ({reason}); answering through the "
        "TorchScript decoder",
        file=sys.stderr,
    )
    return torchscript_steps(fallback, cfg)


def gguf_steps(path: str, max_length: int):
    """The GGUF file through llama.cpp as training.decode.Steps (each step recomputes the reply)."""
    from verify.gguf_files import gguf_check

    # A damaged file fails before torch (training.decode) and llama.cpp are imported.
    context = gguf_check.read_gguf(path)["context_length"]
    if context != max_length:
        raise InputError(
            f"--gguf: {path} has context_length {context}, but --metadata says max_seq_len {max_length}; "
            "pass the GGUF exported from that checkpoint"
        )
    from training import decode

    llama = gguf_check.load_llama(path)
    return decode.Recompute(lambda ids: gguf_check.gguf_logits(llama, ids.numpy()))


def _sampler() -> sampling.Settings | None:
    """The sampling flags as Settings (None with --greedy); InputError naming a flag out of range.

    top_k, top_p, min_p and seed are checked even with --greedy: a bad value is a mistake either way.
    """
    if FLAGS.seed < 0:
        raise InputError(f"--seed: {FLAGS.seed}; must be >= 0")
    temperature = FLAGS.temperature
    if FLAGS.greedy:
        temperature = sampling.DEFAULT.temperature  # ignored with --greedy
    elif temperature <= 0:
        raise InputError(f"--temperature must be > 0 when sampling, got {temperature} (or use --greedy)")
    problems = sampling.problems(temperature, FLAGS.top_k, FLAGS.top_p, FLAGS.min_p)
    if problems:
        raise InputError(f"--{problems[0]}")
    if FLAGS.greedy:
        return None
    return sampling.Settings(temperature, FLAGS.top_k, FLAGS.top_p, FLAGS.min_p)


def _constrained(steps, trie: canonical_trie.CanonicalTrie):
    """steps (training.decode.Steps) with logits masked to what the trie allows after the reply so far."""
    from training import decode

    class Constrained(decode.Steps):
        def prefill(self, prompt_ids):
            self.reply = []
            return self._masked(steps.prefill(prompt_ids))

        def decode(self, token):
            self.reply.append(token)
            return self._masked(steps.decode(token))

        def _masked(self, logits):
            return trie.mask(np.asarray(logits, dtype=np.float64), self.reply)

    return Constrained()


USAGE = 'usage: ask [--backend=aoti|torchscript|gguf] -- "Will it rain tomorrow?" (or: ask --batch < FILE)'
# A --batch line longer than this is refused before it is decoded or tokenized: far beyond any context.
MAX_LINE_BYTES = 1 << 16


def _questions(argv: list[str]) -> list[tuple[str, str]]:
    """[(where, question)]: the command line's question, or with --batch each line of stdin; the
    text is checked here (UTF-8), the prompt rules later (data/prompt.py)."""
    asked = " ".join(argv[1:]).strip()
    if FLAGS.batch:
        if argv[1:]:
            raise InputError("--batch reads the questions from standard input; give none on the command line")
        return list(_stdin_questions(sys.stdin.buffer))
    if not asked:
        raise InputError(f"no question: {USAGE}")
    try:
        asked.encode("utf-8")
    except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as lone surrogates
        raise InputError("question: holds bytes that are not UTF-8; ask in UTF-8 text") from None
    return [("", asked)]


def _stdin_questions(stream):
    """(where, question) for each line of `stream` (bytes), its line ending removed."""
    number = 0
    while line := stream.readline(MAX_LINE_BYTES + 2):  # room for the line's own CR LF
        number += 1
        where = f"standard input line {number}: "
        if len(line.rstrip(b"\r\n")) > MAX_LINE_BYTES:
            raise InputError(f"{where}longer than {MAX_LINE_BYTES} bytes; ask a shorter question")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{where}holds bytes that are not UTF-8; ask in UTF-8 text") from None
        yield where, text.removesuffix("\n").removesuffix("\r").strip()
    if number == 0:
        raise InputError(f"no question: standard input is empty; {USAGE}")


def _model_input(tokenizer, trie, where: str, question: str, max_length: int) -> list[int]:
    """The question's model input; InputError (prefixed `where`) where the prompt rules refuse it or
    it leaves no room in the context for the longest reply."""
    try:
        ids = prompt.build_model_input(tokenizer, question)
    except InputError as error:
        raise InputError(f"{where}{error}") from None
    if len(ids) + trie.longest > max_length:  # refused, not truncated: a cut question is another question
        raise InputError(
            f"{where}question: {len(ids)} tokens with the prompt; at most {max_length - trie.longest} fit "
            f"the model's {max_length}-token context with room for a reply; ask a shorter question"
        )
    return ids


def main(argv: list[str]) -> None:
    if FLAGS.print_grammar:
        print(canonical_trie.gbnf(), end="")
        return
    questions = _questions(argv)
    if FLAGS.max_new_tokens < 1:
        raise InputError(f"--max_new_tokens: {FLAGS.max_new_tokens}; must be at least 1")
    sampler = _sampler()
    cli.require_flag(FLAGS.tokenizer, "tokenizer")
    cli.require_flag(FLAGS.metadata, "metadata")
    tokenizer = Tokenizer.load(FLAGS.tokenizer)
    # The context is the checkpoint's (validated like every loader's before anything is built).
    _, cfg = checkpoint.check_metadata(FLAGS.metadata)
    max_length = cfg.max_seq_len
    if FLAGS.variant not in GGUF_VARIANTS:
        raise InputError(f"--variant: {FLAGS.variant!r}; choose one of {', '.join(GGUF_VARIANTS)}")
    if FLAGS.backend != "gguf" and FLAGS.variant != "f32":
        raise InputError(f"--variant={FLAGS.variant} names a GGUF file; use it with --backend=gguf")
    flag = {"aoti": "aoti_decoder", "torchscript": "torchscript_decoder"}.get(
        FLAGS.backend, GGUF_VARIANTS[FLAGS.variant]
    )
    path = FLAGS[flag].value
    cli.require_flag(path, flag)
    build = None
    if FLAGS.backend == "aoti":
        # Before torch: a package whose layout or shared object is not the export's is bad input,
        # refused before anything in it is extracted or run.
        cli.require_flag(FLAGS.contract, "contract")
        build = aoti_build(FLAGS.contract, FLAGS.metadata)
        pt2_archive.check_aoti_file(path, build["so_sha256"])
    trie = canonical_trie.CanonicalTrie(tokenizer)
    if FLAGS.constrain and FLAGS.max_new_tokens < trie.longest:
        raise InputError(
            f"--max_new_tokens: {FLAGS.max_new_tokens}; --constrain needs at least {trie.longest}, "
            "the longest canonical reply"
        )
    # Every question is checked before a model loads or a reply is printed: no partial output.
    inputs = [_model_input(tokenizer, trie, where, question, max_length) for where, question in questions]
    # Each backend checks its file before it imports torch: a damaged one fails fast.
    if FLAGS.backend == "aoti":
        model = aoti_steps(path, build, cfg, FLAGS.torchscript_decoder)
    elif FLAGS.backend == "torchscript":
        model = torchscript_steps(path, cfg)
    else:
        model = gguf_steps(path, max_length)
    if FLAGS.constrain:
        model = _constrained(model, trie)

    from training import decode

    for ids in inputs:
        new = decode.generate(
            model,
            ids,
            eos_id=tokenizer.eos_id,
            max_new_tokens=FLAGS.max_new_tokens,
            sampler=sampler,
            seed=FLAGS.seed,
            max_length=max_length,
        )
        reply = tokenizer.decode(new).strip()
        print(reply.replace("\n", "\\n") if FLAGS.batch else reply)
    sys.stdout.flush()


if __name__ == "__main__":
    cli.run(main, accept_args=True)
