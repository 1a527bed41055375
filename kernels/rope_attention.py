"""Fused 3D-RoPE flash attention (Triton): forward and backward, optionally block-causal.

Maths. Per (batch b, head h), with scale c = head_dim**-0.5:
    q' = rope(q, pos_q),  k' = rope(k, pos_k)          (rotated once, by _rotate_kernel)
    o  = softmax(c * q' k'^T + mask) v,   lse = logsumexp of each score row (kept for backward)
rope(x)[j] = x[j] cos(a_j) + sign_j x[j^1] sin(a_j), sign_j = -1 for even j, +1 for odd j, with
a_j = pos[axis(j)] * w(j): axis(j) = j // s (s = 2*((hd//3)//2)), and for j >= 3s (tail
channels) w = 0, the identity. Within an axis segment, channel i = j - axis*s uses frequency
index i mod s/2 in "tile" mode (the V-JEPA 2 quirk) and i // 2 in "interleave" mode;
w_k = 10000 ** (-k / (s/2)). Angles are computed here in fp32 from the fp32 positions (fractional
ones too: V-JEPA 2.1's interpolated grid).

Structure. A memory-bound pre-pass rotates q and k once per tensor and stores q', k' in the
activation dtype, contiguous (a few MB, read once per query or key tile); the attention kernels
then run plain flash-attention loops on them, the steady tiles unmasked. The rotation used to sit
in the inner loop: every query tile re-rotated every key tile (twice the MUFU work, a second
global load for each pair partner), and the loop was issue-bound at about 39% of the tensor
cores' peak; tests/test_aot_compile.py reads the compiled loops and models their ceiling.

Backward (recompute; only lse is stored; q', k' rotated again): with p = softmax row,
delta = rowsum(do * o),
    dv = p^T do,  ds = p * (do v^T - delta),  dq' = c ds k',  dk' = c ds^T q'.
rope is x -> (C + S R) x with diagonal C, S and R the pair map (x[2i], x[2i+1]) -> (-x[2i+1], x[2i]).
In tile mode the two members of a pair use different angles, so the map is not orthogonal and its
inverse is not its transpose; the gradient needs the transpose (C + S R)^T = C - R S:
    dx[2i] = cos(a_2i) g[2i] + sin(a_2i+1) g[2i+1],  dx[2i+1] = cos(a_2i+1) g[2i+1] - sin(a_2i) g[2i].

Block-causal mask (causal_block = C > 0): query i sits at key position i + Nk - Nq (queries
aligned to the end of the keys, as with a key/value cache) and may attend key j iff
j < (step + 1) * C with step = (i + Nk - Nq) // C. Key tiles past the last row's limit are not
visited (loop bound); only tiles straddling a limit (or the end of the data) are masked.

Tensors: q (B, H, Nq, hd), k/v (B, H, Nk, hd), any strides with the last dim contiguous (batch
and head offsets in 64 bits, offsets within one (batch, head) slice in 32);
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
def _rotate_kernel(X, POS, Y, stride_xb, stride_xh, stride_xn, stride_pb, n_heads, n_rows,
                   HEAD_DIM: tl.constexpr, SEG: tl.constexpr, TILE: tl.constexpr, FAST_TRIG: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Y = rope(X) for BLOCK_R rows of one (batch, head): X strided, Y contiguous (B, H, N, hd),
    both in the activation dtype, the rotation in fp32. The pair partner x[j^1] comes from the
    loaded tile (split into even and odd channels, joined back), not from a second load."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < HEAD_DIM)
    x = tl.load(X + b * stride_xb + h * stride_xh + rows[:, None] * stride_xn + cols[None, :], mask=mask, other=0.0)
    cos, sin = _cos_sin(POS + b * stride_pb, rows, n_rows, cols, SEG, TILE, FAST_TRIG)
    x_even, x_odd = tl.split(tl.reshape(x.to(tl.float32), (BLOCK_R, BLOCK_D // 2, 2)))
    cos_even, cos_odd = tl.split(tl.reshape(cos, (BLOCK_R, BLOCK_D // 2, 2)))
    sin_even, sin_odd = tl.split(tl.reshape(sin, (BLOCK_R, BLOCK_D // 2, 2)))
    # (C + S R) x, each channel with its own angle: y[2i] = c x[2i] - s x[2i+1], y[2i+1] = c x[2i+1] + s x[2i]
    y = tl.reshape(tl.join(x_even * cos_even - x_odd * sin_even, x_odd * cos_odd + x_even * sin_odd),
                   (BLOCK_R, BLOCK_D))
    y_ptrs = Y + bh.to(tl.int64) * n_rows * HEAD_DIM + rows[:, None] * HEAD_DIM + cols[None, :]
    tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask)


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
def _load(ptr, row_stride, rows, n_rows, cols, MASKED: tl.constexpr):
    """A (len(rows), len(cols)) tile; MASKED guards rows past n_rows (the columns always lie
    inside the head: D_LO + D_HI == HEAD_DIM)."""
    ptrs = ptr + rows[:, None] * row_stride + cols[None, :]
    if MASKED:
        return tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _store(ptr, row_stride, rows, n_rows, cols, x):
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :], x.to(ptr.dtype.element_ty), mask=rows[:, None] < n_rows)


@triton.jit
def _row_vector(ptr, rows, n_rows, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(ptr + rows, mask=rows < n_rows, other=0.0)
    else:
        return tl.load(ptr + rows)


# Head dims that are not a power of two run as two column chunks, [0, D_LO) and [D_LO, D_LO + D_HI)
# (hd 80 = 64 + 16): padding 80 to 128 would waste 37% of the products and spill registers. With
# D_HI = 0 the second chunk's arguments are placeholders that nothing reads.
#
# q and k arrive rotated (by _rotate_kernel, once per tensor), contiguous (B, H, N, HEAD_DIM). Each
# main loop runs its tiles in ranges: those wholly inside the data and inside every row's
# block-causal limit through the body with MASKED=False (no bounds, no mask: the steady state),
# the boundary tiles through the same body with MASKED=True.


@triton.jit
def _fwd_tile(acc, acc_hi, m_i, l_i, q, q_hi, k_base, v_base, stride_vn, start_n, n_k, limit, cols, cols_hi,
              qk_scale, HEAD_DIM: tl.constexpr, D_HI: tl.constexpr, DOT_PRECISION: tl.constexpr,
              BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    keys = start_n + tl.arange(0, BLOCK_N)
    k = _load(k_base, HEAD_DIM, keys, n_k, cols, MASKED)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
    if D_HI > 0:
        s += tl.dot(q_hi, tl.trans(_load(k_base, HEAD_DIM, keys, n_k, cols_hi, MASKED)), input_precision=DOT_PRECISION)
    s = s * qk_scale  # log2 units
    if MASKED:
        s = tl.where(keys[None, :] < limit[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    p = p.to(q.dtype)
    acc = acc * alpha[:, None] + tl.dot(p, _load(v_base, stride_vn, keys, n_k, cols, MASKED), input_precision=DOT_PRECISION)
    if D_HI > 0:
        v_hi = _load(v_base, stride_vn, keys, n_k, cols_hi, MASKED)
        acc_hi = acc_hi * alpha[:, None] + tl.dot(p, v_hi, input_precision=DOT_PRECISION)
    return acc, acc_hi, m_new, l_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE,
                stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                n_heads, n_q, n_k, causal_block, qk_scale,
                HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr):
    """One query tile per program, looping over the key tiles it can see (Q, K rotated)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    q_base = Q + bh.to(tl.int64) * n_q * HEAD_DIM
    k_base = K + bh.to(tl.int64) * n_k * HEAD_DIM
    v_base = V + b * stride_vb + h * stride_vh

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D_LO)
    cols_hi = cols
    if D_HI > 0:
        cols_hi = D_LO + tl.arange(0, D_HI)
    q = _load(q_base, HEAD_DIM, rows, n_q, cols, True)
    acc = tl.zeros((BLOCK_M, D_LO), tl.float32)
    q_hi, acc_hi = q, acc
    if D_HI > 0:
        q_hi = _load(q_base, HEAD_DIM, rows, n_q, cols_hi, True)
        acc_hi = tl.zeros((BLOCK_M, D_HI), tl.float32)
    limit = _key_limit(rows, n_q, n_k, causal_block, CAUSAL)
    # Tiles past the last row's limit are skipped; those before the first row's limit are unmasked.
    hi = tl.max(tl.where(rows < n_q, limit, 0), axis=0)
    full = tl.min(tl.where(rows < n_q, limit, n_k), axis=0) // BLOCK_N * BLOCK_N

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    for start_n in range(0, full, BLOCK_N):
        acc, acc_hi, m_i, l_i = _fwd_tile(acc, acc_hi, m_i, l_i, q, q_hi, k_base, v_base, stride_vn, start_n, n_k,
                                          limit, cols, cols_hi, qk_scale, HEAD_DIM, D_HI, DOT_PRECISION, BLOCK_N, False)
    for start_n in range(full, hi, BLOCK_N):
        acc, acc_hi, m_i, l_i = _fwd_tile(acc, acc_hi, m_i, l_i, q, q_hi, k_base, v_base, stride_vn, start_n, n_k,
                                          limit, cols, cols_hi, qk_scale, HEAD_DIM, D_HI, DOT_PRECISION, BLOCK_N, True)

    o_base = O + b * stride_ob + h * stride_oh
    _store(o_base, stride_on, rows, n_q, cols, acc / l_i[:, None])
    if D_HI > 0:
        _store(o_base, stride_on, rows, n_q, cols_hi, acc_hi / l_i[:, None])
    tl.store(LSE + bh.to(tl.int64) * n_q + rows, m_i + tl.log2(l_i), mask=rows < n_q)


@triton.jit
def _dkdv_tile(dk, dk_hi, dv, dv_hi, k, k_hi, v, v_hi, q_base, do_base, lse_base, delta_base, stride_don,
               start_m, n_q, n_k, causal_block, keys, cols, cols_hi, qk_scale, HEAD_DIM: tl.constexpr,
               CAUSAL: tl.constexpr, D_HI: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
               MASKED: tl.constexpr):
    rows = start_m + tl.arange(0, BLOCK_M)
    q = _load(q_base, HEAD_DIM, rows, n_q, cols, MASKED)
    do = _load(do_base, stride_don, rows, n_q, cols, MASKED)
    st = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # s^T (BLOCK_N, BLOCK_M)
    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    if D_HI > 0:
        q_hi = _load(q_base, HEAD_DIM, rows, n_q, cols_hi, MASKED)
        do_hi = _load(do_base, stride_don, rows, n_q, cols_hi, MASKED)
        st += tl.dot(k_hi, tl.trans(q_hi), input_precision=DOT_PRECISION)
        dpt += tl.dot(v_hi, tl.trans(do_hi), input_precision=DOT_PRECISION)
    lse = _row_vector(lse_base, rows, n_q, MASKED)
    delta = _row_vector(delta_base, rows, n_q, MASKED)
    pt = tl.exp2(st * qk_scale - lse[None, :])
    if MASKED:  # padding rows (zero q, do) would add nothing to dv but exp2(-lse) to p: hide them too
        limit = _key_limit(rows, n_q, n_k, causal_block, CAUSAL)
        pt = tl.where((keys[:, None] < limit[None, :]) & (rows[None, :] < n_q), pt, 0.0)
    dst = (pt * (dpt - delta[None, :])).to(q.dtype)  # ds^T
    pt = pt.to(q.dtype)
    dv += tl.dot(pt, do, input_precision=DOT_PRECISION)
    dk += tl.dot(dst, q, input_precision=DOT_PRECISION)
    if D_HI > 0:
        dv_hi += tl.dot(pt, do_hi, input_precision=DOT_PRECISION)
        dk_hi += tl.dot(dst, q_hi, input_precision=DOT_PRECISION)
    return dk, dk_hi, dv, dv_hi


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, KPOS, DK, DV,
                     stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                     stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                     stride_kpb, n_heads, n_q, n_k, causal_block, qk_scale, sm_scale,
                     HEAD_DIM: tl.constexpr, SEG: tl.constexpr, TILE: tl.constexpr, CAUSAL: tl.constexpr,
                     FAST_TRIG: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr):
    """One key tile per program, looping over the query tiles that can see it (Q, K rotated);
    dk leaves through the RoPE transpose, once."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    q_base = Q + bh.to(tl.int64) * n_q * HEAD_DIM
    k_base = K + bh.to(tl.int64) * n_k * HEAD_DIM
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh
    lse_base = LSE + bh.to(tl.int64) * n_q
    delta_base = DELTA + bh.to(tl.int64) * n_q

    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, D_LO)
    cols_hi = cols
    if D_HI > 0:
        cols_hi = D_LO + tl.arange(0, D_HI)
    k = _load(k_base, HEAD_DIM, keys, n_k, cols, True)
    v = _load(v_base, stride_vn, keys, n_k, cols, True)
    dk = tl.zeros((BLOCK_N, D_LO), tl.float32)
    dv = tl.zeros((BLOCK_N, D_LO), tl.float32)
    k_hi, v_hi, dk_hi, dv_hi = k, v, dk, dv
    if D_HI > 0:
        k_hi = _load(k_base, HEAD_DIM, keys, n_k, cols_hi, True)
        v_hi = _load(v_base, stride_vn, keys, n_k, cols_hi, True)
        dk_hi = tl.zeros((BLOCK_N, D_HI), tl.float32)
        dv_hi = tl.zeros((BLOCK_N, D_HI), tl.float32)
    # Query tiles [lo, full) straddle this key tile's block-causal limits, [full, tail) see all of
    # it and lie inside the queries, [tail, n_q) is the last partial one.
    lo = 0
    full = 0
    if CAUSAL:
        # Row r sees key j iff j < (floor((r + n_k - n_q) / C) + 1) * C (capped at n_k).
        first_seen = (pid_n * BLOCK_N) // causal_block * causal_block - (n_k - n_q)
        lo = tl.maximum(first_seen, 0) // BLOCK_M * BLOCK_M
        last_key = tl.minimum(pid_n * BLOCK_N + BLOCK_N, n_k)
        all_seen = (tl.cdiv(last_key, causal_block) - 1) * causal_block - (n_k - n_q)
        full = tl.minimum(tl.cdiv(tl.maximum(all_seen, 0), BLOCK_M) * BLOCK_M, n_q)
    tail = tl.maximum(full, n_q // BLOCK_M * BLOCK_M)
    for start_m in range(lo, full, BLOCK_M):
        dk, dk_hi, dv, dv_hi = _dkdv_tile(dk, dk_hi, dv, dv_hi, k, k_hi, v, v_hi, q_base, do_base, lse_base,
                                          delta_base, stride_don, start_m, n_q, n_k, causal_block, keys, cols,
                                          cols_hi, qk_scale, HEAD_DIM, CAUSAL, D_HI, DOT_PRECISION, BLOCK_M, True)
    for start_m in range(full, tail, BLOCK_M):
        dk, dk_hi, dv, dv_hi = _dkdv_tile(dk, dk_hi, dv, dv_hi, k, k_hi, v, v_hi, q_base, do_base, lse_base,
                                          delta_base, stride_don, start_m, n_q, n_k, causal_block, keys, cols,
                                          cols_hi, qk_scale, HEAD_DIM, CAUSAL, D_HI, DOT_PRECISION, BLOCK_M, False)
    for start_m in range(tail, n_q, BLOCK_M):
        dk, dk_hi, dv, dv_hi = _dkdv_tile(dk, dk_hi, dv, dv_hi, k, k_hi, v, v_hi, q_base, do_base, lse_base,
                                          delta_base, stride_don, start_m, n_q, n_k, causal_block, keys, cols,
                                          cols_hi, qk_scale, HEAD_DIM, CAUSAL, D_HI, DOT_PRECISION, BLOCK_M, True)

    kpos = KPOS + b * stride_kpb
    dk_base = DK + b * stride_dkb + h * stride_dkh
    dv_base = DV + b * stride_dvb + h * stride_dvh
    _store(dk_base, stride_dkn, keys, n_k, cols, _rope_transpose(dk * sm_scale, kpos, keys, n_k, cols, D_LO, SEG,
                                                                 TILE, FAST_TRIG))
    _store(dv_base, stride_dvn, keys, n_k, cols, dv)
    if D_HI > 0:
        _store(dk_base, stride_dkn, keys, n_k, cols_hi, _rope_transpose(dk_hi * sm_scale, kpos, keys, n_k, cols_hi,
                                                                        D_HI, SEG, TILE, FAST_TRIG))
        _store(dv_base, stride_dvn, keys, n_k, cols_hi, dv_hi)


@triton.jit
def _dq_tile(dq, dq_hi, q, q_hi, do, do_hi, lse, delta, k_base, v_base, stride_vn, start_n, n_k, limit, cols,
             cols_hi, qk_scale, HEAD_DIM: tl.constexpr, D_HI: tl.constexpr, DOT_PRECISION: tl.constexpr,
             BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    keys = start_n + tl.arange(0, BLOCK_N)
    k = _load(k_base, HEAD_DIM, keys, n_k, cols, MASKED)
    v = _load(v_base, stride_vn, keys, n_k, cols, MASKED)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    if D_HI > 0:
        k_hi = _load(k_base, HEAD_DIM, keys, n_k, cols_hi, MASKED)
        s += tl.dot(q_hi, tl.trans(k_hi), input_precision=DOT_PRECISION)
        dp += tl.dot(do_hi, tl.trans(_load(v_base, stride_vn, keys, n_k, cols_hi, MASKED)),
                     input_precision=DOT_PRECISION)
    p = tl.exp2(s * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(keys[None, :] < limit[:, None], p, 0.0)
    ds = (p * (dp - delta[:, None])).to(q.dtype)
    dq += tl.dot(ds, k, input_precision=DOT_PRECISION)
    if D_HI > 0:
        dq_hi += tl.dot(ds, k_hi, input_precision=DOT_PRECISION)
    return dq, dq_hi


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, QPOS, DQ,
                   stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                   stride_dqb, stride_dqh, stride_dqn,
                   stride_qpb, n_heads, n_q, n_k, causal_block, qk_scale, sm_scale,
                   HEAD_DIM: tl.constexpr, SEG: tl.constexpr, TILE: tl.constexpr, CAUSAL: tl.constexpr,
                   FAST_TRIG: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr):
    """One query tile per program, looping over the key tiles it can see (Q, K rotated); dq leaves
    through the RoPE transpose, once."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    q_base = Q + bh.to(tl.int64) * n_q * HEAD_DIM
    k_base = K + bh.to(tl.int64) * n_k * HEAD_DIM
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D_LO)
    cols_hi = cols
    if D_HI > 0:
        cols_hi = D_LO + tl.arange(0, D_HI)
    q = _load(q_base, HEAD_DIM, rows, n_q, cols, True)
    do = _load(do_base, stride_don, rows, n_q, cols, True)
    dq = tl.zeros((BLOCK_M, D_LO), tl.float32)
    q_hi, do_hi, dq_hi = q, do, dq
    if D_HI > 0:
        q_hi = _load(q_base, HEAD_DIM, rows, n_q, cols_hi, True)
        do_hi = _load(do_base, stride_don, rows, n_q, cols_hi, True)
        dq_hi = tl.zeros((BLOCK_M, D_HI), tl.float32)
    lse = _row_vector(LSE + bh.to(tl.int64) * n_q, rows, n_q, True)
    delta = _row_vector(DELTA + bh.to(tl.int64) * n_q, rows, n_q, True)
    limit = _key_limit(rows, n_q, n_k, causal_block, CAUSAL)
    hi = tl.max(tl.where(rows < n_q, limit, 0), axis=0)
    full = tl.min(tl.where(rows < n_q, limit, n_k), axis=0) // BLOCK_N * BLOCK_N
    for start_n in range(0, full, BLOCK_N):
        dq, dq_hi = _dq_tile(dq, dq_hi, q, q_hi, do, do_hi, lse, delta, k_base, v_base, stride_vn, start_n, n_k,
                             limit, cols, cols_hi, qk_scale, HEAD_DIM, D_HI, DOT_PRECISION, BLOCK_N, False)
    for start_n in range(full, hi, BLOCK_N):
        dq, dq_hi = _dq_tile(dq, dq_hi, q, q_hi, do, do_hi, lse, delta, k_base, v_base, stride_vn, start_n, n_k,
                             limit, cols, cols_hi, qk_scale, HEAD_DIM, D_HI, DOT_PRECISION, BLOCK_N, True)

    qpos = QPOS + b * stride_qpb
    dq_base = DQ + b * stride_dqb + h * stride_dqh
    _store(dq_base, stride_dqn, rows, n_q, cols, _rope_transpose(dq * sm_scale, qpos, rows, n_q, cols, D_LO, SEG,
                                                                 TILE, FAST_TRIG))
    if D_HI > 0:
        _store(dq_base, stride_dqn, rows, n_q, cols_hi, _rope_transpose(dq_hi * sm_scale, qpos, rows, n_q, cols_hi,
                                                                        D_HI, SEG, TILE, FAST_TRIG))


FULL_TILE = 128  # rows of a held tile that a short grid halves


class LaunchConfig:
    """Tile sizes and flags the launcher picks for one (head_dim, dtype, kernel, GPU architecture),
    kernel one of "rotate", "fwd", "dkdv", "dq"; the AOT test (tests/test_aot_compile.py) compiles
    exactly these for sm_90 (the rotation and the forward for sm_80 too), with and without the
    runtime's 16-divisibility specialisation, rejects register spills and models the inner loops.

    The choices, each the widest that compiles without spills in both specialisations:
    - rotate: 32 rows x the head (padded to a power of two) per program, 4 warps: memory-bound.
    - fwd, sm_90: 128 queries x 128 keys at head dim 32 and 64 (8 warps, 3 stages); hd 80 (two
      column chunks) 128 x 64, 2 stages. sm_80 (mma, not wgmma): 64 x 64 with 4 warps at hd 32/64.
    - dkdv (sm_90; older GPUs train on the reference): 128 keys held with their dk, dv, looping
      over 64 queries, 8 warps, 1 stage; hd 80 64 keys over 32 queries, 4 warps.
    - dq: 128 queries held, looping over 64 keys, 8 warps, 2 stages.
    Per sequence length: `short` (see `short_grid`) marks a launch whose grid of 128-row tiles is
    under one wave of the GPU's SMs (few sequences, or short ones such as the AC predictor's
    258-token steps); a held tile of 128 rows (fwd, dq: queries; dkdv: keys) is then halved to
    64 with 4 warps (one warpgroup, wgmma m64): twice the programs, and less of the last tile
    wasted on padding (258 tokens: 320 rows computed instead of 384).
    """

    def __init__(self, head_dim: int, dtype: torch.dtype, kernel: str, arch: int = 90, short: bool = False):
        self.kernel = kernel
        self.d_lo = 1 << (head_dim.bit_length() - 1)  # largest power of two <= head_dim
        rest = head_dim - self.d_lo
        self.d_hi = max(16, triton.next_power_of_2(rest)) if rest else 0  # tl.dot needs K >= 16
        if self.d_lo + self.d_hi != head_dim:
            raise ValueError(f"LaunchConfig: head_dim {head_dim} does not split into power-of-two chunks of >= 16")
        # fp32 gets full-precision products (no TF32), as exact as PyTorch. It keeps the 16-bit
        # tile sizes so the interpreter tests walk the same tiles (partial tiles, causal bounds) as
        # the GPU configurations; on a GPU those IEEE products spill, so the op never sends fp32.
        self.dot_precision = "ieee" if dtype == torch.float32 else "tf32"
        chunked = self.d_hi > 0
        # (block_m, block_n, num_warps, num_stages); block_m is the rows of q (fwd, dq) or of the
        # query tiles looped over (dkdv), block_n the keys.
        if kernel == "rotate":
            tiles = (32, 0, 4, 1)
        elif kernel == "fwd" and arch < 90:
            tiles = (128, 64, 8, 2) if chunked else (64, 64, 4, 2)
        elif kernel == "fwd":
            tiles = (128, 64, 8, 2) if chunked else (128, 128, 8, 3)
        elif kernel == "dkdv":
            tiles = (32, 64, 4, 2) if chunked else (64, 128, 8, 2)
        elif kernel == "dq":
            tiles = (128, 64, 8, 2)
        else:
            raise ValueError(f"LaunchConfig: kernel must be 'rotate', 'fwd', 'dkdv' or 'dq', got {kernel!r}")
        held = 1 if kernel == "dkdv" else 0  # the dimension a program keeps: keys in dkdv, else queries
        if short and kernel != "rotate" and tiles[held] == FULL_TILE:
            tiles = tuple(t // 2 if i in (held, 2) else t for i, t in enumerate(tiles))  # rows and warps
        self.block_m, self.block_n, self.num_warps, self.num_stages = tiles

    def constexprs(self, head_dim: int, tile: bool, causal: bool, fast_trig: bool) -> dict:
        """The constexpr arguments of this kernel."""
        rope = dict(HEAD_DIM=head_dim, SEG=2 * ((head_dim // 3) // 2), TILE=tile, FAST_TRIG=fast_trig)
        if self.kernel == "rotate":
            return rope | dict(BLOCK_R=self.block_m, BLOCK_D=triton.next_power_of_2(head_dim))
        tiles = dict(HEAD_DIM=head_dim, CAUSAL=causal, DOT_PRECISION=self.dot_precision, BLOCK_M=self.block_m,
                     BLOCK_N=self.block_n, D_LO=self.d_lo, D_HI=self.d_hi)
        return tiles if self.kernel == "fwd" else rope | tiles


def multiprocessors(x: torch.Tensor) -> int:
    """SMs of x's GPU; off a GPU (the interpreter) 132, an H100's, so the interpreter walks the
    tiles an H100 would for the same shapes."""
    return torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 132


def short_grid(slices: int, n: int, x: torch.Tensor) -> bool:
    """Whether `slices` (batch x heads) sequences of n held rows, in 128-row tiles, make fewer
    programs than x's GPU has SMs (the tile choice per sequence length, see LaunchConfig)."""
    return slices * triton.cdiv(n, FULL_TILE) < multiprocessors(x)


def _positions(pos: torch.Tensor) -> tuple[torch.Tensor, int]:
    """fp32 contiguous positions and their batch stride (0 when shared by the whole batch)."""
    pos = pos.to(torch.float32).contiguous()
    return pos, (pos.stride(0) if pos.shape[0] > 1 else 0)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# Batch and head offsets are computed in 64 bits (once per program); offsets within one
# (batch, head) slice stay in 32 bits, which every tensor the model makes fits by far.
MAX_OFFSET = 2**31 - 1


def check_offsets(*tensors: torch.Tensor) -> None:
    """Refuses tensors one (batch, head) slice of which spans more than 32-bit offsets reach."""
    for x in tensors:
        span = (x.shape[2] - 1) * x.stride(2) + x.shape[3]
        if span > MAX_OFFSET:
            raise ValueError(f"rope_attention: one (batch, head) slice spans {span} elements (token stride "
                             f"{x.stride(2)}), over the kernels' 32-bit offsets ({MAX_OFFSET + 1})")


def _arch(x: torch.Tensor) -> int:
    """The GPU's compute capability as 90, 80, ...; 90 off a GPU (the interpreter walks the
    sm_90 tiles)."""
    if not x.is_cuda:
        return 90
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


def rotate(x: torch.Tensor, pos: torch.Tensor, tile: bool) -> torch.Tensor:
    """rope(x) for x (B, H, N, hd) and positions (B or 1, N, 3): contiguous, in x's dtype."""
    x = _last_dim_contiguous(x)
    B, H, n, hd = x.shape
    pos, pb = _positions(pos)
    y = torch.empty((B, H, n, hd), device=x.device, dtype=x.dtype)
    cfg = LaunchConfig(hd, x.dtype, "rotate")
    wrap_triton(_rotate_kernel)[(triton.cdiv(n, cfg.block_m), B * H)](
        x, pos, y, x.stride(0), x.stride(1), x.stride(2), pb, H, n,
        **cfg.constexprs(hd, tile, False, not interpreting()), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y


def rope_attention_fwd(q, k, v, q_pos, k_pos, tile: bool, causal_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q and k once, then launches the forward kernel: returns o (B, H, Nq, hd) in q's
    dtype and lse (B, H, Nq) fp32 (log2 units, of the scores scaled by head_dim**-0.5)."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    check_offsets(q, k, v)
    B, H, n_q, hd = q.shape
    n_k = k.shape[2]
    q_rot, k_rot = rotate(q, q_pos, tile), rotate(k, k_pos, tile)
    o = torch.empty((B, H, n_q, hd), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    cfg = LaunchConfig(hd, q.dtype, "fwd", _arch(q), short_grid(B * H, n_q, q))
    wrap_triton(_fwd_kernel)[(triton.cdiv(n_q, cfg.block_m), B * H)](
        q_rot, k_rot, v, o, lse, v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        H, n_q, n_k, max(causal_block, 1), hd**-0.5 * LOG2E,
        **cfg.constexprs(hd, tile, causal_block > 0, not interpreting()),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return o, lse


def rope_attention_bwd(do, q, k, v, o, lse, q_pos, k_pos, tile: bool,
                       causal_block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotates q and k again (a memory-bound pass, cheaper than keeping them), then launches the
    two backward kernels; returns dq, dk, dv in the dtypes of q, k, v."""
    do, q, k, v = (_last_dim_contiguous(x) for x in (do, q, k, v))
    check_offsets(do, q, k, v)
    B, H, n_q, hd = q.shape
    n_k = k.shape[2]
    q_rot, k_rot = rotate(q, q_pos, tile), rotate(k, k_pos, tile)
    q_pos, qpb = _positions(q_pos)
    k_pos, kpb = _positions(k_pos)
    delta = (do.float() * o.float()).sum(-1)  # (B, H, Nq): rowsum(do * o), a memory-bound pass
    dq, dk, dv = (torch.empty(x.shape, device=x.device, dtype=x.dtype) for x in (q, k, v))
    scalars = (H, n_q, n_k, max(causal_block, 1), hd**-0.5 * LOG2E, hd**-0.5)
    inputs = (q_rot, k_rot, v, do, lse, delta)
    strides = (v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    kv_cfg = LaunchConfig(hd, q.dtype, "dkdv", short=short_grid(B * H, n_k, q))
    q_cfg = LaunchConfig(hd, q.dtype, "dq", short=short_grid(B * H, n_q, q))
    wrap_triton(_bwd_dkdv_kernel)[(triton.cdiv(n_k, kv_cfg.block_n), B * H)](
        *inputs, k_pos, dk, dv, *strides, dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2), kpb, *scalars,
        **kv_cfg.constexprs(hd, tile, causal_block > 0, not interpreting()),
        num_warps=kv_cfg.num_warps, num_stages=kv_cfg.num_stages)
    wrap_triton(_bwd_dq_kernel)[(triton.cdiv(n_q, q_cfg.block_m), B * H)](
        *inputs, q_pos, dq, *strides, dq.stride(0), dq.stride(1), dq.stride(2), qpb, *scalars,
        **q_cfg.constexprs(hd, tile, causal_block > 0, not interpreting()),
        num_warps=q_cfg.num_warps, num_stages=q_cfg.num_stages)
    return dq, dk, dv
