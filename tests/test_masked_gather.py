"""Predictor input assembly: the Triton kernel (its launcher, interpreted on CPU) against the
reference (the predictor's former cat + token_positions), exactly; the op's backward and
registration (opcheck); argument errors; its launch configurations compiled for sm_90/sm_80
without spills."""
from __future__ import annotations

import pytest
import torch

from aot_utils import AotRequest, compile_kernels
from vjepa_fast.kernels.masked_gather import masked_gather_fwd
from vjepa_fast.ops.masked_gather import masked_gather, masked_gather_ref
from vjepa_fast.ops.rope import token_positions

# (B, Nc, Nt, D, grid_t, grid_h, grid_w): batch 1 and 3, non-square grids, rows and D not
# multiples of the blocks (32 rows, 128 channels), D wider than one block.
SHAPES = [(1, 13, 22, 37, 2, 4, 5), (3, 29, 7, 130, 3, 4, 5), (3, 5, 40, 16, 1, 6, 4)]


def _kernel(x, mask_token, context_ids, target_ids, gh, gw):
    """The Triton kernel through its launcher (CPU tensors run in the interpreter), outputs poisoned."""
    B, N = context_ids.shape[0], context_ids.shape[1] + target_ids.shape[1]
    tokens = torch.full((B, N, x.shape[2]), float("nan"), dtype=torch.promote_types(x.dtype, mask_token.dtype))
    positions = torch.full((B, N, 3), float("nan"))
    masked_gather_fwd(x, mask_token, context_ids, target_ids, gh, gw, tokens, positions)
    return tokens, positions


def _inputs(B, Nc, Nt, D, gt, gh, gw, dtype, mask_dtype):
    n = gt * gh * gw
    perm = torch.stack([torch.randperm(n) for _ in range(B)])
    context_ids, target_ids = perm[:, :Nc], perm[:, n - Nt:]
    return torch.randn(B, Nc, D, dtype=dtype), torch.randn(D, dtype=mask_dtype), context_ids, target_ids, gh, gw


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,mask_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                              (torch.float16, torch.float32)])
def test_kernel_matches_reference(shape, dtype, mask_dtype):
    args = _inputs(*shape, dtype, mask_dtype)
    tokens, positions = _kernel(*args)
    ref_tokens, ref_positions = masked_gather_ref(*args)
    assert tokens.dtype == ref_tokens.dtype and positions.dtype == torch.float32
    assert torch.equal(tokens, ref_tokens)  # a copy: exact
    assert torch.equal(positions, ref_positions)
    ids = torch.cat(args[2:4], dim=1)
    assert torch.equal(positions, token_positions(ids, *args[4:]).float())


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_op_gradients_match_reference(shape):
    x, mask_token, context_ids, target_ids, gh, gw = _inputs(*shape, torch.float32, torch.float32)
    leaves = [x.clone().requires_grad_(), mask_token.clone().requires_grad_()]
    tokens, _ = torch.ops.vjepa_fast.masked_gather(leaves[0], leaves[1], context_ids, target_ids, gh, gw)
    grad = torch.randn_like(tokens)
    got = torch.autograd.grad(tokens, leaves, grad)
    ref_leaves = [x.double().requires_grad_(), mask_token.double().requires_grad_()]
    ref_tokens, _ = masked_gather_ref(ref_leaves[0], ref_leaves[1], context_ids, target_ids, gh, gw)
    want = torch.autograd.grad(ref_tokens, ref_leaves, grad.double())
    for name, a, b in zip(("x", "mask_token"), got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_opcheck():
    """Schema, fake tensors and the autograd registration of the op (its CPU branch)."""
    x, mask_token, context_ids, target_ids, gh, gw = _inputs(*SHAPES[1], torch.float32, torch.float32)
    args = (x.requires_grad_(), mask_token.requires_grad_(), context_ids, target_ids, gh, gw)
    torch.library.opcheck(torch.ops.vjepa_fast.masked_gather.default, args)


def test_cpu_tensors_take_the_reference_path():
    """CPU tensors never reach the registered op (whose CPU branch exists only for opcheck)."""
    args = _inputs(*SHAPES[0], torch.float32, torch.float32)
    with torch.profiler.profile() as prof:
        got = masked_gather(*args)
    assert not [e.name for e in prof.events() if e.name.startswith("vjepa_fast::")]
    for a, b in zip(got, masked_gather_ref(*args)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("change,match", [
    (dict(x=torch.randn(2, 5)), r"x must be \(B, Nc, D\)"),
    (dict(context_ids=torch.zeros(2, 3, dtype=torch.int32)), "context_ids must be int64"),
    (dict(target_ids=torch.zeros(3, 4, dtype=torch.int64)), r"target_ids must be int64 of shape \(2, K\)"),
    (dict(x=torch.randn(2, 10, 8)), "x must hold the 3 context tokens of context_ids, got Nx=10"),
    (dict(mask_token=torch.randn(7)), r"mask_token must have shape \(8,\)"),
    (dict(x=torch.zeros(2, 3, 8, dtype=torch.int64)), "must be floating point"),
])
def test_bad_arguments_are_named(change, match):
    args = dict(x=torch.randn(2, 3, 8), mask_token=torch.randn(8),
                context_ids=torch.zeros(2, 3, dtype=torch.int64), target_ids=torch.zeros(2, 4, dtype=torch.int64),
                grid_h=4, grid_w=4)
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        masked_gather(**args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_kernel_matches_reference():
    args = [a.cuda() if torch.is_tensor(a) else a for a in _inputs(4, 1000, 600, 1024, 8, 16, 16,
                                                                    torch.bfloat16, torch.float32)]
    for a, b in zip(masked_gather(*args), masked_gather_ref(*args)):
        assert torch.equal(a, b)


def test_every_launch_config_compiles_without_spills():
    from vjepa_fast.kernels import masked_gather as mg

    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    cases = [(x, x) for x in names.values()] + [("bf16", "fp32")]  # (x dtype, output/mask dtype)
    requests = []
    for arch in (90, 80):
        for x, out in cases:
            sig = {"X": f"*{x}", "MASK_TOKEN": f"*{out}", "CTX_IDS": "*i64", "TGT_IDS": "*i64",
                   "OUT": f"*{out}", "POS": "*fp32"}
            sig.update({n: "i32" for n in ("rows", "n_ctx", "n_tgt", "D", "grid_h", "grid_w", "stride_xb",
                                           "stride_xn", "stride_cb", "stride_tb")})
            constexprs = dict(BLOCK_R=mg.BLOCK_R, BLOCK_D=mg.BLOCK_D)
            sig.update({n: "constexpr" for n in constexprs})
            requests.append(AotRequest(module=mg.__name__, kernel="_masked_gather_kernel", signature=sig,
                                       constexprs=constexprs, arch=arch, num_warps=mg.NUM_WARPS,
                                       label=f"x {x} out {out} sm_{arch}"))
    results = compile_kernels(requests)
    spilled = [f"{r.request.label}: stack {r.stack} B, local {r.local} B" for r in results if r.spills]
    assert not spilled, "register spills:\n" + "\n".join(spilled)
