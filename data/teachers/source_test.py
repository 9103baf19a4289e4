import math

import pytest

from common.errors import InputError
from data import dataset
from data.teachers import source


@pytest.mark.parametrize(
    "text, kind, location",
    [
        ("rules", "rules", ""),
        ("gguf:/models/teacher.gguf", "gguf", "/models/teacher.gguf"),
        ("gguf:c:/x:y.gguf", "gguf", "c:/x:y.gguf"),  # only the first colon separates
        ("openai:http://127.0.0.1:8080/v1", "openai", "http://127.0.0.1:8080/v1"),
    ],
)
def test_parse_spec_reads_the_three_forms(text, kind, location):
    assert source.parse_spec(text) == source.Spec(kind, location)


@pytest.mark.parametrize("text", ["", "rules:x", "gguf", "gguf:", "openai:", "ollama:llama3", "GGUF:x.gguf"])
def test_parse_spec_refuses_anything_else_naming_the_forms(text):
    with pytest.raises(InputError, match=r"^--teacher is .*; use rules, gguf:PATH .* or openai:URL"):
        source.parse_spec(text)


def test_parse_spec_never_repeats_what_follows_the_kind():
    with pytest.raises(InputError) as error:
        source.parse_spec("opneai:http://user:s3cr3t@127.0.0.1:8080/v1")
    assert str(error.value).startswith("--teacher is 'opneai:...'") and "s3cr3t" not in str(error.value)


def test_rounded_row_rounds_sorts_by_the_rounded_values_and_computes_the_tail_from_them():
    # 5 and 2 round to the same value: the lower id must come first in the written list.
    ids, logprobs, tail = source.rounded_row([5, 2, 9], [-1.0000001, -1.0000004, -3.0])
    assert ids == [2, 5, 9] and logprobs == [-1.0, -1.0, -3.0]
    assert tail == round(1 - math.fsum(math.exp(lp) for lp in logprobs), 6)
    assert tail == round(dataset.tail_of(logprobs), 6) and 0.2 < tail < 0.25
    # A list holding nearly all the mass: the tail is clamped at 0 and never printed as -0.0.
    ids, logprobs, tail = source.rounded_row([1], [-1e-9])
    assert (ids, logprobs, str(tail)) == ([1], [0.0], "0.0")


def test_sampling_header_lists_what_the_mode_uses():
    assert source.Sampling().header() == {"mode": "greedy", "max_tokens": 32}
    assert source.Sampling("sample", 0.5, 3, 0.8, 9, 12).header() == {
        "mode": "sample",
        "temperature": 0.5,
        "top_k": 3,
        "top_p": 0.8,
        "seed": 9,
        "max_tokens": 12,
    }


@pytest.mark.parametrize(
    "sampling, message",
    [
        (source.Sampling("beam"), "--teacher_sampling is 'beam'; use greedy or sample"),
        (source.Sampling(max_tokens=0), "--max_reply_tokens is 0; use 1..1024"),
        (source.Sampling(max_tokens=5000), "--max_reply_tokens is 5000; use 1..1024"),
        (
            source.Sampling("sample", temperature=-1.0),
            "--sample_temperature is -1.0; use a finite temperature",
        ),
        (source.Sampling("sample", temperature=math.inf), "--sample_temperature is inf"),
        (source.Sampling("sample", temperature=math.nan), "--sample_temperature is nan"),
        (source.Sampling("sample", top_k=-3), "--sample_top_k is -3"),
        (source.Sampling("sample", top_p=1.5), "--sample_top_p is 1.5; use a probability in (0, 1]"),
        (source.Sampling("sample", top_p=math.nan), "--sample_top_p is nan"),
        (source.Sampling("sample", seed=-1), "--sample_seed is -1; use a seed >= 0"),
    ],
)
def test_bad_sampling_values_name_their_flag(sampling, message):
    with pytest.raises(InputError) as error:
        sampling.check()
    assert str(error.value).startswith(message)


def test_kd_modes():
    assert [source.check_kd(kd) for kd in source.KD_MODES] == ["logits", "sequence"]
    with pytest.raises(InputError, match=r"^--kd is 'soft'; use logits .* or sequence"):
        source.check_kd("soft")
