"""Fused 3D-RoPE attention: the Triton kernels (run by the interpreter on CPU tensors; on a GPU
when there is one), the custom-op registration, the dispatch and the lazy RoPE tables.

Oracle: rope_attention_ref in float64. The kernel's error must stay within about twice the
error of the plain PyTorch reference run in the same dtype (flash-attention's rule), for the
output and for dq, dk, dv."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from vjepa_fast.kernels import rope_attention as kernels
from vjepa_fast.ops import dispatch
from vjepa_fast.ops.rope import Rope, apply_rope_ref, make_rope, rope_angles
from vjepa_fast.ops.rope_attention import rope_attention, rope_attention_ref, use_fused

@dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    n_q: int
    n_k: int
    head_dim: int
    mode: str
    shared_positions: bool
    causal_block: int = 0


def _positions(batch: int, n: int, grid: int = 7) -> torch.Tensor:
    """(batch, n, 3) fp32 positions: random integer (t, h, w) plus a scaled grid position in h, as
    the action-conditioned predictor uses, and time-only tokens (h = w = 0)."""
    pos = torch.randint(0, grid, (batch, n, 3)).float()
    pos[:, ::5, 1] *= 0.75
    pos[:, ::7, 1:] = 0.0
    return pos


def _inputs(case: Case, dtype: torch.dtype, device="cpu"):
    B, H, hd = case.batch, case.heads, case.head_dim
    q = torch.randn(B, H, case.n_q, hd, dtype=dtype, device=device)
    k = torch.randn(B, H, case.n_k, hd, dtype=dtype, device=device)
    v = torch.randn(B, H, case.n_k, hd, dtype=dtype, device=device)
    k_pos = _positions(1 if case.shared_positions else B, case.n_k).to(device)
    # Queries are the last n_q key positions (a key/value cache) unless unrelated positions fit better.
    q_pos = k_pos[:, case.n_k - case.n_q:] if case.causal_block else _positions(k_pos.shape[0], case.n_q).to(device)
    return q, k, v, q_pos, k_pos


def _rope64(pos: torch.Tensor, head_dim: int, mode: str) -> Rope:
    angles = rope_angles(pos.double(), head_dim, mode).unsqueeze(1)
    return Rope(pos, angles.cos(), angles.sin(), mode)


def _reference(q, k, v, q_pos, k_pos, case: Case, do, dtype):
    """Output and (dq, dk, dv) of rope_attention_ref in `dtype` (float64 for the oracle)."""
    q, k, v = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
    if dtype == torch.float64:
        q_rope, k_rope = _rope64(q_pos, case.head_dim, case.mode), _rope64(k_pos, case.head_dim, case.mode)
    else:
        q_rope, k_rope = make_rope(q_pos, case.head_dim, case.mode), make_rope(k_pos, case.head_dim, case.mode)
    out = rope_attention_ref(q, k, v, q_rope, k_rope, case.causal_block)
    out.backward(do.to(dtype))
    return out.detach(), (q.grad, k.grad, v.grad)


def _check_against_oracle(got, grads, q, k, v, q_pos, k_pos, case, do, floor):
    """Kernel error <= 2 x PyTorch's own error in the same dtype (+ a floor for near-exact cases)."""
    truth, truth_grads = _reference(q, k, v, q_pos, k_pos, case, do, torch.float64)
    plain, plain_grads = _reference(q, k, v, q_pos, k_pos, case, do, q.dtype)
    for name, ours, pt, ref in zip(("out", "dq", "dk", "dv"), (got, *grads), (plain, *plain_grads),
                                   (truth, *truth_grads)):
        assert ours.shape == ref.shape and ours.dtype == q.dtype, name
        err = (ours.double() - ref).abs().max().item()
        pt_err = (pt.double() - ref).abs().max().item()
        assert err <= 2 * pt_err + floor, f"{name}: kernel error {err:.3g} vs PyTorch {pt_err:.3g} ({case})"


INTERPRETER_CASES = [
    Case(1, 2, 37, 37, 32, "tile", True),
    Case(3, 1, 21, 21, 64, "interleave", False),
    Case(1, 1, 45, 45, 80, "tile", False),
    Case(3, 1, 19, 33, 80, "interleave", True),      # Nq != Nk: cross attention, separate positions
    Case(1, 1, 300, 530, 32, "tile", False, 258),    # AC predictor steps of 258 tokens, KV-cache alignment
    Case(3, 1, 40, 70, 80, "interleave", True, 9),   # small steps: every kind of partial tile; 64+16 chunks
]


@pytest.mark.parametrize("grid", ["short", "full"])
@pytest.mark.parametrize("dtype,floor", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("case", INTERPRETER_CASES, ids=str)
def test_kernel_matches_reference(case, dtype, floor, grid, monkeypatch):
    """Both tilings: these shapes fill less than a wave of an H100 (64-row held tiles); with
    one SM ("full") they take the default 128-row tiles."""
    if not kernels.interpreting():
        pytest.skip("the interpreter test runs with TRITON_INTERPRET=1 (tests/conftest.py)")
    if grid == "full":
        monkeypatch.setattr(kernels, "multiprocessors", lambda x: 1)
    launched = []

    class Recorded(kernels.LaunchConfig):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            launched.append(self)

    monkeypatch.setattr(kernels, "LaunchConfig", Recorded)
    q, k, v, q_pos, k_pos = _inputs(case, dtype)
    do = torch.randn_like(q)
    out, lse = kernels.rope_attention_fwd(q, k, v, q_pos, k_pos, case.mode == "tile", case.causal_block)
    grads = kernels.rope_attention_bwd(do, q, k, v, out, lse, q_pos, k_pos, case.mode == "tile", case.causal_block)
    held = {c.kernel: c.block_n if c.kernel == "dkdv" else c.block_m for c in launched if c.kernel != "rotate"}
    full = 64 if case.head_dim == 80 else 128  # dkdv at hd 80 holds 64 keys in either grid
    assert held == ({"fwd": 64, "dkdv": 64, "dq": 64} if grid == "short" else {"fwd": 128, "dkdv": full, "dq": 128})
    _check_against_oracle(out, grads, q, k, v, q_pos, k_pos, case, do, floor)


def test_tiles_per_sequence_length():
    """Held tiles of 128 rows halve (4 warps) where the default grid is under one wave of SMs:
    AC predictor steps of 258 tokens at batch 1; a ViT-L clip of 8192 tokens keeps 128 rows."""
    x = torch.empty(0)  # off a GPU: an H100's 132 SMs
    assert kernels.short_grid(16, 258, x) and not kernels.short_grid(16, 8192, x)
    assert not kernels.short_grid(400 * 16, 258, x)  # planning: 400 samples at once
    for kernel, held in (("fwd", "block_m"), ("dq", "block_m"), ("dkdv", "block_n")):
        wide, short = (kernels.LaunchConfig(64, torch.bfloat16, kernel, 90, s) for s in (False, True))
        assert (getattr(wide, held), getattr(short, held)) == (128, 64), kernel
        assert (wide.num_warps, short.num_warps) == (8, 4), kernel
    chunked = kernels.LaunchConfig(80, torch.bfloat16, "dkdv", 90, True)  # 64 keys already: unchanged
    assert (chunked.block_m, chunked.block_n, chunked.num_warps) == (32, 64, 4)


def test_kernel_takes_strided_inputs():
    """q, k, v as the model makes them: slices of one fused qkv projection."""
    if not kernels.interpreting():
        pytest.skip("the interpreter test runs with TRITON_INTERPRET=1 (tests/conftest.py)")
    B, N, H, hd = 2, 23, 2, 32
    qkv = torch.randn(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd), non-contiguous
    q, k, v = qkv.unbind(0)
    pos = _positions(B, N)
    out, _ = kernels.rope_attention_fwd(q, k, v, pos, pos, True, 0)
    rope = make_rope(pos, hd, "tile")
    torch.testing.assert_close(out, rope_attention_ref(q, k, v, rope), atol=1e-5, rtol=1e-5)


def test_offsets_batch_in_64_bits_slice_in_32():
    """The ViT-L case that overflowed 32-bit offsets (q viewed out of a fused (B, 8192, 3 * 1024)
    qkv passes 2^31 elements from B = 86) launches whole: batch and head offsets are 64-bit. A
    single (batch, head) slice past 2^31 elements is refused, naming the limit (meta tensors:
    shapes and strides only)."""
    B, N, H, hd = 100, 8192, 16, 64
    qkv = torch.empty(B, N, 3 * H * hd, device="meta").view(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    assert q.stride(0) * (B - 1) > kernels.MAX_OFFSET
    kernels.check_offsets(q, k, v)
    huge = torch.empty(1, 1, 2**20, 64, device="meta").as_strided((1, 1, 2**20, 64), (0, 0, 2**12, 1))
    with pytest.raises(ValueError, match="32-bit offsets"):
        kernels.check_offsets(huge)


def test_rotate_kernel_matches_reference():
    """The pre-pass that rotates q and k once per tensor: partners from registers, padding
    columns (hd 80 in a 128-wide tile), strided input, fractional positions."""
    if not kernels.interpreting():
        pytest.skip("the interpreter test runs with TRITON_INTERPRET=1 (tests/conftest.py)")
    for hd, mode in ((80, "tile"), (64, "interleave"), (32, "tile")):
        x = torch.randn(2, 37, 3, hd).permute(0, 2, 1, 3)  # (B, H, N, hd), not contiguous
        pos = torch.rand(2, 37, 3) * 9
        got = kernels.rotate(x, pos, mode == "tile")
        rope = make_rope(pos, hd, mode)
        torch.testing.assert_close(got, apply_rope_ref(x, rope.cos, rope.sin), atol=1e-5, rtol=1e-5)
        assert got.is_contiguous()


OP_CASES = [Case(2, 2, 13, 13, 32, "tile", False), Case(1, 2, 10, 17, 64, "interleave", True, 6)]


@pytest.mark.parametrize("case", OP_CASES, ids=str)
def test_op_gradients_match_autograd_of_reference(case):
    """The registered op's non-CUDA branch (explicit backward maths, RoPE transpose included),
    which computes in fp32 like the kernel, against autograd through the float64 reference."""
    q, k, v, q_pos, k_pos = _inputs(case, torch.float32)
    do = torch.randn_like(q)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out, _ = torch.ops.vjepa_fast.rope_attention_fwd(*leaves, q_pos, k_pos, case.mode == "tile", case.causal_block)
    out.backward(do)
    truth, truth_grads = _reference(q, k, v, q_pos, k_pos, case, do, torch.float64)
    for ours, ref in zip((out, *(x.grad for x in leaves)), (truth, *truth_grads)):
        torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-4)


def test_opcheck():
    """Schema, fake tensors, autograd registration and AOT dispatch of both ops (CPU branch)."""
    case = OP_CASES[1]
    q, k, v, q_pos, k_pos = _inputs(case, torch.float32)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), q_pos, k_pos, case.mode == "tile",
            case.causal_block)
    torch.library.opcheck(torch.ops.vjepa_fast.rope_attention_fwd, args)
    out, lse = torch.ops.vjepa_fast.rope_attention_fwd(*args)
    bwd_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse, q_pos, k_pos,
                case.mode == "tile", case.causal_block)
    torch.library.opcheck(torch.ops.vjepa_fast.rope_attention_bwd, bwd_args)


def test_dispatch_cpu_uses_reference(monkeypatch):
    case = Case(2, 2, 11, 11, 64, "tile", False)
    q, k, v, pos, _ = _inputs(case, torch.float32)
    rope = make_rope(pos, case.head_dim, case.mode)
    assert not dispatch.use_triton(q)
    assert torch.equal(rope_attention(q, k, v, rope), rope_attention_ref(q, k, v, rope))
    monkeypatch.setenv(dispatch.REFERENCE_ENV, "1")
    assert dispatch.reference_forced()
    monkeypatch.delenv(dispatch.REFERENCE_ENV)
    assert not dispatch.reference_forced()


def test_rope_tables_lazy_and_narrow():
    pos = _positions(2, 15)
    eager = make_rope(pos, 64, "tile")  # CPU: tables built now
    lazy = Rope(pos, mode="tile", head_dim=64)
    torch.testing.assert_close(lazy.cos, eager.cos)
    torch.testing.assert_close(lazy.sin, eager.sin)
    tail = Rope(pos, mode="interleave", head_dim=64).narrow(-4, 4)
    whole = make_rope(pos, 64, "interleave")
    assert tail.mode == "interleave" and torch.equal(tail.positions, pos[:, -4:])
    torch.testing.assert_close(tail.cos, whole.cos[..., -4:, :])
    with pytest.raises(ValueError, match="mode and head_dim"):
        Rope(pos)


def test_bad_arguments_name_the_argument():
    q = torch.randn(1, 2, 8, 32)
    rope = make_rope(_positions(1, 8), 32, "tile")
    with pytest.raises(ValueError, match="k and v must be"):
        rope_attention(q, torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), rope)
    with pytest.raises(ValueError, match="q_rope.positions"):
        rope_attention(q, q, q, make_rope(_positions(1, 9), 32, "tile"))
    with pytest.raises(ValueError, match="q_rope.positions is on meta"):
        rope_attention(q, q, q, Rope(_positions(1, 8).to("meta"), mode="tile", head_dim=32))
    with pytest.raises(ValueError, match="at least as many keys"):
        k = torch.randn(1, 2, 4, 32)
        rope_attention(q, k, k, rope, make_rope(_positions(1, 4), 32, "tile"), causal_block=3)


GPU_CASES = [
    Case(2, 4, 1000, 1000, 64, "tile", False),
    Case(1, 3, 777, 777, 80, "interleave", True),
    Case(3, 2, 513, 513, 32, "tile", False),
    Case(2, 4, 258, 258 * 4, 64, "tile", True, 258),
    Case(1, 2, 258 * 3, 258 * 3, 64, "interleave", False, 258),
]


@pytest.mark.parametrize("dtype,floor", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3), (torch.float32, 1e-5)])
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kernel_matches_reference(case, dtype, floor):
    """16-bit inputs go through the op (dispatch, autograd); fp32, which the op leaves to SDPA,
    through the launchers directly."""
    q, k, v, q_pos, k_pos = _inputs(case, dtype, "cuda")
    do = torch.randn_like(q)
    if dtype == torch.float32:
        out, lse = kernels.rope_attention_fwd(q, k, v, q_pos, k_pos, case.mode == "tile", case.causal_block)
        grads = kernels.rope_attention_bwd(do, q, k, v, out, lse, q_pos, k_pos, case.mode == "tile",
                                           case.causal_block)
    else:
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        q_rope, k_rope = make_rope(q_pos, case.head_dim, case.mode), make_rope(k_pos, case.head_dim, case.mode)
        assert q_rope._cos is None, "the kernel path should not build cos/sin tables"
        assert use_fused(*leaves, q_rope, k_rope)
        out = rope_attention(*leaves, q_rope, k_rope, case.causal_block)
        out.backward(do)
        out, grads = out.detach(), [x.grad for x in leaves]
    _check_against_oracle(out, grads, q, k, v, q_pos, k_pos, case, do, floor)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_env_var_forces_reference(monkeypatch):
    case = Case(1, 2, 100, 100, 64, "tile", True)
    q, k, v, pos, _ = _inputs(case, torch.float32, "cuda")
    rope = make_rope(pos, 64, "tile")
    monkeypatch.setenv(dispatch.REFERENCE_ENV, "1")
    assert torch.equal(rope_attention(q, k, v, rope), rope_attention_ref(q, k, v, rope))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_compiled_op(monkeypatch):
    """torch.compile(fullgraph=True) sees through the triton_op, forward and backward."""
    case = Case(2, 2, 300, 300, 64, "tile", False, 0)
    q, k, v, pos, _ = _inputs(case, torch.bfloat16, "cuda")
    rope = Rope(pos, mode="tile", head_dim=64)
    eager_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    compiled_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    eager = rope_attention(*eager_leaves, rope)
    compiled = torch.compile(rope_attention, fullgraph=True)(*compiled_leaves, rope)
    torch.testing.assert_close(compiled, eager)
    eager.sum().backward()
    compiled.sum().backward()
    for a, b in zip(compiled_leaves, eager_leaves):
        torch.testing.assert_close(a.grad, b.grad)
    args = (q, k, v, pos, pos, True, 258)
    torch.library.opcheck(torch.ops.vjepa_fast.rope_attention_fwd, args)

