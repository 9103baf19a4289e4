"""Decode through the MIL executor (verify/coreml/mil_executor.py): the stateful package's KV cache held as
Core ML state (one token per call) against the fp16 package recomputing the whole sequence for
every new token. Milliseconds per new token, one thread, both in the same run.

Both backends decode the same tokens after the same prompt (a seeded random row: the cost of a
step does not depend on which token it is). Each trial times `new_tokens` steps of one backend
after an untimed prefill; trials alternate between the two so machine load hits both alike. The
recompute pads each sequence to the smallest length its package enumerates, as verification does.
"""

import time

import numpy as np

from bench.table import Row
from verify import parity
from verify.coreml import coreml_stateful_steps, mil_executor

PROMPT = 12  # tokens before the timed steps: about a question's length


def _recompute_ms(program, row: list[int], new_tokens: int, pad_id: int) -> float:
    lengths = program.lengths()
    start = time.perf_counter()
    for end in range(PROMPT + 1, PROMPT + new_tokens + 1):
        length = parity.smallest_length(end, lengths)
        mil_executor.run(program, parity.pad_row(row[:end], length, pad_id))
    return (time.perf_counter() - start) / new_tokens * 1000


def _stateful_ms(steps, row: list[int], new_tokens: int) -> float:
    steps.prefill(row[:PROMPT])
    start = time.perf_counter()
    for token in row[PROMPT : PROMPT + new_tokens]:
        steps.decode(token)
    return (time.perf_counter() - start) / new_tokens * 1000


def measure(
    stateless_path: str, stateful_path: str, vocab_size: int, new_tokens: int, repeats: int, pad_id: int
) -> list[Row]:
    """Two rows: full recompute (baseline) and the stateful KV cache, in ms per new token."""
    stateless = mil_executor.load_mlpackage(stateless_path)
    steps = coreml_stateful_steps.StatefulSteps(mil_executor.load_mlpackage(stateful_path), pad_id)
    row = np.random.default_rng(0).integers(0, vocab_size, PROMPT + new_tokens).tolist()
    names = ("MIL executor decode: full recompute (fp16)", "MIL executor decode: stateful KV cache (fp16)")
    runs = {
        names[0]: lambda: _recompute_ms(stateless, row, new_tokens, pad_id),
        names[1]: lambda: _stateful_ms(steps, row, new_tokens),
    }
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        order = list(runs.items())
        for name, run in order if repeat % 2 == 0 else order[::-1]:
            times[name].append(run())
    return [
        Row(names[0], "ms", tuple(times[names[0]])),
        Row(names[1], "ms", tuple(times[names[1]]), names[0]),
    ]
