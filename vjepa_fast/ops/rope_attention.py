"""Attention with 3D RoPE on q and k: the op every transformer block calls."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vjepa_fast.ops.rope import Rope, apply_rope_ref


def rope_attention_ref(q: Tensor, k: Tensor, v: Tensor, q_rope: Rope, k_rope: Rope | None = None,
                       causal_block: int = 0) -> Tensor:
    """Plain PyTorch: rotate q with q_rope and k with k_rope (default q_rope), then softmax attention
    with scale head_dim**-0.5. q (B, heads, Nq, hd); k, v (B, heads, Nk, hd) -> (B, heads, Nq, hd).

    causal_block > 0: block-causal over time steps of causal_block tokens. Queries are aligned to
    the end of the keys (query i sits at key position i + Nk - Nq, as with a key/value cache);
    query position p may attend to key j iff j // causal_block <= p // causal_block. Computed
    one query step at a time against its key prefix: exact, no N x N mask, masked work skipped."""
    k_rope = q_rope if k_rope is None else k_rope
    q = apply_rope_ref(q, q_rope.cos, q_rope.sin)
    k = apply_rope_ref(k, k_rope.cos, k_rope.sin)
    if causal_block <= 0:
        return F.scaled_dot_product_attention(q, k, v)
    Nq, Nk = q.shape[2], k.shape[2]
    offset = Nk - Nq
    if offset < 0:
        raise ValueError(f"rope_attention: block-causal attention needs at least as many keys ({Nk}) as queries ({Nq})")
    out = []
    start = 0
    while start < Nq:
        step = (start + offset) // causal_block
        end = min(Nq, (step + 1) * causal_block - offset)  # queries of this time step
        keys = min(Nk, (step + 1) * causal_block)           # keys of steps <= this one
        out.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :keys], v[:, :, :keys]))
        start = end
    return torch.cat(out, dim=2)


def rope_attention(q: Tensor, k: Tensor, v: Tensor, q_rope: Rope, k_rope: Rope | None = None,
                   causal_block: int = 0) -> Tensor:
    return rope_attention_ref(q, k, v, q_rope, k_rope, causal_block)
