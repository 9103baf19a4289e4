"""Benchmark: our trainer (training.distill.train) against a bare PyTorch loop, side by side.

Both train the same fresh Student for --steps steps on the same batches (the trainer's seeded
order, pre-sliced for the bare loop) with the same AdamW settings, in the same process; trials
alternate between the two, --repeats times each. Prints the median tokens/s of each (non-padding
input tokens per second of wall time) and their ratio; the trainer should reach >= 0.9 of the
bare loop. The bare loop computes the same loss inline from the full forward pass.

    python bench/train_bench.py [--in=kd.jsonl] [--steps=30] [--repeats=3] [--threads=2]

Without --in it builds make_toy_kd's default dataset in memory. Not a test: timings vary by machine.
"""

import statistics
import time

import torch
from absl import flags, logging
from torch.nn import functional as F

from common import cli
from data import dataset as kd_dataset
from data import generate as make_data
from training import distill
from training.model import ModelConfig, Student, init_weights

flags.DEFINE_string("in", None, "KD dataset JSONL; default: make_toy_kd's default dataset, built in memory.")
flags.DEFINE_integer("steps", 30, "Timed optimizer steps per trial.")
flags.DEFINE_integer("repeats", 3, "Trials per loop (alternating).")
flags.DEFINE_integer("batch_size", distill.TrainConfig().batch_size, "Sequences per step.")
flags.DEFINE_integer("threads", 2, "torch threads.")
FLAGS = flags.FLAGS

BOS, PAD = 1, 3  # data/tokenizer.py's fixed special ids


def _fresh_model(vocab_size: int) -> Student:
    model = Student(ModelConfig(vocab_size=vocab_size))
    init_weights(model, 0)
    return model


def _bare_loop(
    model: Student, batches: list[distill.Batch], cfg: distill.TrainConfig, loss_cfg: distill.LossConfig
) -> None:
    """What a hand-written loop does: forward, loss, backward, clip, step. Nothing else."""
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay, foreach=False
    )
    for batch in batches:
        logits = model(batch.input_ids)[batch.loss_mask]
        log_probs = F.log_softmax(logits, dim=-1)
        ce = F.nll_loss(log_probs, batch.targets[batch.loss_mask])
        # Top-k rows are stored per completion position, in the same order as loss_mask's rows.
        valid = batch.topk_valid[batch.completion_mask]
        teacher_logp = F.log_softmax(
            batch.topk_logprobs[batch.completion_mask].masked_fill(~valid, -1e9), dim=-1
        )
        student_logp = log_probs.gather(-1, batch.topk_ids[batch.completion_mask])
        student_logp = F.log_softmax(student_logp.masked_fill(~valid, -1e9), dim=-1)
        kl = (teacher_logp.exp() * (teacher_logp - student_logp).masked_fill(~valid, 0.0)).sum(-1).mean()
        loss = kl + 0.5 * ce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()


def main(argv: list[str]) -> None:
    del argv
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(FLAGS.threads)
    if FLAGS["in"].value:
        kd = kd_dataset.read_dataset(FLAGS["in"].value)
        records = kd.split("train")
        vocab_size = kd.header.get("vocab_size", 512)
    else:
        tokenizer, _, all_records = make_data.generate(n=6000, seed=0, heldout_fraction=0.2, topk=8)
        records = [r for r in all_records if r.split == "train"]
        vocab_size = tokenizer.vocab_size
    data = distill.make_batch(records, BOS, PAD)
    cfg = distill.TrainConfig(
        steps=FLAGS.steps, batch_size=FLAGS.batch_size, heldout_every=0, log_every_s=1e9
    )
    order = distill.BatchOrder(data.lengths, cfg.batch_size, cfg.seed)  # the trainer's own order
    batches = [data.select(order.next()) for _ in range(cfg.steps)]
    tokens = sum(b.num_tokens for b in batches)
    loss_cfg = distill.LossConfig()

    def ours() -> None:
        distill.train(_fresh_model(vocab_size), data, None, cfg, loss_cfg)

    def bare() -> None:
        _bare_loop(_fresh_model(vocab_size), batches, cfg, loss_cfg)

    rates: dict[str, list[float]] = {"trainer": [], "bare": []}
    bare()  # warm-up: first-call allocations and kernel selection
    for repeat in range(FLAGS.repeats):
        for name, run in (
            (("trainer", ours), ("bare", bare)) if repeat % 2 == 0 else (("bare", bare), ("trainer", ours))
        ):
            start = time.perf_counter()
            run()
            rates[name].append(tokens / (time.perf_counter() - start))
            logging.info("repeat %d %s: %.0f tokens/s", repeat + 1, name, rates[name][-1])
    trainer, reference = statistics.median(rates["trainer"]), statistics.median(rates["bare"])
    print(f"steps {cfg.steps} x batch {cfg.batch_size}, {tokens} tokens per trial, {FLAGS.threads} threads")
    print(f"trainer: median {trainer:,.0f} tokens/s over {FLAGS.repeats} trials")
    print(f"bare loop: median {reference:,.0f} tokens/s over {FLAGS.repeats} trials")
    print(f"ratio trainer/bare: {trainer / reference:.3f} (target >= 0.9)")


if __name__ == "__main__":
    cli.run(main)
