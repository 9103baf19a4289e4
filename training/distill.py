"""Knowledge distillation from the teacher's top-k soft targets: loss, batching and the training loop.

The loss, per completion position (prompt positions and padding are never trained), is

    kl_weight * T^2 * KL_bucket(teacher_T || student_T) + ce_weight * CE(student, teacher token)

KL_bucket, our exact choice. The dataset keeps, per completion position, the teacher's top-k ids
with their log-probabilities lp_i and the mass off the list, tail (data/dataset.py; make_toy_kd's
default k = 8 holds ~91% of the mass at the first answer token). Both distributions are compared
over k + 1 buckets: each listed id, and one bucket for every other id.
- Teacher: p_i = exp(lp_i), p_tail = max(tail, 0).
- Student: q_i = softmax(z)[id_i] and q_tail = the sum of softmax(z) over the ids NOT on the list,
  computed in log space as logsumexp(z over the unlisted ids) - logsumexp(z), never as
  log(1 - sum q_i), which cancels catastrophically when the list holds nearly all the mass.
- KL_bucket = sum_i p_i (log p_i - log q_i) + p_tail (log p_tail - log q_tail), with 0 log 0 = 0
  (a tail of 0 contributes nothing; padding entries of short lists neither). Mean over positions.
Why a tail bucket instead of renormalising over the list (what this loss did before): the student's
off-list mass is now held to the teacher's, so the KL alone is minimised by the teacher's
distribution over the buckets, and neither side's off-list mass is left to the CE term's noisy
samples. The old argument against the student's unnormalised probabilities (pulling all its mass
onto the k ids, starving the answers outside them) does not apply: the tail bucket asks for exactly
the teacher's off-list mass, no more and no less. A list of one id is no longer a KL of 0: it weighs
that id against the rest. The CE term, on tokens the teacher sampled from its full distribution,
still spreads the off-list mass over the right tokens inside the tail bucket, which the k + 1
buckets cannot see, and keeps non-canonical text down.

Temperature T: the teacher's full distribution is not stored, so it cannot be tempered. We temper
the k + 1 bucket distribution as if the tail were one token: p'_j = p_j^(1/T) / sum_b p_b^(1/T)
over the k + 1 buckets; the student's buckets are taken from softmax(z / T) as above (its tail
bucket is its true tempered off-list mass). T = 1, the default, is exact (p' is p, renormalised
over its k + 1 buckets, which the reader holds to within 1e-4 of summing to 1). At T != 1 the
tail bucket is an approximation: tempering a sum of probabilities is not the sum of tempered
ones. T^2 keeps gradient sizes comparable across T. Both terms are means over the completion
tokens of the batch.

Datasets without soft targets (kd "sequence", data/dataset.py) have no lists: every position's
KL is 0 and training is the CE term alone (run_toy_distill sets kl_weight to 0 and says so).

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
    topk_tail: torch.Tensor  # [B, C] float32: the teacher's mass off the list (0 at padding)

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
            topk_tail=self.topk_tail[index],
        )

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def teacher_topk(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, logprobs, valid) [M, k] and tail [M], in the order of the M completion positions."""
        m = self.completion_mask
        return self.topk_ids[m], self.topk_logprobs[m], self.topk_valid[m], self.topk_tail[m]


def record_sequence(record, bos_id: int) -> tuple[list[int], int]:
    """(token sequence, index of its first completion token) for a dataset record.

    Interfaces: a model input is [bos] + encode(prompt) + encode(completion) + [eos]; the dataset's
    prompt_ids are encode(prompt) and its completion_ids already end with eos.
    """
    return [bos_id, *record.prompt_ids, *record.completion_ids], 1 + len(record.prompt_ids)


def _tails(record) -> list[float]:
    """The record's off-list mass per position: its topk_tail, or computed from its lists when it
    has none (records not read from a file)."""
    given = getattr(record, "topk_tail", None)
    if given is not None:
        return given
    return [max(0.0, 1.0 - math.fsum(math.exp(lp) for lp in row)) for row in record.topk_logprobs]


def make_batch(records: Sequence, bos_id: int, pad_id: int) -> Batch:
    """Pads dataset records (prompt_ids, completion_ids, topk_ids, topk_logprobs, topk_tail) into one
    Batch. A record without lists (kd "sequence": topk_ids == []) gets empty lists and tail 0 at every
    completion position."""
    if not records:
        raise ValueError("make_batch needs at least one record")
    n = len(records)
    width = max(len(r.prompt_ids) + len(r.completion_ids) for r in records)  # 1 + P + C - 1
    comp_width = max(len(r.completion_ids) for r in records)
    k = max((len(ids) for r in records for ids in r.topk_ids), default=0)
    # Flat lists, one tensor each at the end: far faster than nested lists for thousands of records.
    input_ids, targets, loss_mask, lengths = [], [], [], []
    completion_mask, topk_ids, topk_logprobs, topk_valid, topk_tail = [], [], [], [], []
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
        topk_tail += _tails(record)
        listed = len(record.topk_ids)  # count, or 0 without soft targets
        empty = (comp_width - listed) * k
        topk_ids += [0] * empty
        topk_logprobs += [0.0] * empty
        topk_valid += [False] * empty
        topk_tail += [0.0] * (comp_width - listed)
    return Batch(
        input_ids=torch.tensor(input_ids, dtype=torch.long).view(n, width),
        targets=torch.tensor(targets, dtype=torch.long).view(n, width),
        loss_mask=torch.tensor(loss_mask, dtype=torch.bool).view(n, width),
        lengths=torch.tensor(lengths, dtype=torch.long),
        completion_mask=torch.tensor(completion_mask, dtype=torch.bool).view(n, comp_width),
        topk_ids=torch.tensor(topk_ids, dtype=torch.long).view(n, comp_width, k),
        topk_logprobs=torch.tensor(topk_logprobs, dtype=torch.float32).view(n, comp_width, k),
        topk_valid=torch.tensor(topk_valid, dtype=torch.bool).view(n, comp_width, k),
        topk_tail=torch.tensor(topk_tail, dtype=torch.float32).view(n, comp_width),
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


def bucket_kl(
    z: torch.Tensor,
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    valid: torch.Tensor,
    tail: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL_bucket (module docstring) per position, [M], before the T^2 factor.

    z [M, V] logits; ids, logprobs, valid [M, k] (valid False at padding entries); tail [M]. The
    list holds fewer than V ids (the dataset's k is at most 32, its vocabulary above 260), so the
    student's tail bucket is never empty. A position with no list and no tail (kd "sequence") is 0.
    """
    t = temperature
    zt = z.float() if t == 1.0 else z.float() / t
    m, vocab = zt.shape
    log_norm = torch.logsumexp(zt, dim=-1)  # [M]
    student_list = zt.gather(-1, ids) - log_norm.unsqueeze(-1)  # log q_i; padding masked below
    # The listed ids as a mask; padding entries point at an extra column that is dropped, so they
    # mark nothing (their id 0 may be another position's real entry).
    listed = torch.zeros(m, vocab + 1, dtype=torch.bool, device=zt.device)
    listed.scatter_(-1, ids.masked_fill(~valid, vocab), True)
    unlisted = zt.masked_fill(listed[:, :vocab], -math.inf)
    student_tail = torch.logsumexp(unlisted, dim=-1) - log_norm  # log q_tail, in log space throughout
    log_q = torch.cat([student_list, student_tail.unsqueeze(-1)], dim=-1)  # [M, k + 1]
    # Teacher buckets at temperature T: p_j^(1/T), renormalised over the k + 1 buckets.
    tail_log = torch.log(tail.float().clamp(min=0.0))  # log 0 = -inf: an empty bucket
    teacher = torch.cat([logprobs.float().masked_fill(~valid, -math.inf), tail_log.unsqueeze(-1)], dim=-1)
    has_mass = torch.isfinite(teacher).any(-1, keepdim=True)  # False only without soft targets
    log_p = F.log_softmax(torch.where(has_mass, teacher / t, 0.0), dim=-1)
    p = log_p.exp()
    # 0 log 0 = 0: empty buckets (padding, a tail of 0, positions without a list) contribute nothing;
    # torch.where keeps their -inf out of the sum and of the gradient.
    live = torch.isfinite(teacher) & has_mass
    terms = torch.where(live, p * (torch.where(live, log_p, 0.0) - torch.where(live, log_q, 0.0)), 0.0)
    return terms.sum(-1)


def distill_loss(z: torch.Tensor, batch: Batch, cfg: LossConfig) -> LossParts:
    """The module docstring's loss; z = completion_logits(model, batch), [M, V]."""
    log_probs = F.log_softmax(z.float(), dim=-1)
    ce = F.nll_loss(log_probs, batch.targets[batch.loss_mask])
    t = cfg.temperature
    ids, logprobs, valid, tail = batch.teacher_topk()
    kl = bucket_kl(z, ids, logprobs, valid, tail, t).mean() * (t * t)
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
