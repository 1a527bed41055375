"""Attention with 3D RoPE on q and k: the op every transformer block calls."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vjepa_fast.ops.rope import Rope, apply_rope_ref


def rope_attention_ref(q: Tensor, k: Tensor, v: Tensor, rope: Rope) -> Tensor:
    """Plain PyTorch: rotate q and k (tile or interleave, as the tables were built), then softmax
    attention with scale head_dim**-0.5 and no mask. q, k, v: (B, heads, N, hd) -> (B, heads, N, hd)."""
    q = apply_rope_ref(q, rope.cos, rope.sin)
    k = apply_rope_ref(k, rope.cos, rope.sin)
    return F.scaled_dot_product_attention(q, k, v)


def rope_attention(q: Tensor, k: Tensor, v: Tensor, rope: Rope) -> Tensor:
    return rope_attention_ref(q, k, v, rope)
