"""verify/gguf_files/gguf_content.py on GGUF files of a seeded student, as the exporter writes them and with
small faults planted in copies: every variant passes untouched, and each fault is counted exactly."""

import gguf
import numpy as np
import pytest
import torch

from common.errors import InputError
from conversion import gguf_export, gguf_quant
from data import generate
from training.model import ModelConfig, Student, init_weights
from verify.gguf_files import gguf_content, gguf_reference

torch.set_num_threads(1)
MATRIX = "blk.1.ffn_down.weight"


@pytest.fixture(scope="module")
def tokenizer():
    tok, _, _ = generate.generate(n=40, seed=0, heldout_fraction=0.5, topk=4)
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    student = Student(ModelConfig(vocab_size=tokenizer.vocab_size))
    init_weights(student, seed=3)
    return student.eval()


@pytest.fixture(scope="module")
def files(model, tokenizer, tmp_path_factory):
    """{variant: path} of every GGUF variant the exporter writes."""
    root = tmp_path_factory.mktemp("gguf")
    paths = {}
    for dtype in gguf_quant.DTYPES:
        paths[dtype] = str(root / f"m.{dtype}.gguf")
        gguf_export.export(model, tokenizer, paths[dtype], dtype=dtype)
    return paths


def _copy(path: str, tmp_path, tag: str) -> str:
    out = str(tmp_path / f"{tag}.gguf")
    with open(path, "rb") as src, open(out, "wb") as dst:
        dst.write(src.read())
    return out


def _edit(path: str, name: str, change) -> None:
    """Calls change(data) on tensor `name`'s bytes in place (a writable memory map)."""
    reader = gguf.GGUFReader(path, "r+")
    change(next(t for t in reader.tensors if t.name == name).data)
    reader.data.flush()
    del reader


@pytest.mark.parametrize("dtype", gguf_quant.DTYPES)
def test_the_exported_files_hold_exactly_the_reference_content(files, model, dtype):
    result = gguf_content.check(files[dtype], model, dtype)
    assert result.mismatches == [] and result.changed == 0 and result.changed_tensors == []
    assert result.max_abs_difference == 0.0
    assert result.tensors == 3 + 2 * 9
    assert result.elements == sum(p.numel() for p in model.state_dict().values())


def test_the_layout_is_llama_cpp_s(model):
    """The RoPE row order written here independently agrees with the exporter's, and an unpermuted
    projection differs from it (so the check does hold the row order)."""
    weight = model.state_dict()["blocks.0.attn.q_proj.weight"].numpy()
    n_heads = model.cfg.n_heads
    ours = gguf_content.interleave_rope_rows(weight, n_heads)
    assert np.array_equal(ours, gguf_export.permute_rows(weight, n_heads))
    assert not np.array_equal(ours, weight)
    # Head 0's first four rows: 0, half, 1, half + 1.
    half = model.cfg.head_dim // 2
    assert np.array_equal(ours[:4], weight[[0, half, 1, half + 1]])


def test_every_block_scale_of_one_q8_0_matrix_x1_003_changes_every_element(files, model, tmp_path):
    path = _copy(files["Q8_0"], tmp_path, "scaled")

    def scale(data):
        scales = data.reshape(-1, gguf_reference.BLOCK_BYTES["Q8_0"])[:, :2].copy().view(np.float16)
        data.reshape(-1, gguf_reference.BLOCK_BYTES["Q8_0"])[:, :2] = (
            (scales * np.float16(1.003)).astype("<f2").view(np.uint8)
        )

    _edit(path, MATRIX, scale)
    result = gguf_content.check(path, model, "Q8_0")
    size = model.state_dict()["blocks.1.ffn.down_proj.weight"].numel()
    assert result.mismatches == [] and result.changed == size
    assert result.changed_tensors == [f"{MATRIX}: {size} of {size} elements"]
    assert result.max_abs_difference > 0


def test_one_q4_0_level_up_changes_one_element(files, model, tmp_path):
    path = _copy(files["Q4_0"], tmp_path, "level")

    def level_up(data):
        byte = data.reshape(-1)[2]  # the first quant byte of the first block: elements 0 and 16
        low = byte & 0x0F
        data.reshape(-1)[2] = (byte & 0xF0) | (low + 1 if low < 15 else low - 1)

    _edit(path, MATRIX, level_up)
    result = gguf_content.check(path, model, "Q4_0")
    assert result.changed == 1 and result.mismatches == []


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_one_changed_bit_of_a_float_file_is_one_element(files, model, tmp_path, dtype):
    path = _copy(files[dtype], tmp_path, f"bit.{dtype}")

    def flip(data):
        raw = data.view(np.uint8).reshape(-1)
        raw[0] ^= 1  # the lowest mantissa bit of the first value

    _edit(path, MATRIX, flip)
    result = gguf_content.check(path, model, dtype)
    assert result.changed == 1 and result.mismatches == []


def test_a_file_of_another_variant_fails_on_every_tensor_of_another_type(files, model):
    """The Q8_0 file checked as Q4_0: every matrix but the output projection (Q8_0 in both plans)
    is stored in another type than the plan, and general.file_type says MOSTLY_Q8_0."""
    result = gguf_content.check(files["Q8_0"], model, "Q4_0")
    wrong = [m for m in result.mismatches if "stored as Q8_0, the Q4_0 plan says Q4_0" in m]
    assert len(wrong) == 1 + 2 * 7  # token_embd, and q, k, v, o, gate, up, down per block
    assert any(m.startswith("general.file_type") for m in result.mismatches)
    matrices = sum(p.numel() for n, p in model.state_dict().items() if p.ndim == 2 and n != "lm_head.weight")
    assert result.changed == matrices


def test_unpermuted_q_k_rows_are_changed_elements(model, tokenizer, tmp_path):
    path = str(tmp_path / "unpermuted.gguf")
    gguf_export.export(model, tokenizer, path, permute_qk=False)
    result = gguf_content.check(path, model, "f32")
    assert result.mismatches == [] and result.changed > 0
    assert {entry.split(":")[0].split(".")[-2] for entry in result.changed_tensors} == {"attn_q", "attn_k"}


def _write(path: str, tensors) -> None:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, array in tensors:
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_missing_extra_and_reshaped_tensors_fail(model, tmp_path):
    tensors = [(n, a) for n, a in gguf_export.gguf_tensors(model) if n != "blk.0.ffn_up.weight"]
    tensors.append(("blk.9.attn_q.weight", np.zeros((4, 32), np.float32)))
    tensors = [(n, a.reshape(a.shape[1], a.shape[0]) if n == MATRIX else a) for n, a in tensors]
    path = str(tmp_path / "odd.gguf")
    _write(path, tensors)
    result = gguf_content.check(path, model, "f32")
    assert sorted(result.mismatches) == sorted(
        [
            "blk.0.ffn_up.weight: missing",
            "blk.9.attn_q.weight: not a tensor of the checkpoint",
            f"{MATRIX}: shape [512, 128], the checkpoint's is [128, 512]",
        ]
    )
    sizes = model.state_dict()
    assert (
        result.changed
        == sizes["blocks.0.ffn.up_proj.weight"].numel() + sizes["blocks.1.ffn.down_proj.weight"].numel()
    )


def test_a_damaged_file_is_an_input_error(model, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(InputError, match="not a readable GGUF file"):
        gguf_content.check(str(path), model, "f32")
