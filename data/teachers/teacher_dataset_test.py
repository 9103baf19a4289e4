"""The version-2 writer with the rules teacher behind the Teacher interface: no model needed, and its
records can be compared with the version-1 rules dataset of the same options."""

import dataclasses
import os

import pytest

from common.errors import InputError
from data import dataset, generate
from data.teachers import rules_teacher, source, teacher_dataset

N, SEED, HELDOUT, TOPK = 60, 1, 0.25, 5


@pytest.fixture(scope="module")
def tok():
    return generate.train_tokenizer()


@pytest.fixture(scope="module")
def rules_v1(tok):
    return generate.generate(N, SEED, HELDOUT, TOPK, tok)[2]


GREEDY = source.Sampling()


def _options(kd="logits", sampling=GREEDY):
    return teacher_dataset.Options(N, SEED, HELDOUT, generate.NOISE_FRACTION, TOPK, kd, sampling)


def _teacher(tok, kd="logits"):
    return rules_teacher.RulesTeacher(N, SEED, HELDOUT, TOPK, tok, kd=kd)


def test_logits_dataset_holds_the_rules_records_with_their_tails(tok, rules_v1, tmp_path):
    header, records = teacher_dataset.build(_teacher(tok), tok, _options())
    path = str(tmp_path / "kd.jsonl")
    teacher_dataset.write(path, header, records)
    data = dataset.read_dataset(path)
    assert data.header == header and data.kd == "logits"
    assert header["version"] == 2 and header["soft_targets"] is True and header["topk"] == TOPK
    assert header["teacher"]["kind"] == "rules" and header["sampling"] == {"mode": "greedy", "max_tokens": 32}
    assert (header["num_records"], header["num_heldout"], header["tokenizer_sha256"]) == (N, 15, tok.digest)
    fields = ("id", "split", "kind", "question", "prompt", "completion", "prompt_ids", "completion_ids")
    for got, want in zip(data.records, rules_v1, strict=True):
        assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]
        # The same lists, rounded alike; each tail is what its written list leaves off. The order
        # can differ: version 2 sorts by the rounded values, and two log-probabilities of the rules
        # teacher can round to one value with the higher id first (a record of these options does).
        assert [
            dict(zip(*pair, strict=True)) for pair in zip(got.topk_ids, got.topk_logprobs, strict=True)
        ] == [dict(zip(*pair, strict=True)) for pair in zip(want.topk_ids, want.topk_logprobs, strict=True)]
        assert got.topk_tail == [generate.round_logprob(dataset.tail_of(row)) for row in got.topk_logprobs]
    assert any(tail > 0 for r in data.records for tail in r.topk_tail)
    assert any(got.topk_ids != want.topk_ids for got, want in zip(data.records, rules_v1, strict=True))


def test_sequence_dataset_has_the_replies_and_no_soft_targets(tok, rules_v1, tmp_path):
    header, records = teacher_dataset.build(_teacher(tok, "sequence"), tok, _options("sequence"))
    path = str(tmp_path / "kd.jsonl")
    teacher_dataset.write(path, header, records)
    data = dataset.read_dataset(path)
    assert (data.header["kd"], data.header["soft_targets"], data.header["topk"]) == ("sequence", False, 0)
    assert [r.completion for r in data.records] == [r.completion for r in rules_v1]
    assert all(r.topk_ids == r.topk_logprobs == r.topk_tail == [] for r in data.records)


def test_the_sampling_settings_are_in_the_header(tok):
    sampled = source.Sampling("sample", 0.7, 40, 0.9, 5, 16)
    header, _ = teacher_dataset.build(_teacher(tok), tok, _options(sampling=sampled))
    assert header["sampling"] == {
        "mode": "sample",
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "seed": 5,
        "max_tokens": 16,
    }


class _Refusing(rules_teacher.RulesTeacher):
    def handshake(self, tokenizer):
        raise InputError("teacher.gguf: the teacher's vocabulary is not the student's")

    def replies(self, prompts):
        raise AssertionError("asked before the handshake")


def test_the_handshake_comes_before_any_reply_and_only_under_logits(tok):
    with pytest.raises(InputError, match="is not the student's"):
        teacher_dataset.build(_Refusing(N, SEED, HELDOUT, TOPK, tok), tok, _options())

    class Sequence(_Refusing):
        replies = rules_teacher.RulesTeacher.replies

    refusing = Sequence(N, SEED, HELDOUT, TOPK, tok, kd="sequence")
    _, records = teacher_dataset.build(refusing, tok, _options("sequence"))
    assert len(records) == N


class _NoEos(rules_teacher.RulesTeacher):
    def replies(self, prompts):
        for index, reply in enumerate(super().replies(prompts)):
            yield (
                dataclasses.replace(reply, completion_ids=reply.completion_ids[:-1] + [5])
                if index == 7
                else reply
            )


def test_a_bad_reply_is_bad_input_and_nothing_is_written(tok, tmp_path):
    header, records = teacher_dataset.build(_NoEos(N, SEED, HELDOUT, TOPK, tok), tok, _options())
    path = str(tmp_path / "kd.jsonl")
    with pytest.raises(InputError, match=r"kd.jsonl:9: completion_ids: must end with eos"):
        teacher_dataset.write(path, header, records)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "options, message",
    [
        (_options("soft"), "--kd is 'soft'; use logits"),
        (_options(sampling=source.Sampling("top")), "--teacher_sampling is 'top'; use greedy or sample"),
        (_options(sampling=source.Sampling("sample", temperature=0.0)), "--sample_temperature is 0.0"),
        (_options(sampling=source.Sampling("sample", top_p=0.0)), "--sample_top_p is 0.0"),
        (_options(sampling=source.Sampling("sample", top_k=-1)), "--sample_top_k is -1"),
        (_options(sampling=source.Sampling("sample", seed=-2)), "--sample_seed is -2"),
        (_options(sampling=source.Sampling(max_tokens=0)), "--max_reply_tokens is 0"),
        (dataclasses.replace(_options(), topk=0), "--topk is 0"),
    ],
)
def test_bad_options_name_their_flag(tok, options, message):
    with pytest.raises(InputError) as error:
        teacher_dataset.build(_teacher(tok), tok, options)
    assert str(error.value).startswith(message)
