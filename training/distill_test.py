import dataclasses
import math

import numpy as np
import pytest
import safetensors.torch
import torch
from torch.nn import functional as F

from training import distill
from training.model import ModelConfig, Student, init_weights

BOS, EOS, PAD = 1, 2, 3
TINY = ModelConfig(
    vocab_size=40, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32, max_seq_len=64
)


@dataclasses.dataclass
class FakeRecord:
    """The fields of data.dataset.Record that training reads."""

    prompt_ids: list
    completion_ids: list
    topk_ids: list
    topk_logprobs: list
    topk_tail: list | None = None  # None: make_batch computes it from the lists


def fake_records(n: int, seed: int = 0) -> list[FakeRecord]:
    """Prompts of varying length; the completion is a function of the prompt so a model can learn it."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        prompt = [int(x) for x in rng.integers(10, 40, size=int(rng.integers(2, 7)))]
        first = 10 + prompt[0] % 5
        completion = [first, 30 + prompt[0] % 3, EOS]
        topk_ids = [[first, first + 5], [completion[1]], [EOS]]
        topk_logprobs = [[math.log(0.7), math.log(0.2)], [0.0], [0.0]]
        records.append(FakeRecord(prompt, completion, topk_ids, topk_logprobs))
    return records


def one_position_batch(topk_ids, topk_logprobs, target) -> distill.Batch:
    record = FakeRecord([5], [target, EOS], [topk_ids, [EOS]], [topk_logprobs, [0.0]])
    return distill.make_batch([record], BOS, PAD)


def test_make_batch_lines_up_targets_and_topk_with_the_completion():
    records = fake_records(5)
    batch = distill.make_batch(records, BOS, PAD)
    assert batch.input_ids.shape == (5, max(len(r.prompt_ids) + len(r.completion_ids) for r in records))
    for row, record in enumerate(records):
        length = 1 + len(record.prompt_ids) + len(record.completion_ids) - 1
        assert int(batch.lengths[row]) == length
        assert batch.input_ids[row, :length].tolist() == [
            BOS,
            *record.prompt_ids,
            *record.completion_ids[:-1],
        ]
        assert (batch.input_ids[row, length:] == PAD).all()
        mask = batch.loss_mask[row]
        assert batch.targets[row][mask].tolist() == record.completion_ids
        assert int(mask.sum()) == len(record.completion_ids)
        assert batch.completion_mask[row].tolist() == [True] * 3  # every fake completion has 3 tokens
        for i, ids in enumerate(record.topk_ids):
            assert batch.topk_ids[row, i, : len(ids)].tolist() == ids
            assert batch.topk_valid[row, i].tolist() == [True] * len(ids) + [False] * (2 - len(ids))
    # Row-major, completion positions and loss positions pair up one to one.
    ids, _, valid, tail = batch.teacher_topk()
    assert ids.shape == (int(batch.loss_mask.sum()), 2)
    assert (ids[:, 0] == batch.targets[batch.loss_mask]).all()  # fake teachers rank the target first
    assert valid.any(-1).all()
    # Tails computed from the lists (the fake records carry none): 0.1 off the first list, 0 after.
    assert tail.shape == (int(batch.loss_mask.sum()),)
    torch.testing.assert_close(batch.topk_tail[0], torch.tensor([1 - 0.7 - 0.2, 0.0, 0.0]))


def test_make_batch_takes_the_records_tails_and_pads_them_with_0():
    given = FakeRecord(
        [5], [7, 8, EOS], [[7, 9], [8], [EOS]], [[-0.5, -1.5], [-0.1], [0.0]], [0.25, 0.5, 0.0]
    )
    short = FakeRecord([5, 6], [7, EOS], [[7], [EOS]], [[0.0], [0.0]])
    batch = distill.make_batch([given, short], BOS, PAD)
    assert batch.topk_tail.tolist() == [[0.25, 0.5, 0.0], [0.0, 0.0, 0.0]]  # as given, not recomputed
    assert batch.topk_tail.dtype == torch.float32


V5 = 5  # the hand-computed case's vocabulary


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _reference(z: np.ndarray, rows: list, t: float) -> tuple[float, np.ndarray]:
    """KL_bucket's mean over positions and its gradient w.r.t. z, in float64, from the formula.

    rows: per position (ids, probabilities, tail). Buckets: the listed ids and the rest. With
    P the tempered teacher buckets (p^(1/T), renormalised), s = softmax(z / T) and Q_b the sum of s
    over bucket b: KL = sum_b P_b log(P_b / Q_b), and d log Q_b / d z_v = (1/T)([v in b] s_v / Q_b - s_v),
    so d KL / d z_v = (1/T)(s_v - P_b(v) s_v / Q_b(v)) (P sums to 1). Times T^2, over M positions.
    """
    loss, grad = 0.0, np.zeros_like(z)
    for m, (ids, probs, tail) in enumerate(rows):
        s = _softmax(z[m] / t)
        rest = [v for v in range(z.shape[1]) if v not in ids]
        teacher = np.array([*probs, tail]) ** (1 / t)
        teacher /= teacher.sum()
        buckets = [[i] for i in ids] + [rest]
        mass = np.array([s[b].sum() for b in buckets])
        loss += sum(P * np.log(P / Q) for P, Q in zip(teacher, mass, strict=True) if P > 0)
        for b, members in enumerate(buckets):
            grad[m, members] = (s[members] - teacher[b] * s[members] / mass[b]) / t
    return loss / len(rows) * t * t, grad / len(rows) * t * t


def test_kl_and_its_gradient_match_a_hand_computation():
    # Three positions over a vocabulary of 5, k = 2: a list with a tail; a list holding the whole
    # distribution (tail 0); a list of one id, padded to k = 2.
    rows = [([1, 3], [0.5, 0.3], 0.2), ([4, 0], [0.6, 0.4], 0.0), ([2], [0.7], 0.3)]
    record = FakeRecord(
        [4],
        [1, 4, EOS],
        [ids for ids, _, _ in rows],
        [[math.log(p) for p in probs] for _, probs, _ in rows],
        [tail for _, _, tail in rows],
    )
    batch = distill.make_batch([record], BOS, PAD)
    assert batch.topk_valid[0, 2].tolist() == [True, False]  # the padded entry
    z0 = np.array([[0.2, 1.0, -0.5, 0.3, 0.0], [-1.0, 0.5, 0.25, 2.0, 0.1], [0.7, -0.3, 1.5, 0.0, -2.0]])
    for t in (1.0, 2.0, 0.5):
        z = torch.tensor(z0, dtype=torch.float32, requires_grad=True)
        cfg = distill.LossConfig(temperature=t, kl_weight=1.0, ce_weight=0.0)
        parts = distill.distill_loss(z, batch, cfg)
        parts.total.backward()
        loss, grad = _reference(z0, rows, t)
        assert float(parts.kl.detach()) == pytest.approx(loss, rel=1e-5), t
        np.testing.assert_allclose(z.grad.numpy(), grad, rtol=1e-4, atol=1e-6)
    # The reference formula itself against central differences of the reference loss.
    _, grad = _reference(z0, rows, 2.0)
    for m, v in ((0, 1), (0, 4), (1, 2), (2, 2), (2, 3)):
        step = np.zeros_like(z0)
        step[m, v] = 1e-6
        numeric = (_reference(z0 + step, rows, 2.0)[0] - _reference(z0 - step, rows, 2.0)[0]) / 2e-6
        assert numeric == pytest.approx(grad[m, v], rel=1e-5, abs=1e-9)


def test_kl_is_0_when_the_students_buckets_are_the_teachers():
    logprobs = [math.log(0.5), math.log(0.3), math.log(0.1)]  # 0.1 of the teacher's mass is elsewhere
    batch = one_position_batch([4, 8, 11], logprobs, 4)
    # The student's off-list 0.1 spread unevenly over the other 37 ids: only its sum is a bucket.
    weights = torch.arange(1.0, TINY.vocab_size + 1.0)
    weights[[4, 8, 11]] = 0.0
    z = torch.full((2, TINY.vocab_size), -1e4)
    z[0] = torch.log(0.1 * weights / weights.sum())
    z[0, [4, 8, 11]] = torch.tensor(logprobs)
    z[1, EOS] = 0.0  # the eos position: its list is [eos] with probability 1, tail 0
    assert abs(float(distill.distill_loss(z, batch, distill.LossConfig()).kl)) < 1e-6
    # At T != 1 the tail bucket is tempered as one token: with the off-list mass on one id it is one.
    one = z.clone()
    one[0] = -1e4
    one[0, [4, 8, 11, 20]] = torch.tensor([*logprobs, math.log(0.1)])
    for t in (0.5, 1.0, 3.0):
        assert abs(float(distill.distill_loss(one, batch, distill.LossConfig(temperature=t)).kl)) < 1e-6
    # Mass moved off the list, or ratios changed inside it: the KL sees both.
    moved = z.clone()
    moved[0, 20] = 2.0
    assert float(distill.distill_loss(moved, batch, distill.LossConfig()).kl) > 0.1
    skewed = z.clone()
    skewed[0, 11] = 0.0
    assert float(distill.distill_loss(skewed, batch, distill.LossConfig()).kl) > 0.1


def test_the_students_tail_is_computed_in_log_space():
    # The student puts all but 1e-9 of its mass on the listed id: 1 - q in float32 is 0, so
    # log(1 - sum q) would be -inf; the log-space tail is exact.
    batch = one_position_batch([7], [math.log(0.999)], 7)
    z = torch.zeros(2, TINY.vocab_size, dtype=torch.float64)
    z[0] = math.log(1e-9 / (TINY.vocab_size - 1))
    z[0, 7] = 0.0
    z[1] = -1e4
    z[1, EOS] = 0.0
    assert float(1 - torch.softmax(z[0].float(), -1)[7]) == 0.0  # the cancellation this avoids
    q_tail = 1e-9 / (1 + 1e-9)
    expected = (0.999 * math.log(0.999 / (1 - q_tail)) + 0.001 * math.log(0.001 / q_tail)) / 2  # eos: 0
    kl = float(distill.distill_loss(z.float(), batch, distill.LossConfig()).kl)
    assert kl == pytest.approx(expected, rel=1e-4)


def test_a_single_id_list_still_teaches_its_probability():
    # With the old renormalised loss a one-id list gave KL 0 whatever the student did; the tail bucket
    # holds the id to the teacher's 0.6.
    batch = one_position_batch([7], [math.log(0.6)], 7)
    z = torch.full((2, TINY.vocab_size), -1e4)
    z[0, 7], z[0, 9] = math.log(0.6), math.log(0.4)
    z[1, EOS] = 0.0
    assert abs(float(distill.distill_loss(z, batch, distill.LossConfig()).kl)) < 1e-6
    z[0, 9] = math.log(0.1)
    assert float(distill.distill_loss(z, batch, distill.LossConfig()).kl) > 0.05


def test_records_without_soft_targets_give_kl_0_and_train_on_ce():
    records = [FakeRecord([5, 6], [7, 8, EOS], [], [], []), FakeRecord([5], [9, EOS], [], [], [])]
    batch = distill.make_batch(records, BOS, PAD)
    assert batch.topk_ids.shape == (2, 3, 0) and batch.topk_tail.tolist() == [[0.0] * 3] * 2
    z = torch.randn(5, TINY.vocab_size, generator=torch.Generator().manual_seed(1), requires_grad=True)
    parts = distill.distill_loss(z, batch, distill.LossConfig(kl_weight=1.0, ce_weight=1.0))
    assert float(parts.kl.detach()) == 0.0
    expected = F.cross_entropy(z.detach(), batch.targets[batch.loss_mask])
    assert float(parts.ce.detach()) == pytest.approx(float(expected), rel=1e-6)
    parts.total.backward()
    assert torch.isfinite(z.grad).all()


def test_padding_entries_of_short_topk_lists_contribute_nothing():
    short = FakeRecord([5], [7, EOS], [[7, 9], [EOS]], [[math.log(0.6), math.log(0.3)], [0.0]])
    long = FakeRecord([6], [8, EOS], [[8, 9, 30], [EOS]], [[math.log(0.5), math.log(0.3), -2.0], [0.0]])
    z = torch.randn(2, TINY.vocab_size, generator=torch.Generator().manual_seed(2))
    cfg = distill.LossConfig()
    alone = [distill.distill_loss(z, distill.make_batch([r], BOS, PAD), cfg) for r in (short, long)]
    mixed = distill.make_batch([short, long], BOS, PAD)
    assert mixed.topk_valid[0, 0].tolist() == [True, True, False]  # short's list is padded to k = 3
    parts = distill.distill_loss(torch.cat([z, z]), mixed, cfg)
    # Means over positions: the pair's loss is the mean of the two rows' (same count of positions).
    assert float(parts.kl) == pytest.approx((float(alone[0].kl) + float(alone[1].kl)) / 2, rel=1e-5)
    assert float(parts.ce) == pytest.approx((float(alone[0].ce) + float(alone[1].ce)) / 2, rel=1e-5)


def test_ce_is_cross_entropy_on_completion_tokens_and_weights_combine():
    records = fake_records(4)
    batch = distill.make_batch(records, BOS, PAD)
    z = torch.randn(int(batch.loss_mask.sum()), TINY.vocab_size, generator=torch.Generator().manual_seed(0))
    cfg = distill.LossConfig(temperature=2.0, kl_weight=0.7, ce_weight=0.3)
    parts = distill.distill_loss(z, batch, cfg)
    assert float(parts.ce) == pytest.approx(
        float(F.cross_entropy(z, batch.targets[batch.loss_mask])), rel=1e-6
    )
    assert float(parts.total) == pytest.approx(0.7 * float(parts.kl) + 0.3 * float(parts.ce), rel=1e-6)
    assert math.isfinite(float(parts.kl)) and float(parts.kl) > 0


def test_prompt_and_padding_never_change_a_rows_loss():
    torch.manual_seed(0)
    model = Student(TINY)
    init_weights(model, 0)
    records = fake_records(2, seed=3)
    records[0].prompt_ids = [11, 12]  # short row: padded in the pair
    records[1].prompt_ids = [13, 14, 15, 16, 17, 18]
    cfg = distill.LossConfig()
    pair = distill.make_batch(records, BOS, PAD)
    pair_logits = distill.completion_logits(model, pair)
    alone = torch.cat([distill.completion_logits(model, distill.make_batch([r], BOS, PAD)) for r in records])
    torch.testing.assert_close(pair_logits, alone, atol=1e-5, rtol=1e-5)
    # The loss has no gradient path to the logits of prompt or padding positions.
    logits = model(pair.input_ids).detach().requires_grad_()
    distill.distill_loss(logits[pair.loss_mask], pair, cfg).total.backward()
    assert (logits.grad[~pair.loss_mask] == 0).all()
    assert (logits.grad[pair.loss_mask].abs().sum(-1) > 0).all()


def test_completion_logits_are_the_forward_pass_at_the_completion_positions():
    model = Student(TINY)
    init_weights(model, 1)
    batch = distill.make_batch(fake_records(4), BOS, PAD)
    expected = model(batch.input_ids)[batch.loss_mask]
    torch.testing.assert_close(distill.completion_logits(model, batch), expected, atol=0, rtol=0)
    wrapped = distill.CompletionLogits(model)(batch.input_ids, batch.loss_mask)
    torch.testing.assert_close(wrapped, expected, atol=0, rtol=0)


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    cfg = distill.TrainConfig(steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    lrs = [distill.lr_at(step, cfg) for step in range(100)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 45 / 89)))


def test_batch_order_is_seeded_covers_each_epoch_and_groups_lengths():
    lengths = torch.tensor([(i * 7) % 23 + 3 for i in range(100)])
    first = distill.BatchOrder(lengths, 8, seed=5, bucket=4)
    again = distill.BatchOrder(lengths, 8, seed=5, bucket=4)
    other = distill.BatchOrder(lengths, 8, seed=6, bucket=4)
    epoch = [first.next() for _ in range(12)]  # 100 // 8 = 12 batches per epoch
    assert [b.tolist() for b in epoch] == [again.next().tolist() for _ in range(12)]
    assert [b.tolist() for b in epoch] != [other.next().tolist() for _ in range(12)]
    seen = torch.cat(epoch)
    assert len(seen) == 96 and len(set(seen.tolist())) == 96
    # Sorted within windows of 4 batches: a batch spans a narrow band of lengths.
    spread = sum(int(lengths[b].max() - lengths[b].min()) for b in epoch) / 12
    assert spread < 0.5 * int(lengths.max() - lengths.min())
    assert first.next().tolist() != epoch[0].tolist() or first.next().tolist() != epoch[1].tolist()


def _train(records, steps, **overrides):
    torch.manual_seed(0)
    model = Student(TINY)
    init_weights(model, 0)
    data = distill.make_batch(records[:-8], BOS, PAD)
    heldout = distill.make_batch(records[-8:], BOS, PAD)
    cfg = distill.TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup=5, seed=0, heldout_every=10)
    cfg = dataclasses.replace(cfg, **overrides)
    result = distill.train(model, data, heldout, cfg, distill.LossConfig())
    return model, result


def _weights_bytes(model) -> bytes:
    return safetensors.torch.save({k: v.contiguous() for k, v in sorted(model.state_dict().items())})


def test_training_learns_and_is_byte_reproducible_whatever_the_logging():
    torch.use_deterministic_algorithms(True)
    records = fake_records(48)
    quiet, quiet_result = _train(records, 40, log_every_s=1e9)
    chatty, chatty_result = _train(records, 40, log_every_steps=1)
    assert _weights_bytes(quiet) == _weights_bytes(chatty)
    assert quiet_result.history == chatty_result.history
    history = quiet_result.history
    assert [row["step"] for row in history] == list(range(1, 41))
    assert sum(r["loss"] for r in history[-5:]) < 0.5 * sum(r["loss"] for r in history[:5])
    assert "heldout_loss" in history[9] and "heldout_loss" not in history[10]
    assert quiet_result.final_heldout["loss"] == history[-1]["heldout_loss"]
    assert quiet_result.final_heldout["loss"] < history[9]["heldout_loss"]
    assert quiet_result.final_train["loss"] == pytest.approx(
        sum(r["loss"] for r in history[-distill.FINAL_TRAIN_STEPS :]) / min(40, distill.FINAL_TRAIN_STEPS)
    )
    different_seed, _ = _train(records, 5, seed=1)
    assert _weights_bytes(different_seed) != _weights_bytes(_train(records, 5)[0])


def test_evaluate_loss_is_token_weighted_over_all_rows():
    model = Student(TINY)
    init_weights(model, 2)
    records = fake_records(10, seed=4)
    data = distill.make_batch(records, BOS, PAD)
    cfg = distill.LossConfig()
    whole = distill.evaluate_loss(model, data, cfg, batch_size=3)
    with torch.no_grad():
        full = distill.distill_loss(distill.completion_logits(model, data), data, cfg)
    assert whole["loss"] == pytest.approx(float(full.total), rel=1e-5)
    assert whole["ce"] == pytest.approx(float(full.ce), rel=1e-5)
