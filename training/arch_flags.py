"""The trainer's architecture flags (--d_model, --n_layers, ...): one per ModelConfig field that a
user sizes, with ModelConfig's defaults, and their checks.

Apart from run_toy_distill so that the trainer's flag handling stays small, and torch-free: config()
validates the flags with training/config.py's checks and limits (the ones every loader applies to a
checkpoint's metadata), so a bad size fails in well under a second, naming its flag.
"""

from absl import flags

from common.errors import InputError
from training.config import MAX_PARAMETERS, MAX_SEQ_LEN, ConfigError, ModelConfig, validate

_D = ModelConfig()

flags.DEFINE_integer("d_model", _D.d_model, "Student width (embedding size); n_heads must divide it.")
flags.DEFINE_integer("n_layers", _D.n_layers, "Transformer blocks.")
flags.DEFINE_integer("n_heads", _D.n_heads, "Query heads; the head dimension d_model / n_heads must be even.")
flags.DEFINE_integer(
    "n_kv_heads", _D.n_kv_heads, "Key/value heads (grouped-query attention); must divide n_heads."
)
flags.DEFINE_integer("ffn_hidden", _D.ffn_hidden, "SwiGLU hidden size.")
flags.DEFINE_integer(
    "max_seq_len",
    _D.max_seq_len,
    f"Context length, at most {MAX_SEQ_LEN}: the GGUF's context_length, the Modelfile's num_ctx, "
    "ask's cap and the upper bound of the contract's lengths all come from it.",
)
flags.DEFINE_float("rope_theta", _D.rope_theta, "RoPE base frequency.")
flags.DEFINE_bool("tie_embeddings", _D.tie_embeddings, "Share the embedding and output (lm_head) matrices.")

# The flags, in ModelConfig's field order (vocab_size and norm_eps are not flags: the tokenizer sets
# the vocabulary, and norm_eps is not a size).
NAMES = (
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "ffn_hidden",
    "max_seq_len",
    "rope_theta",
    "tie_embeddings",
)


def config(vocab_size: int) -> ModelConfig:
    """ModelConfig from the flags and the tokenizer's vocabulary; InputError naming the flag
    otherwise (the parameter limit, MAX_PARAMETERS, names the sizes together)."""
    values = {name: flags.FLAGS[name].value for name in NAMES}
    try:
        return validate(dict(values, vocab_size=vocab_size))
    except ConfigError as error:
        if error.field == "vocab_size":
            raise InputError(f"--tokenizer: {error.problem}") from None
        if not error.field:
            raise InputError(
                f"--d_model/--n_layers/--ffn_hidden: {error.problem} (limit {MAX_PARAMETERS:,}); "
                "make the student smaller"
            ) from None
        raise InputError(f"--{error.field}: {error.problem}") from None


def describe(cfg: ModelConfig) -> str:
    """One line for the log: the parameter count, tied or untied, and the shape."""
    tied = "tied" if cfg.tie_embeddings else "untied"
    return (
        f"parameters: {cfg.parameter_count:,} ({tied} embeddings; d_model {cfg.d_model}, "
        f"{cfg.n_layers} layers, {cfg.n_heads}/{cfg.n_kv_heads} heads, ffn {cfg.ffn_hidden}, "
        f"max_seq_len {cfg.max_seq_len})"
    )
