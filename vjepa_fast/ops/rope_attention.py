"""Attention with 3D RoPE on q and k: the op every transformer block calls.

`rope_attention` sends CUDA tensors to the fused Triton kernels (vjepa_fast/kernels/rope_attention.py:
q and k rotated once by a pre-pass, flash attention, optional block-causal mask) and everything else to
`rope_attention_ref`; vjepa_fast.ops.dispatch decides (VJEPA_FAST_REFERENCE=1 forces the reference).

The kernel is registered (by `register`, once Triton imports) as two custom ops,
`vjepa_fast::rope_attention_fwd` -> (out, lse) and `vjepa_fast::rope_attention_bwd`, with
`torch.library.triton_op`, so torch.compile sees the Triton
kernels inside and fuses around them, and with autograd between the two. Their non-CUDA branch
is `rope_attention_ref` (plus the lse) and the kernel's backward maths in plain PyTorch: the
dispatcher never sends CPU tensors there, but it lets `torch.library.opcheck` check the
registration (schema, fake tensors, autograd) on CPU, and it runs under fake CPU tensors while
tracing. The Triton interpreter cannot
run on fake tensors, so the kernels themselves are tested by calling the launchers on CPU tensors
with TRITON_INTERPRET=1 (tests/test_rope_attention.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from torch.library import triton_op

from vjepa_fast.ops.dispatch import constant_under_compile, use_triton
from vjepa_fast.ops.rope import Rope, apply_rope_ref, rotate_pairs


def _rotated(q: Tensor, k: Tensor, q_rope: Rope, k_rope: Rope | None) -> tuple[Tensor, Tensor]:
    """q rotated by q_rope, k by k_rope (default q_rope)."""
    k_rope = q_rope if k_rope is None else k_rope
    return apply_rope_ref(q, q_rope.cos, q_rope.sin), apply_rope_ref(k, k_rope.cos, k_rope.sin)


def rope_attention_ref(q: Tensor, k: Tensor, v: Tensor, q_rope: Rope, k_rope: Rope | None = None,
                       causal_block: int = 0) -> Tensor:
    """Plain PyTorch: rotate q with q_rope and k with k_rope (default q_rope), then softmax attention
    with scale head_dim**-0.5. q (B, heads, Nq, hd); k, v (B, heads, Nk, hd) -> (B, heads, Nq, hd).
    The rotation is the tables' (the V-JEPA 2 "tile" quirk or the true "interleave" rotation).

    causal_block > 0: block-causal over time steps of causal_block tokens. Queries are aligned to
    the end of the keys (query i sits at key position i + Nk - Nq, as with a key/value cache);
    query position p may attend to key j iff j // causal_block <= p // causal_block. Computed
    one query step at a time against its key prefix: exact, no N x N mask, masked work skipped."""
    q, k = _rotated(q, k, q_rope, k_rope)
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


def rope_attention_weights(q: Tensor, k: Tensor, q_rope: Rope, k_rope: Rope | None = None,
                           causal_block: int = 0) -> Tensor:
    """The softmax probabilities (B, heads, Nq, Nk) that rope_attention_ref applies to v (the same
    rotation, scale and block-causal rule), formed explicitly in fp32 and cast back to q's dtype:
    for callers that return them (attn_implementation="eager")."""
    q_rot, k_rot = _rotated(q.float(), k.float(), q_rope, k_rope)
    return torch.softmax(_log2_scores(q_rot, k_rot, causal_block) * math.log(2.0), dim=-1).to(q.dtype)


def check_args(q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, causal_block: int) -> None:
    """Shapes and dtypes at the op boundary; messages name the op and the argument."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"rope_attention: q, k, v must be (B, heads, N, head_dim), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, Nq, hd = q.shape
    Nk = k.shape[2]
    if k.shape != (B, H, Nk, hd) or v.shape != k.shape:
        raise ValueError(f"rope_attention: k and v must be ({B}, {H}, Nk, {hd}) to match q, got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"rope_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, pos, n in (("q_rope.positions", q_pos, Nq), ("k_rope.positions", k_pos, Nk)):
        if pos.dim() != 3 or pos.shape[0] not in (1, B) or tuple(pos.shape[1:]) != (n, 3):
            raise ValueError(f"rope_attention: {name} must be ({B} or 1, {n}, 3), got {tuple(pos.shape)}")
        if pos.device != q.device:
            raise ValueError(f"rope_attention: {name} is on {pos.device}, q on {q.device}")
    if causal_block > 0 and Nk < Nq:
        raise ValueError(f"rope_attention: block-causal attention needs at least as many keys ({Nk}) as queries ({Nq})")


def _ropes(q_pos: Tensor, k_pos: Tensor, head_dim: int, tile: bool) -> tuple[Rope, Rope]:
    mode = "tile" if tile else "interleave"
    return (Rope(q_pos.to(torch.float32), mode=mode, head_dim=head_dim),
            Rope(k_pos.to(torch.float32), mode=mode, head_dim=head_dim))


def _log2_scores(q_rot: Tensor, k_rot: Tensor, causal_block: int) -> Tensor:
    """(B, H, Nq, Nk) scaled scores in log2 units (the kernel's convention), -inf where the
    block-causal mask (queries aligned to the end of the keys) hides a key."""
    scores = (q_rot @ k_rot.transpose(-1, -2)) * (q_rot.shape[-1] ** -0.5 * math.log2(math.e))
    if causal_block > 0:
        n_q, n_k = scores.shape[-2:]
        limit = ((torch.arange(n_q, device=q_rot.device) + n_k - n_q) // causal_block + 1) * causal_block
        scores = scores.masked_fill(torch.arange(n_k, device=q_rot.device)[None, :] >= limit[:, None], float("-inf"))
    return scores


def _fwd_math(q, k, v, q_pos, k_pos, tile: bool, causal_block: int) -> tuple[Tensor, Tensor]:
    """The op's non-CUDA branch: rope_attention_ref, plus the kernel's log2-sum-exp2 of the scores."""
    q_rope, k_rope = _ropes(q_pos, k_pos, q.shape[-1], tile)
    out = rope_attention_ref(q, k, v, q_rope, k_rope, causal_block)
    scores = _log2_scores(*_rotated(q.float(), k.float(), q_rope, k_rope), causal_block)
    return out, torch.logsumexp(scores * math.log(2.0), dim=-1) * math.log2(math.e)


def _bwd_math(do, q, k, v, o, lse, q_pos, k_pos, tile: bool, causal_block: int) -> tuple[Tensor, Tensor, Tensor]:
    """The kernel's backward in PyTorch: recompute p from lse, then the RoPE transpose
    (C + S R)^T g = C g - R (S g) carries the rotated-space gradients back (tile mode is not
    orthogonal: the transpose, not the inverse)."""
    hd = q.shape[-1]
    q_rope, k_rope = _ropes(q_pos, k_pos, hd, tile)
    q_rot, k_rot = _rotated(q.float(), k.float(), q_rope, k_rope)
    p = torch.exp2(_log2_scores(q_rot, k_rot, causal_block) - lse[..., None])
    do = do.float()
    delta = (do * o.float()).sum(-1, keepdim=True)  # (B, H, Nq, 1)
    ds = p * (do @ v.float().transpose(-1, -2) - delta) * hd**-0.5
    dq_rot, dk_rot = ds @ k_rot, ds.transpose(-1, -2) @ q_rot
    dq = dq_rot * q_rope.cos - rotate_pairs(dq_rot * q_rope.sin)
    dk = dk_rot * k_rope.cos - rotate_pairs(dk_rot * k_rope.sin)
    return dq.to(q.dtype), dk.to(k.dtype), (p.transpose(-1, -2) @ do).to(v.dtype)


def _fused_fwd(q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, tile: bool,
               causal_block: int) -> tuple[Tensor, Tensor]:
    """-> out (B, H, Nq, hd) and lse (B, H, Nq) fp32 (log2 units; not differentiable)."""
    if q.is_cuda:
        from vjepa_fast.kernels import rope_attention as kernels
        return kernels.rope_attention_fwd(q, k, v, q_pos, k_pos, tile, causal_block)
    return _fwd_math(q, k, v, q_pos, k_pos, tile, causal_block)


def _fused_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, q_pos: Tensor,
               k_pos: Tensor, tile: bool, causal_block: int) -> tuple[Tensor, Tensor, Tensor]:
    if q.is_cuda:
        from vjepa_fast.kernels import rope_attention as kernels
        return kernels.rope_attention_bwd(do, q, k, v, o, lse, q_pos, k_pos, tile, causal_block)
    return _bwd_math(do, q, k, v, o, lse, q_pos, k_pos, tile, causal_block)


def _setup_context(ctx, inputs, output):
    q, k, v, q_pos, k_pos, tile, causal_block = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse, q_pos, k_pos)
    ctx.tile, ctx.causal_block = tile, causal_block


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, q_pos, k_pos = ctx.saved_tensors
    dq, dk, dv = torch.ops.vjepa_fast.rope_attention_bwd(do.contiguous(), q, k, v, o, lse, q_pos, k_pos, ctx.tile, ctx.causal_block)
    return dq, dk, dv, None, None, None, None


def register() -> None:
    """torch.ops.vjepa_fast.rope_attention_fwd/_bwd (vjepa_fast.ops.dispatch calls it once Triton imports)."""
    fwd = triton_op("vjepa_fast::rope_attention_fwd", mutates_args=())(_fused_fwd)
    triton_op("vjepa_fast::rope_attention_bwd", mutates_args=())(_fused_bwd)
    fwd.register_autograd(_backward, setup_context=_setup_context)


@constant_under_compile
def _kernel_backward_supported(device_index: int) -> bool:
    """The backward kernels are tuned for Hopper (sm_90 and newer), where they compile without
    register spills; on older GPUs they spill, so training there uses the reference."""
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


def use_fused(q: Tensor, k: Tensor, v: Tensor, q_rope: Rope, k_rope: Rope) -> bool:
    """The kernel handles 16-bit CUDA tensors of its head dims whose Ropes carry a mode (and, when
    gradients are needed, a GPU its backward kernels are tuned for)."""
    if not use_triton(q, k, v):
        return False
    from vjepa_fast.kernels import rope_attention as kernels
    if not (q.dtype in kernels.GPU_DTYPES and q.shape[-1] in kernels.HEAD_DIMS
            and q_rope.mode is not None and q_rope.mode == k_rope.mode):
        return False
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return not needs_grad or _kernel_backward_supported(q.device.index)


def rope_attention(q: Tensor, k: Tensor, v: Tensor, q_rope: Rope, k_rope: Rope | None = None,
                   causal_block: int = 0) -> Tensor:
    """rope_attention_ref's maths; fused kernel on CUDA (see the module docstring)."""
    k_rope = q_rope if k_rope is None else k_rope
    check_args(q, k, v, q_rope.positions, k_rope.positions, causal_block)
    if use_fused(q, k, v, q_rope, k_rope):
        out, _ = torch.ops.vjepa_fast.rope_attention_fwd(q, k, v, q_rope.positions, k_rope.positions,
                                                         q_rope.mode == "tile", max(causal_block, 0))
        return out
    return rope_attention_ref(q, k, v, q_rope, k_rope, causal_block)
