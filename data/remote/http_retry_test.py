import email.utils
import logging
import threading
import time

import pytest

from common.errors import InputError
from data.remote import fake_openai, http_retry

OK = {"choices": [{"text": "yes"}]}


class Waits(threading.Event):
    """A stop event that records each wait before a retry and returns at once (never set)."""

    def __init__(self):
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return False


def scripted(*answers):
    """A handler giving `answers` in turn (status, headers, doc), then OK for good."""
    queue = list(answers)

    def handler(seen):
        if queue:
            status, headers, doc = queue.pop(0)
            return fake_openai.json_response(doc, status, headers)
        return fake_openai.json_response(OK)

    return handler


def endpoint(url, max_retries=3, stop=None, clock=time.time, timeout=5.0, key=None):
    return http_retry.Endpoint(
        url, api_key=key, timeout=timeout, max_retries=max_retries, stop=stop, clock=clock
    )


def test_429_is_retried_after_the_seconds_the_server_names_and_each_retry_is_logged(caplog):
    caplog.set_level(logging.WARNING)
    waits = Waits()
    handler = scripted((429, {"Retry-After": "1"}, {"error": "slow down"}), (429, {"Retry-After": "0"}, {}))
    with fake_openai.Server(handler) as server:
        doc = endpoint(server.url, stop=waits).request(
            "POST", "/completions", {"a": 1}, "record 3 ('Will I?')"
        )
        assert len(server.seen) == 3
    assert doc == OK and waits.waits == [1.0, 0.0]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        'retry 1/3 of record 3 (\'Will I?\'): HTTP 429 ({"error": "slow down"}); waiting 1.0 s',
        "retry 2/3 of record 3 ('Will I?'): HTTP 429 ({}); waiting 0.0 s",
    ]


def test_retry_after_as_an_http_date_is_the_time_until_then():
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    waits = Waits()
    with fake_openai.Server(scripted((503, {"Retry-After": date}, {}))) as server:
        endpoint(server.url, stop=waits, clock=lambda: now).request("GET", "/models", None, "the model list")
    assert waits.waits == [7.0]
    assert http_retry.retry_after_seconds(email.utils.formatdate(now - 60, usegmt=True), now) == 0.0
    assert http_retry.retry_after_seconds("soon", now) is None
    assert http_retry.retry_after_seconds(None, now) is None
    assert http_retry.retry_after_seconds(" 2.5 ", now) == 2.5


def test_5xx_without_retry_after_backs_off_exponentially_and_a_long_wait_is_cut():
    waits = Waits()
    answers = [(500, {}, {}), (502, {}, {}), (503, {}, {}), (504, {"Retry-After": "86400"}, {})]
    with fake_openai.Server(scripted(*answers)) as server:
        assert endpoint(server.url, max_retries=4, stop=waits).request("POST", "/x", {}, "it") == OK
    assert waits.waits == [0.5, 1.0, 2.0, http_retry.WAIT_LIMIT]
    assert [http_retry.backoff_seconds(a) for a in (1, 2, 7, 8, 20)] == [0.5, 1.0, 30.0, 30.0, 30.0]


def test_retries_are_bounded_and_the_error_names_the_url():
    waits = Waits()
    with fake_openai.Server(scripted(*[(503, {}, {"error": "overloaded"})] * 5)) as server:
        with pytest.raises(InputError) as error:
            endpoint(server.url, max_retries=2, stop=waits).request(
                "POST", "/completions", {}, "record 1 ('Q?')"
            )
        assert len(server.seen) == 3
    assert str(error.value) == (
        f'{server.url}/completions: HTTP 503 ({{"error": "overloaded"}}) for record 1 (\'Q?\'), and still '
        "after 2 retries; check that the server is running and reachable (or raise --max_retries)"
    )


@pytest.mark.parametrize("status,hint", [(400, ""), (401, "wants an API key"), (404, "it is the API base")])
def test_a_client_error_is_not_retried(status, hint):
    with fake_openai.Server(scripted((status, {}, {"error": "no"}))) as server:
        with pytest.raises(InputError, match=rf"HTTP {status} for it \(\{{\"error\": \"no\"\}}\).*{hint}"):
            endpoint(server.url, stop=Waits()).request("POST", "/x", {}, "it")
        assert len(server.seen) == 1


def test_a_missing_model_list_is_none_when_allowed():
    with fake_openai.Server(scripted((404, {}, {}))) as server:
        assert endpoint(server.url).request("GET", "/models", None, "m", missing_ok=True) is None


def test_a_refused_connection_is_retried_then_names_the_url():
    with fake_openai.Server(scripted()) as server:
        url = server.url
    waits = Waits()
    with pytest.raises(
        InputError, match=rf"^{url}/models: cannot connect \(connection refused\) for m, and still"
    ):
        endpoint(url, max_retries=2, stop=waits).request("GET", "/models", None, "m")
    assert waits.waits == [0.5, 1.0]


def test_a_timeout_is_retried():
    calls = []

    def slow_then_fast(seen):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.0)
        return fake_openai.json_response(OK)

    waits = Waits()
    with fake_openai.Server(slow_then_fast) as server:
        assert endpoint(server.url, stop=waits, timeout=0.3).request("POST", "/x", {}, "it") == OK
    assert len(calls) == 2 and waits.waits == [0.5]


def test_a_response_that_is_not_json_is_bad_input():
    with fake_openai.Server(lambda seen: (200, {}, b"{not json")) as server:
        with pytest.raises(InputError, match=r"/x: the response to record 2 \('Q\?'\) is not JSON"):
            endpoint(server.url).request("POST", "/x", {}, "record 2 ('Q?')")


def test_a_wait_is_cut_short_when_the_caller_gives_up():
    stop = threading.Event()
    stop.set()
    with fake_openai.Server(scripted((503, {}, {}))) as server:
        with pytest.raises(http_retry.Cancelled):
            endpoint(server.url, stop=stop).request("POST", "/x", {}, "it")


def test_the_key_goes_in_the_header_and_is_scrubbed_from_a_quoted_error():
    key = "sk-abc123"

    def handler(seen):
        return fake_openai.json_response({"error": f"bad key {seen.headers['Authorization']}"}, 403)

    with fake_openai.Server(handler) as server:
        with pytest.raises(InputError) as error:
            endpoint(server.url, key=key).request("POST", "/x", {}, "it")
        assert server.seen[0].headers["Authorization"] == f"Bearer {key}"
    assert "Bearer <API key>" in str(error.value) and key not in str(error.value)
