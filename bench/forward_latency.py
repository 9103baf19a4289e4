"""Forward latency: the shipped TorchScript artifact against eager PyTorch, at each contract length.

Same weights, same input ids (seeded), batch 1, no autograd. Per length, each trial times `calls`
forwards of one backend and reports milliseconds per forward; trials alternate between the two
backends so machine load hits both alike. A few untimed calls first let TorchScript's profiling
executor settle (its first runs specialise the graph).
"""

import time

import torch

from bench.table import Row

WARMUP = 3


def _ms_per_forward(module, ids: torch.Tensor, calls: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(calls):
            module(ids)
        return (time.perf_counter() - start) / calls * 1000


def measure(eager, scripted, vocab_size: int, lengths, repeats: int, calls: int) -> list[Row]:
    """Rows per length: eager (baseline) then TorchScript, in ms per forward."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    eager.eval()
    for length in lengths:
        ids = torch.randint(0, vocab_size, (1, length), generator=generator, dtype=torch.int32)
        backends = {f"forward T{length}: eager PyTorch": eager, f"forward T{length}: TorchScript": scripted}
        for module in backends.values():
            _ms_per_forward(module, ids, WARMUP)
        times: dict[str, list[float]] = {name: [] for name in backends}
        for repeat in range(repeats):
            order = list(backends.items())
            for name, module in order if repeat % 2 == 0 else order[::-1]:
                times[name].append(_ms_per_forward(module, ids, calls))
        eager_name, script_name = backends
        rows.append(Row(eager_name, "ms", tuple(times[eager_name])))
        rows.append(Row(script_name, "ms", tuple(times[script_name]), eager_name))
    return rows
