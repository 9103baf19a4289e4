import torch

from training import incremental
from training.model import ModelConfig, Student, init_weights

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


def test_prefill_then_extend_matches_the_full_forward_pass():
    model = _model()
    ids = _ids(3, 12, 0)
    with torch.no_grad():
        full = model(ids)
    last, cache = incremental.prefill(model, ids[:, :5])
    torch.testing.assert_close(last, full[:, 4], atol=1e-4, rtol=1e-4)
    assert cache.length == 5
    logits, cache = incremental.extend(model, cache, ids[:, 5:9])
    torch.testing.assert_close(logits, full[:, 5:9], atol=1e-4, rtol=1e-4)
    for step in range(9, 12):  # one token at a time, as greedy decoding does
        logits, cache = incremental.extend(model, cache, ids[:, step : step + 1])
        torch.testing.assert_close(logits[:, 0], full[:, step], atol=1e-4, rtol=1e-4)
    assert cache.length == 12


def test_repeat_and_select_keep_each_rows_cache():
    model = _model()
    prompts = _ids(2, 6, 1)
    tails = _ids(6, 3, 2)
    _, cache = incremental.prefill(model, prompts)
    logits, _ = incremental.extend(model, cache.repeat(3), tails)  # rows 0-2: prompt 0, rows 3-5: prompt 1
    with torch.no_grad():
        full = model(torch.cat((prompts.repeat_interleave(3, 0), tails), dim=1))
    torch.testing.assert_close(logits, full[:, 6:], atol=1e-4, rtol=1e-4)
    picked, _ = incremental.extend(model, cache.select(torch.tensor([False, True])), tails[3:4])
    torch.testing.assert_close(picked, full[3:4, 6:], atol=1e-4, rtol=1e-4)
