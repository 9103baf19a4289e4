"""An OpenAI-compatible server as the teacher (`make_toy_kd --teacher=openai:URL`), over stdlib HTTP.

URL is the API base (http://127.0.0.1:8080/v1); requests go to URL/completions (--api=completions:
the raw prompt "Q: ...\\nA:", data/prompt.py) or URL/chat/completions (--api=chat: the question as
one user message, which the server wraps in its chat template), and the model list to URL/models.

What is asked. Greedy: temperature 0. Sampled: the stated temperature, top_p, top_k (0: none) and a
seed per record (sha256 of --sample_seed and the record id, 31 bits), so a record's reply does not
depend on the order the requests run in. Both send llama.cpp's own sampler fields at their neutral
values (repeat_penalty 1; sampled, min_p 0): llama-cpp-python's server defaults to a repeat penalty
of 1.1 and a min_p of 0.05, which would bend "greedy" and the stated sampling. llama.cpp's
llama-server reads them too; vLLM and Ollama pass over fields they do not know; a server that
refuses unknown fields answers HTTP 400 naming one, and the run stops with that message. max_tokens
is --max_reply_tokens.
--kd=logits asks for log-probabilities: `logprobs: n` (completions) or `logprobs: true,
top_logprobs: n` (chat), n = student_targets.requested_alternatives(--topk), echo false.

What is written per reply position (data/remote/student_targets.py): the student id of the token
the server chose, and the top-k list in student ids with its tail; a student id that several teacher
tokens map to gets their probabilities added.

The end of the reply. finish_reason "stop" means the teacher ended its reply: the student's eos
ends completion_ids, and its position holds the teacher's distribution where it stopped. Servers
that list the end token as the reply's last position (llama.cpp's llama-server, vLLM) give it
directly. llama-cpp-python leaves that position out (on both endpoints), so on --api=completions it
is asked for in a second request, the probe: the prompt, the reply text and the student's eos piece
("</s>", which llama-cpp-python's tokenizer reads as the eos token) with echo and max_tokens 1; the
echoed position of that eos token is the end position, after the reply's own tokens, which must
come back as they were generated. On --api=chat there is no probe (the chat template is the
server's), and such a server is refused under --kd=logits with what to do. finish_reason "length"
(no end within --max_reply_tokens, eos included) is refused like the in-process GGUF teacher
refuses it (data/teachers/gguf_teacher.py): an eos the teacher never chose is no soft target.

The vocabulary handshake (--kd=logits), on the first prompt's reply before any record: every token
of it and of its lists must map to a student id by bytes, and the student's encoding of the reply
text must be exactly the mapped ids; otherwise InputError naming both vocabularies (the server's
model id, the student tokenizer's sha256 and size) and the token, and suggesting --kd=sequence.
Later replies may carry alternatives the student has no token for (a byte token holding half a
character, as some servers write it): their mass stays in the tail, and the run's last log line
counts them. --kd=sequence: no handshake and no log-probabilities asked for; the reply text is
encoded with the student tokenizer, + eos, and the lists are empty.

A capture that survives the network: every accepted response is kept in --cache_dir
(data/remote/response_cache.py), so a rerun sends nothing and a run killed at any point resumes
where it stopped and writes the same bytes (given a server that answers a request the same way
whatever came before it: llama-cpp-python's needs one token per batch, data/remote/local_server.py);
requests are retried on 429, 5xx, broken connections
and timeouts (data/remote/http_retry.py); --concurrency requests run at once and replies are
yielded in prompt order; a progress line every few seconds (data/remote/progress.py). A response
that cannot be used is an InputError naming the record and its question: no log-probabilities under
--kd=logits, a value that is not a finite log-probability, a token the student has no id for,
malformed JSON. The API key goes in the Authorization header and nowhere else: not the cache, a log
line, a message or the dataset.
"""

import collections
import concurrent.futures
import contextlib
import hashlib
import threading
import urllib.parse

from absl import logging

from common.errors import InputError
from data import tokenizer as tokenizer_lib
from data.remote import http_retry, progress, response_cache, response_shapes, student_targets
from data.teachers import source, vocab

APIS = ("completions", "chat")
SUFFIX = {"completions": "/completions", "chat": "/chat/completions"}
# Query parameters whose name holds one of these are credentials (data/dataset.py refuses them too).
_SECRET_PARAMETERS = ("key", "token", "secret", "password", "auth", "signature")
_MODELS = "the model list (GET /models)"


def check_base_url(url: str) -> str:
    """The API base as recorded (no trailing "/"), or InputError; the message never repeats a URL
    that may hold a secret."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise InputError(
            "--teacher: openai:URL holds no valid URL; e.g. openai:http://127.0.0.1:8080/v1"
        ) from None
    if parts.scheme not in ("http", "https") or not host:
        raise InputError(
            "--teacher: openai:URL must be an http or https URL with a host, e.g. openai:http://127.0.0.1:8080/v1"
        )
    if "@" in parts.netloc:
        raise InputError(
            "--teacher: the URL holds credentials (user:password@host); give the URL without them and "
            "the key through --api_key_env"
        )
    for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if any(word in name.lower() for word in _SECRET_PARAMETERS):
            raise InputError(
                f"--teacher: the URL has a query parameter named {name[:40]!r}, a credential; give the URL "
                "without it and the key through --api_key_env"
            )
    if parts.fragment:
        raise InputError(
            "--teacher: the URL has a #fragment; give the API base, e.g. http://127.0.0.1:8080/v1"
        )
    return url.rstrip("/")


def record_seed(seed: int, record_id: int) -> int:
    """The seed sent with one record's request: 31 bits of sha256("seed:id")."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


class OpenAITeacher:
    """source.Teacher over an OpenAI-compatible server (module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api: str,
        sampling: source.Sampling,
        topk: int,
        kd: str,
        tokenizer: tokenizer_lib.Tokenizer,
        api_key: str | None,
        cache_dir: str,
        concurrency: int,
        timeout: float,
        max_retries: int,
    ):
        self.base_url = check_base_url(base_url)
        if api not in APIS:
            raise InputError(f"--api is {api!r}; use completions or chat")
        if api_key is not None and (not api_key or any(c in api_key for c in "\r\n")):
            raise InputError("--api_key_env: the key is empty or holds a line break; check the variable")
        if concurrency < 1:
            raise InputError(f"--concurrency is {concurrency}; use 1 or more")
        self.model = model or ""
        self.api = api
        self.sampling = sampling.check()
        self.topk = topk
        self.kd = source.check_kd(kd)
        self.tokenizer = tokenizer
        self.concurrency = concurrency
        self.requested = student_targets.requested_alternatives(topk)
        self._stop = threading.Event()
        self.endpoint = http_retry.Endpoint(
            self.base_url, api_key=api_key, timeout=timeout, max_retries=max_retries, stop=self._stop
        )
        self.cache = response_cache.ResponseCache(cache_dir)
        self._token_map = student_targets.TokenMap(tokenizer)
        self._server_model: str | None = None
        self._models_read = False
        self._count_lock = threading.Lock()
        self.unmapped = 0  # alternatives with no student token, over the run (their mass is in tails)

    # ---- what the dataset header records -----------------------------------------------------

    def _fetch(self, method: str, suffix: str, body: dict | None, what: str, missing_ok: bool = False):
        """(response, came from the cache). A fresh response is not stored here: _accept() stores
        it once the teacher has read it."""
        path = self.endpoint.path(suffix)
        cached = self.cache.get(method, path, body)
        if cached is not None:
            return cached, True
        return self.endpoint.request(method, suffix, body, what, missing_ok=missing_ok), False

    def _accept(self, method: str, suffix: str, body: dict | None, response) -> None:
        self.cache.put(method, self.endpoint.path(suffix), body, response)

    def server_model(self) -> str | None:
        """The model id GET /models reports: --model's when listed, else the only one listed, else
        None (no /models, or several models and none named)."""
        if self._models_read:
            return self._server_model
        doc, cached = self._fetch("GET", "/models", None, _MODELS, missing_ok=True)
        ids = None
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            listed = [m.get("id") for m in doc["data"] if isinstance(m, dict)]
            if all(isinstance(i, str) and i for i in listed):
                ids = listed
        if doc is not None and ids is None:
            logging.warning(
                "%s/models: not a model list ({data: [{id}]}); recording no server model", self.base_url
            )
        if ids is not None and not cached:
            self._accept("GET", "/models", None, doc)
        ids = ids or []
        if self.model in ids:
            self._server_model = self.model
        elif len(ids) == 1:
            self._server_model = ids[0]
        self._models_read = True
        return self._server_model

    def model_name(self) -> str:
        """What requests name in "model": --model, else the server's only model."""
        name = self.model or self.server_model()
        if not name:
            raise InputError(
                f"--model: {self.base_url}/models names no single model; give the model to ask with --model"
            )
        return name

    def describe(self) -> dict:
        return {
            "kind": "openai",
            "model": self.model_name(),
            "sha256": None,
            "endpoint": self.base_url,
            "server_model": self.server_model(),
            "api": self.api,
        }

    def handshake(self, tokenizer: tokenizer_lib.Tokenizer) -> None:
        """Checks the server can be asked (GET /models) and that `tokenizer` is the one replies are
        mapped to; the token-by-token check runs on the first reply (module docstring)."""
        if tokenizer.digest != self.tokenizer.digest:
            raise InputError(
                f"{self.base_url}: the handshake's tokenizer (sha256 {tokenizer.digest}) is not the one the "
                f"teacher maps replies to ({self.tokenizer.digest})"
            )
        self.model_name()

    # ---- requests ----------------------------------------------------------------------------

    def _sampling_fields(self, prompt: source.Prompt) -> dict:
        s = self.sampling
        fields = {"max_tokens": s.max_tokens, "repeat_penalty": 1.0}
        if s.mode == "greedy":
            fields["temperature"] = 0.0
        else:
            fields.update(
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                min_p=0.0,
                seed=record_seed(s.seed, prompt.id),
            )
        return fields

    def request_body(self, prompt: source.Prompt) -> dict:
        body = {"model": self.model_name(), **self._sampling_fields(prompt)}
        soft = self.kd == "logits"
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt.question}]
            if soft:
                body.update(logprobs=True, top_logprobs=self.requested)
        else:
            body["prompt"] = prompt.prompt
            if soft:
                body.update(logprobs=self.requested, echo=False)
        return body

    def _probe_body(self, prompt: source.Prompt, text: str) -> dict:
        return {
            "model": self.model_name(),
            "prompt": prompt.prompt + text + self._token_map.eos_text,
            "max_tokens": 1,
            "logprobs": self.requested,
            "echo": True,
            "temperature": 0.0,
            "repeat_penalty": 1.0,
        }

    # ---- one prompt --------------------------------------------------------------------------

    def _answer(self, prompt: source.Prompt, first: bool) -> source.Reply:
        what = f"record {prompt.id} ({prompt.question!r})"
        suffix, body = SUFFIX[self.api], self.request_body(prompt)
        doc, cached = self._fetch("POST", suffix, body, what)
        accepted = [] if cached else [(suffix, body, doc)]
        try:
            completion = response_shapes.read(doc, self.api)
            if self.kd == "sequence":
                reply = self._sequence_reply(completion)
            else:
                reply = self._logits_reply(prompt, completion, first, what, accepted)
        except (response_shapes.ShapeError, student_targets.TargetError) as error:
            raise InputError(f"{self.base_url}: {what}: {self.endpoint.scrub(str(error))}") from None
        for suffix, body, response in accepted:
            self._accept("POST", suffix, body, response)
        return reply

    def _check_finish(self, completion: response_shapes.Completion) -> None:
        if completion.finish_reason == "length":
            raise response_shapes.ShapeError(
                f"the reply has not ended within --max_reply_tokens={self.sampling.max_tokens} tokens "
                f"({completion.text[:80]!r}...); raise --max_reply_tokens, or use a teacher whose replies end"
            )
        if completion.finish_reason != "stop":
            raise response_shapes.ShapeError(
                f"finish_reason is {completion.finish_reason!r}; a reply the teacher ended has 'stop'"
            )

    def _sequence_reply(self, completion: response_shapes.Completion) -> source.Reply:
        self._check_finish(completion)
        ids = [*self.tokenizer.encode(completion.text), self.tokenizer.eos_id]
        return source.Reply(ids, [], [], [])

    def _logits_reply(self, prompt, completion, first: bool, what: str, accepted: list) -> source.Reply:
        if completion.positions is None:
            raise response_shapes.ShapeError(
                "the response has no log-probabilities (choices[0].logprobs is missing or null); a server "
                "that does not give them can still teach with --kd=sequence"
            )
        self._check_finish(completion)
        positions = list(completion.positions)
        listed_end = bool(positions) and self._token_map.is_end(positions[-1].token)
        end = positions.pop() if listed_end else None
        if len(positions) + 1 > self.sampling.max_tokens:
            raise response_shapes.ShapeError(
                f"the reply has {len(positions)} tokens before its end, more than --max_reply_tokens="
                f"{self.sampling.max_tokens} (eos included) allows"
            )
        with self._vocabulary(first, what):
            ids = [student_targets.chosen_id(p, self._token_map, i) for i, p in enumerate(positions)]
        ids.append(self.tokenizer.eos_id)
        if end is None:
            end = self._probe(prompt, completion.text, positions, what, accepted)
        positions.append(end)
        if self.sampling.mode == "greedy":
            for index, position in enumerate(positions):
                student_targets.check_greedy(position, index)
        topk_ids, topk_logprobs, tails, unmapped = [], [], [], 0
        with self._vocabulary(first, what):
            for index, position in enumerate(positions):
                row_ids, logprobs, tail, missing = student_targets.row(
                    position, self._token_map, self.topk, self.requested, index, strict=first
                )
                topk_ids.append(row_ids)
                topk_logprobs.append(logprobs)
                tails.append(tail)
                unmapped += missing
            if first:
                self._check_encoding(ids[:-1])
        with self._count_lock:
            self.unmapped += unmapped
        return source.Reply(ids, topk_ids, topk_logprobs, tails)

    @contextlib.contextmanager
    def _vocabulary(self, first: bool, what: str):
        """On the first reply a token the student cannot name is the vocabulary handshake failing."""
        try:
            yield
        except student_targets.Unnamed as error:
            if first:
                raise InputError(self._vocabulary_message(what, str(error))) from None
            raise

    def _check_encoding(self, mapped: list[int]) -> None:
        """The student writes the reply's text with exactly the ids its tokens map to. The text is
        the tokens' own bytes: a chat server may trim the message text it returns."""
        text = self.tokenizer.decode(mapped)
        encoded = self.tokenizer.encode(text)
        if encoded != mapped:
            at = next((i for i, (a, b) in enumerate(zip(encoded, mapped, strict=False)) if a != b), None)
            at = min(len(encoded), len(mapped)) if at is None else at
            raise student_targets.Unnamed(
                f"the reply {text[:60]!r} maps to student ids {mapped[:12]}, but the student tokenizer "
                f"writes it as {encoded[:12]} (they part at token {at})"
            )

    def _vocabulary_message(self, what: str, detail: str) -> str:
        server = self.server_model()
        theirs = f"the server's model {server!r}" if server else f"the model {self.model_name()!r}"
        student = vocab.describe_student(self.tokenizer)
        return (
            f"{self.base_url}: the teacher's vocabulary ({theirs}) is not {student}: "
            f"on the first reply, {what}, {self.endpoint.scrub(detail)}; " + vocab.WHAT_TO_DO
        )

    def _probe(
        self, prompt, text: str, positions: list, what: str, accepted: list
    ) -> response_shapes.Position:
        """The end position of a reply whose positions stop before the end token (module docstring)."""
        eos = self._token_map.eos_text
        if self.api == "chat":
            raise response_shapes.ShapeError(
                "the reply stopped, but the server lists no position for the token that ended it "
                "(llama-cpp-python leaves it out); with --api=completions it is asked for separately, "
                "or use --kd=sequence"
            )
        body = self._probe_body(prompt, text)
        doc, cached = self._fetch("POST", "/completions", body, what + ", end-of-reply probe")
        if not cached:
            accepted.append(("/completions", body, doc))
        probe = response_shapes.read(doc, "completions", echo=True)
        failed = (
            f"the server leaves the end of the reply out of its log-probabilities, and the probe for it "
            f"(the prompt, the reply and {eos!r}, echoed) "
        )
        advice = (
            f"; the probe needs a server that reads {eos!r} as the end token and echoes prompts with "
            "log-probabilities (llama-cpp-python does; llama.cpp's llama-server lists the end position "
            "itself), or use --kd=sequence"
        )
        if probe.positions is None:
            raise response_shapes.ShapeError(failed + "came back without log-probabilities" + advice)
        # The echo is the prompt's tokens (without bos), the reply's, the end token, then the one
        # token generated after it unless that was an end token too (llama-cpp-python drops those).
        # Aligned from the back: a prompt's text may not survive token by token (half characters).
        echoed = probe.positions
        reply = [p.token.text for p in positions]
        found = [
            e
            for e in (len(echoed) - 1, len(echoed) - 2)
            if e - len(reply) >= 1
            and self._token_map.is_end(echoed[e].token)
            and [p.token.text for p in echoed[e - len(reply) : e]] == reply
        ]
        if len(found) != 1:
            shown = [p.token.text for p in echoed[-len(reply) - 2 :]]
            raise response_shapes.ShapeError(
                failed
                + f"ends with the tokens {shown[-10:]}, not the reply's {reply[-8:]} and the end token"
                + advice
            )
        return echoed[found[0]]

    # ---- all prompts -------------------------------------------------------------------------

    def replies(self, prompts):
        """One Reply per prompt, in prompt order; --concurrency requests in flight at once."""
        prompts = list(prompts)
        if not prompts:
            return
        self.model_name()  # the model list first: a server that is down fails here, once
        self._stop.clear()
        meter = progress.Progress(len(prompts), f"{self.base_url} ({self.model_name()})")
        pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="openai-teacher")
        pending: collections.deque = collections.deque()
        queued = 0
        try:
            for done in range(len(prompts)):
                while queued < len(prompts) and len(pending) < 2 * self.concurrency:
                    pending.append(pool.submit(self._answer, prompts[queued], queued == 0))
                    queued += 1
                reply = pending.popleft().result()
                meter.update(done + 1, self.cache.hits)
                yield reply
        finally:
            # On a failure (or a consumer that stops early): no new requests, waits cut short.
            self._stop.set()
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            self._stop.clear()
        if self.unmapped:
            logging.warning(
                "%d alternatives the server listed have no student token; their probability is in the "
                "tails (topk_tail)",
                self.unmapped,
            )
        logging.info(
            "%s: %d replies, %d requests sent, %d responses from the cache",
            self.base_url,
            len(prompts),
            self.endpoint.sent,
            self.cache.hits,
        )
