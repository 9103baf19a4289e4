import json

import pytest

from data.remote import response_shapes as shapes


def legacy(tokens, values, tops, finish="stop", text=None):
    return {
        "choices": [
            {
                "text": "".join(tokens) if text is None else text,
                "finish_reason": finish,
                "logprobs": {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops},
            }
        ]
    }


def content(entries, finish="stop", chat=True):
    choice = {"finish_reason": finish, "logprobs": {"content": entries}}
    text = "".join(str(e["token"]) for e in entries or [])
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"choices": [choice]}


def entry(token, logprob, raw=None, top=(), **extra):
    return {"token": token, "logprob": logprob, "bytes": raw, "top_logprobs": list(top), **extra}


def test_llama_cpp_python_legacy_shape():
    doc = legacy([" It", " is"], [-0.1, -0.2], [{" It": -0.1, " Is": -2.5}, {" is": -0.2, "": -3.0}])
    read = shapes.read(doc, "completions")
    assert (read.text, read.finish_reason, read.shape) == (" It is", "stop", "legacy")
    assert read.positions[0].token == shapes.Token(" It", b" It", -0.1)
    assert read.positions[1].top == (shapes.Token(" is", b" is", -0.2), shapes.Token("", b"", -3.0))


def test_content_shape_uses_bytes_where_given():
    # llama-server: half of "🌟" is its raw byte, its text cut to valid UTF-8 (""); ids are extra keys.
    doc = content(
        [
            entry("", -0.3, [0xF0], [{"id": 244, "token": "", "bytes": [0xF0], "logprob": -0.3}], id=244),
            entry("x", -0.1, None, [{"token": "x", "bytes": None, "logprob": -0.1}]),
        ],
        chat=False,
    )
    read = shapes.read(doc, "completions")
    assert read.shape == "content"
    assert read.positions[0].token.raw == b"\xf0" and read.positions[0].top[0].raw == b"\xf0"
    assert read.positions[1].token.raw == b"x"


def test_no_logprobs_is_none_not_an_error():
    doc = {"choices": [{"message": {"content": None}, "finish_reason": "stop", "logprobs": None}]}
    read = shapes.read(doc, "chat")
    assert (read.text, read.positions) == ("", None)
    assert shapes.read(content(None), "chat").positions is None


def test_an_echoed_prompt_may_start_without_a_logprob():
    doc = legacy(["Q:", " Will"], [None, -8.7], [None, {" Will": -8.7}])
    read = shapes.read(doc, "completions", echo=True)
    assert read.positions[0].token.logprob is None and read.positions[0].top == ()
    with pytest.raises(shapes.ShapeError, match=r"position 0 token_logprobs: is None, not a number"):
        shapes.read(doc, "completions")


def test_rounding_above_zero_reads_as_zero_and_more_is_refused():
    assert shapes.read(legacy(["a"], [3e-7], [{"a": 3e-7}]), "completions").positions[0].token.logprob == 0.0
    with pytest.raises(shapes.ShapeError, match=r"0.5 is above 0, not a log-probability"):
        shapes.read(legacy(["a"], [0.5], [{"a": 0.5}]), "completions")


@pytest.mark.parametrize(
    "doc,problem",
    [
        ([], "the response is list, not a JSON object"),
        (
            {"error": {"message": "model not loaded"}},
            r"no choices \(the server says: \{'message': 'model not loaded'\}\)",
        ),
        ({"choices": [{"text": 3}]}, r"choices\[0\].text: is 3, not a string"),
        ({"choices": [{"message": "hi"}]}, r"choices\[0\].message: missing or not an object"),
        ({"choices": [{"text": "", "logprobs": []}]}, r"choices\[0\].logprobs: is \[\], not an object"),
        (legacy(["a", "b"], [-1.0], [{}, {}]), "have 2, 1 and 2 entries"),
        (legacy(["a"], [float("nan")], [{}]), "nan is not a finite log-probability"),
        (legacy(["a"], [-1.0], [{"a": float("-inf")}]), r"top_logprobs\['a'\]: -inf is not a finite"),
        (legacy(["a"], [True], [{}]), "is True, not a number"),
        (legacy(["a"], [-(10**400)], [{}]), "is not a finite number"),
        (legacy(["a"], [-1.0], ["x"]), "is 'x', not an object"),
        (content([entry("a", -1.0, [256])], chat=False), r"bytes: must be a list of byte values"),
        (content([entry("a", -1.0, None, ["x"])], chat=False), r"top_logprobs\[0\]: is 'x', not an object"),
        (content([entry(None, -1.0)], chat=False), r"content\[0\].token: is None, not a string"),
    ],
)
def test_what_is_wrong_is_named(doc, problem):
    api = "chat" if isinstance(doc, dict) and "message" in json.dumps(doc) else "completions"
    with pytest.raises(shapes.ShapeError, match=problem):
        shapes.read(doc, api)


def test_nan_and_infinity_pass_json_loads_so_they_are_checked_here():
    doc = json.loads(
        '{"choices": [{"text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [NaN], '
        '"top_logprobs": [{"a": -Infinity}]}}]}'
    )
    with pytest.raises(shapes.ShapeError, match="nan is not a finite log-probability"):
        shapes.read(doc, "completions")
