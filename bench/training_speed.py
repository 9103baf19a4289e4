"""Training tokens/s: our trainer (training.distill.train) against a bare PyTorch loop, side by side.

Both train the same fresh Student for `steps` steps on the same batches (the trainer's seeded
order, pre-sliced for the bare loop) with the same AdamW settings, in the same process; trials
alternate between the two. A rate is non-padding input tokens per second of wall time. The bare
loop computes the same loss (the tail-bucket KL and CE, training/distill.py) inline from the full
forward pass: what a hand-written loop does. Its batches are sliced before the clock starts; the
trainer slices each step's batch inside its loop.
"""

import time

import torch
from absl import logging
from torch.nn import functional as F

from bench.table import Row
from data import dataset as kd_dataset
from data import generate as make_data
from training import distill
from training.model import ModelConfig, Student, init_weights

BOS, PAD = 1, 3  # data/tokenizer.py's fixed special ids
TRAINER, BARE = "training: our trainer", "training: bare PyTorch loop"


def training_records(path: str | None) -> tuple[list, int]:
    """(train records, vocab size) of the dataset at `path`, or of make_toy_kd's default dataset."""
    if path:
        kd = kd_dataset.read_dataset(path)
        return kd.split("train"), kd.header.get("vocab_size", 512)
    tokenizer, _, records = make_data.generate(n=6000, seed=0, heldout_fraction=0.2, topk=8)
    return [r for r in records if r.split == "train"], tokenizer.vocab_size


def _fresh_model(vocab_size: int) -> Student:
    model = Student(ModelConfig(vocab_size=vocab_size))
    init_weights(model, 0)
    return model


def _bare_loop(
    model: Student, batches: list[distill.Batch], cfg: distill.TrainConfig, loss: distill.LossConfig
) -> None:
    """Forward, loss, backward, clip, step. Nothing else. The loss is the trainer's (KL over the
    teacher's top-k plus one bucket for the rest, and CE, with its weights), written out inline
    from the full forward pass as a hand-written loop would, at temperature 1."""
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay, foreach=False
    )
    for batch in batches:
        log_probs = F.log_softmax(model(batch.input_ids)[batch.loss_mask], dim=-1)  # [M, V]
        ce = F.nll_loss(log_probs, batch.targets[batch.loss_mask])
        ids, teacher_lp, valid, tail = batch.teacher_topk()  # [M, k] x3, [M]
        student_lp = log_probs.gather(-1, ids)
        student_tail = (1 - (student_lp.exp() * valid).sum(-1)).clamp(min=1e-12)
        listed = (teacher_lp.exp() * (teacher_lp - student_lp)).masked_fill(~valid, 0.0).sum(-1)
        rest = torch.where(tail > 0, tail * (tail.clamp(min=1e-12).log() - student_tail.log()), 0.0)
        objective = loss.kl_weight * (listed + rest).mean() + loss.ce_weight * ce
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()


def measure(records: list, vocab_size: int, steps: int, repeats: int, batch_size: int) -> list[Row]:
    """[trainer row, bare-loop row] in tokens/s; torch's thread count is the caller's."""
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    data = distill.make_batch(records, BOS, PAD)
    cfg = distill.TrainConfig(steps=steps, batch_size=batch_size, heldout_every=0, log_every_s=1e9)
    order = distill.BatchOrder(data.lengths, cfg.batch_size, cfg.seed)  # the trainer's own order
    batches = [data.select(order.next()) for _ in range(cfg.steps)]
    tokens = sum(b.num_tokens for b in batches)
    loss_cfg = distill.LossConfig()

    def ours() -> None:
        distill.train(_fresh_model(vocab_size), data, None, cfg, loss_cfg)

    def bare() -> None:
        _bare_loop(_fresh_model(vocab_size), batches, cfg, loss_cfg)

    rates: dict[str, list[float]] = {TRAINER: [], BARE: []}
    bare()  # warm-up: first-call allocations and kernel selection
    for repeat in range(repeats):
        pair = ((TRAINER, ours), (BARE, bare))
        for name, run in pair if repeat % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            run()
            rates[name].append(tokens / (time.perf_counter() - start))
            logging.info("repeat %d %s: %.0f tokens/s", repeat + 1, name, rates[name][-1])
    logging.info("training: %d steps x %d sequences, %d tokens per trial", steps, batch_size, tokens)
    return [
        Row(BARE, "tokens/s", tuple(rates[BARE])),
        Row(TRAINER, "tokens/s", tuple(rates[TRAINER]), BARE),
    ]
