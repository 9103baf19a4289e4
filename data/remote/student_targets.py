"""A server's reply positions (data/remote/response_shapes.py) as the student's ids and top-k lists.

Tokens map onto student ids by their bytes (data/teachers/vocab.py, StudentIds). Two more rules:

- A token that writes no text (b""), or whose text is exactly the student's eos piece ("</s>", how a
  server that renders special tokens writes it), is the end of the reply: the student's eos. In a
  text-only shape this also takes in a byte token holding half a character (llama-cpp-python writes
  it as ""); such a token is never a reply's own token here (mid_reply_end refuses it), and as an
  alternative its mass, next to the end token's, is noise.
- Teacher tokens that map to one student id have their probabilities added. They are the same text
  to the student (a byte token and the one-character piece with its byte, or the eos and another
  control token), and the student can put that mass on one id only; listing the id twice is not a
  distribution.

A list is the server's alternatives, at most `requested` of them (the most likely: a server may
add the chosen token beyond its top n), mapped and merged, and its k most likely ids kept, then
rounded and its tail computed as every teacher writes them (source.rounded_row). The server is asked
for more than k alternatives (requested_alternatives) so that merged and unmappable ones still leave
k ids; a list shorter than k whose tail is not ~0 cannot be written (data/dataset.py) and is refused.
"""

import math

from data import dataset
from data import tokenizer as tokenizer_lib
from data.remote import response_shapes
from data.teachers import source, vocab

# What servers accept: vLLM's default --max-logprobs, OpenAI's and Ollama's top_logprobs limit.
SERVER_ALTERNATIVES_LIMIT = 20
# How far the chosen token's log-probability may sit below the best alternative's and still be the
# greedy choice: servers write float32 values exactly, so equal scores give equal numbers.
GREEDY_SLACK = 1e-6


def requested_alternatives(k: int) -> int:
    """How many alternatives to ask for per position: 2k up to SERVER_ALTERNATIVES_LIMIT, never
    fewer than k (a k above the limit needs a server that allows it, e.g. vLLM --max-logprobs)."""
    return max(k, min(2 * k, SERVER_ALTERNATIVES_LIMIT))


class TokenMap:
    """Teacher tokens -> student ids (module docstring)."""

    def __init__(self, tokenizer: tokenizer_lib.Tokenizer):
        self._ids = vocab.StudentIds(tokenizer)
        self.eos_id = tokenizer.eos_id
        self.eos_text = tokenizer.pieces[tokenizer.eos_id]

    def is_end(self, token: response_shapes.Token) -> bool:
        return token.raw == b"" or token.raw == self.eos_text.encode("utf-8")

    def __call__(self, token: response_shapes.Token) -> int | None:
        if self.is_end(token):
            return self.eos_id
        return self._ids(token.raw)


class TargetError(Exception):
    """What is wrong with a position, for a message that names the prompt."""


class Unnamed(TargetError):
    """A teacher token the student has no id for: on the first reply, the vocabulary handshake
    failing (data/remote/openai_teacher.py)."""


def show(token: response_shapes.Token) -> str:
    """A token for a message: its text, and its bytes when the text does not show them."""
    if token.raw == token.text.encode("utf-8", "surrogatepass"):
        return repr(token.text)
    return f"{token.text!r} (bytes {token.raw.hex(' ')})"


def chosen_id(position: response_shapes.Position, token_map: TokenMap, index: int) -> int:
    """The student id of a reply token (not the end): Unnamed if the student has no such token."""
    token = position.token
    if token_map.is_end(token):
        raise Unnamed(
            f"reply position {index}: the server's token {show(token)} writes no text, yet the reply goes on "
            "(a server that reports tokens as text writes half a character so); the student cannot tell "
            "which bytes it stands for"
        )
    student = token_map(token)
    if student is None:
        raise Unnamed(
            f"reply position {index}: the token {show(token)} is no single token of the student tokenizer"
        )
    return student


def check_greedy(position: response_shapes.Position, index: int) -> None:
    """Under greedy decoding the chosen token is the most likely one the server lists."""
    best = max(position.top, key=lambda t: t.logprob, default=None)
    chosen = position.token
    if best is not None and chosen.logprob is not None and chosen.logprob < best.logprob - GREEDY_SLACK:
        raise TargetError(
            f"reply position {index}: the server chose {show(chosen)} (log-probability {chosen.logprob:.6f}) "
            f"over {show(best)} ({best.logprob:.6f}), so it did not decode greedily; a sampler setting on "
            "the server (a repeat penalty, a minimum probability, ...) overrides temperature 0"
        )


def row(
    position: response_shapes.Position,
    token_map: TokenMap,
    k: int,
    requested: int,
    index: int,
    strict: bool,
) -> tuple[list[int], list[float], float, int]:
    """(ids, log-probabilities, tail, unmapped): the position's top-k list in student ids, and how
    many of the server's alternatives had no student token (their mass stays in the tail). strict:
    any such alternative is Unnamed (the vocabulary handshake)."""
    listed = sorted(position.top, key=lambda t: -t.logprob)[:requested]
    if not listed:
        raise TargetError(f"reply position {index}: the server lists no alternatives (top_logprobs is empty)")
    merged: dict[int, list[float]] = {}
    unmapped = 0
    for token in listed:
        student = token_map(token)
        if student is None:
            if strict:
                raise Unnamed(
                    f"reply position {index}: the alternative {show(token)} is no single token of the "
                    "student tokenizer"
                )
            unmapped += 1
            continue
        merged.setdefault(student, []).append(token.logprob)
    if not merged:
        raise TargetError(f"reply position {index}: no alternative the server lists is a student token")
    total = {i: math.log(math.fsum(math.exp(lp) for lp in lps)) for i, lps in merged.items()}
    best = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:k]
    ids, logprobs, tail = source.rounded_row([i for i, _ in best], [min(lp, 0.0) for _, lp in best])
    if len(ids) < k and tail > dataset.TAIL_TOLERANCE:
        raise TargetError(
            f"reply position {index}: the server's {len(listed)} alternatives give {len(ids)} distinct "
            f"student ids, fewer than --topk={k}, and leave {tail:.6f} of the probability off the list "
            "(a list shorter than k must hold the whole distribution); lower --topk"
        )
    return ids, logprobs, tail, unmapped
