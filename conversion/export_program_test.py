"""The torch.export program (magic-8-ball.pt2): dynamic length, eager's logits, reproducible bytes,
and a load that refuses what export never writes."""

import io
import os
import subprocess
import sys
import zipfile

import pytest
import torch

from common import child_python
from common.errors import InputError
from conversion import export_program
from conversion.torchscript import FrozenLengthError, probe_ids
from training.model import ModelConfig, Student, init_weights
from verify import frozen_students

torch.set_num_threads(1)  # tests run side by side on 2 cores

CFG = ModelConfig(
    vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=48
)
LENGTHS = [16, 48]


def _model(cfg=CFG) -> Student:
    model = Student(cfg)
    init_weights(model, 5)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(8.0 if param.dim() > 1 else 1.0)  # logits that a small fault moves
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, path of the saved program, its bytes)."""
    model = _model()
    data = export_program.to_bytes(export_program.export(model, LENGTHS, CFG.max_seq_len, 16))
    path = str(tmp_path_factory.mktemp("program") / "magic-8-ball.pt2")
    with open(path, "wb") as handle:
        handle.write(data)
    return model, path, data


def test_the_loaded_program_computes_eager_at_every_length(saved):
    model, path, _ = saved
    module = export_program.load(path)
    diffs = export_program.check_lengths_match(module, model, [1, 7, *LENGTHS])
    assert max(diffs.values()) <= export_program.TOLERANCE
    logits = export_program.numpy_forward(module)(probe_ids(9, CFG.vocab_size).numpy())
    assert logits.shape == (1, 9, CFG.vocab_size) and str(logits.dtype) == "float32"


def test_a_length_past_the_range_is_refused_not_computed(saved):
    _, path, _ = saved
    module = export_program.load(path)
    with pytest.raises(RuntimeError, match="<= 48"):
        module(torch.zeros(1, CFG.max_seq_len + 1, dtype=torch.int32))


def test_a_wrong_program_fails_the_check():
    model, other = _model(), _model()
    with torch.no_grad():
        other.blocks[1].attn.k_proj.weight.mul_(1.01)
    program = export_program.export(other, LENGTHS, CFG.max_seq_len, 16)
    with pytest.raises(FrozenLengthError, match="differ from eager"):
        export_program.check_lengths_match(program.module(), model, LENGTHS)


@pytest.mark.parametrize("make", [frozen_students.frozen_rotary_student, frozen_students.frozen_view_student])
def test_a_model_that_freezes_the_length_is_refused(make):
    student = make()
    with pytest.raises(FrozenLengthError, match="freezes the sequence length"):
        export_program.export(student, [64, 128], student.cfg.max_seq_len, 128)


def test_bytes_are_reproducible_in_another_process_and_hold_no_paths(saved, tmp_path):
    _, _, data = saved
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from conversion import export_program\n"
        "from conversion.export_program_test import CFG, LENGTHS, _model\n"
        "data = export_program.to_bytes(export_program.export(_model(), LENGTHS, CFG.max_seq_len, 16))\n"
        "open(sys.argv[1], 'wb').write(data)\n"
    )
    out = str(tmp_path / "again.pt2")
    result = subprocess.run(
        [sys.executable, "-c", code, out],
        env=child_python.child_env(PYTHONHASHSEED="1"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out, "rb") as handle:
        assert handle.read() == data
    # The stack traces torch.export.save would write hold this checkout's absolute paths.
    root = os.path.dirname(os.path.dirname(os.path.abspath(export_program.__file__)))
    assert root.encode() not in data and b"model.py" not in data
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert archive.read(next(n for n in names if n.endswith("sample_inputs/model.pt"))) == b""
    assert names == sorted(names[:-1]) + [names[-1]]  # records sorted; the serialization id last


def test_tied_and_wider_students_pass_the_archive_check(tmp_path):
    cfg = ModelConfig(
        vocab_size=40,
        d_model=48,
        n_layers=3,
        n_heads=6,
        n_kv_heads=3,
        ffn_hidden=64,
        max_seq_len=32,
        tie_embeddings=True,
    )
    model = _model(cfg)
    path = str(tmp_path / "tied.pt2")
    with open(path, "wb") as handle:
        handle.write(export_program.to_bytes(export_program.export(model, [32], 32, 32)))
    export_program.check_lengths_match(export_program.load(path), model, [32])


def test_a_file_that_is_not_a_program_is_bad_input(tmp_path):
    path = tmp_path / "junk.pt2"
    path.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a torch.export program"):
        export_program.load(str(path))
    with pytest.raises(InputError, match="not found"):
        export_program.load(str(tmp_path / "missing.pt2"))
