"""Predictor input assembly (Triton): gather context tokens, write mask tokens, emit positions.

Maths. With Nc context and Nt target tokens per sample and N = Nc + Nt,
    tokens[b, i]    = x[b, i]                                              for i < Nc
    tokens[b, Nc+j] = mask_token                                           for j < Nt
    ids[b]          = concat(context_ids[b], target_ids[b])                (N,)
    positions[b, i] = (t, h, w) of ids[b, i] = (n // (gh*gw), (n % (gh*gw)) // gw, n % gw), as fp32
which is torch.cat((x, mask_token.expand(B, Nt, D)), 1) plus
vjepa_fast.ops.rope.token_positions(ids) in one pass: each output row is read once and written
once, and the (B, N) id tensor and the int64 positions never exist.

Tensors: x (B, Nc, D) with unit stride along D; context_ids (B, Nc), target_ids (B, Nt)
int64 with unit stride along the token axis; mask_token (D,) contiguous; tokens (B, N, D)
contiguous in the promoted dtype of x and mask_token; positions (B, N, 3) fp32 contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCK_R = 32   # rows per program
BLOCK_D = 128  # channels per program; programs along D split wide rows
NUM_WARPS = 4


@triton.jit
def _masked_gather_kernel(
    X, MASK_TOKEN, CTX_IDS, TGT_IDS, OUT, POS,
    rows, n_ctx, n_tgt, D, grid_h, grid_w,
    stride_xb, stride_xn, stride_cb, stride_tb,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    n = n_ctx + n_tgt
    b = (r // n).to(tl.int64)
    i = r % n
    in_r = r < rows
    is_ctx = in_r & (i < n_ctx)
    is_tgt = in_r & (i >= n_ctx)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < D
    x = tl.load(X + (b * stride_xb + i.to(tl.int64) * stride_xn)[:, None] + cols[None, :],
                mask=is_ctx[:, None] & in_d[None, :], other=0.0)
    m = tl.load(MASK_TOKEN + cols, mask=in_d, other=0.0)
    val = tl.where(is_ctx[:, None], x.to(OUT.dtype.element_ty), m.to(OUT.dtype.element_ty)[None, :])
    tl.store(OUT + r.to(tl.int64)[:, None] * D + cols[None, :], val, mask=in_r[:, None] & in_d[None, :])

    if pid_d == 0:  # one column of programs writes the positions
        ctx_id = tl.load(CTX_IDS + b * stride_cb + i, mask=is_ctx, other=0)
        tgt_id = tl.load(TGT_IDS + b * stride_tb + (i - n_ctx), mask=is_tgt, other=0)
        tok = tl.where(is_ctx, ctx_id, tgt_id)
        per_frame = grid_h * grid_w
        t = tok // per_frame
        rest = tok - t * per_frame
        h = rest // grid_w
        w = rest - h * grid_w
        pos = POS + r.to(tl.int64) * 3
        tl.store(pos + 0, t.to(tl.float32), mask=in_r)
        tl.store(pos + 1, h.to(tl.float32), mask=in_r)
        tl.store(pos + 2, w.to(tl.float32), mask=in_r)


def masked_gather_fwd(x: torch.Tensor, mask_token: torch.Tensor, context_ids: torch.Tensor,
                      target_ids: torch.Tensor, grid_h: int, grid_w: int, out: torch.Tensor, positions: torch.Tensor) -> None:
    """Launches the kernel; arguments already checked and laid out by vjepa_fast.ops.masked_gather."""
    B, n_ctx = context_ids.shape
    n_tgt = target_ids.shape[1]
    D = x.shape[2]
    rows = B * (n_ctx + n_tgt)
    grid = (triton.cdiv(rows, BLOCK_R), triton.cdiv(D, BLOCK_D))
    wrap_triton(_masked_gather_kernel)[grid](
        x, mask_token, context_ids, target_ids, out, positions,
        rows, n_ctx, n_tgt, D, grid_h, grid_w,
        x.stride(0), x.stride(1), context_ids.stride(0), target_ids.stride(0),
        BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, num_warps=NUM_WARPS,
    )
