"""How much a KV cache can gain over full recompute for this student at the generation rows' lengths.

Only the student's linear layers run, eagerly, on the generation rows' prompts and reply length
(bench/generation_speed.py): full recompute multiplies every layer by the whole sequence so far
for each new token ([1, T, d] activations), a KV cache by the new token alone ([1, 1, d]). Their
ratio is what the cache could gain if nothing but these matrix products cost anything: no
attention, no norms, no operator dispatch beyond the products themselves. A one-token product
reads the same weights as a T-token one and does 1/T of the arithmetic, so at the short lengths
of a Magic 8 Ball reply it is far from T times cheaper.
"""

import time

import torch
from torch import nn
from torch.nn import functional as F

from bench.generation_speed import QUESTIONS
from bench.table import Row
from data import prompt as prompt_lib

RECOMPUTE = "generation bound: linear layers only, full recompute"
ONE_TOKEN = "generation bound: linear layers only, one token per step"


def _products(weights, inputs):
    for weight in weights:
        F.linear(inputs[weight.shape[1]], weight)


def measure(model, tokenizer, prompts: int, new_tokens: int, repeats: int) -> list[Row]:
    """[full recompute (baseline), one token per step] in new tokens/s."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    widths = {w.shape[1] for w in weights}
    lengths = [len(prompt_lib.build_model_input(tokenizer, q)) for q in QUESTIONS[:prompts]]
    generator = torch.Generator().manual_seed(0)

    def activations(length):
        return {width: torch.randn(1, length, width, generator=generator) for width in widths}

    by_length = {t: activations(t) for t in {p + i for p in lengths for i in range(new_tokens)}}
    one = activations(1)

    def recompute():
        for p in lengths:
            for i in range(new_tokens):
                _products(weights, by_length[p + i])

    def one_token():
        for _ in lengths:
            for _ in range(new_tokens):
                _products(weights, one)

    rates: dict[str, list[float]] = {RECOMPUTE: [], ONE_TOKEN: []}
    with torch.inference_mode():
        recompute()  # warm up
        one_token()
        for _ in range(repeats):
            for name, run in ((RECOMPUTE, recompute), (ONE_TOKEN, one_token)):
                start = time.perf_counter()
                run()
                rates[name].append(len(lengths) * new_tokens / (time.perf_counter() - start))
    return [
        Row(RECOMPUTE, "tokens/s", tuple(rates[RECOMPUTE])),
        Row(ONE_TOKEN, "tokens/s", tuple(rates[ONE_TOKEN]), RECOMPUTE),
    ]
