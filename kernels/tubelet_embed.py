"""Fused tubelet embedding (Triton): normalise -> 2x16x16 patchify -> GEMM + bias, in one pass.

Maths. With tubelet t, patch p, grid (Tp, Hp, Wp) = (T/t, H/p, W/p) and token n = ti*Hp*Wp + hi*Wp + wi,
    x[b, n, k] = (video[b, ti*t + dt, c, hi*p + kh, wi*p + kw] - mean[c]) * inv_std[c]
    out[b, j, d] = bias[d] + sum_k x[b, tok(b, j), k] * weight[d, k]
where k = ((c*t + dt)*p + kh)*p + kw is the Conv3d weight's (C, t, p, p) flattening and
tok(b, j) = token_ids[b, j] (only the kept tokens are embedded) or j. The patch matrix is never
written to memory: the A tile of the GEMM is gathered straight from the frames, because the
address of x[m, k] splits into a per-row part (batch, token) plus a per-column part (c, dt, kh, kw).
uint8 frames are converted in registers, so the float video never exists either.

Tensors: video (B, T, C, H, W) uint8/fp16/bf16/fp32, unit stride along W (runs of p pixels
are contiguous, so loads vectorise); weight (D, K) contiguous
(the Conv3d weight flattened); bias (D,) fp32 or weight dtype; token_ids (B, Ntok) int64 with
unit stride along Ntok; mean, inv_std (C,) fp32; out (B, Ntok, D) contiguous, weight dtype.
The GEMM accumulates in fp32; fp32 weights use IEEE products unless TF32 is allowed for matmuls.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes, picked so that no configuration spills on sm_90 or sm_80 (tests/test_tubelet_embed.py
    compiles each): the A tile is gathered through a pointer per element (runs of p pixels), which
    costs registers, so BLOCK_K stays at 32. 16-bit operands take 128x128 tiles (wgmma on sm_90)."""
    block_m: int
    block_n: int = 128
    block_k: int = 32
    num_warps: int = 8
    num_stages: int = 3

    @staticmethod
    def for_dtype(dtype: torch.dtype) -> LaunchConfig:
        # fp32 operands take twice the registers: half the rows.
        return LaunchConfig(block_m=64 if dtype == torch.float32 else 128)


@triton.jit
def _tubelet_embed_kernel(
    VIDEO, W, BIAS, IDS, MEAN, INV_STD, OUT,
    M, n_tok, D, K, grid_h, grid_w,
    stride_vb, stride_vt, stride_vc, stride_vh, stride_ib,
    TUBELET: tl.constexpr, PATCH: tl.constexpr, HAS_IDS: tl.constexpr, HAS_NORM: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Axis 0 runs over D so that neighbouring programs share the same gathered frame rows in L2.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_m = rm < M
    in_n = rn < D
    b = rm // n_tok
    j = rm - b * n_tok
    if HAS_IDS:
        tok = tl.load(IDS + b.to(tl.int64) * stride_ib + j, mask=in_m, other=0)
    else:
        tok = j
    ti = tok // (grid_h * grid_w)
    hi = (tok // grid_w) % grid_h
    wi = tok % grid_w
    # (BLOCK_M,) int64: batch and tubelet corner of each row; large clips overflow int32.
    row_off = (b.to(tl.int64) * stride_vb + (ti * TUBELET).to(tl.int64) * stride_vt
               + (hi * PATCH).to(tl.int64) * stride_vh + wi * PATCH)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        in_k = rk < K
        c = rk // (TUBELET * PATCH * PATCH)
        dt = (rk // (PATCH * PATCH)) % TUBELET
        kh = (rk // PATCH) % PATCH
        kw = rk % PATCH
        col_off = dt * stride_vt + c * stride_vc + kh * stride_vh + kw  # (BLOCK_K,)
        a = tl.load(VIDEO + row_off[:, None] + col_off[None, :], mask=in_m[:, None] & in_k[None, :], other=0)
        a = a.to(tl.float32)
        if HAS_NORM:
            mu = tl.load(MEAN + c, mask=in_k, other=0.0)
            inv = tl.load(INV_STD + c, mask=in_k, other=0.0)
            a = (a - mu[None, :]) * inv[None, :]
        w = tl.load(W + rn[None, :].to(tl.int64) * K + rk[:, None], mask=in_k[:, None] & in_n[None, :], other=0.0)
        acc = tl.dot(a.to(w.dtype), w, acc, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
    acc += tl.load(BIAS + rn, mask=in_n, other=0.0).to(tl.float32)[None, :]
    out = OUT + rm[:, None].to(tl.int64) * D + rn[None, :]
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=in_m[:, None] & in_n[None, :])


def tubelet_embed_fwd(video: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, token_ids: torch.Tensor | None,
                      mean: torch.Tensor | None, inv_std: torch.Tensor | None, tubelet: int, patch: int,
                      out: torch.Tensor) -> None:
    """Launches the kernel; arguments already checked and laid out by vjepa_fast.ops.tubelet_embed.
    weight (D, K) contiguous, out (B, Ntok, D) contiguous."""
    B, T, C, H, W = video.shape
    D, K = weight.shape
    n_tok = out.shape[1]
    M = B * n_tok
    cfg = LaunchConfig.for_dtype(weight.dtype)
    precision = "tf32" if weight.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    ids = token_ids if token_ids is not None else out  # any pointer: never read when HAS_IDS is False
    norm_mean = mean if mean is not None else bias
    norm_inv = inv_std if inv_std is not None else bias
    grid = (triton.cdiv(D, cfg.block_n), triton.cdiv(M, cfg.block_m))
    wrap_triton(_tubelet_embed_kernel)[grid](
        video, weight, bias, ids, norm_mean, norm_inv, out,
        M, n_tok, D, K, H // patch, W // patch,
        *video.stride()[:4], token_ids.stride(0) if token_ids is not None else 0,
        TUBELET=tubelet, PATCH=patch, HAS_IDS=token_ids is not None, HAS_NORM=mean is not None,
        DOT_PRECISION=precision, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
