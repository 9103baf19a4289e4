"""The rule-based teacher (data/teacher.py) behind the Teacher interface (data/teachers/source.py).

make_toy_kd's default, --teacher=rules, still writes the version-1 dataset through
data/generate.py, byte for byte as before; this adapter gives the same replies in the version-2
shape (each record's answer drawn as generate() draws it, the same top-k lists and their tails), so
the version-2 writer can be tested and compared against the rules dataset without a model.
"""

from collections.abc import Iterable, Iterator

from common.errors import InputError
from data import generate, teacher
from data import tokenizer as tokenizer_lib
from data.teachers import source


class RulesTeacher:
    def __init__(
        self,
        n: int,
        seed: int,
        heldout_fraction: float,
        topk: int,
        tokenizer: tokenizer_lib.Tokenizer,
        kd: str = "logits",
    ):
        self._soft = source.check_kd(kd) == "logits"
        self._draws = generate.answer_draws(n, seed, heldout_fraction)
        self._topk = topk
        self._tokens = teacher.TokenTeacher(tokenizer)
        self._digest = tokenizer.digest

    def describe(self) -> dict:
        return {
            "kind": "rules",
            "model": teacher.NAME,
            "sha256": None,
            "endpoint": None,
            "server_model": None,
            "api": None,
        }

    def handshake(self, tokenizer: tokenizer_lib.Tokenizer) -> None:
        """The rules teacher speaks whatever tokenizer it was built with: that one, and no other."""
        if tokenizer.digest != self._digest:
            raise InputError(
                f"rules teacher: built for the tokenizer with sha256 {self._digest}, asked for "
                f"{tokenizer.digest}; build it with the student tokenizer"
            )

    def replies(self, prompts: Iterable[source.Prompt]) -> Iterator[source.Reply]:
        for prompt in prompts:
            probs = teacher.answer_distribution(prompt.question).tolist()
            answer = generate.sample_answer(probs, self._draws[prompt.id])
            rows = [
                source.rounded_row(ids, logprobs)
                for ids, logprobs in zip(*self._tokens.top_k(probs, answer, self._topk), strict=True)
            ]
            if not self._soft:
                yield source.Reply(list(self._tokens.sequences[answer]), [], [], [])
                continue
            yield source.Reply(
                completion_ids=list(self._tokens.sequences[answer]),
                topk_ids=[ids for ids, _, _ in rows],
                topk_logprobs=[logprobs for _, logprobs, _ in rows],
                topk_tail=[tail for _, _, tail in rows],
            )
