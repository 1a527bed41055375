"""Tubelet embedding: Conv3d with kernel == stride, done as patchify + GEMM.

video (B, T, C, H, W) with T a multiple of the tubelet t and H, W multiples of the patch p;
weight (D, C, t, p, p) in the Conv3d layout; tokens are time-major, n = ti*Hp*Wp + hi*Wp + wi.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def patchify(video: Tensor, tubelet: int, patch: int) -> Tensor:
    """(B, T, C, H, W) -> (B, N, C*t*p*p), each row flattened in the Conv3d weight's (c, t, kh, kw) order."""
    B, T, C, H, W = video.shape
    Tp, Hp, Wp = T // tubelet, H // patch, W // patch
    x = video.reshape(B, Tp, tubelet, C, Hp, patch, Wp, patch)
    x = x.permute(0, 1, 4, 6, 3, 2, 5, 7)  # (B, Tp, Hp, Wp, C, t, p, p)
    return x.reshape(B, Tp * Hp * Wp, C * tubelet * patch * patch)


def tubelet_embed_ref(video: Tensor, weight: Tensor, bias: Tensor, token_ids: Tensor | None = None) -> Tensor:
    """Same result as Conv3d(video.permute(0, 2, 1, 3, 4)).flatten(2).transpose(1, 2); with
    token_ids (B, K) only those tokens are embedded. Returns (B, N or K, D)."""
    _, C, t, p, _ = weight.shape
    patches = patchify(video.to(weight.dtype), t, p)
    if token_ids is not None:
        patches = torch.gather(patches, 1, token_ids.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return F.linear(patches, weight.flatten(1), bias)


def tubelet_embed(video: Tensor, weight: Tensor, bias: Tensor, token_ids: Tensor | None = None) -> Tensor:
    return tubelet_embed_ref(video, weight, bias, token_ids)
