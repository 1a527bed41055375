"""Tubelet embedding: Conv3d with kernel == stride, done as (normalise ->) patchify -> GEMM + bias.

video (B, T, C, H, W) uint8 or float, T a multiple of the tubelet t, H and W multiples of the
patch p; weight (D, C, t, p, p) in the Conv3d layout; tokens are time-major,
n = ti*Hp*Wp + hi*Wp + wi. Optional per-channel normalisation (video - mean[c]) / std[c] in the
video's own units (for uint8 frames and ImageNet statistics pass 255 * mean and 255 * std).

`tubelet_embed` runs the fused Triton kernel (kernels/tubelet_embed.py, registered as
torch.ops.vjepa_fast.tubelet_embed by `register`, once Triton imports) on CUDA tensors and `tubelet_embed_ref` elsewhere or when
VJEPA_FAST_REFERENCE=1. Gradients flow to weight, bias and float video (backward in PyTorch:
two GEMMs and a scatter). The op's non-CUDA branch is the same maths in plain PyTorch: the
dispatcher never sends CPU tensors there, but it lets torch.library.opcheck check the
registration on CPU; the kernel is tested through its launcher under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import triton_op

from vjepa_fast.ops.dispatch import use_triton


def patchify(video: Tensor, tubelet: int, patch: int) -> Tensor:
    """(B, T, C, H, W) -> (B, N, C*t*p*p), each row flattened in the Conv3d weight's (c, t, kh, kw) order."""
    B, T, C, H, W = video.shape
    Tp, Hp, Wp = T // tubelet, H // patch, W // patch
    x = video.reshape(B, Tp, tubelet, C, Hp, patch, Wp, patch)
    x = x.permute(0, 1, 4, 6, 3, 2, 5, 7)  # (B, Tp, Hp, Wp, C, t, p, p)
    return x.reshape(B, Tp * Hp * Wp, C * tubelet * patch * patch)


def unpatchify(patches: Tensor, shape: tuple[int, int, int, int, int], tubelet: int, patch: int) -> Tensor:
    """Inverse of `patchify`: (B, N, C*t*p*p) -> (B, T, C, H, W) of the given shape."""
    B, T, C, H, W = shape
    x = patches.reshape(B, T // tubelet, H // patch, W // patch, C, tubelet, patch, patch)
    x = x.permute(0, 1, 5, 4, 2, 6, 3, 7)  # (B, Tp, t, C, Hp, p, Wp, p)
    return x.reshape(B, T, C, H, W)


def _patches(video: Tensor, token_ids: Tensor | None, mean: Tensor | None, inv_std: Tensor | None,
             tubelet: int, patch: int, dtype: torch.dtype) -> Tensor:
    """(B, N or K, C*t*p*p) rows of the GEMM: normalised in fp32, cast to dtype, kept tokens only."""
    x = video.to(dtype)
    if mean is not None:
        C = video.shape[2]
        x = ((video.float() - mean.view(1, 1, C, 1, 1)) * inv_std.view(1, 1, C, 1, 1)).to(dtype)
    patches = patchify(x, tubelet, patch)  # (B, N, K)
    if token_ids is None:
        return patches
    return torch.gather(patches, 1, token_ids.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


def _embed(video: Tensor, weight: Tensor, bias: Tensor, token_ids: Tensor | None, mean: Tensor | None,
           inv_std: Tensor | None) -> Tensor:
    """The maths in plain PyTorch (mean and inv_std fp32)."""
    _, _, t, p, _ = weight.shape
    return F.linear(_patches(video, token_ids, mean, inv_std, t, p, weight.dtype), weight.flatten(1), bias)


def _check(video: Tensor, weight: Tensor, bias: Tensor, token_ids: Tensor | None, mean: Tensor | None,
           std: Tensor | None) -> None:
    if weight.dim() != 5 or weight.shape[3] != weight.shape[4]:
        raise ValueError(f"tubelet_embed: weight must be (D, C, t, p, p), got {tuple(weight.shape)}")
    D, C, t, p, _ = weight.shape
    if video.dim() != 5 or video.shape[2] != C:
        raise ValueError(f"tubelet_embed: video must be (B, T, C={C}, H, W), got {tuple(video.shape)}")
    B, T, _, H, W = video.shape
    if T % t or H % p or W % p:
        raise ValueError(f"tubelet_embed: video (B, T, C, H, W) = {tuple(video.shape)} needs T a multiple of "
                         f"{t} and H, W multiples of {p}")
    if video.dtype != torch.uint8 and not video.is_floating_point():
        raise TypeError(f"tubelet_embed: video must be uint8 or floating point, got {video.dtype}")
    if not weight.is_floating_point():
        raise TypeError(f"tubelet_embed: weight must be floating point, got {weight.dtype}")
    if bias.shape != (D,):
        raise ValueError(f"tubelet_embed: bias must have shape ({D},), got {tuple(bias.shape)}")
    if token_ids is not None and (token_ids.dim() != 2 or token_ids.shape[0] != B or token_ids.dtype != torch.int64):
        raise ValueError(f"tubelet_embed: token_ids must be int64 of shape ({B}, K), got "
                         f"{token_ids.dtype} {tuple(token_ids.shape)}")
    if (mean is None) != (std is None):
        raise ValueError("tubelet_embed: mean and std must be given together (or neither)")
    for name, t_ in (("mean", mean), ("std", std)):
        if t_ is not None and t_.shape != (C,):
            raise ValueError(f"tubelet_embed: {name} must have shape ({C},), got {tuple(t_.shape)}")


def tubelet_embed_ref(video: Tensor, weight: Tensor, bias: Tensor, token_ids: Tensor | None = None,
                      mean: Tensor | None = None, std: Tensor | None = None) -> Tensor:
    """Same result as Conv3d(normalised video.permute(0, 2, 1, 3, 4)).flatten(2).transpose(1, 2);
    normalisation runs in fp32 (times 1/std), then the video is cast to the weight's dtype; with
    token_ids (B, K) only those tokens are embedded. Returns (B, N or K, D)."""
    _check(video, weight, bias, token_ids, mean, std)
    return _embed(video, weight, bias, token_ids, None if mean is None else mean.float(),
                  None if std is None else 1 / std.float())


def _fused(video: Tensor, weight: Tensor, bias: Tensor, token_ids: Tensor | None,
           mean: Tensor | None, inv_std: Tensor | None) -> Tensor:
    if not video.is_cuda:
        return _embed(video, weight, bias, token_ids, mean, inv_std)
    from vjepa_fast.kernels.tubelet_embed import tubelet_embed_fwd

    D, _, t, p, _ = weight.shape
    B, T, _, H, W = video.shape
    n_tok = token_ids.shape[1] if token_ids is not None else (T // t) * (H // p) * (W // p)
    out = torch.empty((B, n_tok, D), device=video.device, dtype=weight.dtype)
    video = video if video.stride(4) == 1 else video.contiguous()  # the kernel reads runs of p pixels
    ids = token_ids.contiguous() if token_ids is not None else None
    tubelet_embed_fwd(video, weight.reshape(D, -1).contiguous(), bias, ids, mean, inv_std, t, p, out)
    return out


def _setup_context(ctx, inputs, output):
    video, weight, bias, token_ids, mean, inv_std = inputs
    ctx.save_for_backward(video, weight, token_ids, mean, inv_std)
    ctx.bias_dtype = bias.dtype


def _backward(ctx, grad_out: Tensor):
    """d weight = grad^T patches, d bias = sum grad, d video = unpatchify(scatter(grad weight)) / std."""
    video, weight, token_ids, mean, inv_std = ctx.saved_tensors
    D, _, t, p, _ = weight.shape
    grad_rows = grad_out.reshape(-1, D)  # (B*Ntok, D)
    grad_video = grad_weight = grad_bias = None
    if ctx.needs_input_grad[1]:
        # The patches are recomputed from the saved frames rather than kept from the forward pass.
        patches = _patches(video, token_ids, mean, inv_std, t, p, weight.dtype)  # (B, Ntok, K)
        grad_weight = (grad_rows.T @ patches.reshape(grad_rows.shape[0], -1)).view_as(weight)
    if ctx.needs_input_grad[2]:
        grad_bias = grad_rows.sum(0).to(ctx.bias_dtype)
    if ctx.needs_input_grad[0]:
        grad_patches = grad_out @ weight.reshape(D, -1)  # (B, Ntok, K)
        if token_ids is not None:
            B, T, C, H, W = video.shape
            full = grad_patches.new_zeros(B, (T // t) * (H // p) * (W // p), grad_patches.shape[-1])
            grad_patches = full.scatter_add_(1, token_ids.unsqueeze(-1).expand_as(grad_patches), grad_patches)
        grad_video = unpatchify(grad_patches.float(), tuple(video.shape), t, p)
        if inv_std is not None:
            grad_video = grad_video * inv_std.view(1, 1, -1, 1, 1)
        grad_video = grad_video.to(video.dtype)
    return grad_video, grad_weight, grad_bias, None, None, None


def register() -> None:
    """torch.ops.vjepa_fast.tubelet_embed (vjepa_fast.ops.dispatch calls it once Triton imports)."""
    op = triton_op("vjepa_fast::tubelet_embed", mutates_args=())(_fused)
    op.register_autograd(_backward, setup_context=_setup_context)


def tubelet_embed(video: Tensor, weight: Tensor, bias: Tensor, token_ids: Tensor | None = None,
                  mean: Tensor | None = None, std: Tensor | None = None) -> Tensor:
    """(B, T, C, H, W) -> (B, N or K, D); see the module docstring. Under autocast the kernel
    runs in the autocast dtype, as F.linear would."""
    _check(video, weight, bias, token_ids, mean, std)
    if not use_triton(video, weight, bias):
        return tubelet_embed_ref(video, weight, bias, token_ids, mean, std)
    if torch.is_autocast_enabled(video.device.type):
        dtype = torch.get_autocast_dtype(video.device.type)
        weight, bias = weight.to(dtype), bias.to(dtype)
    inv_std = None if std is None else 1 / std.float()
    return torch.ops.vjepa_fast.tubelet_embed(video, weight, bias, token_ids, None if mean is None else mean.float(),
                                              inv_std)
