"""Tubelet embedding: the reference against torch's Conv3d, the fused Triton kernel (its launcher,
interpreted on CPU) against an fp64 reference within twice PyTorch's own error, the op's backward
and registration (opcheck), argument errors, and every launcher configuration compiled for
sm_90/sm_80 (no spills; wgmma for 16-bit GEMMs)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aot_utils import AotRequest, compile_kernels
from vjepa_fast.kernels.tubelet_embed import tubelet_embed_fwd
from vjepa_fast.ops.tubelet_embed import patchify, tubelet_embed, tubelet_embed_ref, unpatchify

# (B, T, C, H, W, D, tubelet, patch): the real 2x16x16 tubelet, a non-square grid, one tubelet of
# one channel, odd D not a multiple of any block.
SHAPES = [(2, 4, 3, 32, 48, 70, 2, 16), (3, 4, 3, 12, 20, 37, 2, 4), (1, 2, 1, 8, 8, 5, 2, 8)]


def _inputs(B, T, C, H, W, D, t, p, video_dtype, keep):
    if video_dtype == torch.uint8:
        video = torch.randint(0, 256, (B, T, C, H, W), dtype=torch.uint8)
        mean, std = torch.rand(C) * 60 + 100, torch.rand(C) * 20 + 50  # 255 * ImageNet-like statistics
    else:
        video = torch.randn(B, T, C, H, W, dtype=video_dtype)
        mean, std = torch.randn(C) * 0.1, torch.rand(C) + 0.5
    weight = torch.randn(D, C, t, p, p) * (C * t * p * p) ** -0.5
    bias = torch.randn(D)
    n = (T // t) * (H // p) * (W // p)
    ids = torch.stack([torch.randperm(n)[:max(1, n * keep // 4)] for _ in range(B)]) if keep < 4 else None
    return video, weight, bias, ids, mean, std


def _kernel(video, weight, bias, ids, mean, std):
    """The Triton kernel through its launcher (CPU tensors run in the interpreter)."""
    D, _, t, p, _ = weight.shape
    B, T, _, H, W = video.shape
    n = ids.shape[1] if ids is not None else (T // t) * (H // p) * (W // p)
    out = torch.full((B, n, D), float("nan"), dtype=weight.dtype)  # poison: every element must be written
    tubelet_embed_fwd(video, weight.reshape(D, -1).contiguous(), bias, ids, mean, None if std is None else 1 / std,
                      t, p, out)
    return out


def test_reference_matches_conv3d():
    video, weight, bias, _, mean, std = _inputs(*SHAPES[1], torch.float32, 4)
    normed = (video - mean.view(1, 1, -1, 1, 1)) / std.view(1, 1, -1, 1, 1)
    conv = F.conv3d(normed.permute(0, 2, 1, 3, 4), weight, bias, stride=weight.shape[2:])  # (B, D, Tp, Hp, Wp)
    torch.testing.assert_close(tubelet_embed_ref(video, weight, bias, None, mean, std),
                               conv.flatten(2).transpose(1, 2))


def test_unpatchify_inverts_patchify():
    video = torch.randn(3, 6, 3, 12, 20)
    assert torch.equal(unpatchify(patchify(video, 2, 4), tuple(video.shape), 2, 4), video)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("video_dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("keep", [4, 3])  # all tokens, or 3/4 of them in random order
@pytest.mark.parametrize("normalise", [True, False])
def test_kernel_forward_error_within_twice_torch(shape, video_dtype, dtype, keep, normalise):
    video, weight, bias, ids, mean, std = _inputs(*shape, video_dtype, keep)
    if not normalise:
        mean = std = None
    exact = tubelet_embed_ref(video.double() if video.is_floating_point() else video, weight.double(), bias.double(),
                              ids, mean, std)
    torch_out = tubelet_embed_ref(video, weight.to(dtype), bias.to(dtype), ids, mean, std)
    out = _kernel(video, weight.to(dtype), bias.to(dtype), ids, mean, std)
    assert out.dtype == dtype and out.shape == exact.shape and not out.isnan().any()
    torch_err = (torch_out.double() - exact).abs().max().item()
    err = (out.double() - exact).abs().max().item()
    assert err <= 2 * torch_err + 1e-5 * exact.abs().max().item(), (err, torch_err)


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("keep", [4, 3])
def test_op_gradients_match_reference(shape, keep):
    video, weight, bias, ids, mean, std = _inputs(*shape, torch.float32, keep)
    if ids is not None:
        ids[:, -1] = ids[:, 0]  # a repeated token: its video gradient must be the sum of both
    leaves = [x.clone().requires_grad_() for x in (video, weight, bias)]
    out = torch.ops.vjepa_fast.tubelet_embed(*leaves, ids, mean, 1 / std)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    ref_leaves = [x.double().requires_grad_() for x in (video, weight, bias)]
    want = torch.autograd.grad(tubelet_embed_ref(*ref_leaves, ids, mean, std), ref_leaves, grad.double())
    for name, a, b in zip(("video", "weight", "bias"), got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_uint8_video_gives_weight_gradients():
    video, weight, bias, ids, mean, std = _inputs(*SHAPES[1], torch.uint8, 3)
    w = weight.clone().requires_grad_()
    torch.ops.vjepa_fast.tubelet_embed(video, w, bias, ids, mean, 1 / std).square().sum().backward()
    w_ref = weight.clone().requires_grad_()
    tubelet_embed_ref(video, w_ref, bias, ids, mean, std).square().sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-4)


def test_opcheck():
    """Schema, fake tensors and the autograd registration of the op (its CPU branch)."""
    video, weight, bias, ids, mean, std = _inputs(*SHAPES[1], torch.float32, 3)
    args = (video.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), ids, mean, 1 / std)
    torch.library.opcheck(torch.ops.vjepa_fast.tubelet_embed.default, args)


def test_cpu_tensors_take_the_reference_path():
    """CPU tensors never reach the registered op (whose CPU branch exists only for opcheck)."""
    video, weight, bias, ids, _, _ = _inputs(*SHAPES[1], torch.float32, 3)
    with torch.profiler.profile() as prof:
        out = tubelet_embed(video, weight, bias, ids)
    assert not [e.name for e in prof.events() if e.name.startswith("vjepa_fast::")]
    assert torch.equal(out, tubelet_embed_ref(video, weight, bias, ids))


@pytest.mark.parametrize("args,match", [
    (dict(video=torch.randn(1, 4, 3, 12)), r"video must be \(B, T, C=3, H, W\)"),
    (dict(video=torch.randn(1, 3, 3, 12, 20)), "needs T a multiple of 2"),
    (dict(video=torch.randn(1, 4, 3, 12, 18)), "H, W multiples of 4"),
    (dict(weight=torch.randn(8, 3, 2, 4, 5)), r"weight must be \(D, C, t, p, p\)"),
    (dict(bias=torch.randn(9)), r"bias must have shape \(8,\)"),
    (dict(token_ids=torch.zeros(2, 3, dtype=torch.int64)), r"token_ids must be int64 of shape \(1, K\)"),
    (dict(token_ids=torch.zeros(1, 3, dtype=torch.int32)), "token_ids must be int64"),
    (dict(mean=torch.zeros(3)), "mean and std must be given together"),
    (dict(mean=torch.zeros(2), std=torch.ones(2)), r"mean must have shape \(3,\)"),
    (dict(video=torch.zeros(1, 4, 3, 12, 20, dtype=torch.int32)), "video must be uint8 or floating point"),
])
def test_bad_arguments_are_named(args, match):
    kwargs = dict(video=torch.randn(1, 4, 3, 12, 20), weight=torch.randn(8, 3, 2, 4, 4), bias=torch.randn(8))
    kwargs.update(args)
    with pytest.raises((ValueError, TypeError), match=match):
        tubelet_embed(**kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_kernel_matches_conv3d(dtype):
    video, weight, bias, ids, mean, std = _inputs(2, 16, 3, 256, 256, 1024, 2, 16, torch.uint8, 3)
    video, weight, bias, ids, mean, std = (x.cuda() for x in (video, weight, bias, ids, mean, std))
    exact = tubelet_embed_ref(video, weight.double(), bias.double(), ids, mean, std)
    torch_err = (tubelet_embed_ref(video, weight.to(dtype), bias.to(dtype), ids, mean, std).double() - exact).abs().max()
    out = tubelet_embed(video, weight.to(dtype), bias.to(dtype), ids, mean, std)
    assert (out.double() - exact).abs().max() <= 2 * torch_err
    compiled = torch.compile(tubelet_embed, fullgraph=True)(video, weight.to(dtype), bias.to(dtype), ids, mean, std)
    torch.testing.assert_close(compiled, out)


def _aot_requests() -> list[AotRequest]:
    """Every weight dtype with the heaviest variant (token ids + normalisation) on uint8 frames and on
    frames of the weight's dtype, fp32 frames into an fp16 GEMM (the widest A tile), the plain
    variant with TF32; sm_80 gets the uint8 variants."""
    from vjepa_fast.kernels import tubelet_embed as te

    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    cases = [(90, w, v, True, "ieee") for w in names.values() for v in ("u8", w)]
    cases += [(90, "fp16", "fp32", True, "ieee"), (90, "fp32", "fp32", False, "tf32")]
    cases += [(80, w, "u8", True, "ieee") for w in names.values()]
    requests = []
    for arch, w, video, heavy, precision in cases:
        cfg = te.LaunchConfig.for_dtype({v: k for k, v in names.items()}[w])
        sig = {"VIDEO": f"*{video}", "W": f"*{w}", "BIAS": f"*{w}", "IDS": "*i64", "MEAN": "*fp32",
               "INV_STD": "*fp32", "OUT": f"*{w}"}
        sig.update({name: "i32" for name in ("M", "n_tok", "D", "K", "grid_h", "grid_w", "stride_vb", "stride_vt",
                                             "stride_vc", "stride_vh", "stride_ib")})
        constexprs = dict(TUBELET=2, PATCH=16, HAS_IDS=heavy, HAS_NORM=heavy, DOT_PRECISION=precision,
                          BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
        sig.update({name: "constexpr" for name in constexprs})
        requests.append(AotRequest(module=te.__name__, kernel="_tubelet_embed_kernel", signature=sig,
                                   constexprs=constexprs, arch=arch, num_warps=cfg.num_warps,
                                   num_stages=cfg.num_stages,
                                   label=f"weight {w} video {video} ids/norm={heavy} {precision} sm_{arch}"))
    return requests


def test_every_launch_config_compiles_without_spills():
    results = compile_kernels(_aot_requests())
    spilled = [f"{r.request.label}: stack {r.stack} B, local {r.local} B" for r in results if r.spills]
    assert not spilled, "register spills:\n" + "\n".join(spilled)
    too_big = [(r.request.label, r.shared) for r in results if r.shared > (227 if r.request.arch == 90 else 163) * 1024]
    assert not too_big, f"shared memory over the limit: {too_big}"
    no_wgmma = [r.request.label for r in results
                if r.request.arch == 90 and "weight fp32" not in r.request.label and not r.wgmma]
    assert not no_wgmma, f"16-bit GEMMs without wgmma on sm_90: {no_wgmma}"
