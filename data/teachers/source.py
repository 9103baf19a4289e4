"""What every teacher source gives the dataset writer: one Reply per prompt, in student ids.

A teacher is named on the command line as `rules`, `gguf:PATH` or `openai:URL` (parse_spec). Each
source implements Teacher:

    describe()            the dataset header's "teacher" object (no credentials, ever)
    handshake(tokenizer)  checks, before the first record, that the teacher's tokens map onto the
                          student tokenizer's ids exactly; InputError naming both vocabularies if
                          not (skipped under --kd=sequence, which needs no shared vocabulary)
    replies(prompts)      one Reply per Prompt, in order

Reply positions line up with completion_ids: position i holds the teacher's distribution over the
token that completion_ids[i] is drawn from. Per position the top-k list is sorted by log-probability,
highest first (ties: lower id first), ids are distinct student ids, and tail is the probability mass
off the list, 1 - sum(exp(logprobs)), clamped at 0. A list shorter than k is allowed only where it
holds the whole distribution (tail 0). Under --kd=sequence the three lists are empty: the reply text
is the only signal.
"""

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Protocol

from common.errors import InputError

KINDS = ("rules", "gguf", "openai")
KD_MODES = ("logits", "sequence")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One question to put to the teacher: prompt is data.prompt.format_prompt(question)."""

    id: int
    question: str
    prompt: str
    prompt_ids: list[int]  # student ids of prompt, without bos


@dataclasses.dataclass(frozen=True)
class Reply:
    completion_ids: list[int]  # student ids, ending with eos
    topk_ids: list[list[int]]  # per position, or [] under --kd=sequence
    topk_logprobs: list[list[float]]
    topk_tail: list[float]


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the teacher writes its reply; recorded in the dataset header as "sampling"."""

    mode: str = "greedy"  # "greedy" | "sample"
    temperature: float = 1.0  # sample only
    top_k: int = 0  # sample only; 0: no cut
    top_p: float = 1.0  # sample only
    seed: int = 0  # sample only
    max_tokens: int = 32  # reply tokens, eos included

    def header(self) -> dict:
        if self.mode == "greedy":
            return {"mode": "greedy", "max_tokens": self.max_tokens}
        return dataclasses.asdict(self)


class Teacher(Protocol):
    def describe(self) -> dict: ...

    def handshake(self, tokenizer) -> None: ...

    def replies(self, prompts: Iterable[Prompt]) -> Iterator[Reply]: ...


@dataclasses.dataclass(frozen=True)
class Spec:
    kind: str  # one of KINDS
    location: str  # "" for rules, the GGUF path, or the endpoint URL


def parse_spec(text: str) -> Spec:
    """`rules`, `gguf:PATH` or `openai:URL`; InputError naming the three forms otherwise."""
    kind, _, location = text.partition(":")
    if kind == "rules" and not location:
        return Spec("rules", "")
    if kind in ("gguf", "openai") and location:
        return Spec(kind, location)
    raise InputError(
        f"--teacher is {text!r}; use rules, gguf:PATH (a GGUF file, run in process by llama.cpp) "
        "or openai:URL (an OpenAI-compatible server, e.g. openai:http://127.0.0.1:8080/v1)"
    )
