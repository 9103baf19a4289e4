"""The Magic 8 Ball student: a llama-style decoder in one file.

RMSNorm, rotary position embeddings (RoPE), SwiGLU feed-forward and grouped-query
attention. Untied input embedding and output head: 623,232 parameters with the
default config.

This is the one definition of the forward pass. Training, evaluation, eager decoding and every
export run it; only the KV cache object handed to it differs (docs/architecture.md, "KV cache"):

    Student(ids)                    the whole sequence, causal (training, stateless exports)
    Student(ids, cache=KVCache())   prefill, then one or more tokens per call (eager decoding)
    Student(ids, cache=FixedKVCache(keys, values, pos))
                                    the same against fixed-size [.., max_seq_len, ..] cache tensors
                                    written in place at a runtime position (stateful Core ML;
                                    IndexedKVCache, the same written with index_copy_, for the
                                    TorchScript decoder)

A cache has three methods, called by Student.forward and Attention.forward:
    positions(input_ids [B, S]) -> [S] long   absolute position of each new token (RoPE rows)
    mask(positions [S]) -> [S, K] bool        which of the K cached keys each new token sees
    update(layer, k, v) -> (keys, values)     stores this layer's new k, v [B, Hkv, S, D] (already
                                              rotated) and returns all K keys and values to attend to

Export rules this file obeys (docs/architecture.md, "Export rules"): the causal mask and the
positions come from the input's runtime length (or from a runtime position tensor), and no traced
code calls int() on a shape or passes shape-derived sizes to view(). Head splits use
unflatten/flatten, which carry no sizes, so TorchScript and Core ML keep a dynamic sequence length.
"""

import torch
from torch import nn
from torch.nn import functional as F

from training.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [..., S, D] with Rotary's tables cos, sin [S, D].

    HF llama convention: the two halves of each head form the rotation pairs, x1 * cos - x2 * sin and
    x2 * cos + x1 * sin. The minus sign is stored in Rotary's sin table, so rotating the halves is one
    roll: four operators instead of six, which counts in a one-token decode step. The GGUF exporter
    permutes Q/K rows into llama.cpp's interleaved pairs.
    """
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


class Rotary(nn.Module):
    """cos/sin tables for positions 0..max_seq_len-1, sliced to the input's runtime length.

    Tables rather than angles computed per call: position * frequency in fp16 (Core ML's default
    precision) is off by ~0.1 rad near position 255, which shows as logit error growing with
    length. Table values lie in [-1, 1], where fp16 is accurate everywhere.
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        freqs = torch.arange(max_seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)  # [max_seq_len, head_dim]
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        # -sin for the first half, +sin for the second: the signs rope() needs (negation is exact).
        half = head_dim // 2
        signed_sin = torch.cat((-angles[:, :half].sin(), angles[:, half:].sin()), dim=-1)
        self.register_buffer("sin", signed_sin.float(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The slice end is the traced runtime length, never int(T), so exports stay dynamic.
        length = input_ids.shape[-1]
        return self.cos[:length], self.sin[:length]

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The table rows [S, head_dim] at arbitrary positions [S] (a cached forward's new tokens).
        index_select rather than cos[positions]: the same rows, and the TorchScript decoder's step
        is quicker without advanced indexing's general path."""
        return self.cos.index_select(0, positions), self.sin.index_select(0, positions)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: "KVCache | FixedKVCache | None" = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x [B, S, d], cos/sin [S, D] -> [B, S, d]. No cache: causal over x. With a cache: the new
        tokens attend to the cache's keys (their own included, after update) where mask [S, K] says."""
        # [B, S, H*D] -> [B, H, S, D] without naming B or S.
        q = self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(1, 2)
        q = rope(q, cos, sin)
        k = rope(k, cos, sin)
        # Grouped-query attention: each KV head serves groups = n_heads // n_kv_heads query heads
        # (query head h uses KV head h // groups).
        groups = self.n_heads // self.n_kv_heads
        if cache is None:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = cache.update(layer, k, v)  # [B, Hkv, K, D]: every key the new tokens may see
            # The cache is long (a fixed one is max_seq_len): rather than repeat it per query head,
            # stack each KV head's query heads along the query axis, [B, Hkv, groups * S, D]. Copying
            # the cache twice per layer took a third of a decode step.
            q = q.unflatten(1, (self.n_kv_heads, groups)).flatten(2, 3)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.repeat(groups, 1))
            out = out.unflatten(2, (groups, -1)).flatten(1, 2)  # back to [B, H, S, D]
        return self.o_proj(out.transpose(1, 2).flatten(-2))  # [B, H, S, D] -> [B, S, d]


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: "KVCache | FixedKVCache | None" = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, layer)
        return x + self.ffn(self.ffn_norm(x))


class Student(nn.Module):
    """input_ids [B, S] (any integer dtype) -> logits [B, S, vocab] float32.

    Without a cache the S tokens are a whole sequence from position 0. With one they follow what
    the cache holds, and the cache keeps their keys and values for the next call.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def hidden_states(
        self, input_ids: torch.Tensor, cache: "KVCache | FixedKVCache | None" = None
    ) -> torch.Tensor:
        """Final-norm hidden states [B, S, d]; forward() is lm_head of these. The trainer runs the
        head on completion rows only (about a third of them)."""
        input_ids = input_ids.long()
        if cache is None:
            cos, sin = self.rotary(input_ids)  # [S, D] for positions 0..S-1
            mask = None  # causal
        else:
            positions = cache.positions(input_ids)  # [S]
            cos, sin = self.rotary.at(positions)
            mask = cache.mask(positions)  # [S, K]
        x = self.embed(input_ids)  # [B, S, d]
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, layer)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, cache: "KVCache | FixedKVCache | None" = None) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids, cache))


class KVCache:
    """A growing cache for eager decoding: per layer, keys and values [B, Hkv, length, D].

    Each forward appends its S tokens at positions length..length+S-1; rows may be repeated or
    selected between calls (batched decoding drops rows that finished). `tree(offsets, self_mask)`
    gives a view for scoring a packed tree of continuations in one call.
    """

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.layers = layers or []

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.length + torch.arange(input_ids.shape[1])

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        # Every cached key, then causal among the new tokens.
        steps = positions.shape[0]
        past = torch.ones(steps, self.length, dtype=torch.bool)
        return torch.cat((past, torch.ones(steps, steps, dtype=torch.bool).tril()), dim=1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer < len(self.layers):
            past_k, past_v = self.layers[layer]
            k, v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
            self.layers[layer] = (k, v)
        else:
            self.layers.append((k, v))
        return k, v

    def repeat(self, times: int) -> "KVCache":
        """Each row repeated `times` times (row r -> rows r*times .. r*times+times-1)."""
        return KVCache(
            [(k.repeat_interleave(times, 0), v.repeat_interleave(times, 0)) for k, v in self.layers]
        )

    def select(self, rows: torch.Tensor) -> "KVCache":
        """The rows `rows` (a bool mask or indices) only."""
        return KVCache([(k[rows], v[rows]) for k, v in self.layers])

    def tree(self, offsets: torch.Tensor, self_mask: torch.Tensor) -> "TreeView":
        return TreeView(self, offsets, self_mask)


class TreeView:
    """Scores a packed tree of continuations after a KVCache's prefix, leaving the cache as it was.

    New token i sits at position length + offsets[i] and sees the whole prefix and the new tokens
    self_mask[i] ([S, S] bool) names; so many continuations of one prompt run as one row.
    """

    def __init__(self, cache: KVCache, offsets: torch.Tensor, self_mask: torch.Tensor):
        self.cache, self.offsets, self.self_mask = cache, offsets, self_mask

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.cache.length + self.offsets

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        past = torch.ones(positions.shape[0], self.cache.length, dtype=torch.bool)
        return torch.cat((past, self.self_mask), dim=1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past_k, past_v = self.cache.layers[layer]
        return torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)


class FixedKVCache:
    """Fixed-size cache tensors written in place: the layout of the TorchScript decoder's cache and
    of a Core ML state (a registered buffer updated by slice writes).

        keys, values: [n_layers, B, n_kv_heads, max_seq_len, head_dim] (any float dtype; new
                      entries are cast to it), already rotated; entries at or after `pos` are
                      never read before they are written, so a fresh sequence needs no reset
        pos:          int64 tensor [1], the position of the first new token

    A forward of S tokens writes slots pos..pos+S-1 of every layer (`keys[layer, :, :, pos:pos+S] =
    k`) and attends over all max_seq_len slots with the mask `slot <= position`. Everything is a
    tensor op on `pos` and on the input's runtime shape (no int()), so torch.jit.trace keeps both
    dynamic. The caller advances pos by S between calls; pos + S must stay <= max_seq_len (slices
    past the end would silently shrink, so the caller checks it before the call).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor):
        self.keys, self.values, self.pos = keys, values, pos

    @staticmethod
    def empty(
        cfg: ModelConfig, batch: int = 1, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed (keys, values) of the layout above."""
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)
        return torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        # pos, pos+1, ..., pos+S-1 from the input's runtime length (the trace keeps arange's end
        # dynamic; arange(int(S)) would freeze it).
        return self.pos + torch.arange(input_ids.shape[-1])

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        # [max_seq_len] <= [S, 1] -> [S, max_seq_len]. unsqueeze, not [:, None]: every `:` a trace
        # records is one more operator per decode step.
        return torch.arange(self.keys.shape[3]) <= positions.unsqueeze(1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.shape[2]
        self.keys[layer, :, :, self.pos : end] = k
        self.values[layer, :, :, self.pos : end] = v
        return self.keys[layer].to(k.dtype), self.values[layer].to(v.dtype)


class IndexedKVCache(FixedKVCache):
    """FixedKVCache written with index_copy_: the TorchScript decoder's cache.

    A one-token step of this small student costs about as much in operator dispatch as in
    arithmetic, and FixedKVCache's write is a chain of slices, copies and casts per layer (the
    slice write Core ML's converter turns into a state update). This one writes with one
    index_copy_ per tensor and returns the cache tensors as they are, so keys and values must
    have the model's dtype. Its mask is additive (0 where FixedKVCache's is True, -inf where
    False), made once per call: attention turns a bool mask into exactly that, once per layer.
    Everything else, the attention over all max_seq_len slots included, is FixedKVCache's, so the
    outputs are bit for bit the same. Core ML's converter has no index_copy_: the stateful package
    keeps FixedKVCache.
    """

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        allowed = super().mask(positions)  # [S, max_seq_len] bool
        zero = torch.zeros((), dtype=self.keys.dtype)
        return torch.where(allowed, zero, torch.full((), float("-inf"), dtype=self.keys.dtype))

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.written = super().positions(input_ids)  # [S]: the slots this call writes
        return self.written

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer], self.values[layer]
        keys.index_copy_(2, self.written, k)
        values.index_copy_(2, self.written, v)
        return keys, values


def count_parameters(model: nn.Module) -> int:
    # parameters() yields a tied weight once, so this is right for both settings.
    return sum(p.numel() for p in model.parameters())


def init_weights(model: Student, seed: int) -> None:
    """Deterministic initialisation from a seed, independent of global RNG state."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        with torch.no_grad():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
