"""Knowledge distillation from the teacher's top-k soft targets: loss, batching and the training loop.

The loss, per completion position (prompt positions and padding are never trained), is

    kl_weight * T^2 * KL_topk(teacher_T || student_T) + ce_weight * CE(student, teacher token)

KL_topk, our exact choice. The dataset keeps only the teacher's top-k log-probabilities at each
completion position (make_toy_kd's default k = 8 holds ~91% of the mass at the first answer token).
- Teacher: renormalised over its k ids at temperature T, p_i = softmax_i(teacher_logprob / T).
- Student: log-softmax of its logits at temperature T gathered at the same k ids, then renormalised
  over them: log q_i = log_softmax(z / T)[id_i] - logsumexp_j log_softmax(z / T)[id_j]
  (= log_softmax over the k gathered logits z[id] / T).
- KL_topk = sum_i p_i (log p_i - log q_i): a true KL between distributions over the k ids, >= 0,
  and 0 exactly when the student's ratios among the k ids are the teacher's.
Why renormalise the student as well: against the student's *unnormalised* probabilities, the loss
would push all the student's mass onto the k ids and starve the answers outside the top-k (at one
position the bias in total variation is (1 - top-k mass) * kl_weight / (kl_weight + ce_weight));
it measured clearly worse per-kind TV. Here KL_topk fixes the ratios inside the top-k and the CE
term, on tokens the teacher sampled from its full distribution, sets the rest: the mass outside
the top-k and every single-id position (where KL_topk is 0). Both terms are minimised by the
teacher's distribution, so their weighted sum is too, and CE keeps off-list tokens (non-canonical
text) down. Matching softmax(z / T) to the tempered teacher makes z the teacher's log-probs up to a
constant, so the student's T = 1 distribution is the teacher's for any T; T^2 keeps gradient sizes
comparable across T.
Both terms are means over the completion tokens of the batch.

Determinism: the caller seeds initialisation; the data order comes from a torch.Generator seeded
with TrainConfig.seed; nothing here reads the clock except progress logging, which never feeds back
into the computation.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import torch
from absl import logging
from torch.nn import functional as F

from training.config import LossConfig, TrainConfig
from training.model import Student


@dataclasses.dataclass
class Batch:
    """Padded tensors for B sequences (inputs are the sequence minus its last token).

    T is the longest input, C the longest completion, k the most top-k entries at any position.
    The teacher's top-k rows are stored per completion position only: row-major, the True entries
    of completion_mask line up one to one with the True entries of loss_mask.
    """

    input_ids: torch.Tensor  # [B, T] long, pad_id after the end
    targets: torch.Tensor  # [B, T] long: the next token at each position
    loss_mask: torch.Tensor  # [B, T] bool: True where the target is a completion token
    lengths: torch.Tensor  # [B] long: real (unpadded) input length
    completion_mask: torch.Tensor  # [B, C] bool: True for the row's completion positions
    topk_ids: torch.Tensor  # [B, C, k] long
    topk_logprobs: torch.Tensor  # [B, C, k] float32
    topk_valid: torch.Tensor  # [B, C, k] bool: False for padding entries (fewer than k given)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: str) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    def select(self, index: torch.Tensor) -> "Batch":
        """Rows `index`, trimmed to their longest real length so no step pays for others' padding."""
        width = int(self.lengths[index].max())
        return Batch(
            input_ids=self.input_ids[index, :width],
            targets=self.targets[index, :width],
            loss_mask=self.loss_mask[index, :width],
            lengths=self.lengths[index],
            completion_mask=self.completion_mask[index],
            topk_ids=self.topk_ids[index],
            topk_logprobs=self.topk_logprobs[index],
            topk_valid=self.topk_valid[index],
        )

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def teacher_topk(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, logprobs, valid), each [M, k], in the order of the M completion positions."""
        m = self.completion_mask
        return self.topk_ids[m], self.topk_logprobs[m], self.topk_valid[m]


def record_sequence(record, bos_id: int) -> tuple[list[int], int]:
    """(token sequence, index of its first completion token) for a dataset record.

    Interfaces: a model input is [bos] + encode(prompt) + encode(completion) + [eos]; the dataset's
    prompt_ids are encode(prompt) and its completion_ids already end with eos.
    """
    return [bos_id, *record.prompt_ids, *record.completion_ids], 1 + len(record.prompt_ids)


def make_batch(records: Sequence, bos_id: int, pad_id: int) -> Batch:
    """Pads dataset records (prompt_ids, completion_ids, topk_ids, topk_logprobs) into one Batch."""
    if not records:
        raise ValueError("make_batch needs at least one record")
    n = len(records)
    width = max(len(r.prompt_ids) + len(r.completion_ids) for r in records)  # 1 + P + C - 1
    comp_width = max(len(r.completion_ids) for r in records)
    k = max(len(ids) for r in records for ids in r.topk_ids)
    # Flat lists, one tensor each at the end: far faster than nested lists for thousands of records.
    input_ids, targets, loss_mask, lengths = [], [], [], []
    completion_mask, topk_ids, topk_logprobs, topk_valid = [], [], [], []
    for record in records:
        seq, first = record_sequence(record, bos_id)
        length = len(seq) - 1
        pad = [pad_id] * (width - length)
        lengths.append(length)
        input_ids += seq[:-1] + pad
        targets += seq[1:] + pad
        # Completion token i sits at sequence index first + i and is predicted one position earlier.
        start = first - 1
        loss_mask += [False] * start + [True] * (length - start) + [False] * (width - length)
        count = len(record.completion_ids)
        completion_mask += [True] * count + [False] * (comp_width - count)
        for ids, logprobs in zip(record.topk_ids, record.topk_logprobs, strict=True):
            fill = k - len(ids)
            topk_ids += [*ids, *[0] * fill]
            topk_logprobs += [*logprobs, *[0.0] * fill]
            topk_valid += [True] * len(ids) + [False] * fill
        empty = (comp_width - count) * k
        topk_ids += [0] * empty
        topk_logprobs += [0.0] * empty
        topk_valid += [False] * empty
    return Batch(
        input_ids=torch.tensor(input_ids, dtype=torch.long).view(n, width),
        targets=torch.tensor(targets, dtype=torch.long).view(n, width),
        loss_mask=torch.tensor(loss_mask, dtype=torch.bool).view(n, width),
        lengths=torch.tensor(lengths, dtype=torch.long),
        completion_mask=torch.tensor(completion_mask, dtype=torch.bool).view(n, comp_width),
        topk_ids=torch.tensor(topk_ids, dtype=torch.long).view(n, comp_width, k),
        topk_logprobs=torch.tensor(topk_logprobs, dtype=torch.float32).view(n, comp_width, k),
        topk_valid=torch.tensor(topk_valid, dtype=torch.bool).view(n, comp_width, k),
    )


@dataclasses.dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def completion_logits(model: Student, batch: Batch) -> torch.Tensor:
    """Logits [M, V] at the batch's M completion positions (row-major order of loss_mask)."""
    return model.lm_head(model.hidden_states(batch.input_ids)[batch.loss_mask])


class CompletionLogits(torch.nn.Module):
    """completion_logits(model, batch) as a module of (input_ids, loss_mask), for wrappers.

    DistributedDataParallel syncs gradients only for a module's forward it runs, and training runs
    the student piecewise (Student.hidden_states, then the head on completion rows); this wraps that
    from the outside, leaving model.py as it is. With compile=True the hidden states go through torch.compile
    (dynamic shapes: every batch has its own length); the row selection and the head stay eager,
    since a boolean mask has a data-dependent size.
    """

    def __init__(self, model: Student, compile: bool = False):
        super().__init__()
        self.model = model
        hidden = model.hidden_states
        self.hidden = torch.compile(hidden, dynamic=True) if compile else hidden

    def forward(self, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.hidden(input_ids)[loss_mask])


def distill_loss(z: torch.Tensor, batch: Batch, cfg: LossConfig) -> LossParts:
    """The module docstring's loss; z = completion_logits(model, batch), [M, V]."""
    log_probs = F.log_softmax(z.float(), dim=-1)
    ce = F.nll_loss(log_probs, batch.targets[batch.loss_mask])
    t = cfg.temperature
    ids, logprobs, valid = batch.teacher_topk()
    teacher_logp = F.log_softmax((logprobs / t).masked_fill(~valid, -math.inf), dim=-1)
    teacher_p = teacher_logp.exp()  # exactly 0 at padding entries
    student_logp_t = log_probs if t == 1.0 else F.log_softmax(z.float() / t, dim=-1)
    # Renormalised over the k ids (module docstring); padding entries get no mass.
    student_logp = F.log_softmax(student_logp_t.gather(-1, ids).masked_fill(~valid, -math.inf), dim=-1)
    # Padding entries contribute 0 * (0 - finite) = 0; masked_fill avoids 0 * -inf = nan.
    diff = teacher_logp.masked_fill(~valid, 0.0) - student_logp.masked_fill(~valid, 0.0)
    kl = (teacher_p * diff).sum(-1).mean() * (t * t)
    total = cfg.kl_weight * kl + cfg.ce_weight * ce
    return LossParts(total=total, kl=kl, ce=ce)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over cfg.warmup steps, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - 1 - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: Student, cfg: TrainConfig) -> torch.optim.AdamW:
    # nanoGPT's split: matrices (and embeddings) decay, norm gains do not.
    params = sorted(model.named_parameters())
    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # foreach=False: the same kernels every run, whatever torch decides is fastest.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), eps=1e-8, foreach=False)


class BatchOrder:
    """Endless seeded epochs of batches of row indices, grouped by length to waste little on padding.

    Each epoch: a seeded shuffle (the short tail that does not fill a batch is dropped), then within
    windows of `bucket` batches the rows are sorted by length and cut into batches, then the batches
    are shuffled. Rows of similar length share a batch, yet every epoch differs.
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int, bucket: int = 16):
        self.lengths = lengths
        self.batch_size = min(batch_size, len(lengths))
        self.bucket = bucket
        self.generator = torch.Generator().manual_seed(seed)
        self.batches: list[torch.Tensor] = []

    def _epoch(self) -> list[torch.Tensor]:
        n = len(self.lengths)
        perm = torch.randperm(n, generator=self.generator)[: n - n % self.batch_size]
        batches = []
        for window in perm.split(self.batch_size * self.bucket):
            order = torch.sort(self.lengths[window], stable=True).indices
            batches += list(window[order].split(self.batch_size))
        shuffle = torch.randperm(len(batches), generator=self.generator)
        return [batches[i] for i in shuffle.tolist()]

    def next(self) -> torch.Tensor:
        if not self.batches:
            self.batches = self._epoch()[::-1]  # reversed so pop() yields them in order
        return self.batches.pop()


@torch.no_grad()
def evaluate_loss(model: Student, data: Batch, cfg: LossConfig, batch_size: int = 256) -> dict:
    """Token-weighted mean loss parts over all of `data` (model left in the mode it was in)."""
    was_training = model.training
    model.eval()
    sums = {"loss": 0.0, "kl": 0.0, "ce": 0.0}
    count = 0
    # Rows sorted by length: each chunk is trimmed to its longest row, so sorting saves padding.
    device = next(model.parameters()).device
    for index in torch.sort(data.lengths, stable=True).indices.split(batch_size):
        batch = data.select(index)
        if device.type != "cpu":
            batch = batch.to(device)
        parts = distill_loss(completion_logits(model, batch), batch, cfg)
        tokens = int(batch.loss_mask.sum())
        sums["loss"] += float(parts.total) * tokens
        sums["kl"] += float(parts.kl) * tokens
        sums["ce"] += float(parts.ce) * tokens
        count += tokens
    model.train(was_training)
    return {name: value / count for name, value in sums.items()}


def _global_parts(parts: LossParts, share: float, world) -> LossParts:
    """The global batch's loss parts from every rank's (a token-weighted sum over ranks), for logs."""
    import torch.distributed as dist

    values = torch.stack([parts.total.detach(), parts.kl.detach(), parts.ce.detach()]).double() * share
    dist.all_reduce(values)
    total, kl, ce = values.cpu()
    return LossParts(total=total, kl=kl, ce=ce)


FINAL_TRAIN_STEPS = 50


@dataclasses.dataclass
class TrainResult:
    history: list[dict]  # one row per step: step, loss, kl, ce, lr (+ heldout_* at intervals)
    final_train: dict  # mean loss parts of the last FINAL_TRAIN_STEPS steps (a full pass costs seconds)
    final_heldout: dict | None


class _Progress:
    """Logs step, loss, tokens/s and ETA every log_every_steps steps or every log_every_s seconds."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.start = self.last = time.monotonic()
        self.tokens_since = 0
        self.total_tokens = 0
        self.half = (self.start, 0)

    def step(self, step: int, tokens: int, loss: float, lr: float) -> None:
        self.tokens_since += tokens
        self.total_tokens += tokens
        now = time.monotonic()
        if step + 1 == (self.cfg.steps + 1) // 2:  # the second half's rate leaves out warm-up (compiling)
            self.half = (now, self.total_tokens)
        done = step + 1
        due = (
            self.cfg.log_every_steps > 0 and done % self.cfg.log_every_steps == 0
        ) or now - self.last >= self.cfg.log_every_s
        if not due and done != self.cfg.steps:
            return
        rate = self.tokens_since / max(now - self.last, 1e-9)
        eta = (now - self.start) / done * (self.cfg.steps - done)
        logging.info(
            "step %d/%d loss %.4f lr %.2e %.0f tokens/s ETA %.1fs", done, self.cfg.steps, loss, lr, rate, eta
        )
        self.last = now
        self.tokens_since = 0

    def summary(self) -> None:
        """One line bench/scale_out.py reads: all steps, and the second half alone."""
        now = time.monotonic()
        at, tokens = self.half
        logging.info(
            "trained %d tokens in %.3f s; second half %d tokens in %.3f s",
            self.total_tokens,
            now - self.start,
            self.total_tokens - tokens,
            now - at,
        )


def train(
    model: Student,
    train_data: Batch,
    heldout_data: Batch | None,
    cfg: TrainConfig,
    loss_cfg: LossConfig,
    on_step: Callable[[dict], None] | None = None,
    world=None,
    compile: bool = False,
) -> TrainResult:
    """Trains `model` in place for cfg.steps AdamW steps; returns the loss history.

    world: a training.parallel.World when running under torch.distributed (every rank calls this
    with the same arguments; see parallel.py for how a global batch is split); None: one process.
    compile: run the student's hidden states through torch.compile.
    """
    if cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    model.train()
    optimizer = make_optimizer(model, cfg)
    order = BatchOrder(train_data.lengths, cfg.batch_size, cfg.seed)
    progress = _Progress(cfg)
    history = []
    forward = None
    if world is not None or compile:
        forward = CompletionLogits(model, compile)
    if world is not None:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            forward, device_ids=[world.local_rank] if world.backend == "nccl" else None
        )
        # Completion tokens per row: a rank's share of the global batch's per-token mean.
        row_tokens = train_data.loss_mask.sum(dim=1)
    for step in range(cfg.steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = order.next()
        if world is None:
            batch = train_data.select(index)
            z = (
                completion_logits(model, batch)
                if forward is None
                else forward(batch.input_ids, batch.loss_mask)
            )
            parts = distill_loss(z, batch, loss_cfg)
            objective = parts.total
        else:
            batch = train_data.select(index[world.rank :: world.size])
            share = float(row_tokens[index[world.rank :: world.size]].sum()) / float(row_tokens[index].sum())
            if world.device != "cpu":
                batch = batch.to(world.device)
            parts = distill_loss(forward(batch.input_ids, batch.loss_mask), batch, loss_cfg)
            # DDP averages gradients over ranks: scaling by size * share makes the average the
            # gradient of the global batch's per-token mean loss.
            objective = parts.total * (world.size * share)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if world is not None:
            parts = _global_parts(parts, share, world)
        row = {"step": step + 1, "loss": parts.total.item(), "kl": parts.kl.item(), "ce": parts.ce.item()}
        row["lr"] = lr
        if heldout_data is not None and cfg.heldout_every > 0 and (step + 1) % cfg.heldout_every == 0:
            held = evaluate_loss(model, heldout_data, loss_cfg)
            row.update({f"heldout_{name}": value for name, value in held.items()})
            logging.info("step %d held-out loss %.4f (kl %.4f ce %.4f)", step + 1, *held.values())
        history.append(row)
        if on_step is not None:
            on_step(row)
        progress.step(
            step, batch.num_tokens if world is None else int(train_data.lengths[index].sum()), row["loss"], lr
        )
    progress.summary()
    recent = history[-FINAL_TRAIN_STEPS:]
    final_train = {
        name: math.fsum(row[name] for row in recent) / len(recent) for name in ("loss", "kl", "ce")
    }
    final_heldout = None
    if heldout_data is not None:
        last = history[-1] if history else {}
        if "heldout_loss" in last:
            final_heldout = {name: last[f"heldout_{name}"] for name in ("loss", "kl", "ce")}
        else:
            final_heldout = evaluate_loss(model, heldout_data, loss_cfg)
            if history:
                last.update({f"heldout_{name}": value for name, value in final_heldout.items()})
    model.eval()
    return TrainResult(history=history, final_train=final_train, final_heldout=final_heldout)
