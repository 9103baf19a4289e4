"""Test servers on 127.0.0.1 (stdlib http.server, one thread each): a scripted OpenAI-compatible
teacher that writes its replies in the student's own tokens, and a plain HTTP server whose answers a
test function decides. Every request is recorded (method, path, headers, body) for the test to count
and inspect. Only for tests: nothing here is used by the teacher.
"""

import dataclasses
import http.server
import json
import threading
from collections.abc import Callable

from data import tokenizer as tokenizer_lib
from data.teachers import vocab


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body) if self.body else None


# handler(seen) -> (status, headers, body bytes)
Handler = Callable[[Seen], tuple[int, dict, bytes]]


class Server:
    """A threaded HTTP server on 127.0.0.1 and a free port; use as a context manager."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        outer = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                with outer._lock:
                    outer.seen.append(seen)
                status, headers, body = outer.handler(seen)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]


def json_response(doc, status: int = 200, headers: dict | None = None) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(doc).encode()


class ScriptedTeacher:
    """Answers /models, /completions and /chat/completions like an OpenAI-compatible server whose
    model shares the student's tokenizer and replies `reply(question)` to every question.

    Per reply position the chosen token has log-probability CHOSEN and the alternatives are the
    chosen token then the student's normal pieces ALTERNATIVES..., at -3, -4, ... shape "content"
    (chat-style entries with bytes) or "legacy" ({text: logprob} objects). list_end: the end token
    is the reply's last position (llama-server), else it is left out (llama-cpp-python) and a
    completions request with echo answers the probe. edit(doc, body) may change a response.
    """

    CHOSEN = -0.2
    MODEL = "scripted-teacher"

    def __init__(
        self,
        tokenizer: tokenizer_lib.Tokenizer,
        reply: Callable[[str], str] = lambda question: " It is certain. 🌟",
        shape: str = "content",
        list_end: bool = True,
        with_bytes: bool = True,
        edit: Callable[[dict, dict], dict] | None = None,
    ):
        self.tokenizer = tokenizer
        self.reply = reply
        self.shape, self.list_end, self.with_bytes, self.edit = shape, list_end, with_bytes, edit
        self.alternatives = [
            i for i, kind in enumerate(tokenizer.token_types) if kind == tokenizer_lib.NORMAL
        ][:40]

    # ---- positions --------------------------------------------------------------------------

    def _token(self, token_id: int) -> tuple[str, bytes]:
        raw = vocab.token_bytes(self.tokenizer, token_id) or b""
        return raw.decode("utf-8", "replace"), raw

    def _entry(self, token_id: int, logprob: float) -> dict:
        text, raw = self._token(token_id)
        entry = {"token": text, "logprob": logprob}
        entry["bytes"] = list(raw) if self.with_bytes else None
        return entry

    def _position(self, chosen: int, count: int) -> tuple[dict, list[dict]]:
        others = [i for i in self.alternatives if i != chosen][: count - 1]
        top = [self._entry(chosen, self.CHOSEN)] + [self._entry(i, -3.0 - j) for j, i in enumerate(others)]
        return self._entry(chosen, self.CHOSEN), top

    def _logprobs(self, ids: list[int], count: int, echo_first_null: bool = False):
        entries = []
        for index, token_id in enumerate(ids):
            token, top = self._position(token_id, count)
            if echo_first_null and index == 0:
                token["logprob"], top = None, None
            entries.append((token, top))
        if self.shape == "content":
            return {"content": [dict(token, top_logprobs=top or []) for token, top in entries]}
        return {
            "tokens": [token["token"] for token, _ in entries],
            "token_logprobs": [token["logprob"] for token, _ in entries],
            "top_logprobs": [
                None if top is None else {t["token"]: t["logprob"] for t in top} for _, top in entries
            ],
            "text_offset": list(range(len(entries))),
        }

    # ---- endpoints --------------------------------------------------------------------------

    def __call__(self, seen: Seen) -> tuple[int, dict, bytes]:
        if seen.method == "GET" and seen.path.endswith("/models"):
            return json_response({"object": "list", "data": [{"id": self.MODEL, "object": "model"}]})
        body = seen.json()
        if seen.path.endswith("/chat/completions"):
            question = body["messages"][-1]["content"]
            doc = self._answer(question, body, chat=True)
        elif seen.path.endswith("/completions"):
            if body.get("echo"):
                doc = self._probe(body)
            else:
                question = body["prompt"][len("Q: ") : -len("\nA:")]
                doc = self._answer(question, body, chat=False)
        else:
            return json_response({"error": "not found"}, 404)
        if self.edit is not None:
            doc = self.edit(doc, body)
        return json_response(doc)

    def _answer(self, question: str, body: dict, chat: bool) -> dict:
        text = self.reply(question)
        ids = self.tokenizer.encode(text)
        count = body.get("top_logprobs") if chat else body.get("logprobs")
        choice = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if count:
            logprobs = self._logprobs(ids, count)
            if self.list_end:
                token, top = self._position(self.tokenizer.eos_id, count)
                end = dict(token, token="", bytes=[] if self.with_bytes else None)
                top = [
                    dict(t, token="", bytes=[] if self.with_bytes else None) if t["token"] == "" else t
                    for t in top
                ]
                if self.shape == "content":
                    logprobs["content"].append(dict(end, top_logprobs=top))
                else:
                    raise ValueError("a legacy-shape server that lists the end token is not scripted")
            choice["logprobs"] = logprobs
        key = "chat.completion" if chat else "text_completion"
        return {"id": "x", "object": key, "model": body.get("model"), "choices": [choice]}

    def _probe(self, body: dict) -> dict:
        """llama-cpp-python's echo: the prompt's tokens without bos, the first null, then the end
        token read from the student's eos piece, and one generated token."""
        eos_piece = self.tokenizer.pieces[self.tokenizer.eos_id]
        text = body["prompt"]
        assert text.endswith(eos_piece), text
        ids = self.tokenizer.encode(text[: -len(eos_piece)])
        count = body["logprobs"]
        logprobs = self._logprobs(ids, count, echo_first_null=True)
        end_token, end_top = self._position(self.tokenizer.eos_id, count)
        extra_token, extra_top = self._position(self.alternatives[0], count)
        end_top = [dict(t, token="") if t is end_top[0] else t for t in end_top]
        if self.shape == "content":
            logprobs["content"] += [
                dict(end_token, token="", top_logprobs=end_top),
                dict(extra_token, top_logprobs=extra_top),
            ]
        else:
            logprobs["tokens"] += ["", extra_token["token"]]
            logprobs["token_logprobs"] += [self.CHOSEN, self.CHOSEN]
            logprobs["top_logprobs"] += [
                {t["token"]: t["logprob"] for t in top} for top in (end_top, extra_top)
            ]
        choice = {
            "index": 0,
            "text": text + extra_token["token"],
            "finish_reason": "length",
            "logprobs": logprobs,
        }
        return {"id": "x", "object": "text_completion", "model": body.get("model"), "choices": [choice]}
