import json
import logging
import math
import os
import time

import pytest

from common.errors import InputError
from data import generate
from data.remote import fake_openai, openai_teacher
from data.teachers import source, teacher_dataset

KEY = "sk-test-9f8e7d6c5b4a-NEVER-WRITE-ME"


@pytest.fixture(scope="module")
def tok():
    return generate.train_tokenizer()


@pytest.fixture(scope="module")
def prompts(tok):
    return teacher_dataset.prompts(generate.questions(6, 0, 0.2, 0.5), tok)


def teacher(url, tok, cache_dir, **overrides):
    options = dict(
        model="",
        api="completions",
        sampling=source.Sampling(),
        topk=4,
        kd="logits",
        tokenizer=tok,
        api_key=None,
        cache_dir=str(cache_dir),
        concurrency=2,
        timeout=10.0,
        max_retries=2,
    )
    options.update(overrides)
    return openai_teacher.OpenAITeacher(url, **options)


def run(url, tok, prompts, cache_dir, **overrides):
    t = teacher(url, tok, cache_dir, **overrides)
    if t.kd == "logits":
        t.handshake(tok)
    return t, list(t.replies(prompts))


def cached_methods(cache_dir):
    return sorted(
        json.load(open(os.path.join(cache_dir, name)))["request"]["method"] for name in os.listdir(cache_dir)
    )


def expected_row(script, tok, chosen, k):
    """The scripted server's list for `chosen`, as the student's sorted, rounded top-k."""
    others = [i for i in script.alternatives if i != chosen]
    pairs = [(chosen, script.CHOSEN)] + [(i, -3.0 - j) for j, i in enumerate(others)]
    return source.rounded_row(*zip(*sorted(pairs, key=lambda p: (-p[1], p[0]))[:k], strict=True))


@pytest.mark.parametrize(
    "api,shape,list_end",
    [("chat", "content", True), ("completions", "content", True), ("completions", "legacy", False)],
)
def test_replies_are_the_servers_tokens_with_their_lists_ending_in_eos(
    tok, prompts, tmp_path, api, shape, list_end
):
    script = fake_openai.ScriptedTeacher(tok, shape=shape, list_end=list_end)
    with fake_openai.Server(script) as server:
        t, replies = run(server.url, tok, prompts, tmp_path / "cache", api=api)
    reply_ids = tok.encode(" It is certain. 🌟")
    for reply in replies:
        assert reply.completion_ids == [*reply_ids, tok.eos_id]
        for position, chosen in enumerate(reply.completion_ids):
            ids, logprobs, tail = expected_row(script, tok, chosen, 4)
            assert reply.topk_ids[position] == ids
            assert reply.topk_logprobs[position] == logprobs
            assert reply.topk_tail[position] == tail
    # llama-cpp-python's shape leaves the end out: one probe per prompt, with echo.
    posts = server.posts()
    assert len(posts) == len(prompts) * (1 if list_end else 2)
    bodies = [s.json() for s in posts if not s.json().get("echo")]
    body = bodies[0]
    if api == "chat":
        asked = sorted(b["messages"][0]["content"] for b in bodies)
        assert asked == sorted(p.question for p in prompts) and all(len(b["messages"]) == 1 for b in bodies)
        assert body["logprobs"] is True and body["top_logprobs"] == 8
    else:
        assert body["logprobs"] == 8 and body["echo"] is False
    assert body["temperature"] == 0.0 and body["max_tokens"] == 32 and body["repeat_penalty"] == 1.0
    assert t.describe() == {
        "kind": "openai",
        "model": "scripted-teacher",
        "sha256": None,
        "endpoint": server.url,
        "server_model": "scripted-teacher",
        "api": api,
    }


def test_a_rerun_sends_nothing_and_gives_the_same_replies(tok, prompts, tmp_path):
    script = fake_openai.ScriptedTeacher(tok, shape="legacy", list_end=False)
    with fake_openai.Server(script) as server:
        first, replies = run(server.url, tok, prompts, tmp_path / "cache")
        sent = len(server.seen)
        second, again = run(server.url, tok, prompts, tmp_path / "cache")
        assert len(server.seen) == sent  # not one request, the model list included
    assert sent == 1 + 2 * len(prompts)
    assert again == replies
    assert (first.endpoint.sent, first.cache.hits) == (sent, 0)
    assert (second.endpoint.sent, second.cache.hits) == (0, sent)
    assert len(os.listdir(tmp_path / "cache")) == sent


def test_replies_come_in_prompt_order_whatever_order_they_finish_in(tok, prompts, tmp_path):
    delays = {p.question: 0.05 * (len(prompts) - i) for i, p in enumerate(prompts)}

    def reply(question):
        time.sleep(delays[question])  # the first prompt answers last
        return f" {question[:12]}"

    with fake_openai.Server(fake_openai.ScriptedTeacher(tok, reply=reply)) as server:
        _, replies = run(server.url, tok, prompts, tmp_path / "cache", concurrency=4, kd="sequence")
    assert [r.completion_ids for r in replies] == [
        [*tok.encode(f" {p.question[:12]}"), tok.eos_id] for p in prompts
    ]


def test_the_api_key_is_sent_and_never_written(tok, prompts, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    echo_key = {"fail": True}

    def edit(doc, body):
        return doc

    script = fake_openai.ScriptedTeacher(tok, shape="legacy", list_end=False, edit=edit)

    def handler(seen):
        # A server that quotes the header back in its error, once, then answers.
        if seen.method == "POST" and echo_key["fail"]:
            echo_key["fail"] = False
            return fake_openai.json_response(
                {"error": f"busy; you sent {seen.headers['Authorization']}"}, 503
            )
        return script(seen)

    with fake_openai.Server(handler) as server:
        t, replies = run(server.url, tok, prompts, tmp_path / "cache", api_key=KEY)
        # A request that fails for good: the server's message quotes the key, the error must not.
        bad = teacher(server.url, tok, tmp_path / "cache2", api_key=KEY, max_retries=0)
        echo_key["fail"] = True
        with pytest.raises(InputError) as error:
            list(bad.replies(prompts[:1]))
    assert all(s.headers.get("Authorization") == f"Bearer {KEY}" for s in server.seen)
    assert len(replies) == len(prompts)
    assert "busy; you sent Bearer <API key>" in str(error.value) and KEY not in str(error.value)
    out, err = capfd.readouterr()
    written = [
        open(os.path.join(root, name), "rb").read() for root, _, names in os.walk(tmp_path) for name in names
    ]
    assert written and all(KEY.encode() not in data for data in written)
    assert KEY not in out + err + caplog.text + json.dumps(t.describe())
    assert any("retry 1/2" in r.getMessage() for r in caplog.records)


def test_a_non_finite_logprob_names_the_record_and_question(tok, prompts, tmp_path):
    def edit(doc, body):
        doc["choices"][0]["logprobs"]["content"][1]["top_logprobs"][2]["logprob"] = float("nan")
        return doc

    with fake_openai.Server(fake_openai.ScriptedTeacher(tok, edit=edit)) as server:
        with pytest.raises(InputError) as error:
            run(server.url, tok, prompts, tmp_path / "cache")
    message = str(error.value)
    assert message.startswith(f"{server.url}: record {prompts[0].id} ({prompts[0].question!r}): ")
    assert "logprobs.content[1].top_logprobs[2].logprob: nan is not a finite log-probability" in message
    assert cached_methods(tmp_path / "cache") == ["GET"]  # the model list; a bad response is not kept


def test_missing_logprobs_are_refused_under_logits_and_fine_under_sequence(tok, prompts, tmp_path):
    def strip(doc, body):
        doc["choices"][0].pop("logprobs", None)
        return doc

    with fake_openai.Server(fake_openai.ScriptedTeacher(tok, edit=strip)) as server:
        with pytest.raises(InputError, match=r"record \d+ .*no log-probabilities.*--kd=sequence"):
            run(server.url, tok, prompts, tmp_path / "a")
        _, replies = run(server.url, tok, prompts, tmp_path / "b", kd="sequence")
    assert all(r.completion_ids[-1] == tok.eos_id and r.topk_ids == [] for r in replies)
    assert "logprobs" not in server.posts()[-1].json()


def test_an_unmappable_token_on_the_first_reply_fails_the_handshake(tok, prompts, tmp_path):
    def edit(doc, body):
        doc["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1].update(
            token="ꙮ", bytes=list("ꙮ".encode())
        )
        return doc

    with fake_openai.Server(fake_openai.ScriptedTeacher(tok, edit=edit)) as server:
        with pytest.raises(InputError) as error:
            run(server.url, tok, prompts, tmp_path / "cache")
    message = str(error.value)
    assert (
        "the teacher's vocabulary (the server's model 'scripted-teacher') is not the student tokenizer"
        in message
    )
    assert f"sha256 {tok.digest}, {tok.vocab_size} tokens" in message
    assert "'ꙮ'" in message and "--kd=sequence" in message


def test_after_the_first_reply_an_unmappable_chosen_token_is_refused_and_an_alternative_goes_to_the_tail(
    tok, prompts, tmp_path
):
    def alternative(doc, body):
        if body.get("prompt", "") != prompts[0].prompt:
            doc["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1].update(
                token="ꙮ", bytes=list("ꙮ".encode())
            )
        return doc

    with fake_openai.Server(fake_openai.ScriptedTeacher(tok, edit=alternative)) as server:
        t, replies = run(server.url, tok, prompts, tmp_path / "a")
    assert t.unmapped == len(prompts) - 1
    assert replies[1].topk_tail[0] > replies[0].topk_tail[0]  # the unmappable token's mass

    def chosen(doc, body):
        if body.get("prompt", "") != prompts[0].prompt:
            doc["choices"][0]["logprobs"]["content"][0].update(token="ꙮ", bytes=list("ꙮ".encode()))
        return doc

    with fake_openai.Server(fake_openai.ScriptedTeacher(tok, edit=chosen)) as server:
        with pytest.raises(InputError, match=r"record \d+ .*the token 'ꙮ' is no single token of the student"):
            run(server.url, tok, prompts, tmp_path / "b", concurrency=1)


def test_a_byte_token_and_its_piece_are_one_student_id_with_their_probabilities_added(tok, prompts, tmp_path):
    piece = next(i for i, p in enumerate(tok.pieces) if p == "I")

    def edit(doc, body):
        top = doc["choices"][0]["logprobs"]["content"][1]["top_logprobs"]
        top[1:3] = [
            {"token": "I", "bytes": [73], "logprob": -2.5},
            {"token": "I", "bytes": [73], "logprob": -2.6},
        ]
        return doc

    with fake_openai.Server(fake_openai.ScriptedTeacher(tok, edit=edit)) as server:
        _, replies = run(server.url, tok, prompts, tmp_path / "cache")
    row = dict(zip(replies[0].topk_ids[1], replies[0].topk_logprobs[1], strict=True))
    assert row[piece] == round(math.log(math.exp(-2.5) + math.exp(-2.6)), 6)


def test_a_reply_that_does_not_end_within_max_reply_tokens_is_refused(tok, prompts, tmp_path):
    def edit(doc, body):
        doc["choices"][0]["finish_reason"] = "length"
        return doc

    with fake_openai.Server(fake_openai.ScriptedTeacher(tok, edit=edit)) as server:
        with pytest.raises(InputError, match=r"has not ended within --max_reply_tokens=32 tokens"):
            run(server.url, tok, prompts, tmp_path / "cache")


def test_a_server_that_does_not_decode_greedily_is_refused(tok, prompts, tmp_path):
    def edit(doc, body):
        doc["choices"][0]["logprobs"]["content"][2]["top_logprobs"][3]["logprob"] = -0.1
        return doc

    with fake_openai.Server(fake_openai.ScriptedTeacher(tok, edit=edit)) as server:
        with pytest.raises(InputError) as error:
            run(server.url, tok, prompts, tmp_path / "cache")
    message = str(error.value)  # the first reply's, and a record's problem, not the vocabulary's
    assert message.startswith(f"{server.url}: record {prompts[0].id} ")
    assert "position 2: the server chose" in message and "so it did not decode greedily" in message


def test_chat_without_the_end_position_asks_for_completions_or_sequence(tok, prompts, tmp_path):
    with fake_openai.Server(fake_openai.ScriptedTeacher(tok, list_end=False)) as server:
        with pytest.raises(
            InputError, match=r"lists no position for the token that ended it.*--api=completions"
        ):
            run(server.url, tok, prompts, tmp_path / "cache", api="chat")


def test_sampling_sends_the_stated_settings_and_a_seed_per_record(tok, prompts, tmp_path):
    sampling = source.Sampling(mode="sample", temperature=0.7, top_k=5, top_p=0.9, seed=3, max_tokens=20)
    with fake_openai.Server(fake_openai.ScriptedTeacher(tok)) as server:
        run(server.url, tok, prompts, tmp_path / "cache", sampling=sampling, concurrency=1)
    bodies = [s.json() for s in server.posts()]
    for body, p in zip(bodies, prompts, strict=True):
        assert body["temperature"] == 0.7 and body["top_k"] == 5 and body["top_p"] == 0.9
        assert body["min_p"] == 0.0 and body["max_tokens"] == 20
        assert body["seed"] == openai_teacher.record_seed(3, p.id)
    assert len({b["seed"] for b in bodies}) == len(prompts)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:s3cr3t@127.0.0.1:8080/v1",
        "http://127.0.0.1:8080/v1?api_key=s3cr3t",
        "ftp://127.0.0.1/v1",
        "nonsense",
    ],
)
def test_a_url_with_credentials_or_no_http_is_refused_without_repeating_it(tok, tmp_path, url):
    with pytest.raises(InputError, match="^--teacher: ") as error:
        teacher(url, tok, tmp_path)
    assert "s3cr3t" not in str(error.value)


def test_a_server_that_is_down_names_the_url(tok, prompts, tmp_path):
    with fake_openai.Server(lambda seen: (200, {}, b"{}")) as server:
        url = server.url  # the port is free again once the server has stopped
    t = teacher(url, tok, tmp_path / "cache", max_retries=1)
    with pytest.raises(
        InputError, match=rf"^{url}/models: cannot connect \(connection refused\).*after 1 retries"
    ):
        t.handshake(tok)
    assert not os.path.exists(tmp_path / "cache")


def test_a_first_reply_tokenized_otherwise_than_the_student_would_fails_the_handshake(tok, prompts, tmp_path):
    def split_first_token(doc, body):
        content = doc["choices"][0]["logprobs"]["content"]
        first = content[0]
        pieces = [dict(first, token=c, bytes=list(c.encode())) for c in first["token"]]
        doc["choices"][0]["logprobs"]["content"] = pieces + content[1:]
        return doc

    reply = " It is certain. 🌟"
    assert all(tok.encode(c) for c in reply.split()[0])
    script = fake_openai.ScriptedTeacher(tok, reply=lambda question: reply, edit=split_first_token)
    with fake_openai.Server(script) as server:
        with pytest.raises(InputError) as error:
            run(server.url, tok, prompts, tmp_path / "cache")
    message = str(error.value)
    assert "the teacher's vocabulary" in message and "but the student tokenizer writes it as" in message
    assert "they part at token 0" in message and "--kd=sequence" in message
