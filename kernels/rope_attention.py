"""Fused 3D-RoPE flash attention (Triton): forward and backward, optionally block-causal.

Maths. Per (batch b, head h), with scale c = head_dim**-0.5:
    q' = rope(q, pos_q),  k' = rope(k, pos_k)          (rotated in registers, never stored)
    o  = softmax(c * q' k'^T + mask) v,   lse = logsumexp of each score row (kept for backward)
rope(x)[j] = x[j] cos(a_j) + sign_j x[j^1] sin(a_j), sign_j = -1 for even j, +1 for odd j, with
a_j = pos[axis(j)] * w(j): axis(j) = j // s (s = 2*((hd//3)//2)), and for j >= 3s (tail
channels) w = 0, the identity. Within an axis segment, channel i = j - axis*s uses frequency
index i mod s/2 in "tile" mode (the V-JEPA 2 quirk) and i // 2 in "interleave" mode;
w_k = 10000 ** (-k / (s/2)). Angles are computed here in fp32 from the fp32 positions.

Backward (recompute; only lse is stored): with p = softmax row, delta = rowsum(do * o),
    dv = p^T do,  ds = p * (do v^T - delta),  dq' = c ds k',  dk' = c ds^T q'.
rope is x -> (C + S R) x with diagonal C, S and R the pair map (x[2i], x[2i+1]) -> (-x[2i+1], x[2i]).
In tile mode the two members of a pair use different angles, so the map is not orthogonal and its
inverse is not its transpose; the gradient needs the transpose (C + S R)^T = C - R S:
    dx[2i] = cos(a_2i) g[2i] + sin(a_2i+1) g[2i+1],  dx[2i+1] = cos(a_2i+1) g[2i+1] - sin(a_2i) g[2i].

Block-causal mask (causal_block = C > 0): query i sits at key position i + Nk - Nq (queries
aligned to the end of the keys, as with a key/value cache) and may attend key j iff
j < (step + 1) * C with step = (i + Nk - Nq) // C. Key tiles past the last row's limit are not
visited (loop bound); tiles straddling a limit are masked element-wise.

Tensors: q (B, H, Nq, hd), k/v (B, H, Nk, hd), any strides with the last dim contiguous;
positions (B or 1, N, 3) fp32 contiguous (batch stride 0 when shared); o like q; lse (B, H, Nq) fp32.
Head dims 32, 64, 80 (80 runs as two column chunks, 64 + 16).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

HEAD_DIMS = (32, 64, 80)
# The dtypes the op sends here on a GPU. The launcher also takes fp32 (the interpreter tests run
# it), but its IEEE products spill registers at useful tile sizes: fp32 CUDA tensors go to SDPA.
GPU_DTYPES = (torch.float16, torch.bfloat16)
LOG2E = 1.4426950408889634
LOG2_THETA = tl.constexpr(math.log2(10000.0))  # log2 of the RoPE base
TWO_PI = tl.constexpr(2 * math.pi)


def interpreting() -> bool:
    return triton.knobs.runtime.interpret


@triton.jit
def _fast_cos(x):
    return tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _fast_sin(x):
    return tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _cos_sin(pos_ptr, rows, n_rows, cols, SEG: tl.constexpr, TILE: tl.constexpr, FAST_TRIG: tl.constexpr):
    """(R, len(cols)) fp32 cos/sin of each row's angle for each channel; tail and padding get (1, 0).
    FAST_TRIG uses the GPU's sin.approx/cos.approx after a one-FMA reduction to [-pi, pi] (abs.
    error ~1e-6): libdevice's accurate sinf needs a spill stack for its slow argument reduction.
    The interpreter has no inline assembly and uses the exact functions."""
    axis = cols // SEG
    i = cols - axis * SEG
    if TILE:
        k = i % (SEG // 2)
    else:
        k = i // 2
    freq = tl.exp2(k.to(tl.float32) * (-LOG2_THETA / (SEG // 2)))
    freq = tl.where(axis < 3, freq, 0.0)
    in_rows = rows < n_rows
    p_t = tl.load(pos_ptr + rows * 3 + 0, mask=in_rows, other=0.0)
    p_h = tl.load(pos_ptr + rows * 3 + 1, mask=in_rows, other=0.0)
    p_w = tl.load(pos_ptr + rows * 3 + 2, mask=in_rows, other=0.0)
    pos = tl.where(axis[None, :] == 0, p_t[:, None], tl.where(axis[None, :] == 1, p_h[:, None], p_w[:, None]))
    angle = pos * freq[None, :]
    if FAST_TRIG:
        # Reduce to [-pi, pi] first: the approximations are accurate near 0 and degrade past 100 pi.
        angle = angle - TWO_PI * tl.floor(angle * (1.0 / TWO_PI) + 0.5)
        return _fast_cos(angle), _fast_sin(angle)
    else:
        return tl.cos(angle), tl.sin(angle)


@triton.jit
def _load_rotated(ptr, row_stride, rows, n_rows, cols, pos_ptr, HEAD_DIM: tl.constexpr, SEG: tl.constexpr,
                  TILE: tl.constexpr, FAST_TRIG: tl.constexpr):
    """rope(x) for rows `rows` of a (n_rows, HEAD_DIM) matrix, in fp32. The pair partner x[j^1] is
    a second load of the same cache lines, cheaper than shuffling registers across threads."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < HEAD_DIM)
    base = ptr + rows[:, None] * row_stride
    x = tl.load(base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    partner = tl.load(base + (cols ^ 1)[None, :], mask=mask, other=0.0).to(tl.float32)
    cos, sin = _cos_sin(pos_ptr, rows, n_rows, cols, SEG, TILE, FAST_TRIG)
    sin = tl.where(cols % 2 == 0, -sin, sin)  # the pair map's sign: (x[2i], x[2i+1]) -> (-x[2i+1], x[2i])
    return x * cos + partner * sin


@triton.jit
def _rope_transpose(g, pos_ptr, rows, n_rows, cols, WIDTH: tl.constexpr, SEG: tl.constexpr,
                    TILE: tl.constexpr, FAST_TRIG: tl.constexpr):
    """(C - R S) g for a gradient tile g (R, WIDTH) held in registers: the RoPE transpose."""
    cos, sin = _cos_sin(pos_ptr, rows, n_rows, cols, SEG, TILE, FAST_TRIG)
    t_even, t_odd = tl.split(tl.reshape(sin * g, (g.shape[0], WIDTH // 2, 2)))  # (R, WIDTH/2) each
    pair_map = tl.reshape(tl.join(-t_odd, t_even), (g.shape[0], WIDTH))        # R(S g)
    return cos * g - pair_map


@triton.jit
def _key_limit(rows, n_q, n_k, causal_block, CAUSAL: tl.constexpr):
    """Exclusive bound of the keys each query row may attend to."""
    if CAUSAL:
        step = (rows + (n_k - n_q)) // causal_block
        return tl.minimum((step + 1) * causal_block, n_k)
    else:
        return tl.zeros_like(rows) + n_k


@triton.jit
def _load_tile(ptr, row_stride, rows, n_rows, cols, HEAD_DIM: tl.constexpr):
    mask = (rows[:, None] < n_rows) & (cols[None, :] < HEAD_DIM)
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_tile(ptr, row_stride, rows, n_rows, cols, x, HEAD_DIM: tl.constexpr):
    mask = (rows[:, None] < n_rows) & (cols[None, :] < HEAD_DIM)
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :], x.to(ptr.dtype.element_ty), mask=mask)


# Head dims that are not a power of two run as two column chunks, [0, D_LO) and [D_LO, D_LO + D_HI)
# (hd 80 = 64 + 16): padding 80 to 128 would waste 37% of the products and spill registers.
# RoPE pairs never straddle the split (D_LO is even), so each chunk rotates on its own.


@triton.jit
def _fwd_kernel(Q, K, V, QPOS, KPOS, O, LSE,
                stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                stride_qpb, stride_kpb, n_heads, n_q, n_k, causal_block, qk_scale,
                HEAD_DIM: tl.constexpr, SEG: tl.constexpr, TILE: tl.constexpr, CAUSAL: tl.constexpr,
                FAST_TRIG: tl.constexpr, DOT_PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    dtype = Q.dtype.element_ty
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    qpos = QPOS + b * stride_qpb
    kpos = KPOS + b * stride_kpb

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D_LO)
    q = _load_rotated(q_base, stride_qn, rows, n_q, cols, qpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
    acc = tl.zeros((BLOCK_M, D_LO), tl.float32)
    if D_HI > 0:
        cols_hi = D_LO + tl.arange(0, D_HI)
        q_hi = _load_rotated(q_base, stride_qn, rows, n_q, cols_hi, qpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
        acc_hi = tl.zeros((BLOCK_M, D_HI), tl.float32)
    limit = _key_limit(rows, n_q, n_k, causal_block, CAUSAL)
    # Key tiles beyond the last row's limit are fully masked for the whole block: skip them.
    hi = tl.max(tl.where(rows < n_q, limit, 0), axis=0)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        k = _load_rotated(k_base, stride_kn, keys, n_k, cols, kpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if D_HI > 0:
            k_hi = _load_rotated(k_base, stride_kn, keys, n_k, cols_hi, kpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
            s += tl.dot(q_hi, tl.trans(k_hi), input_precision=DOT_PRECISION)
        s = tl.where(keys[None, :] < limit[:, None], s * qk_scale, float("-inf"))  # log2 units
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        p = p.to(dtype)
        v = _load_tile(v_base, stride_vn, keys, n_k, cols, HEAD_DIM)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        if D_HI > 0:
            v_hi = _load_tile(v_base, stride_vn, keys, n_k, cols_hi, HEAD_DIM)
            acc_hi = acc_hi * alpha[:, None] + tl.dot(p, v_hi, input_precision=DOT_PRECISION)
        m_i = m_new

    o_base = O + b * stride_ob + h * stride_oh
    _store_tile(o_base, stride_on, rows, n_q, cols, acc / l_i[:, None], HEAD_DIM)
    if D_HI > 0:
        _store_tile(o_base, stride_on, rows, n_q, cols_hi, acc_hi / l_i[:, None], HEAD_DIM)
    tl.store(LSE + bh * n_q + rows, m_i + tl.log2(l_i), mask=rows < n_q)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, QPOS, KPOS, DK, DV,
                     stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                     stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                     stride_qpb, stride_kpb, n_heads, n_q, n_k, causal_block, qk_scale, sm_scale,
                     HEAD_DIM: tl.constexpr, SEG: tl.constexpr, TILE: tl.constexpr, CAUSAL: tl.constexpr,
                     FAST_TRIG: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr):
    """One key tile per program, looping over the query tiles that can see it."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    dtype = Q.dtype.element_ty
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh
    qpos = QPOS + b * stride_qpb
    kpos = KPOS + b * stride_kpb

    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, D_LO)
    k = _load_rotated(k_base, stride_kn, keys, n_k, cols, kpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
    v = _load_tile(v_base, stride_vn, keys, n_k, cols, HEAD_DIM)
    dk = tl.zeros((BLOCK_N, D_LO), tl.float32)
    dv = tl.zeros((BLOCK_N, D_LO), tl.float32)
    if D_HI > 0:
        cols_hi = D_LO + tl.arange(0, D_HI)
        k_hi = _load_rotated(k_base, stride_kn, keys, n_k, cols_hi, kpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
        v_hi = _load_tile(v_base, stride_vn, keys, n_k, cols_hi, HEAD_DIM)
        dk_hi = tl.zeros((BLOCK_N, D_HI), tl.float32)
        dv_hi = tl.zeros((BLOCK_N, D_HI), tl.float32)
    lo = 0
    if CAUSAL:
        # The first query whose step reaches this tile's first key; earlier query tiles see none of it.
        first_query = (pid_n * BLOCK_N) // causal_block * causal_block - (n_k - n_q)
        lo = tl.maximum(first_query, 0) // BLOCK_M * BLOCK_M

    for start_m in range(lo, n_q, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        in_rows = rows < n_q
        q = _load_rotated(q_base, stride_qn, rows, n_q, cols, qpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
        do = _load_tile(do_base, stride_don, rows, n_q, cols, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if D_HI > 0:
            q_hi = _load_rotated(q_base, stride_qn, rows, n_q, cols_hi, qpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
            do_hi = _load_tile(do_base, stride_don, rows, n_q, cols_hi, HEAD_DIM)
            s += tl.dot(q_hi, tl.trans(k_hi), input_precision=DOT_PRECISION)
            dp += tl.dot(do_hi, tl.trans(v_hi), input_precision=DOT_PRECISION)
        lse = tl.load(LSE + bh * n_q + rows, mask=in_rows, other=0.0)
        delta = tl.load(DELTA + bh * n_q + rows, mask=in_rows, other=0.0)
        limit = _key_limit(rows, n_q, n_k, causal_block, CAUSAL)
        visible = (keys[None, :] < limit[:, None]) & in_rows[:, None]
        p = tl.where(visible, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
        pt = tl.trans(p.to(dtype))
        dst = tl.trans((p * (dp - delta[:, None])).to(dtype))  # ds^T, (BLOCK_N, BLOCK_M)
        dv += tl.dot(pt, do, input_precision=DOT_PRECISION)
        dk += tl.dot(dst, q, input_precision=DOT_PRECISION)
        if D_HI > 0:
            dv_hi += tl.dot(pt, do_hi, input_precision=DOT_PRECISION)
            dk_hi += tl.dot(dst, q_hi, input_precision=DOT_PRECISION)

    dk_base = DK + b * stride_dkb + h * stride_dkh
    dv_base = DV + b * stride_dvb + h * stride_dvh
    dk = _rope_transpose(dk * sm_scale, kpos, keys, n_k, cols, D_LO, SEG, TILE, FAST_TRIG)
    _store_tile(dk_base, stride_dkn, keys, n_k, cols, dk, HEAD_DIM)
    _store_tile(dv_base, stride_dvn, keys, n_k, cols, dv, HEAD_DIM)
    if D_HI > 0:
        dk_hi = _rope_transpose(dk_hi * sm_scale, kpos, keys, n_k, cols_hi, D_HI, SEG, TILE, FAST_TRIG)
        _store_tile(dk_base, stride_dkn, keys, n_k, cols_hi, dk_hi, HEAD_DIM)
        _store_tile(dv_base, stride_dvn, keys, n_k, cols_hi, dv_hi, HEAD_DIM)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, QPOS, KPOS, DQ,
                   stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                   stride_dqb, stride_dqh, stride_dqn,
                   stride_qpb, stride_kpb, n_heads, n_q, n_k, causal_block, qk_scale, sm_scale,
                   HEAD_DIM: tl.constexpr, SEG: tl.constexpr, TILE: tl.constexpr, CAUSAL: tl.constexpr,
                   FAST_TRIG: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr):
    """One query tile per program, looping over the key tiles it can see."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    dtype = Q.dtype.element_ty
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh
    qpos = QPOS + b * stride_qpb
    kpos = KPOS + b * stride_kpb

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    in_rows = rows < n_q
    cols = tl.arange(0, D_LO)
    q = _load_rotated(q_base, stride_qn, rows, n_q, cols, qpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
    do = _load_tile(do_base, stride_don, rows, n_q, cols, HEAD_DIM)
    dq = tl.zeros((BLOCK_M, D_LO), tl.float32)
    if D_HI > 0:
        cols_hi = D_LO + tl.arange(0, D_HI)
        q_hi = _load_rotated(q_base, stride_qn, rows, n_q, cols_hi, qpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
        do_hi = _load_tile(do_base, stride_don, rows, n_q, cols_hi, HEAD_DIM)
        dq_hi = tl.zeros((BLOCK_M, D_HI), tl.float32)
    lse = tl.load(LSE + bh * n_q + rows, mask=in_rows, other=0.0)
    delta = tl.load(DELTA + bh * n_q + rows, mask=in_rows, other=0.0)
    limit = _key_limit(rows, n_q, n_k, causal_block, CAUSAL)
    hi = tl.max(tl.where(in_rows, limit, 0), axis=0)

    for start_n in range(0, hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        k = _load_rotated(k_base, stride_kn, keys, n_k, cols, kpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
        v = _load_tile(v_base, stride_vn, keys, n_k, cols, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if D_HI > 0:
            k_hi = _load_rotated(k_base, stride_kn, keys, n_k, cols_hi, kpos, HEAD_DIM, SEG, TILE, FAST_TRIG).to(dtype)
            v_hi = _load_tile(v_base, stride_vn, keys, n_k, cols_hi, HEAD_DIM)
            s += tl.dot(q_hi, tl.trans(k_hi), input_precision=DOT_PRECISION)
            dp += tl.dot(do_hi, tl.trans(v_hi), input_precision=DOT_PRECISION)
        visible = (keys[None, :] < limit[:, None]) & in_rows[:, None]
        p = tl.where(visible, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
        ds = (p * (dp - delta[:, None])).to(dtype)
        dq += tl.dot(ds, k, input_precision=DOT_PRECISION)
        if D_HI > 0:
            dq_hi += tl.dot(ds, k_hi, input_precision=DOT_PRECISION)

    dq_base = DQ + b * stride_dqb + h * stride_dqh
    dq = _rope_transpose(dq * sm_scale, qpos, rows, n_q, cols, D_LO, SEG, TILE, FAST_TRIG)
    _store_tile(dq_base, stride_dqn, rows, n_q, cols, dq, HEAD_DIM)
    if D_HI > 0:
        dq_hi = _rope_transpose(dq_hi * sm_scale, qpos, rows, n_q, cols_hi, D_HI, SEG, TILE, FAST_TRIG)
        _store_tile(dq_base, stride_dqn, rows, n_q, cols_hi, dq_hi, HEAD_DIM)


class LaunchConfig:
    """Tile sizes and flags the launcher picks for one (head_dim, dtype, kernel), kernel one of
    "fwd", "dkdv", "dq"; the AOT test (tests/test_aot_compile.py) compiles exactly these, for
    sm_90 and sm_80, and rejects register spills."""

    def __init__(self, head_dim: int, dtype: torch.dtype, kernel: str):
        self.d_lo = 1 << (head_dim.bit_length() - 1)  # largest power of two <= head_dim
        rest = head_dim - self.d_lo
        self.d_hi = max(16, triton.next_power_of_2(rest)) if rest else 0  # tl.dot needs K >= 16
        # fp32 gets full-precision products (no TF32), as exact as PyTorch. It keeps the 16-bit
        # tile sizes so the interpreter tests walk the same tiles (partial tiles, causal bounds) as
        # the GPU configurations; on a GPU those IEEE products spill, so the op never sends fp32.
        self.dot_precision = "ieee" if dtype == torch.float32 else "tf32"
        if kernel == "fwd":
            self.block_m, self.block_n = 128, 64
        elif kernel == "dkdv":
            # Holding k, v, dk, dv for two column chunks (hd 80) leaves room for 32 query rows only.
            self.block_m, self.block_n = (32 if self.d_hi else 64), 64
        elif kernel == "dq":
            self.block_m, self.block_n = 64, 64
        else:
            raise ValueError(f"LaunchConfig: kernel must be 'fwd', 'dkdv' or 'dq', got {kernel!r}")
        self.num_warps = 8 if head_dim >= 64 else 4
        self.num_stages = 2

    def constexprs(self, head_dim: int, tile: bool, causal: bool, fast_trig: bool) -> dict:
        return dict(HEAD_DIM=head_dim, SEG=2 * ((head_dim // 3) // 2), TILE=tile, CAUSAL=causal,
                    FAST_TRIG=fast_trig, DOT_PRECISION=self.dot_precision, BLOCK_M=self.block_m,
                    BLOCK_N=self.block_n, D_LO=self.d_lo, D_HI=self.d_hi)


def _positions(pos: torch.Tensor) -> tuple[torch.Tensor, int]:
    """fp32 contiguous positions and their batch stride (0 when shared by the whole batch)."""
    pos = pos.to(torch.float32).contiguous()
    return pos, (pos.stride(0) if pos.shape[0] > 1 else 0)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# The kernels index in 32 bits (64-bit offsets cost registers the sm_80 forward does not have).
# The launchers keep every in-kernel offset below this by launching the batch in chunks: each
# chunk's tensors are views whose base pointers carry the batch offset in 64 bits.
MAX_OFFSET = 2**31 - 1


def batch_chunks(batch: int, *tensors: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) batch ranges such that, in every tensor, the largest element offset a launch
    on that range reaches, (rows - 1) * stride(0) + the offset within one batch row, fits."""
    inner = max(sum((n - 1) * st for n, st in zip(x.shape[1:], x.stride()[1:])) for x in tensors)
    step = max(x.stride(0) for x in tensors)
    if inner > MAX_OFFSET:
        raise ValueError(f"rope_attention: one batch row spans {inner + 1} elements, over the kernel's 32-bit "
                         f"offsets ({MAX_OFFSET + 1}); make q, k and v contiguous per batch row")
    rows = batch if step == 0 else max(1, min(batch, (MAX_OFFSET - inner) // step + 1))
    return [(start, min(start + rows, batch)) for start in range(0, batch, rows)]


def rope_attention_fwd(q, k, v, q_pos, k_pos, tile: bool, causal_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches the forward kernel: returns o (B, H, Nq, hd) in q's dtype and lse (B, H, Nq) fp32
    (log2 units, of the scores scaled by head_dim**-0.5)."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    B, H, n_q, hd = q.shape
    n_k = k.shape[2]
    q_pos, qpb = _positions(q_pos)
    k_pos, kpb = _positions(k_pos)
    o = torch.empty_like(q)
    lse = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    cfg = LaunchConfig(hd, q.dtype, "fwd")
    for b0, b1 in batch_chunks(B, q, k, v, o):
        qp, kp = (q_pos[b0:b1] if qpb else q_pos), (k_pos[b0:b1] if kpb else k_pos)
        qc, kc, vc, oc = q[b0:b1], k[b0:b1], v[b0:b1], o[b0:b1]
        wrap_triton(_fwd_kernel)[(triton.cdiv(n_q, cfg.block_m), (b1 - b0) * H)](
            qc, kc, vc, qp, kp, oc, lse[b0:b1],
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            qpb, kpb, H, n_q, n_k, max(causal_block, 1), hd**-0.5 * LOG2E,
            **cfg.constexprs(hd, tile, causal_block > 0, not interpreting()),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return o, lse


def rope_attention_bwd(do, q, k, v, o, lse, q_pos, k_pos, tile: bool,
                       causal_block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launches the two backward kernels; returns dq, dk, dv in the dtypes of q, k, v."""
    do, q, k, v = (_last_dim_contiguous(x) for x in (do, q, k, v))
    B, H, n_q, hd = q.shape
    n_k = k.shape[2]
    q_pos, qpb = _positions(q_pos)
    k_pos, kpb = _positions(k_pos)
    delta = (do.float() * o.float()).sum(-1)  # (B, H, Nq): rowsum(do * o), a memory-bound pass
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    scalars = (H, n_q, n_k, max(causal_block, 1), hd**-0.5 * LOG2E, hd**-0.5)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    kv_cfg, q_cfg = LaunchConfig(hd, q.dtype, "dkdv"), LaunchConfig(hd, q.dtype, "dq")
    for b0, b1 in batch_chunks(B, q, k, v, do, dq, dk, dv):
        qp, kp = (q_pos[b0:b1] if qpb else q_pos), (k_pos[b0:b1] if kpb else k_pos)
        rows = (q[b0:b1], k[b0:b1], v[b0:b1], do[b0:b1], lse[b0:b1], delta[b0:b1], qp, kp)
        wrap_triton(_bwd_dkdv_kernel)[(triton.cdiv(n_k, kv_cfg.block_n), (b1 - b0) * H)](
            *rows, dk[b0:b1], dv[b0:b1], *strides,
            dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
            qpb, kpb, *scalars, **kv_cfg.constexprs(hd, tile, causal_block > 0, not interpreting()),
            num_warps=kv_cfg.num_warps, num_stages=kv_cfg.num_stages)
        wrap_triton(_bwd_dq_kernel)[(triton.cdiv(n_q, q_cfg.block_m), (b1 - b0) * H)](
            *rows, dq[b0:b1], *strides,
            dq.stride(0), dq.stride(1), dq.stride(2), qpb, kpb, *scalars,
            **q_cfg.constexprs(hd, tile, causal_block > 0, not interpreting()),
            num_warps=q_cfg.num_warps, num_stages=q_cfg.num_stages)
    return dq, dk, dv
