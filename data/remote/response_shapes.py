"""An OpenAI-compatible server's completion response, read into one shape whatever the server.

Servers write log-probabilities in two shapes, and which one does not follow the endpoint:

legacy   choices[0].logprobs = {tokens: [str], token_logprobs: [number], top_logprobs: [{str: number}]}
         OpenAI's /v1/completions; llama-cpp-python's /v1/completions; vLLM's /v1/completions.
content  choices[0].logprobs = {content: [{token: str, logprob: number, bytes: [int] | null,
                                          top_logprobs: [{token, logprob, bytes}]}]}
         OpenAI's /v1/chat/completions, vLLM's and Ollama's chat; llama.cpp's llama-server for both
         endpoints (its entries add the token "id"); llama-cpp-python's chat, with bytes null.

What each server puts there (llama-cpp-python 0.3.36 is run by the tests; the others as their
sources and issue trackers describe them), and what read() makes of it:

- Token bytes. `bytes` is the token's exact bytes where a server gives it (llama-server: the raw
  piece, so a byte token holding half a character keeps its byte). Without it the token is its text
  in UTF-8. The text alone loses what is not a whole character: llama-cpp-python decodes each token
  with errors="ignore" (half an emoji is ""), vLLM writes U+FFFD.
- The end of the reply. A token that writes no text (b"") is a control token: the end of the reply
  (eos, an end-of-turn token) or, in text-only shapes, half a character. llama-server and vLLM list
  the end token as the last position when the reply stopped there; llama-cpp-python does not (its
  reply positions stop before it, on both endpoints; the teacher recovers that position with a
  second request, data/remote/openai_teacher.py).
- Same text, one entry. A legacy top_logprobs object has one entry per text: llama-cpp-python
  fills it from the most to the least likely token, so of two tokens with one text (a byte token and
  a one-character piece) the entry keeps the less likely one's number, then it writes the sampled
  token's own number over its entry. The sampled token's number is always exact.
- Floors. vLLM writes -9999.0 for a probability of zero, llama-server the lowest float32; both are
  finite and taken as they are.

read() checks types and values and raises ShapeError (what is wrong, no "where": the caller names
the prompt) on anything else: no choices, a text that is not a string, a log-probability that is not
a finite number at most 0 (NaN and Infinity pass json.loads, so they are checked here), lists of
different lengths. A log-probability above 0 by at most POSITIVE_SLACK is rounding in the server's
log-softmax and is read as 0.
"""

import dataclasses
import math

# The most a server's log-softmax may overshoot 0 in float32 (a few ulps of log(sum of exp)).
POSITIVE_SLACK = 1e-5


class ShapeError(Exception):
    """What is wrong with a response, for a message that names the prompt it answered."""


@dataclasses.dataclass(frozen=True)
class Token:
    text: str  # as the server wrote it
    raw: bytes  # its bytes: the server's `bytes` where given, else the text in UTF-8
    logprob: float | None  # None only at an echoed prompt's first position


@dataclasses.dataclass(frozen=True)
class Position:
    token: Token  # the token the server chose (or, echoed, the prompt's own)
    top: tuple[Token, ...]  # the alternatives the server listed, in its order


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    positions: tuple[Position, ...] | None  # None: the response has no log-probabilities
    shape: str | None  # "legacy" | "content" | None


def _logprob(value, where: str, nullable: bool = False) -> float | None:
    if value is None and nullable:
        return None
    if type(value) not in (int, float):
        raise ShapeError(f"{where}: is {_show(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise ShapeError(f"{where}: {_show(value)} is not a finite number") from None
    if not math.isfinite(number):
        raise ShapeError(f"{where}: {_show(value)} is not a finite log-probability")
    if number > POSITIVE_SLACK:
        raise ShapeError(f"{where}: {number!r} is above 0, not a log-probability")
    return min(number, 0.0)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _raw(text: str, byte_list, where: str) -> bytes:
    if byte_list is None:
        return text.encode("utf-8", "surrogatepass")
    if not isinstance(byte_list, list) or not all(type(b) is int and 0 <= b <= 255 for b in byte_list):
        raise ShapeError(f"{where}.bytes: must be a list of byte values 0..255 or null")
    return bytes(byte_list)


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise ShapeError(f"{where}: is {_show(value)}, not a string")
    return value


def _legacy(logprobs: dict, echo: bool) -> tuple[Position, ...]:
    tokens, values, tops = (logprobs.get(k) for k in ("tokens", "token_logprobs", "top_logprobs"))
    for name, value in (("tokens", tokens), ("token_logprobs", values), ("top_logprobs", tops)):
        if not isinstance(value, list):
            raise ShapeError(f"logprobs.{name}: is {_show(value)}, not a list")
    if not len(tokens) == len(values) == len(tops):
        raise ShapeError(
            f"logprobs: tokens, token_logprobs and top_logprobs have {len(tokens)}, {len(values)} and "
            f"{len(tops)} entries; they must have one per position"
        )
    positions = []
    for i, (text, value, top) in enumerate(zip(tokens, values, tops, strict=True)):
        where = f"logprobs position {i}"
        text = _text(text, f"{where} token")
        # An echoed prompt's first token has nothing before it to be predicted from.
        nullable = echo and i == 0
        logprob = _logprob(value, f"{where} token_logprobs", nullable)
        if top is None and nullable:
            alternatives = ()
        elif isinstance(top, dict):
            alternatives = tuple(
                Token(_text(key, f"{where} top_logprobs key"), key.encode("utf-8", "surrogatepass"), lp)
                for key, lp in ((k, _logprob(v, f"{where} top_logprobs[{k!r}]")) for k, v in top.items())
            )
        else:
            raise ShapeError(f"{where} top_logprobs: is {_show(top)}, not an object")
        positions.append(Position(Token(text, text.encode("utf-8", "surrogatepass"), logprob), alternatives))
    return tuple(positions)


def _entry(entry, where: str, nullable: bool = False) -> Token:
    if not isinstance(entry, dict):
        raise ShapeError(f"{where}: is {_show(entry)}, not an object")
    text = _text(entry.get("token"), f"{where}.token")
    return Token(
        text,
        _raw(text, entry.get("bytes"), where),
        _logprob(entry.get("logprob"), f"{where}.logprob", nullable),
    )


def _content(content: list, echo: bool) -> tuple[Position, ...]:
    positions = []
    for i, entry in enumerate(content):
        where = f"logprobs.content[{i}]"
        token = _entry(entry, where, nullable=echo and i == 0)
        top = entry.get("top_logprobs")
        if top is None:
            top = []
        if not isinstance(top, list):
            raise ShapeError(f"{where}.top_logprobs: is {_show(top)}, not a list")
        alternatives = tuple(_entry(t, f"{where}.top_logprobs[{j}]") for j, t in enumerate(top))
        positions.append(Position(token, alternatives))
    return tuple(positions)


def read(doc, api: str, echo: bool = False) -> Completion:
    """The first choice of a /completions (api "completions") or /chat/completions ("chat")
    response body. echo: the response echoes its prompt (legacy only), whose first position has no
    log-probability."""
    if not isinstance(doc, dict):
        raise ShapeError(f"the response is {type(doc).__name__}, not a JSON object")
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        error = doc.get("error")
        detail = f" (the server says: {_show(error)})" if error is not None else ""
        raise ShapeError(f"the response has no choices{detail}")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ShapeError("choices[0]: is not an object")
    if api == "chat":
        message = choice.get("message")
        if not isinstance(message, dict):
            raise ShapeError("choices[0].message: missing or not an object")
        content = message.get("content")
        text = "" if content is None else _text(content, "choices[0].message.content")
    else:
        text = _text(choice.get("text"), "choices[0].text")
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise ShapeError(f"choices[0].finish_reason: is {_show(finish)}, not a string")
    logprobs = choice.get("logprobs")
    if logprobs is None:
        return Completion(text, finish, None, None)
    if not isinstance(logprobs, dict):
        raise ShapeError(f"choices[0].logprobs: is {_show(logprobs)}, not an object")
    if "content" in logprobs:
        content = logprobs["content"]
        if content is None:
            return Completion(text, finish, None, None)
        if not isinstance(content, list):
            raise ShapeError(f"choices[0].logprobs.content: is {_show(content)}, not a list")
        return Completion(text, finish, _content(content, echo), "content")
    return Completion(text, finish, _legacy(logprobs, echo), "legacy")
