"""JSON over HTTP to one API base URL (stdlib only), retried the way a rate-limited server asks.

A request is retried, at most max_retries times, on what a busy or restarting server does: HTTP 429
and any 5xx, a refused or dropped connection, and a timeout. The wait is the server's Retry-After
(delay-seconds or an HTTP date) when it sends one, else exponential backoff (BACKOFF_FIRST doubling
up to BACKOFF_LIMIT), never more than WAIT_LIMIT; each retry is one log line naming what the request
was for, what went wrong and the wait. Anything else (400, 401, 404, ...) is not going to get better
and fails at once. Whatever fails is an InputError naming the URL, never the API key: the key
travels in the Authorization header only, and a server's error text is scrubbed of it before it is
quoted.
"""

import email.utils
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from absl import logging

from common.errors import InputError

BACKOFF_FIRST = 0.5  # seconds before the first retry without Retry-After
BACKOFF_LIMIT = 30.0
WAIT_LIMIT = 300.0  # a longer Retry-After is cut to this (and the log line says so)
MAX_RESPONSE_BYTES = 64 << 20  # a completion with top-k lists is a few KB; more is not a reply
_QUOTE = 200  # characters of a server's error text quoted in a message


class Cancelled(Exception):
    """The caller gave up (another request failed) while this one waited to retry."""


class Unavailable(Exception):
    """A failure worth retrying: what happened, and the server's Retry-After in seconds if any."""

    def __init__(self, what: str, retry_after: float | None = None):
        super().__init__(what)
        self.what, self.retry_after = what, retry_after


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header as seconds from `now` (time.time()): delay-seconds or an HTTP date;
    None when absent or unreadable; a date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None


def backoff_seconds(attempt: int) -> float:
    """The wait before retry number `attempt` (1, 2, ...) when the server names none."""
    return min(BACKOFF_LIMIT, BACKOFF_FIRST * 2 ** (attempt - 1))


class Endpoint:
    """One API base URL (e.g. http://127.0.0.1:8080/v1): request() sends JSON to base + suffix."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.base_url = base_url.rstrip("/")
        self.base_path = urllib.parse.urlsplit(self.base_url).path
        self._api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        # A wait before a retry ends early, with Cancelled, once `stop` is set.
        self._stop = stop or threading.Event()
        self._clock = clock
        self._count_lock = threading.Lock()
        self.sent = 0  # requests sent, retries included
        # Proxies from the environment still apply; redirects are not followed (a POST that is
        # redirected is not the request that was asked for).
        self._opener = urllib.request.build_opener(_NoRedirect)

    def path(self, suffix: str) -> str:
        """The URL path a request to `suffix` goes to (what the response cache keys on)."""
        return self.base_path + suffix

    def scrub(self, text: str) -> str:
        """`text` without the API key (a server may echo the header it was sent)."""
        if self._api_key:
            text = text.replace(self._api_key, "<API key>")
        return text

    def request(self, method: str, suffix: str, body: dict | None, what: str, missing_ok: bool = False):
        """The parsed JSON of a 2xx response (None for a 404 when missing_ok). `what` names the
        request in log lines and messages, e.g. "record 7 ('Will I win?')"."""
        url = self.base_url + suffix
        data = None if body is None else json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        attempt = 0
        while True:
            try:
                return self._once(method, url, data, what, missing_ok)
            except Unavailable as failure:
                attempt += 1
                if attempt > self.max_retries:
                    raise InputError(
                        f"{url}: {failure.what} for {what}, and still after {self.max_retries} retries; "
                        "check that the server is running and reachable (or raise --max_retries)"
                    ) from None
                wait = backoff_seconds(attempt) if failure.retry_after is None else failure.retry_after
                cut = " (the server asked for longer)" if wait > WAIT_LIMIT else ""
                wait = min(wait, WAIT_LIMIT)
                logging.warning(
                    "retry %d/%d of %s: %s; waiting %.1f s%s",
                    attempt,
                    self.max_retries,
                    what,
                    failure.what,
                    wait,
                    cut,
                )
                if self._stop.wait(wait):
                    raise Cancelled() from None

    def _once(self, method: str, url: str, data: bytes | None, what: str, missing_ok: bool):
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        with self._count_lock:
            self.sent += 1
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = _read_limited(response, url)
        except urllib.error.HTTPError as error:
            status = error.code
            text = self._error_text(error)
            if status == 429 or 500 <= status <= 599:
                header = error.headers.get("Retry-After") if error.headers else None
                raise Unavailable(
                    f"HTTP {status}{text}", retry_after_seconds(header, self._clock())
                ) from None
            if status == 404 and missing_ok:
                return None
            hint = {
                401: "; the server wants an API key (--api_key_env) or refused this one",
                403: "; the server refused this API key",
                404: "; check the URL: it is the API base, e.g. http://127.0.0.1:8080/v1",
            }.get(status, "")
            raise InputError(f"{url}: HTTP {status} for {what}{text}{hint}") from None
        except TimeoutError:
            raise Unavailable(f"no response within {self.timeout:g} s") from None
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, TimeoutError):
                raise Unavailable(f"no response within {self.timeout:g} s") from None
            if isinstance(reason, OSError):
                raise Unavailable(f"cannot connect ({self.scrub(_os_reason(reason))})") from None
            raise InputError(f"{url}: cannot send {what} ({self.scrub(str(reason))[:_QUOTE]})") from None
        except (http.client.HTTPException, ConnectionError) as error:
            # The connection dropped mid-response (RemoteDisconnected, IncompleteRead, a reset).
            raise Unavailable(f"the connection broke ({type(error).__name__})") from None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise InputError(
                f"{url}: the response to {what} is not JSON ({self.scrub(str(error))[:_QUOTE]})"
            ) from None

    def _error_text(self, error: urllib.error.HTTPError) -> str:
        try:
            raw = error.read(4096)
        except (OSError, http.client.HTTPException):
            return ""
        text = " ".join(self.scrub(raw.decode("utf-8", "replace")).split())
        return f" ({text[:_QUOTE]})" if text else ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx status


def _read_limited(response, url: str) -> bytes:
    raw = response.read(MAX_RESPONSE_BYTES + 1)
    if len(raw) > MAX_RESPONSE_BYTES:
        raise InputError(f"{url}: the response is over {MAX_RESPONSE_BYTES >> 20} MiB; not a completion")
    return raw


def _os_reason(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return error.strerror or type(error).__name__
