import json
import os

import pytest

from common.errors import InputError
from data.remote import response_cache

BODY = {"model": "m", "prompt": "Q: Will I?\nA:", "logprobs": 8}


def test_a_stored_response_comes_back_and_counts_as_a_hit(tmp_path):
    cache = response_cache.ResponseCache(str(tmp_path / "cache"))
    assert cache.get("POST", "/v1/completions", BODY) is None
    assert not os.path.exists(tmp_path / "cache")  # made on the first put, not before
    cache.put("POST", "/v1/completions", BODY, {"choices": [{"text": " yes"}]})
    assert cache.get("POST", "/v1/completions", BODY) == {"choices": [{"text": " yes"}]}
    assert cache.hits == 1
    names = os.listdir(tmp_path / "cache")
    assert names == [response_cache.request_key("POST", "/v1/completions", BODY) + ".json"]


def test_the_key_is_the_method_path_and_canonical_body():
    key = response_cache.request_key("POST", "/v1/completions", BODY)
    reordered = dict(reversed(list(BODY.items())))
    assert response_cache.request_key("POST", "/v1/completions", reordered) == key
    assert response_cache.request_key("POST", "/v1/chat/completions", BODY) != key
    assert response_cache.request_key("GET", "/v1/completions", BODY) != key
    assert response_cache.request_key("POST", "/v1/completions", {**BODY, "logprobs": 9}) != key


@pytest.mark.parametrize(
    "content,problem",
    [
        (b"{not json", "not a cached response"),
        (b"\xff\xfe", "not a cached response"),
        (b"[1, 2]", "keys request and response"),
        (
            json.dumps(
                {"request": {"method": "POST", "path": "/v1/other", "body": BODY}, "response": {}}
            ).encode(),
            "another request",
        ),
    ],
)
def test_a_spoiled_file_is_bad_input_naming_it(tmp_path, content, problem):
    cache = response_cache.ResponseCache(str(tmp_path))
    name = tmp_path / (response_cache.request_key("POST", "/v1/completions", BODY) + ".json")
    name.write_bytes(content)
    with pytest.raises(InputError, match=rf"^{name}: .*{problem}.*delete it"):
        cache.get("POST", "/v1/completions", BODY)


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    monkeypatch.setattr(response_cache, "MAX_FILE_BYTES", 100)
    cache = response_cache.ResponseCache(str(tmp_path))
    cache.put("POST", "/p", BODY, {"text": "x" * 200})
    with pytest.raises(InputError, match="over 0 MiB"):
        cache.get("POST", "/p", BODY)
