"""Predictor input assembly: context tokens, mask tokens at the target slots, and RoPE positions.

    tokens    = cat(x, mask_token repeated Nt times)                                 (B, Nc+Nt, D)
    positions = token_positions(cat(context_ids, target_ids), grid_h, grid_w) in fp32  (B, Nc+Nt, 3)

`masked_gather` runs the Triton kernel (kernels/masked_gather.py, registered as
torch.ops.vjepa_fast.masked_gather by `register`, once Triton imports) on CUDA tensors and `masked_gather_ref` elsewhere or when
VJEPA_FAST_REFERENCE=1. Backward: the context rows' gradients are x's gradient, the target rows'
gradients are summed into the mask token's gradient; positions carry no gradient. The op's non-CUDA branch is the reference
maths, so torch.library.opcheck can check the registration on CPU; the kernel is tested through
its launcher under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from vjepa_fast.ops.dispatch import use_triton
from vjepa_fast.ops.rope import token_positions


def _check(x: Tensor, mask_token: Tensor, context_ids: Tensor, target_ids: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"masked_gather: x must be (B, Nc, D), got {tuple(x.shape)}")
    B, Nx, D = x.shape
    for name, ids in (("context_ids", context_ids), ("target_ids", target_ids)):
        if ids.dim() != 2 or ids.shape[0] != B or ids.dtype != torch.int64:
            raise ValueError(f"masked_gather: {name} must be int64 of shape ({B}, K), got {ids.dtype} "
                             f"{tuple(ids.shape)}")
    Nc = context_ids.shape[1]
    if Nx != Nc:
        raise ValueError(f"masked_gather: x must hold the {Nc} context tokens of context_ids, got Nx={Nx}")
    if mask_token.shape != (D,):
        raise ValueError(f"masked_gather: mask_token must have shape ({D},), got {tuple(mask_token.shape)}")
    if not x.is_floating_point() or not mask_token.is_floating_point():
        raise TypeError(f"masked_gather: x and mask_token must be floating point, got {x.dtype} and {mask_token.dtype}")


def _assemble(x: Tensor, mask_token: Tensor, context_ids: Tensor, target_ids: Tensor,
              grid_h: int, grid_w: int) -> tuple[Tensor, Tensor]:
    B, Nt = target_ids.shape
    tokens = torch.cat((x, mask_token.expand(B, Nt, -1)), dim=1)  # (B, Nc+Nt, D)
    ids = torch.cat((context_ids, target_ids), dim=1)
    return tokens, token_positions(ids, grid_h, grid_w).float()


def masked_gather_ref(x: Tensor, mask_token: Tensor, context_ids: Tensor, target_ids: Tensor,
                      grid_h: int, grid_w: int) -> tuple[Tensor, Tensor]:
    """Plain PyTorch: what the predictor did before the fused op (cat promotes the two dtypes)."""
    _check(x, mask_token, context_ids, target_ids)
    return _assemble(x, mask_token, context_ids, target_ids, grid_h, grid_w)


def _fused(x: Tensor, mask_token: Tensor, context_ids: Tensor, target_ids: Tensor,
           grid_h: int, grid_w: int) -> tuple[Tensor, Tensor]:
    if not x.is_cuda:
        return _assemble(x, mask_token, context_ids, target_ids, grid_h, grid_w)
    from vjepa_fast.kernels.masked_gather import masked_gather_fwd

    B, Nc = context_ids.shape
    N = Nc + target_ids.shape[1]
    dtype = torch.promote_types(x.dtype, mask_token.dtype)
    tokens = torch.empty((B, N, x.shape[2]), device=x.device, dtype=dtype)
    positions = torch.empty((B, N, 3), device=x.device, dtype=torch.float32)
    x = x if x.stride(2) == 1 else x.contiguous()
    masked_gather_fwd(x, mask_token.contiguous(), context_ids.contiguous(), target_ids.contiguous(), grid_h, grid_w, tokens, positions)
    return tokens, positions


def _setup_context(ctx, inputs, output):
    x, mask_token, context_ids, _, _, _ = inputs
    ctx.x_dtype, ctx.mask_dtype, ctx.n_ctx = x.dtype, mask_token.dtype, context_ids.shape[1]
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_tokens: Tensor, grad_positions: Tensor):
    grad_mask = grad_tokens[:, ctx.n_ctx:].sum(dim=(0, 1))
    return grad_tokens[:, :ctx.n_ctx].to(ctx.x_dtype), grad_mask.to(ctx.mask_dtype), None, None, None, None


def register() -> None:
    """torch.ops.vjepa_fast.masked_gather (vjepa_fast.ops.dispatch calls it once Triton imports)."""
    op = triton_op("vjepa_fast::masked_gather", mutates_args=())(_fused)
    op.register_autograd(_backward, setup_context=_setup_context)


def masked_gather(x: Tensor, mask_token: Tensor, context_ids: Tensor, target_ids: Tensor,
                  grid_h: int, grid_w: int) -> tuple[Tensor, Tensor]:
    """-> (tokens (B, Nc+Nt, D), positions (B, Nc+Nt, 3) fp32); see the module docstring."""
    _check(x, mask_token, context_ids, target_ids)
    if not use_triton(x, mask_token, context_ids, target_ids):
        return masked_gather_ref(x, mask_token, context_ids, target_ids, grid_h, grid_w)
    return torch.ops.vjepa_fast.masked_gather(x, mask_token, context_ids, target_ids, grid_h, grid_w)
