"""The quantized-GGUF floors emulate exactly the weights the file holds, and cost what they should."""

import concurrent.futures
import json
import os

import gguf
import numpy as np
import pytest
import torch

from conversion import gguf_export, gguf_quant
from data import generate
from training.model import ModelConfig, Student, init_weights
from verify import parity
from verify.floors import floors

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    tok, _, _ = generate.generate(n=40, seed=0, heldout_fraction=0.5, topk=4)
    return tok


@pytest.fixture(scope="module")
def model():
    student = Student(ModelConfig())
    init_weights(student, seed=0)
    with torch.no_grad():
        for param in student.parameters():
            if param.ndim == 2:
                param.mul_(8.0)  # sharp logits, like a trained student's (gguf_export_test)
    return student.eval()


@pytest.mark.parametrize("precision, variant", sorted(floors.QUANTIZED_GGUF.items()))
def test_the_emulation_computes_with_the_files_weights(tmp_path, model, tokenizer, precision, variant):
    path = str(tmp_path / f"{variant}.gguf")
    gguf_export.export(model, tokenizer, path, dtype=variant, permute_qk=False)
    stored = {t.name: t for t in gguf.GGUFReader(path, "r").tensors}
    twin = floors.emulation(model, precision)
    state = dict(twin.named_parameters())
    for state_name, name in gguf_export.tensor_names(model.cfg).items():
        tensor = stored[name]
        expected = gguf_quant.decode(tensor.data, tensor.tensor_type).reshape(state[state_name].shape)
        assert state[state_name].dtype == torch.float64
        np.testing.assert_array_equal(state[state_name].detach().numpy(), expected.astype(np.float64))


def test_q4_0_sits_further_from_eager_than_q8_0(model):
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, size=(1, 64))
    eager = floors.torch_forward(model)(ids)
    kl = {
        precision: parity.compare_logits(
            eager, floors.torch_forward(floors.emulation(model, precision))(ids)
        ).kl_mean
        for precision in ("f32", "w_f16", "w_q8_0", "w_q4_0")
    }
    assert kl["f32"] < kl["w_f16"] < kl["w_q8_0"] < kl["w_q4_0"]


def test_every_quantized_precision_has_a_method():
    assert set(floors.QUANTIZED_GGUF) <= set(floors.METHODS)
    assert set(floors.QUANTIZED_GGUF.values()) == set(gguf_quant.QUANTIZED)


def _inputs(tokenizer, model, lengths=(16, 32)):
    from verify import inputs as inputs_lib

    settings = inputs_lib.Settings(text_sequences=6, behaviour_questions=4, max_new_tokens=6)
    heldout = sorted(generate.generate(n=40, seed=0, heldout_fraction=0.5, topk=4)[2], key=lambda r: r.id)
    heldout = [r for r in heldout if r.split == "heldout"]
    rows = inputs_lib.numeric_rows(lengths, model.cfg.vocab_size, tokenizer, heldout, settings)
    prompts = inputs_lib.replay_prompts(tokenizer, heldout, settings)
    return rows, prompts, inputs_lib.replay_continuations(model, tokenizer, prompts, settings)


def test_each_length_has_the_floors_of_its_own_rows(model, tokenizer):
    """No pooling across lengths: each scope's floors are the emulation's metrics on that length's
    rows alone, and top-1 disagreement is floored at one position of that length."""
    rows, prompts, continuations = _inputs(tokenizer, model)
    measured = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, ["fp16"])["fp16"]
    eager, twin = floors.torch_forward(model), floors.torch_forward(floors.emulation(model, "fp16"))
    for length, length_rows in rows.items():
        comparison = parity.compare_logits(
            np.concatenate([eager(row) for row in length_rows], axis=1),
            np.concatenate([twin(row) for row in length_rows], axis=1),
        )
        expected = comparison.gated()
        expected["top1_disagreement"] = max(expected["top1_disagreement"], 1 / (len(length_rows) * length))
        assert measured[floors.scope(length)] == pytest.approx(expected, rel=1e-12)
    assert measured["T16"]["top1_disagreement"] >= 1 / 32 > measured["T32"]["top1_disagreement"] / 2
    assert measured["T16"] != measured["T32"]
    assert sorted(measured) == ["T16", "T32", floors.DECODE, floors.REPLAY]


def test_a_reference_has_no_decode_scope(model, tokenizer):
    rows, prompts, continuations = _inputs(tokenizer, model, lengths=(32,))
    measured = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, ["ref_int8"])
    assert sorted(measured["ref_int8"]) == ["T32", floors.REPLAY]


def test_a_reference_with_the_variants_weights_has_the_variants_floors(model, tokenizer, monkeypatch):
    """ref_int8 after int8 with the same weights: the same floors without another emulation run;
    with one weight element off, measured on its own (and different)."""
    rows, prompts, continuations = _inputs(tokenizer, model, lengths=(32,))
    alone = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, ["ref_int8"])
    both = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, ["int8", "ref_int8"])
    assert both["ref_int8"] == alone["ref_int8"]
    assert both["ref_int8"] == {k: v for k, v in both["int8"].items() if k != floors.DECODE}

    quantize = floors._coreml_reference

    def one_off(twin, compression):
        twin = quantize(twin, compression)
        with torch.no_grad():
            twin.lm_head.weight[0, 0] += 1.0
        return twin

    monkeypatch.setattr(floors, "_coreml_reference", one_off)
    off = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, ["int8", "ref_int8"])
    assert off["ref_int8"] != {k: v for k, v in off["int8"].items() if k != floors.DECODE}


def test_a_gguf_reference_with_the_variants_weights_and_blocks_has_the_variants_floors(
    model, tokenizer, monkeypatch
):
    """ref_q8_0 beside w_q8_0 (the same weights, and its input blocks checked on every projection
    input of w_q8_0's forwards): the floors it has measured alone, without running its own logits
    job; with its input blocks off on one input, it is measured on its own (and differs)."""
    rows, prompts, continuations = _inputs(tokenizer, model, lengths=(32,))
    alone = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, ["ref_q8_0"], workers=1)
    ran = []
    measure_job = floors._measure_job

    def recorded(job):
        ran.append(job)
        return measure_job(job)

    monkeypatch.setattr(floors, "_measure_job", recorded)
    precisions = ["ref_q8_0", "w_q8_0"]
    both = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, precisions, workers=1)
    assert both["ref_q8_0"] == alone["ref_q8_0"]
    assert both["ref_q8_0"] == {k: v for k, v in both["w_q8_0"].items() if k != floors.DECODE}
    assert ("ref_q8_0", "logits") not in ran and list(both) == precisions

    through = floors._through_reference_q8_0

    def one_off(module, inputs):
        (rounded,) = through(module, inputs)
        if module is not None and module.out_features == model.cfg.vocab_size:
            rounded = rounded.clone()
            rounded.view(-1)[0] += 1.0  # the output projection's input, one value
        return (rounded,)

    monkeypatch.setattr(floors, "_through_reference_q8_0", one_off)
    ran.clear()
    off = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, precisions, workers=1)
    assert ("ref_q8_0", "logits") in ran
    assert off["ref_q8_0"] != {k: v for k, v in off["w_q8_0"].items() if k != floors.DECODE}
    assert off["w_q8_0"] == both["w_q8_0"]


@pytest.mark.parametrize("reference", ["ref_q8_0", "ref_q4_0"])
def test_a_gguf_reference_holds_the_formats_blocks_with_its_own_plan(model, reference):
    """Every matrix through verify/gguf_files/gguf_reference.py's blocks of the type its plan states (Q4_0's
    output projection Q8_0), float64; today that is exactly what the exporter's emulation holds."""
    from verify.gguf_files import gguf_reference

    twin = floors.emulation(model, reference)
    emulated = dict(
        floors.emulation(model, {"ref_q8_0": "w_q8_0", "ref_q4_0": "w_q4_0"}[reference]).named_parameters()
    )
    for name, weight in twin.named_parameters():
        assert weight.dtype == torch.float64
        if weight.ndim < 2:
            continue
        qtype = "Q8_0" if reference == "ref_q8_0" or name == "lm_head.weight" else "Q4_0"
        values = dict(model.named_parameters())[name].detach().numpy()
        expected = gguf_reference.dequantize(gguf_reference.QUANTIZERS[qtype](values)).reshape(values.shape)
        np.testing.assert_array_equal(weight.detach().numpy(), expected.astype(np.float64))
        np.testing.assert_array_equal(weight.detach().numpy(), emulated[name].detach().numpy())


@pytest.mark.parametrize("compression", ["int8", "int4"])
def test_a_coreml_reference_holds_the_independent_quantizers_weights(model, compression):
    from verify.coreml import coreml_reference

    twin = floors.emulation(model, "ref_" + compression)
    for name, weight in twin.named_parameters():
        original = dict(model.named_parameters())[name].detach().numpy().astype(np.float16)
        assert weight.dtype == torch.float16
        expected = coreml_reference.quantize(original, compression) if weight.ndim == 2 else original
        np.testing.assert_array_equal(weight.detach().numpy(), expected)


def test_every_lossy_precision_has_a_measured_reference():
    from conversion import gates as gates_lib

    assert set(gates_lib.REFERENCES) == {*floors.QUANTIZED_GGUF, *floors.COMPRESSED}
    assert set(gates_lib.REFERENCE_PRECISIONS) <= set(floors.METHODS)


def test_llama_cpp_precisions_compute_rope_as_ggml_does(model):
    """ggml's float32 angles: the first pair's angle is the position itself, each next one the
    previous times base^(-2/d) in float32; the tables differ from float64 ones by rounding that
    grows with the position, and every llama.cpp precision computes with them."""
    cfg = model.cfg
    cos, sin = floors.ggml_rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    half = cfg.head_dim // 2
    position = cfg.max_seq_len - 1
    assert cos[position, 0] == np.cos(np.float32(position)) and sin[position, half] == np.sin(
        np.float32(position)
    )
    assert sin[position, 0] == -sin[position, half] and cos[position, 1] == cos[position, half + 1]
    exact = model.rotary.cos.numpy()
    assert 0 < np.abs(cos - exact).max() < 1e-3
    assert (
        np.abs(cos - exact)[: cfg.max_seq_len // 8].max() < np.abs(cos - exact)[-cfg.max_seq_len // 8 :].max()
    )
    for precision in floors.LLAMA_CPP:
        twin = floors.emulation(model, precision)
        twin = getattr(twin, "model", twin)  # kv_f16 wraps the model
        np.testing.assert_array_equal(twin.rotary.cos.numpy().astype(np.float32), cos)
        np.testing.assert_array_equal(twin.rotary.sin.numpy().astype(np.float32), sin)
    assert np.array_equal(floors.emulation(model, "f32").rotary.cos.numpy(), exact.astype(np.float64))


def test_activations_round_through_q8_0_as_gguf_quantizes_them_bit_for_bit():
    """The emulation's Q8_0 round trip of a projection's input (all blocks at once) is gguf's own,
    row group by row group (gguf_quant.round_trip), to the bit: zero blocks, tiny and huge values."""
    rng = np.random.default_rng(0)
    for shape in [(1, 64, 128), (64, 128, 512), (3, 5, 64)]:
        for scale in (1e-6, 1.0, 1e4):
            x = rng.standard_normal(shape) * scale
            x[..., :32] = 0.0
            x[..., 32] = 0.5 * scale  # a block whose largest value is exact halves
            got = floors._round_input_through_q8_0(None, (torch.from_numpy(x),))[0]
            stored = gguf_quant.round_trip(x.astype(np.float32), gguf_quant.T.Q8_0)
            assert got.dtype == torch.float64
            assert got.numpy().tobytes() == stored.astype(np.float64).tobytes(), (shape, scale)
    with pytest.raises(ValueError, match="do not divide"):
        floors._round_input_through_q8_0(None, (torch.zeros(2, 48),))


def test_the_pool_measures_what_one_process_measures(model, tokenizer):
    """Two forked workers and one process give the same floors to the bit, in the same order: every
    job computes single threaded on the same inputs, and results are assembled by precision (with
    two workers, int8's package weights come from a forked process too)."""
    rows, prompts, continuations = _inputs(tokenizer, model, lengths=(16, 32))
    precisions = ["f32", "fp16", "int8", "kv_f16", "ref_int8", "ref_q8_0", "w_q8_0"]
    serial = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, precisions, workers=1)
    pooled = floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, precisions, workers=2)
    assert json.dumps(pooled) == json.dumps(serial)  # values and order, exactly
    assert list(pooled) == precisions and sorted(pooled["ref_int8"]) == ["T16", "T32", floors.REPLAY]


def _fails(*args, **kwargs):
    raise RuntimeError("a worker failed")


def _dies(job):
    os._exit(3)


@pytest.mark.parametrize("fault", ["raises", "dies"])
def test_a_failing_worker_fails_measure(model, tokenizer, monkeypatch, fault):
    """A job's exception is raised by measure; a worker that dies breaks the pool: nothing hangs."""
    rows, prompts, continuations = _inputs(tokenizer, model, lengths=(16,))
    if fault == "raises":
        monkeypatch.setattr(parity, "behaviour_check", _fails)  # the forked workers inherit it
        expected = pytest.raises(RuntimeError, match="a worker failed")
    else:
        monkeypatch.setattr(floors, "_measure_job", _dies)
        expected = pytest.raises(concurrent.futures.process.BrokenProcessPool)
    with expected:
        floors.measure(model, rows, prompts, continuations, tokenizer.pad_id, ["f32", "w_f16"], workers=2)
