"""A GGUF model as the teacher, run in process by llama.cpp (llama-cpp-python).

Per prompt: the KV cache is cleared, [bos] + prompt ids are evaluated in one call, then the reply
is decoded one token per call against llama.cpp's KV cache. At each reply position the raw scores
(llama.cpp's logits) become log-probabilities here, in float64 (log-softmax over the whole
vocabulary), and the top-k list is taken from them (data/teachers/source.py: sorted, ties to the
lower id, rounded, with its tail). The next token is chosen from the same scores
(data/teachers/sampler.py): greedy, or sampled from a generator seeded by (--sample_seed, record
id). One thread and a cleared cache per prompt: the same file and flags give the same bytes, in any
order.

--kd=logits: the teacher's ids are the student's (the handshake has compared the vocabularies), so
the prompt is the student's own ids and the reply ids are written as they are, ending with eos.
--kd=sequence: no shared vocabulary. The prompt text is tokenized by the teacher's tokenizer (with
bos where the model asks for it), the reply stops at any end-of-generation token of the teacher,
and its text is encoded with the student tokenizer, + eos; the top-k lists are empty.

A reply that has not ended within --max_reply_tokens (eos included) is refused: InputError naming
the record and the question, and nothing is written. Cutting it would put an eos the teacher never
chose into the student's targets, and a teacher that rambles is better found than distilled.
"""

import os

import numpy as np

from common import quiet
from common.errors import InputError
from data import tokenizer as tokenizer_lib
from data.teachers import gguf_file, sampler, source, vocab


def _last_scores(llama, n_vocab: int) -> np.ndarray:
    """float64 [V]: llama.cpp's logits for the last token of the last evaluation."""
    return np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(n_vocab,)).astype(np.float64)


class GGUFTeacher:
    """source.Teacher over a GGUF file. The file is checked when constructed (gguf_file.read), and
    llama.cpp loads it on the first call of replies(), with a context just long enough for the
    longest prompt and reply."""

    def __init__(
        self,
        path: str,
        *,
        model: str | None,
        sampling: source.Sampling,
        topk: int,
        kd: str,
        tokenizer: tokenizer_lib.Tokenizer,
    ):
        self.file = gguf_file.read(path)
        self.model = model or os.path.basename(path)
        self.sampling = sampling.check()
        self.topk = topk
        self.kd = source.check_kd(kd)
        self.tokenizer = tokenizer

    def describe(self) -> dict:
        return {
            "kind": "gguf",
            "model": self.model,
            "sha256": self.file.sha256,
            "endpoint": None,
            "server_model": self.file.name,
            "api": None,
        }

    def handshake(self, tokenizer: tokenizer_lib.Tokenizer) -> None:
        """The file's vocabulary must be the student's, and so must its bos and eos."""
        vocab.check_same(self.file.vocabulary, tokenizer)
        for name, theirs, ours in (
            ("bos", self.file.bos_id, tokenizer.bos_id),
            ("eos", self.file.eos_id, tokenizer.eos_id),
        ):
            if theirs != ours:
                raise InputError(
                    f"{self.file.path}: tokenizer.ggml.{name}_token_id is {theirs}, "
                    f"{vocab.describe_student(tokenizer)} has {name} {ours}; " + vocab.WHAT_TO_DO
                )

    # ---- decoding ---------------------------------------------------------------------------

    def _teacher_prompt(self, llama, prompt: source.Prompt) -> list[int]:
        if self.kd == "logits":
            return [self.tokenizer.bos_id, *prompt.prompt_ids]
        # add_bos=True lets the model's own add_bos_token setting decide.
        return list(llama.tokenize(prompt.prompt.encode("utf-8"), add_bos=True, special=False))

    def _load(self, n_ctx: int | None):
        """llama.cpp's model with a context of n_ctx positions, or its vocabulary alone (None)."""
        import llama_cpp

        quiet.silence_llama_cpp()
        if n_ctx is None:
            settings = {"vocab_only": True}
        else:
            settings = {
                "n_ctx": n_ctx,
                "n_batch": n_ctx,
                # Only the last position's logits are read (_last_scores): llama.cpp then skips the
                # output layer for the prompt's other positions and nothing copies them.
                "logits_all": False,
                "n_threads": 1,
                "n_threads_batch": 1,
                # The teacher's numbers are the model's: its cache in f32, not llama.cpp's default
                # f16 (the context is a few dozen positions, so that costs next to nothing).
                "type_k": llama_cpp.GGML_TYPE_F32,
                "type_v": llama_cpp.GGML_TYPE_F32,
            }
        try:
            return llama_cpp.Llama(model_path=self.file.path, verbose=False, **settings)
        except (ValueError, RuntimeError) as error:
            raise InputError(f"{self.file.path}: llama.cpp cannot load it ({error})") from None

    def replies(self, prompts):
        prompts = list(prompts)
        if not prompts:
            return
        import llama_cpp

        # The context is sized for the longest prompt + reply, so the prompts are tokenized first
        # (under sequence by the teacher's vocabulary, loaded alone).
        words = self._load(None) if self.kd == "sequence" else None
        teacher_prompts = [self._teacher_prompt(words, p) for p in prompts]
        del words
        longest = max(len(ids) for ids in teacher_prompts) + self.sampling.max_tokens
        for prompt, ids in zip(prompts, teacher_prompts, strict=True):
            if len(ids) + self.sampling.max_tokens > self.file.context_length:
                raise InputError(
                    f"{self.file.path}: record {prompt.id} ({prompt.question!r}): its prompt ({len(ids)} "
                    f"tokens) and --max_reply_tokens={self.sampling.max_tokens} do not fit the teacher's "
                    f"context of {self.file.context_length} tokens; lower --max_reply_tokens"
                )
        llama = self._load(longest)
        memory = llama_cpp.llama_get_memory(llama._ctx.ctx)
        vocab_handle = llama_cpp.llama_model_get_vocab(llama.model)
        for prompt, ids in zip(prompts, teacher_prompts, strict=True):
            llama_cpp.llama_memory_clear(memory, True)  # each prompt alone: no state from the last
            llama.n_tokens = 0
            yield self._reply(llama, vocab_handle, prompt, ids)

    def _is_end(self, vocab_handle, token: int) -> bool:
        if self.kd == "logits":
            return token == self.tokenizer.eos_id
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(vocab_handle, token))

    def _reply(self, llama, vocab_handle, prompt: source.Prompt, ids: list[int]) -> source.Reply:
        rng = sampler.record_rng(self.sampling, prompt.id)
        soft = self.kd == "logits"
        tokens: list[int] = []
        topk_ids: list[list[int]] = []
        topk_logprobs: list[list[float]] = []
        tails: list[float] = []
        n_vocab = llama.n_vocab()
        llama.eval(ids)
        while True:
            scores = _last_scores(llama, n_vocab)
            if soft:
                top = sampler.top_ids(scores, self.topk)
                peak = scores.max()
                log_total = peak + np.log(np.exp(scores - peak).sum())
                ids_row, logprobs, tail = source.rounded_row(top.tolist(), (scores[top] - log_total).tolist())
                topk_ids.append(ids_row)
                topk_logprobs.append(logprobs)
                tails.append(tail)
            token = sampler.choose(scores, self.sampling, rng)
            tokens.append(token)
            if self._is_end(vocab_handle, token):
                break
            if len(tokens) == self.sampling.max_tokens:
                text = llama.detokenize(tokens).decode("utf-8", "replace")
                raise InputError(
                    f"{self.file.path}: record {prompt.id} ({prompt.question!r}): the teacher's reply "
                    f"has not ended after --max_reply_tokens={self.sampling.max_tokens} tokens "
                    f"({text[:80]!r}...); raise --max_reply_tokens, or use a teacher whose replies end"
                )
            llama.eval([token])
        if soft:
            return source.Reply(tokens, topk_ids, topk_logprobs, tails)
        text = self._reply_text(llama, ids, tokens[:-1])
        return source.Reply([*self.tokenizer.encode(text), self.tokenizer.eos_id], [], [], [])

    @staticmethod
    def _reply_text(llama, prompt_ids: list[int], reply: list[int]) -> str:
        """The reply's text as the teacher wrote it. Detokenized after its prompt, because a
        tokenizer may drop the leading space of a sequence's first piece."""
        whole = llama.detokenize(prompt_ids + reply)
        before = llama.detokenize(prompt_ids)
        raw = whole[len(before) :] if whole.startswith(before) else llama.detokenize(reply)
        return raw.decode("utf-8", "replace")
