"""The student's settings: its architecture (what a checkpoint's metadata and the contract name)
and how it is distilled (the trainer's defaults, which are also the trainer binary's flag defaults).

Apart from model.py and distill.py so that the binaries can read flags and check a checkpoint's
metadata without importing torch: a bad flag or file then fails in well under a second.
"""

import dataclasses
import math

MODEL_TYPE = "magic-8-ball"

# Limits on a student's architecture, from flags or from a file. Every loader checks a config against
# them before it builds anything, so a hostile student.json (max_seq_len 1e9, say, whose RoPE tables
# alone would be hundreds of GB) is refused instead of exhausting memory. Large enough for real use
# of this pipeline, far below what a 2-core CI machine can hold.
MAX_SEQ_LEN = 8192
MAX_PARAMETERS = 100_000_000
MAX_VOCAB_SIZE = 1 << 20  # also the contract's bound on vocab_size
MAX_ROPE_THETA = 1e9


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 512
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 512
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def parameter_count(self) -> int:
        """Parameters of training.model.Student, counted without torch (a tied weight once)."""
        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        attention = 2 * d * d + 2 * d * kv  # q, o: d x d; k, v: d x (n_kv_heads * head_dim)
        block = attention + 3 * d * self.ffn_hidden + 2 * d  # SwiGLU gate, up, down; two RMSNorms
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return embeddings + self.n_layers * block + d  # + the final norm

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """A validated config from a JSON object; ConfigError naming the field otherwise. Every field
        is required: a file that leaves one out was written by something else."""
        if not isinstance(values, dict):
            raise ConfigError("", "must be a JSON object of model settings")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(unknown[0], f"unknown field; expected only {', '.join(names)}")
        missing = [name for name in names if name not in values]
        if missing:
            raise ConfigError(missing[0], "missing")
        return validate(values)


class ConfigError(ValueError):
    """A model setting out of type or range: `field` names it (a flag, or config.<field> in a file)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field, self.problem = field, problem


def _check_type(name: str, value, kind: type) -> None:
    # bool is an int in Python; a size of `true` is refused, and so is 128.0 for an integer.
    ok = type(value) is kind or (kind is float and type(value) is int)
    if not ok:
        raise ConfigError(
            name, f"is {value!r}; must be {'a' if kind is bool else 'a positive'} {kind.__name__}"
        )
    if kind is float and not math.isfinite(value):
        raise ConfigError(name, f"is {value!r}; must be finite")


def validate(values: dict) -> ModelConfig:
    """ModelConfig(**values) once every value has its field's type and lies within the limits above,
    and the heads fit together; ConfigError naming the first field that does not. No torch, no
    allocation: binaries call it before anything is built."""
    fields = {f.name: type(f.default) for f in dataclasses.fields(ModelConfig)}
    for name, value in values.items():
        _check_type(name, value, fields[name])
        if fields[name] is not bool and not value > 0:
            raise ConfigError(name, f"is {value!r}; must be positive")
    limits = {"max_seq_len": MAX_SEQ_LEN, "vocab_size": MAX_VOCAB_SIZE, "rope_theta": MAX_ROPE_THETA}
    for name, limit in limits.items():
        if name in values and values[name] > limit:
            raise ConfigError(name, f"is {values[name]!r}; at most {limit} is supported")
    # Each size is at most the parameter limit: the products below stay small exact integers.
    for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden"):
        if name in values and values[name] > MAX_PARAMETERS:
            raise ConfigError(name, f"is {values[name]!r}; at most {MAX_PARAMETERS} is supported")
    if "norm_eps" in values and not values["norm_eps"] < 1:
        raise ConfigError("norm_eps", f"is {values['norm_eps']!r}; must be below 1")
    cfg = ModelConfig(**values)
    if cfg.d_model % cfg.n_heads:
        raise ConfigError("n_heads", f"{cfg.n_heads} does not divide d_model {cfg.d_model}")
    if cfg.head_dim % 2:
        raise ConfigError(
            "n_heads",
            f"head dimension d_model / n_heads = {cfg.d_model} / {cfg.n_heads} = {cfg.head_dim} is odd; "
            "RoPE rotates pairs, so it must be even",
        )
    if cfg.n_heads % cfg.n_kv_heads:
        raise ConfigError(
            "n_kv_heads", f"{cfg.n_kv_heads} does not divide n_heads {cfg.n_heads} (whole query groups)"
        )
    if cfg.parameter_count > MAX_PARAMETERS:
        raise ConfigError("", f"{cfg.parameter_count:,} parameters; at most {MAX_PARAMETERS:,} are supported")
    return cfg


# The default contract lengths (conversion/contract.py): every artifact is verified at each. The
# longest is the default max_seq_len; a pipeline configuration names its own (pipeline/defs.bzl).
DEFAULT_LENGTHS = tuple(ModelConfig.max_seq_len >> shift for shift in (2, 1, 0))


@dataclasses.dataclass(frozen=True)
class LossConfig:
    # Defaults tuned on make_toy_kd's default dataset, with the KL that renormalised over the top-k
    # list (before the tail bucket, training/distill.py), and not re-tuned since. CE on sampled
    # tokens is noisy: 0.5 and 0.2 gave per-kind TV 0.08 and 0.067 where 0.05 gave 0.04; 0.02
    # starved the off-list mass (0.069), which that KL left to CE and the tail bucket now matches.
    temperature: float = 1.0
    kl_weight: float = 1.0
    ce_weight: float = 0.05


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # Defaults: ~4800 train records, half of them with noise (data/augment.py), 400 steps of 64
    # (~930k tokens, ~36 s at the 25k tokens/s the trainer reaches on 2 free cores, BENCHMARKS.md)
    # give the held-out targets with margin and the out-of-distribution targets of
    # //pipeline:robustness_test (300 steps left 2 of 330 sampled OOD replies off-script).
    steps: int = 400
    batch_size: int = 64
    lr: float = 1.5e-3
    warmup: int = 30
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    beta2: float = 0.95
    seed: int = 0
    heldout_every: int = 100  # steps between held-out evaluations (0: only at the end)
    log_every_s: float = 2.0  # progress is logged at most this often...
    log_every_steps: int = 0  # ...or every this many steps when > 0
