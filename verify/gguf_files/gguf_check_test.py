import os
import struct

import gguf
import numpy as np
import pytest
import torch

from common.errors import InputError
from conversion import gguf_export
from data import generate
from training.model import ModelConfig, Student, init_weights
from verify.gguf_files import gguf_check

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    tok, _, records = generate.generate(n=80, seed=0, heldout_fraction=0.5, topk=4)
    return tok, records


@pytest.fixture(scope="module")
def good(data, tmp_path_factory):
    tok, _ = data
    model = Student(ModelConfig(vocab_size=tok.vocab_size))
    init_weights(model, seed=0)
    path = str(tmp_path_factory.mktemp("good") / "m.gguf")
    gguf_export.export(model, tok, path)
    return path


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_read_gguf_reports_the_key_facts(good, data):
    tok, _ = data
    facts = gguf_check.read_gguf(good)
    assert facts["architecture"] == "llama" and facts["name"] == "magic-8-ball"
    assert facts["version"] == 3 and facts["size"] == os.path.getsize(good)
    cfg = ModelConfig()
    assert (facts["context_length"], facts["embedding_length"], facts["block_count"]) == (
        cfg.max_seq_len,
        128,
        2,
    )
    assert (facts["head_count"], facts["head_count_kv"], facts["feed_forward_length"]) == (4, 2, 512)
    assert facts["vocab_size"] == tok.vocab_size and facts["tokenizer_model"] == "llama"
    assert facts["tokenizer_sha256"] == tok.digest
    assert facts["tensors"]["output.weight"] == ((128, tok.vocab_size), "F32")
    assert len(facts["tensors"]) == 3 + 2 * 9


def test_missing_short_and_wrong_magic_or_version_are_input_errors(good, tmp_path):
    with pytest.raises(InputError, match="GGUF file not found"):
        gguf_check.read_gguf(str(tmp_path / "absent.gguf"))
    raw = open(good, "rb").read()
    with pytest.raises(InputError, match="shorter than the 24-byte header"):
        gguf_check.read_gguf(_write(tmp_path, "short.gguf", raw[:10]))
    with pytest.raises(InputError, match=r"magic is b'FUGG'.*re-export it"):
        gguf_check.read_gguf(_write(tmp_path, "magic.gguf", b"FUGG" + raw[4:]))
    with pytest.raises(InputError, match="GGUF version 99"):
        gguf_check.read_gguf(_write(tmp_path, "version.gguf", raw[:4] + struct.pack("<I", 99) + raw[8:]))


@pytest.mark.parametrize("fraction", [0.0001, 0.001, 0.01, 0.1, 0.5, 0.9, 0.999, 0.99999])
def test_truncated_files_are_input_errors_even_for_llama_cpp(good, tmp_path, fraction):
    raw = open(good, "rb").read()
    cut = max(24, int(len(raw) * fraction))
    path = _write(tmp_path, "cut.gguf", raw[:cut])
    with pytest.raises(InputError, match=r"cut\.gguf: not a readable GGUF file \(.*\); re-export it"):
        gguf_check.read_gguf(path)
    # load_llama validates first: llama.cpp never sees the damaged file (it could abort the process).
    with pytest.raises(InputError, match="not a readable GGUF file"):
        gguf_check.load_llama(path)


def test_a_garbled_key_count_is_an_input_error(good, tmp_path):
    raw = bytearray(open(good, "rb").read())
    raw[16:24] = struct.pack("<Q", 2**40)
    with pytest.raises(InputError, match="not a readable GGUF file"):
        gguf_check.read_gguf(_write(tmp_path, "kv.gguf", bytes(raw)))


def test_other_architectures_and_missing_keys_are_refused(tmp_path):
    path = str(tmp_path / "gpt2.gguf")
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InputError, match="general.architecture is 'gpt2', expected 'llama'"):
        gguf_check.read_gguf(path)

    path = str(tmp_path / "bare.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InputError, match="missing GGUF key llama.context_length"):
        gguf_check.read_gguf(path)


def test_llama_cpp_tokenizes_dataset_text_exactly_like_our_tokenizer(good, data):
    tok, records = data
    llama = gguf_check.load_llama(good)
    strings = [r.prompt for r in records] + [r.completion for r in records] + [r.question for r in records]
    strings += [
        "🎱 🔮 ✨ 🌟",
        "Q: Will my cat 🐈 learn to talk?\nA:",
        " It is certain. 🌟",
        "  double  spaces\n\nand lines",
        "Ünïcödé, 日本語, tabs\tand <s> markup </s>",
        "",
    ]
    assert gguf_check.tokenize_mismatches(llama, tok, strings) == []

    class Shifted:
        """A tokenizer that is off by one id: the check must notice."""

        def encode(self, text):
            return [i + 1 for i in tok.encode(text)]

    mismatches = gguf_check.tokenize_mismatches(llama, Shifted(), ["🎱 Yes", ""])
    assert [m[0] for m in mismatches] == ["🎱 Yes"]


def test_logits_interface_and_quiet_loading(good, capfd):
    llama = gguf_check.load(good)
    ids = np.array([[1, 300, 301, 302]], np.int32)
    first = gguf_check.logits(llama, ids)
    assert first.shape == (1, 4, 512) and first.dtype == np.float32
    # A fresh KV cache each call: a longer call in between changes nothing.
    gguf_check.gguf_logits(llama, np.ones((1, 200), np.int64))
    np.testing.assert_array_equal(gguf_check.gguf_logits(llama, ids), first)
    with pytest.raises(ValueError, match="shape"):
        gguf_check.gguf_logits(llama, ids[0])
    with pytest.raises(ValueError, match="length 257"):
        gguf_check.gguf_logits(llama, np.ones((1, 257), np.int32))
    assert capfd.readouterr().err == ""


def test_llama_cpp_gets_the_models_own_context(data, tmp_path):
    """n_ctx is the GGUF's context_length (the checkpoint's max_seq_len): a 512-token student runs
    at 512 and not beyond, and a context beyond the limit never reaches llama.cpp."""
    tok, _ = data
    model = Student(
        ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_heads=2, n_kv_heads=1, max_seq_len=512)
    )
    init_weights(model, seed=0)
    path = str(tmp_path / "long.gguf")
    gguf_export.export(model, tok, path)
    llama = gguf_check.load(path)
    assert llama.n_ctx() == gguf_check.read_gguf(path)["context_length"] == 512
    assert gguf_check.logits(llama, np.ones((1, 512), dtype=np.int64)).shape == (1, 512, tok.vocab_size)
    with pytest.raises(ValueError, match="context holds 1..512"):
        gguf_check.logits(llama, np.ones((1, 513), dtype=np.int64))

    huge = Student(
        ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_heads=2, n_kv_heads=1, max_seq_len=9000)
    )
    gguf_export.export(huge, tok, str(tmp_path / "huge.gguf"))
    with pytest.raises(InputError, match="llama.context_length: is 9000; must be an integer in 1..8192"):
        gguf_check.load(str(tmp_path / "huge.gguf"))
