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
off the list, 1 - sum(exp(logprobs)), clamped at 0. Log-probabilities are written rounded to
generate.LOGPROB_DECIMALS decimals, the list is sorted by the rounded values, and the tail is
computed from them and rounded the same way (rounded_row): the numbers written agree with each
other, and the last bits of exp() on another machine cannot change the file. A list shorter than k
is allowed only where it holds the whole distribution (tail 0). Under --kd=sequence the three lists
are empty: the reply text is the only signal.
"""

import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import Protocol

from common.errors import InputError
from data import dataset, generate

KINDS = ("rules", "gguf", "openai")
KD_MODES = ("logits", "sequence")
SAMPLING_MODES = ("greedy", "sample")
# A reply longer than this is no Magic 8 Ball answer, and the per-record lists grow with it.
MAX_REPLY_TOKENS = 1024


def check_kd(kd: str) -> str:
    """--kd's value, or InputError naming the two modes."""
    if kd not in KD_MODES:
        raise InputError(
            f"--kd is {kd!r}; use logits (soft targets: the teacher's top-k log-probabilities, same "
            "vocabulary as the student) or sequence (the reply text only, any teacher)"
        )
    return kd


def rounded_row(ids: Iterable[int], logprobs: Iterable[float]) -> tuple[list[int], list[float], float]:
    """One top-k list as written: (ids, log-probabilities rounded, the tail they leave off).

    The list is re-sorted after rounding (highest first, ties lower id first): two log-probabilities
    closer than the rounding step can round to one value, and the order must hold for the values
    written.
    """
    rows = sorted(
        ((generate.round_logprob(float(lp)), int(i)) for i, lp in zip(ids, logprobs, strict=True)),
        key=lambda row: (-row[0], row[1]),
    )
    rounded = [lp for lp, _ in rows]
    return [i for _, i in rows], rounded, generate.round_logprob(dataset.tail_of(rounded))


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

    def check(self) -> "Sampling":
        """self, or InputError naming the make_toy_kd flag whose value is unusable."""
        if self.mode not in SAMPLING_MODES:
            raise InputError(f"--teacher_sampling is {self.mode!r}; use greedy or sample")
        if not 1 <= self.max_tokens <= MAX_REPLY_TOKENS:
            raise InputError(
                f"--max_reply_tokens is {self.max_tokens}; use 1..{MAX_REPLY_TOKENS} (eos included)"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(
                f"--sample_temperature is {self.temperature}; use a finite temperature > 0 "
                "(--teacher_sampling=greedy for the most likely token)"
            )
        if self.top_k < 0:
            raise InputError(f"--sample_top_k is {self.top_k}; use 0 (no cut) or a positive count")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"--sample_top_p is {self.top_p}; use a probability in (0, 1]")
        if self.seed < 0:
            raise InputError(f"--sample_seed is {self.seed}; use a seed >= 0")
        return self


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
    # Only the kind is repeated: the rest may be a URL, and a URL may hold credentials.
    shown = f"{kind}:..." if location else text
    raise InputError(
        f"--teacher is {shown!r}; use rules, gguf:PATH (a GGUF file, run in process by llama.cpp) "
        "or openai:URL (an OpenAI-compatible server, e.g. openai:http://127.0.0.1:8080/v1)"
    )
