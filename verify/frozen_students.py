"""Deliberately broken students that freeze the sequence length, as the reference pipeline did.

Test support only: every guard that should catch a frozen length (the torch.export guard, the
trace check, the Core ML spec check and the MIL executor) is tested against these.
"""

import torch

from training import model as model_lib


class FrozenRotary(model_lib.Rotary):
    """The table slice ends at int(T): tracing records T as a constant."""

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = int(input_ids.shape[-1])
        return self.cos[:length], self.sin[:length]


class FrozenViewAttention(model_lib.Attention):
    """Head split with view(b, t, ...) from int() sizes, as the reference pipeline wrote it.

    Whole-sequence forwards only (what the stateless exports trace): a cache is refused."""

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0):
        if cache is not None:
            raise NotImplementedError("the frozen-length student has no KV-cache path")
        b, t = int(x.shape[0]), int(x.shape[1])
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = model_lib.rope(q, cos, sin), model_lib.rope(k, cos, sin)
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def frozen_rotary_student(seed: int = 5) -> model_lib.Student:
    student = model_lib.Student(model_lib.ModelConfig())
    model_lib.init_weights(student, seed=seed)
    cfg = student.cfg
    student.rotary = FrozenRotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    return student.eval()


def frozen_view_student(seed: int = 5) -> model_lib.Student:
    student = model_lib.Student(model_lib.ModelConfig())
    model_lib.init_weights(student, seed=seed)
    for block in student.blocks:
        block.attn.__class__ = FrozenViewAttention
    return student.eval()
