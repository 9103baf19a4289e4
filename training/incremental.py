"""Incremental (KV-cached) forward passes of the eager Student, for fast evaluation only.

Re-running a whole sequence for every new token makes evaluation cost grow with the square of the
reply length; scoring 20 completions of one prompt would run the prompt 20 times. Here the prompt
runs once (`prefill`) and later tokens attend to its cached keys and values (`extend`).

This mirrors training/model.py's Attention and Block math step by step (same submodules, same
weights); incremental_test.py checks it against Student.forward, so a change to the model that is
not mirrored here fails that test. Exported artifacts never use this file.
"""

import dataclasses

import torch
from torch.nn import functional as F

from training.model import Student, rotate_half


@dataclasses.dataclass
class Cache:
    """Per layer (keys, values) of shape [B, n_kv_heads, length, head_dim], already rotated."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    length: int

    def repeat(self, times: int) -> "Cache":
        """Each row repeated `times` times in place (row r -> rows r*times .. r*times+times-1)."""
        layers = [(k.repeat_interleave(times, 0), v.repeat_interleave(times, 0)) for k, v in self.layers]
        return Cache(layers, self.length)

    def select(self, rows: torch.Tensor) -> "Cache":
        return Cache([(k[rows], v[rows]) for k, v in self.layers], self.length)


def _rotary(model: Student, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # The model's own cos/sin tables, gathered at arbitrary positions.
    return model.rotary.cos[positions], model.rotary.sin[positions]


def _run(
    model: Student,
    ids: torch.Tensor,
    cache: Cache | None,
    offsets: torch.Tensor | None = None,
    self_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Cache]:
    """Final-norm hidden states [B, S, d] of `ids` placed after `cache`, and the extended cache.

    By default new token i sits at position past + i and sees the new tokens up to itself. A packed
    tree of continuations instead gives each new token its position offset (`offsets`, [S]) and
    which new tokens it sees (`self_mask`, [S, S] bool); every new token sees the whole cache.
    """
    past = 0 if cache is None else cache.length
    steps = ids.shape[1]
    if offsets is None:
        offsets = torch.arange(steps)
    if self_mask is None:
        self_mask = torch.ones(steps, steps, dtype=torch.bool).tril()
    cos, sin = _rotary(model, past + offsets)
    mask = torch.cat((torch.ones(steps, past, dtype=torch.bool), self_mask), dim=1)
    x = model.embed(ids.long())
    layers = []
    for index, block in enumerate(model.blocks):
        attn = block.attn
        h = block.attn_norm(x)
        q = attn.q_proj(h).unflatten(-1, (attn.n_heads, attn.head_dim)).transpose(1, 2)
        k = attn.k_proj(h).unflatten(-1, (attn.n_kv_heads, attn.head_dim)).transpose(1, 2)
        v = attn.v_proj(h).unflatten(-1, (attn.n_kv_heads, attn.head_dim)).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            past_k, past_v = cache.layers[index]
            k = torch.cat((past_k, k), dim=2)
            v = torch.cat((past_v, v), dim=2)
        layers.append((k, v))
        groups = attn.n_heads // attn.n_kv_heads
        out = F.scaled_dot_product_attention(
            q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), attn_mask=mask
        )
        x = x + attn.o_proj(out.transpose(1, 2).flatten(-2))
        x = x + block.ffn(block.ffn_norm(x))
    return model.norm(x), Cache(layers, past + steps)


@torch.no_grad()
def prefill(model: Student, ids: torch.Tensor) -> tuple[torch.Tensor, Cache]:
    """Runs ids [B, P] (equal-length rows, no padding); returns the last logits [B, V] and the cache."""
    hidden, cache = _run(model, ids, None)
    return model.lm_head(hidden[:, -1]), cache


@torch.no_grad()
def extend(
    model: Student,
    cache: Cache,
    ids: torch.Tensor,
    offsets: torch.Tensor | None = None,
    self_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Cache]:
    """Runs ids [B, S] after the cached prefix; returns logits [B, S, V] and the extended cache.

    offsets/self_mask: see _run (for a packed tree; the returned cache is then only for scoring).
    """
    hidden, cache = _run(model, ids, cache, offsets, self_mask)
    return model.lm_head(hidden), cache
