"""`optimize(model)`: run a transformers VJEPA2 model on this package's fused ops, in place.

For a `transformers.VJEPA2Model` or `VJEPA2ForVideoClassification` (encoder, predictor, pooler
untouched otherwise):
  - every `VJEPA2RopeAttention` (encoder and predictor) computes q, k, v with one GEMM on its
    query/key/value weights concatenated, then calls `vjepa_fast.ops.rope_attention` (RoPE
    applied inside the attention kernel on CUDA) with token positions decoded as transformers
    does: on the config grid (crop_size // patch_size), from the layer's position mask or 0..N-1;
  - `VJEPA2Embeddings` calls `vjepa_fast.ops.tubelet_embed` (patchify + GEMM, fused on CUDA)
    on the Conv3d's own weight and bias.
Parameters and state_dict keys are unchanged, so training, saving and loading behave as before.
Outputs match in fp32 (the tests hold them within 1e-4); under bf16 the RoPE angles are computed
in fp32 where transformers rounds them to bf16. Attention weights are not returned (None, as
with transformers' SDPA attention).
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vjepa_fast.ops.rope import make_rope, token_positions
from vjepa_fast.ops.rope_attention import rope_attention
from vjepa_fast.ops.tubelet_embed import tubelet_embed


def _rope_attention_forward(self, hidden_states: Tensor, position_mask: Tensor | None = None) -> tuple[Tensor, None]:
    """VJEPA2RopeAttention.forward: one qkv GEMM, then the RoPE attention op."""
    B, N, _ = hidden_states.shape
    hd = self.attention_head_size
    # Concatenated at each call (a copy of 3 D x D weights, small beside the GEMM) so the three
    # Linear parameters stay the ones that are trained, saved and loaded.
    weight = torch.cat((self.query.weight, self.key.weight, self.value.weight))  # (3D, D)
    bias = None if self.query.bias is None else torch.cat((self.query.bias, self.key.bias, self.value.bias))
    qkv = F.linear(hidden_states, weight, bias).view(B, N, 3, self.num_attention_heads, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, hd)
    ids = torch.arange(N, device=hidden_states.device)[None] if position_mask is None else position_mask
    # transformers rotates with the V-JEPA 2 "tile" frequency layout only.
    rope = make_rope(token_positions(ids, self.grid_size, self.grid_size).float(), hd, "tile")
    out = rope_attention(q, k, v, rope)  # (B, heads, N, hd)
    return self.proj(out.transpose(1, 2).reshape(B, N, self.all_head_size)), None


def _embeddings_forward(self, pixel_values_videos: Tensor) -> Tensor:
    """VJEPA2Embeddings.forward: (B, T, C, H, W) -> (B, N, D) through the tubelet embedding op."""
    t, p = self.config.tubelet_size, self.config.patch_size
    video = pixel_values_videos
    if video.shape[1] < t:  # transformers repeats too-short clips along time
        video = video.repeat(1, t, 1, 1, 1)
    # A stride-(t, p, p) Conv3d ignores trailing frames and pixels that fill no whole tubelet.
    T, H, W = video.shape[1], video.shape[3], video.shape[4]
    video = video[:, :T - T % t, :, :H - H % p, :W - W % p]
    proj = self.patch_embeddings.proj
    return tubelet_embed(video, proj.weight, proj.bias)


def optimize(model: nn.Module) -> nn.Module:
    """Swaps, in place, the RoPE attention and patch embedding forwards of a transformers
    VJEPA2Model / VJEPA2ForVideoClassification for this package's ops; returns the model."""
    from transformers.models.vjepa2 import modeling_vjepa2 as hf

    if not isinstance(model, (hf.VJEPA2Model, hf.VJEPA2ForVideoClassification)):
        raise TypeError("optimize: model must be a transformers VJEPA2Model or VJEPA2ForVideoClassification, "
                        f"got {type(model).__name__}")
    if model.config.attention_probs_dropout_prob > 0:
        raise ValueError("optimize: the fused attention has no dropout; set config.attention_probs_dropout_prob "
                         f"to 0 (got {model.config.attention_probs_dropout_prob})")
    for module in model.modules():
        if isinstance(module, hf.VJEPA2RopeAttention):
            module.forward = types.MethodType(_rope_attention_forward, module)
        elif isinstance(module, hf.VJEPA2Embeddings):
            module.forward = types.MethodType(_embeddings_forward, module)
    return model
