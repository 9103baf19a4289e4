"""The AOTInductor decoder on a small student: compiled twice (two processes, the same bytes), loaded
through the archive check, and decoding what eager and the TorchScript decoder decode."""

import concurrent.futures
import os
import tempfile

import pytest
import torch

from common.errors import InputError
from conversion import aoti_decoder, kv_decoder, pt2_archive, pt2_files
from training import decode
from training.model import ModelConfig, Student, init_weights

torch.set_num_threads(1)

CFG = ModelConfig(
    vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=48
)
PROMPTS = ([1, 5, 9], [1, 30, 2, 2, 7, 11, 3])


def _model() -> Student:
    model = Student(CFG)
    init_weights(model, 5)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(8.0 if param.dim() > 1 else 1.0)  # attention patterns matter, replies vary
    return model.eval()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(model, package path, its .so pin, build info): the one compile of this test, run twice side
    by side, each in its own child process with its own compile cache."""
    model = _model()
    program = aoti_decoder.export_program(model)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: aoti_decoder.compile_package(program), range(2))
    assert first[0] == second[0], "two compiles of one program gave different bytes"
    path = str(tmp_path_factory.mktemp("aoti") / "magic-8-ball.decode.pt2")
    with open(path, "wb") as handle:
        handle.write(first[0])
    return model, path, pt2_archive.so_sha256(first[0]), first[1]


@pytest.fixture(scope="module")
def runner(compiled):
    _, path, so_sha256, _ = compiled
    return aoti_decoder.load(path, so_sha256)


def test_the_package_holds_no_build_paths_and_records_what_it_pinned(compiled):
    _, path, _, build = compiled
    with open(path, "rb") as handle:
        data = handle.read()
    for leaked in (
        os.path.dirname(os.path.dirname(os.path.abspath(aoti_decoder.__file__))),
        aoti_decoder._torch_site(),
    ):
        assert leaked.encode() not in data, leaked
    assert build["isa"] == aoti_decoder.ISA and build["threads"] == aoti_decoder.THREADS
    assert build["torch"] == torch.__version__
    assert aoti_decoder.runtime_blocker(build) is None
    assert sorted(pt2_files.records(data)) == sorted(pt2_archive.expected_aoti_records())


def test_eager_layer_cache_is_the_torchscript_decoders_cache_bit_for_bit():
    model = _model()
    ours = aoti_decoder.AOTISteps(aoti_decoder.Decoder(model), CFG)
    theirs = kv_decoder.TorchScriptSteps(kv_decoder.Decoder(model), CFG)
    for prompt in PROMPTS:
        assert torch.equal(ours.prefill(prompt), theirs.prefill(prompt))
        for token in (3, 4, 7, 7):
            assert torch.equal(ours.decode(token), theirs.decode(token))


def test_the_whole_cache_matches_eager_to_the_last_slot(compiled, runner):
    model = compiled[0]
    assert aoti_decoder.check_against_eager(runner, model, [1, 16, 48]) <= aoti_decoder.TOLERANCE


def test_greedy_replies_are_eagers_and_the_torchscript_decoders(compiled, runner):
    model = compiled[0]
    scripted = kv_decoder.TorchScriptSteps(kv_decoder.trace(model), CFG)
    steps = aoti_decoder.AOTISteps(runner, CFG)  # one object for every prompt, as ask and verify use it
    for prompt in PROMPTS:
        expected = decode.generate(decode.CachedSteps(model), prompt, eos_id=-1, max_new_tokens=30)
        assert decode.generate(steps, prompt, -1, 30) == expected
        assert decode.generate(scripted, prompt, -1, 30) == expected
        # Logits step by step beside the TorchScript decoder's.
        ours, theirs = steps.prefill(prompt), scripted.prefill(prompt)
        worst = float((ours - theirs).abs().max())
        for token in expected[:-1]:
            ours, theirs = steps.decode(token), scripted.decode(token)
            worst = max(worst, float((ours - theirs).abs().max()))
        assert worst <= aoti_decoder.TOLERANCE


def test_the_state_advances_between_calls(compiled, runner):
    """The cache is the caller's tensors, written in place at the call's slots and read by the next
    call: not a constant, not rewritten with one value, not reset between calls."""
    model = compiled[0]
    steps = aoti_decoder.AOTISteps(runner, CFG)
    steps.prefill([1, 5, 9, 11])
    for cache in (*steps.keys, *steps.values):
        assert cache[:, :, :4].abs().sum() > 0 and cache[:, :, 4:].abs().sum() == 0
    before = [cache.clone() for cache in steps.keys]
    first = steps.decode(7)
    for old, cache in zip(before, steps.keys, strict=True):
        assert torch.equal(cache[:, :, :4], old[:, :, :4])  # earlier slots kept
        assert cache[:, :, 4].abs().sum() > 0 and cache[:, :, 5:].abs().sum() == 0  # slot 4 written
    second = steps.decode(7)  # the same token one slot later: other keys, other logits
    assert not torch.equal(steps.keys[0][:, :, 4], steps.keys[0][:, :, 5])
    assert not torch.equal(first, second)
    with torch.no_grad():
        expected = model(torch.tensor([[1, 5, 9, 11, 7, 7]]))[0, -2:]
    assert float((torch.stack([first, second]) - expected).abs().max()) <= aoti_decoder.TOLERANCE
    # A new sequence: position 0 again, the old entries ignored (no reset needed).
    with torch.no_grad():
        expected = model(torch.tensor([[1, 5]]))[0, -1]
    assert float((steps.prefill([1, 5]) - expected).abs().max()) <= aoti_decoder.TOLERANCE


def test_inputs_the_package_was_not_compiled_for_are_refused_before_the_call(compiled, runner):
    steps = aoti_decoder.AOTISteps(runner, CFG)
    with pytest.raises(InputError, match="at most 48"):
        steps.prefill([3] * 49)
    steps.prefill([3] * 47)
    steps.decode(3)  # slot 47, the last
    with pytest.raises(InputError, match="49 tokens; the decoder's cache holds at most 48"):
        steps.decode(3)
    keys, values = steps.keys, steps.values
    good = [torch.zeros(1, 2, dtype=torch.int32), torch.tensor([0]), *keys, *values]
    steps.check_inputs(good)
    bad = {
        "int64 ids": [good[0].long(), *good[1:]],
        "a batch of two": [torch.zeros(2, 2, dtype=torch.int32), *good[1:]],
        "pos of two": [good[0], torch.tensor([0, 1]), *good[2:]],
        "a short cache": [*good[:2], keys[0][:, :, :40].contiguous(), *good[3:]],
        "a float64 cache": [*good[:2], keys[0].double(), *good[3:]],
        "a missing cache": good[:-1],
    }
    for what, inputs in bad.items():
        with pytest.raises(InputError, match="decoder"):
            steps.check_inputs(inputs)
            pytest.fail(f"{what} was accepted")


def test_a_load_leaves_nothing_in_tmpdir_loaded_or_refused(compiled, tmp_path, monkeypatch):
    _, path, so_sha256, _ = compiled
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    runner = aoti_decoder.load(path, so_sha256)
    assert os.listdir(tmp_path) == []
    logits = aoti_decoder.AOTISteps(runner, CFG).prefill([1, 2, 3])  # runs with its folder gone
    assert torch.isfinite(logits).all()
    monkeypatch.setattr(aoti_decoder, "MODEL_NAME", "not_in_the_package")
    with pytest.raises(InputError, match="AOTInductor cannot load it"):
        aoti_decoder.load(path, so_sha256)
    assert os.listdir(tmp_path) == []
    assert os.environ["TMPDIR"] == str(tmp_path)
    assert not [name for name in os.listdir(tempfile.gettempdir()) if name.startswith("m8b-aoti-")]


def test_another_pin_or_machine_stops_the_load(compiled):
    _, path, _, build = compiled
    with pytest.raises(InputError, match="but the contract pins"):
        aoti_decoder.load(path, "0" * 64)
    assert "this is torch" in aoti_decoder.runtime_blocker({**build, "torch": "1.0"})
    assert "compiled for" in aoti_decoder.runtime_blocker({**build, "isa": "avx512_vnni"})
    assert "compiled for" in aoti_decoder.runtime_blocker({**build, "machine": "aarch64"})
