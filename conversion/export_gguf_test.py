import hashlib
import json
import os

import pytest
import torch
from absl import flags
from absl.testing import flagsaver

from common import child_python
from common.errors import InputError
from conversion import export_gguf, modelfile
from data import tokenizer as tokenizer_lib
from verify import fixtures
from verify.gguf_files import gguf_check

torch.set_num_threads(1)
FLAGS = flags.FLAGS


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return fixtures.write_inputs(str(tmp_path_factory.mktemp("inputs")))


def _values(inputs, out_dir, **overrides):
    return {
        "weights": inputs.weights,
        "metadata": inputs.metadata,
        "tokenizer": inputs.tokenizer,
        "out": os.path.join(out_dir, "magic-8-ball.gguf"),
        "modelfile_out": os.path.join(out_dir, "Modelfile"),
        **overrides,
    }


def run(inputs, out_dir, **overrides):
    values = _values(inputs, out_dir, **overrides)
    argv = ["export_gguf"] + [f"--{name}={value}" for name, value in values.items()]
    with flagsaver.flagsaver():
        FLAGS.unparse_flags()
        FLAGS(argv)
        export_gguf.main(argv[:1])
    return values["out"], values["modelfile_out"]


def _sha(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_exports_a_checked_gguf_and_modelfile_reproducibly(inputs, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out, model_file = run(inputs, str(tmp_path / "a"))
    facts = gguf_check.read_gguf(out)
    assert facts["tokenizer_sha256"] == tokenizer_lib.Tokenizer.load(inputs.tokenizer).digest
    assert facts["tensors"]["blk.0.attn_q.weight"][1] == "F32"
    with open(model_file, encoding="utf-8") as handle:
        assert handle.read() == modelfile.render("magic-8-ball.gguf", facts["context_length"])
    with open(inputs.metadata, encoding="utf-8") as handle:
        assert facts["context_length"] == json.load(handle)["config"]["max_seq_len"]
    again, again_model_file = run(inputs, str(tmp_path / "b"))
    assert _sha(again) == _sha(out) and _sha(again_model_file) == _sha(model_file)

    f16, _ = run(inputs, str(tmp_path / "a"), out=str(tmp_path / "a" / "m16.gguf"), dtype="f16")
    assert gguf_check.read_gguf(f16)["tensors"]["blk.0.attn_q.weight"][1] == "F16"


def test_bad_inputs_are_input_errors_and_write_nothing(inputs, tmp_path):
    other = tokenizer_lib.train(["Q: Is this another tokenizer?\nA: Yes."] * 3, vocab_size=300)
    other_path = str(tmp_path / "other_tokenizer.json")
    other.save(other_path)
    truncated = str(tmp_path / "truncated.safetensors")
    with open(inputs.weights, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read()[:1000])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cases = [
        ({"tokenizer": other_path}, "trained with tokenizer"),
        ({"weights": truncated}, "sha256 does not match"),
        ({"metadata": str(tmp_path / "absent.json")}, "metadata not found"),
        ({"out": str(tmp_path / "missing_dir" / "m.gguf")}, "does not exist"),
        ({"modelfile_out": str(tmp_path / "Modelfile")}, "not in the directory of --out"),
        ({"out": ""}, "--out is required"),
    ]
    for overrides, message in cases:
        with pytest.raises(InputError, match=message):
            run(inputs, str(out_dir), **overrides)
        assert list(out_dir.iterdir()) == [], overrides


def test_binary_exits_2_with_one_line_and_no_output(inputs, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    bad = {**_values(inputs, str(out_dir)), "metadata": inputs.weights}  # weights where JSON belongs
    args = [f"--{name}={value}" for name, value in bad.items()]
    result = child_python.run_module("conversion.export_gguf", args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "not valid JSON checkpoint metadata" in result.stderr
    assert list(out_dir.iterdir()) == []
    # A bad flag value is bad input too.
    result = child_python.run_module("conversion.export_gguf", [*args, "--dtype=q4_0"])
    assert result.returncode == 2
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("dtype", ["Q8_0", "Q4_0"])
def test_exports_a_quantized_variant_with_its_own_modelfile(inputs, tmp_path, dtype):
    name = f"magic-8-ball.{dtype}.gguf"
    out, model_file = run(
        inputs,
        str(tmp_path),
        out=str(tmp_path / name),
        modelfile_out=str(tmp_path / f"Modelfile.{dtype}"),
        dtype=dtype,
    )
    facts = gguf_check.read_gguf(out)
    assert facts["tensors"]["blk.0.attn_q.weight"][1] == dtype
    assert facts["tensors"]["blk.0.attn_norm.weight"][1] == "F32"
    with open(model_file, encoding="utf-8") as handle:
        assert f"FROM ./{name}\n" in handle.read()


def test_a_k_quant_or_unknown_dtype_exits_2_listing_the_allowed_ones(inputs, tmp_path):
    args = [f"--{name}={value}" for name, value in _values(inputs, str(tmp_path)).items()]
    for dtype, why in (
        ("Q4_K_M", "K-quant; K-quants need every row to be a multiple of 256"),
        ("q8", "'q8'"),
    ):
        result = child_python.run_module("conversion.export_gguf", [*args, f"--dtype={dtype}"])
        assert result.returncode == 2, result.stderr
        assert why in result.stderr and "one of f32, f16, Q8_0, Q4_0" in result.stderr
        assert list(tmp_path.iterdir()) == []
