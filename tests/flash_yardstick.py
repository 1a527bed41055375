"""A plain flash-attention forward (no RoPE, no mask, contiguous (B*H, N, hd) q, k, v, N a
multiple of the tiles): the yardstick the fused RoPE kernel's compiled inner loop is measured
against in tests/test_aot_compile.py, with the same tiles, warps, stages and column chunks."""
import triton
import triton.language as tl


@triton.jit
def plain_flash_fwd(Q, K, V, O, n, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr):
    pid = tl.program_id(0)
    base = tl.program_id(1).to(tl.int64) * n * HEAD_DIM
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D_LO)
    q = tl.load(Q + base + rows[:, None] * HEAD_DIM + cols[None, :])
    acc = tl.zeros((BLOCK_M, D_LO), tl.float32)
    if D_HI > 0:
        cols_hi = D_LO + tl.arange(0, D_HI)
        q_hi = tl.load(Q + base + rows[:, None] * HEAD_DIM + cols_hi[None, :])
        acc_hi = tl.zeros((BLOCK_M, D_HI), tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, n, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k = tl.load(K + base + keys[:, None] * HEAD_DIM + cols[None, :])
        s = tl.dot(q, tl.trans(k))
        if D_HI > 0:
            k_hi = tl.load(K + base + keys[:, None] * HEAD_DIM + cols_hi[None, :])
            s += tl.dot(q_hi, tl.trans(k_hi))
        s = s * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        p = p.to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p, tl.load(V + base + keys[:, None] * HEAD_DIM + cols[None, :]))
        if D_HI > 0:
            v_hi = tl.load(V + base + keys[:, None] * HEAD_DIM + cols_hi[None, :])
            acc_hi = acc_hi * alpha[:, None] + tl.dot(p, v_hi)
        m_i = m_new
    tl.store(O + base + rows[:, None] * HEAD_DIM + cols[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty))
    if D_HI > 0:
        tl.store(O + base + rows[:, None] * HEAD_DIM + cols_hi[None, :],
                 (acc_hi / l_i[:, None]).to(O.dtype.element_ty))
