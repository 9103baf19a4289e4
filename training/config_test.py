"""config: the torch-free parameter count agrees with the model, and validate() refuses each bad size."""

import dataclasses

import pytest

from training import config
from training.config import ConfigError, ModelConfig
from training.model import Student, count_parameters

_VALUES = ModelConfig().to_dict()


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(
    "sizes",
    [{}, {"d_model": 192, "n_layers": 3, "n_heads": 6, "n_kv_heads": 3}, {"n_kv_heads": 4, "ffn_hidden": 96}],
)
def test_parameter_count_matches_the_model(sizes, tied):
    cfg = dataclasses.replace(ModelConfig(), tie_embeddings=tied, **sizes)
    assert cfg.parameter_count == count_parameters(Student(cfg))


@pytest.mark.parametrize(
    "change, field, problem",
    [
        ({"max_seq_len": 10**9}, "max_seq_len", "at most 8192"),
        ({"vocab_size": 10**9}, "vocab_size", "at most"),
        ({"vocab_size": 500_000}, "", "parameters; at most 100,000,000"),
        ({"d_model": 0}, "d_model", "must be positive"),
        ({"n_layers": -2}, "n_layers", "must be positive"),
        ({"d_model": 128.0}, "d_model", "must be a positive int"),
        ({"n_heads": "4"}, "n_heads", "must be a positive int"),
        ({"n_layers": True}, "n_layers", "must be a positive int"),
        ({"tie_embeddings": 0}, "tie_embeddings", "must be a bool"),
        ({"rope_theta": float("inf")}, "rope_theta", "must be finite"),
        ({"norm_eps": 2.0}, "norm_eps", "below 1"),
        ({"n_kv_heads": 3}, "n_kv_heads", "does not divide n_heads 4"),
        ({"n_heads": 8, "d_model": 120}, "n_heads", "15 is odd"),
    ],
)
def test_from_dict_refuses_each_bad_value_naming_its_field(change, field, problem):
    with pytest.raises(ConfigError, match=problem) as raised:
        ModelConfig.from_dict(dict(_VALUES, **change))
    assert raised.value.field == field


def test_from_dict_refuses_missing_and_unknown_fields():
    with pytest.raises(ConfigError, match="missing") as raised:
        ModelConfig.from_dict({k: v for k, v in _VALUES.items() if k != "ffn_hidden"})
    assert raised.value.field == "ffn_hidden"
    with pytest.raises(ConfigError, match="unknown field") as raised:
        ModelConfig.from_dict(dict(_VALUES, n_experts=8))
    assert raised.value.field == "n_experts"


def test_the_defaults_and_the_limits_hold_together():
    assert ModelConfig.from_dict(_VALUES) == ModelConfig()
    assert ModelConfig().max_seq_len <= config.MAX_SEQ_LEN
    assert ModelConfig().parameter_count <= config.MAX_PARAMETERS
