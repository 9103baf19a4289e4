import hashlib
import os
import zipfile

import numpy as np
import pytest
import torch

from common.errors import InputError
from conversion import torchscript
from training.model import ModelConfig, Student, init_weights

# One thread: tests run side by side on 2 cores, where OpenMP's spinning threads crawl.
torch.set_num_threads(1)

LENGTHS = [64, 128, 256]


@pytest.fixture(scope="module")
def model():
    student = Student(ModelConfig())
    init_weights(student, seed=3)
    return student.eval()


@pytest.fixture(scope="module")
def exported(model):
    return torchscript.export(model, LENGTHS, max_seq_len=model.cfg.max_seq_len)


@pytest.mark.parametrize("length", [*LENGTHS, 1, 97])
def test_export_matches_eager_at_every_length(model, exported, length):
    ids = torch.randint(0, model.cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
    ids = ids.to(torch.int32)
    with torch.no_grad():
        got, expected = exported(ids), model(ids)
    assert got.shape == (1, length, model.cfg.vocab_size)
    assert got.dtype == torch.float32
    assert float((got - expected).abs().max()) <= 1e-4


def test_saved_bytes_are_reproducible_and_free_of_paths(model, exported):
    first = torchscript.to_bytes(exported)
    # Another trace in between advances torch's process-wide class-name counter.
    torch.jit.trace(model, torch.zeros(1, 8, dtype=torch.int32), check_trace=False)
    second = torchscript.to_bytes(torchscript.trace(model, 128))
    assert first == second
    names = zipfile.ZipFile(__import__("io").BytesIO(first)).namelist()
    assert not [n for n in names if n.endswith(".debug_pkl")]
    assert len(names) == len(set(names))
    here = os.path.dirname(os.path.abspath(__file__)).encode()
    assert here not in first
    assert b"site-packages" not in first
    assert os.path.dirname(torch.__file__).encode() not in first


def test_save_load_round_trip(tmp_path, model, exported):
    path = str(tmp_path / "model.pt")
    torchscript.save(exported, path)
    with open(path, "rb") as handle:
        assert (
            hashlib.sha256(handle.read()).hexdigest()
            == hashlib.sha256(torchscript.to_bytes(exported)).hexdigest()
        )
    loaded = torchscript.load(path)
    forward = torchscript.numpy_forward(loaded)
    ids = np.arange(64, dtype=np.int32)[None] % model.cfg.vocab_size
    logits = forward(ids)
    assert logits.dtype == np.float32 and logits.shape == (1, 64, model.cfg.vocab_size)
    np.testing.assert_allclose(logits, torchscript.numpy_forward(model)(ids), atol=1e-4, rtol=0)


def test_load_rejects_damaged_files(tmp_path, exported):
    data = torchscript.to_bytes(exported)
    with pytest.raises(InputError, match="not found"):
        torchscript.load(str(tmp_path / "absent.pt"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a TorchScript archive"):
        torchscript.load(str(truncated))
    not_zip = tmp_path / "text.pt"
    not_zip.write_text("hello")
    with pytest.raises(InputError, match="not a TorchScript archive"):
        torchscript.load(str(not_zip))
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside a tensor record: the zip CRC catches it
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match="damaged|not a"):
        torchscript.load(str(damaged))


@pytest.mark.parametrize(
    ("lengths", "default", "message"),
    [
        ([64, 128, 512], 128, f"above the model's max_seq_len {ModelConfig().max_seq_len}"),
        ([64, 256], 128, "default_length: 128 is not one of"),
        ([], 128, "empty"),
        ([64, 64, 128], 128, "repeats"),
    ],
)
def test_export_rejects_bad_lengths(model, lengths, default, message):
    with pytest.raises(InputError, match=message):
        torchscript.export(model, lengths, max_seq_len=model.cfg.max_seq_len, default_length=default)


def test_lengths_match_check_catches_wrong_numbers(model, exported):
    other = Student(ModelConfig())
    init_weights(other, seed=4)
    with pytest.raises(torchscript.FrozenLengthError, match="differ from eager"):
        torchscript.check_lengths_match(exported, other.eval(), LENGTHS, model.cfg.vocab_size)
