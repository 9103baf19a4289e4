"""The one forward pass with and without a KV cache: every cached path must give the full forward's logits."""

import pytest
import torch

from training.model import FixedKVCache, IndexedKVCache, KVCache, ModelConfig, Student, init_weights

CFG = ModelConfig(
    vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=64
)


def _model() -> Student:
    model = Student(CFG)
    init_weights(model, 3)
    # Larger weights than the init's 0.02 so attention patterns matter and a wrong mask would show.
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(8.0 if param.dim() > 1 else 1.0)
    return model.eval()


def _ids(rows: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (rows, length), generator=torch.Generator().manual_seed(seed))


def _close(got: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4) -> None:
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


@torch.no_grad()
def test_prefill_then_decode_matches_the_full_forward_pass():
    model = _model()
    ids = _ids(3, 12, 0)
    full = model(ids)
    cache = KVCache()
    _close(model(ids[:, :5], cache), full[:, :5])  # prefill
    assert cache.length == 5
    _close(model(ids[:, 5:9], cache), full[:, 5:9])  # several tokens after the prefix
    for step in range(9, 12):  # one token at a time, as greedy decoding does
        _close(model(ids[:, step : step + 1], cache)[:, 0], full[:, step])
    assert cache.length == 12


@torch.no_grad()
def test_the_mask_matters():
    # Guards the tests above: a cache whose mask lets every token see every key must differ.
    class SeesAll(KVCache):
        def mask(self, positions):
            return torch.ones(positions.shape[0], self.length + positions.shape[0], dtype=torch.bool)

    model = _model()
    ids = _ids(1, 8, 4)
    assert (model(ids, SeesAll()) - model(ids)).abs().max() > 1e-2


@torch.no_grad()
def test_repeat_and_select_keep_each_rows_cache():
    model = _model()
    prompts = _ids(2, 6, 1)
    tails = _ids(6, 3, 2)
    cache = KVCache()
    model(prompts, cache)
    logits = model(tails, cache.repeat(3))  # rows 0-2: prompt 0, rows 3-5: prompt 1
    full = model(torch.cat((prompts.repeat_interleave(3, 0), tails), dim=1))
    _close(logits, full[:, 6:])
    _close(model(tails[3:4], cache.select(torch.tensor([False, True]))), full[3:4, 6:])


@torch.no_grad()
def test_a_packed_tree_scores_each_continuation_as_if_alone_and_leaves_the_cache():
    model = _model()
    prompt = _ids(1, 5, 5)
    first, second = _ids(1, 3, 6), _ids(1, 2, 7)
    cache = KVCache()
    model(prompt, cache)
    packed = torch.cat((first, second), dim=1)
    offsets = torch.tensor([0, 1, 2, 0, 1])
    owner = torch.tensor([0, 0, 0, 1, 1])
    self_mask = (owner[:, None] == owner[None, :]) & (offsets[None, :] <= offsets[:, None])
    logits = model(packed, cache.tree(offsets, self_mask))
    _close(logits[:, :3], model(torch.cat((prompt, first), 1))[:, 5:])
    _close(logits[:, 3:], model(torch.cat((prompt, second), 1))[:, 5:])
    assert cache.length == 5


# IndexedKVCache is FixedKVCache written with index_copy_: every test holds for both.
FIXED_CACHES = pytest.mark.parametrize("fixed", [FixedKVCache, IndexedKVCache])


@FIXED_CACHES
@torch.no_grad()
def test_fixed_cache_to_the_last_slot_matches_the_full_forward_pass(fixed):
    model = _model()
    ids = _ids(1, CFG.max_seq_len, 8)
    full = model(ids)
    keys, values = FixedKVCache.empty(CFG)
    # Garbage in every slot, as a previous sequence leaves it: slots at or after pos are never read.
    keys.normal_(generator=torch.Generator().manual_seed(0))
    values.normal_(generator=torch.Generator().manual_seed(1))
    _close(model(ids[:, :7], fixed(keys, values, torch.tensor([0]))), full[:, :7])
    for pos in range(7, CFG.max_seq_len):
        got = model(ids[:, pos : pos + 1], fixed(keys, values, torch.tensor([pos])))
        _close(got[:, 0], full[:, pos])
    grown = KVCache()
    model(ids, grown)
    for layer, (k, v) in enumerate(grown.layers):  # the slots hold what the growing cache holds
        _close(keys[layer], k)
        _close(values[layer], v)


@torch.no_grad()
def test_the_indexed_cache_computes_the_fixed_cache_bit_for_bit():
    # Only the write differs (index_copy_ for the slice write), so the TorchScript decoder's outputs
    # are those of the FixedKVCache path, to the last bit: logits and cache contents alike.
    model = _model()
    ids = _ids(1, CFG.max_seq_len, 12)
    caches = {kind: FixedKVCache.empty(CFG) for kind in (FixedKVCache, IndexedKVCache)}
    for keys, values in caches.values():
        keys.normal_(generator=torch.Generator().manual_seed(0))  # a previous sequence's leftovers
        values.normal_(generator=torch.Generator().manual_seed(1))
    steps = [(0, 9), *((pos, pos + 1) for pos in range(9, CFG.max_seq_len))]
    for start, end in steps:
        got = {
            kind: model(ids[:, start:end], kind(keys, values, torch.tensor([start])))
            for kind, (keys, values) in caches.items()
        }
        assert torch.equal(got[FixedKVCache], got[IndexedKVCache]), (start, end)
    assert all(torch.equal(a, b) for a, b in zip(*caches.values(), strict=True))


@torch.no_grad()
def test_fixed_cache_in_float16_stays_close():
    # The Core ML state is an fp16 buffer: the same code with fp16 cache tensors.
    model = _model()
    ids = _ids(1, 20, 9)
    full = model(ids)
    keys, values = FixedKVCache.empty(CFG, dtype=torch.float16)
    model(ids[:, :4], FixedKVCache(keys, values, torch.tensor([0])))
    for pos in range(4, 20):
        got = model(ids[:, pos : pos + 1], FixedKVCache(keys, values, torch.tensor([pos])))
        _close(got[:, 0], full[:, pos], tol=5e-2)
    assert keys.dtype == torch.float16 and keys[:, :, :, :20].abs().sum() > 0


class _Decoder(torch.nn.Module):
    """(ids [1, S], pos [1], keys, values) -> (logits [1, S, V], keys, values): the shape of an export."""

    def __init__(self, model: Student, fixed):
        super().__init__()
        self.model, self.fixed = model, fixed

    def forward(self, ids, pos, keys, values):
        return self.model(ids, self.fixed(keys, values, pos)), keys, values


@FIXED_CACHES
@torch.no_grad()
def test_fixed_cache_path_traces_with_a_dynamic_position_and_length(fixed):
    model = _model()
    keys, values = FixedKVCache.empty(CFG)
    example = (torch.zeros(1, 5, dtype=torch.int32), torch.tensor([3]), keys, values)
    traced = torch.jit.trace(_Decoder(model, fixed), example, check_trace=False)
    ids = _ids(1, 30, 10)
    full = model(ids)
    keys, values = FixedKVCache.empty(CFG)
    logits, keys, values = traced(ids[:, :9].int(), torch.tensor([0]), keys, values)  # not the traced 5, 3
    _close(logits, full[:, :9])
    for pos in range(9, 30):
        logits, keys, values = traced(ids[:, pos : pos + 1].int(), torch.tensor([pos]), keys, values)
        _close(logits[:, 0], full[:, pos])


@FIXED_CACHES
@pytest.mark.parametrize("tie", [False, True])
@torch.no_grad()
def test_batched_rows_decode_independently(tie, fixed):
    cfg = ModelConfig(**{**CFG.to_dict(), "tie_embeddings": tie})
    model = Student(cfg)
    init_weights(model, 2)
    ids = _ids(4, 10, 11)
    full = model(ids)
    keys, values = FixedKVCache.empty(cfg, batch=4)
    _close(model(ids[:, :6], fixed(keys, values, torch.tensor([0]))), full[:, :6])
    _close(model(ids[:, 6:], fixed(keys, values, torch.tensor([6]))), full[:, 6:])
