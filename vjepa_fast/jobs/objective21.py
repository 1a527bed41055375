"""The V-JEPA 2.1 pre-training objective (Meta's app/vjepa_2_1/train.py), for jobs/trainer.py.

One mask config, with L levels of width D (the encoder's distillation taps, or a teacher's):
  target  = each D-wide level of target_encoder(whole clip, hierarchical) layer-normed on its own
            (no affine)                                                  (no grad)
  z       = encoder(clip, token_ids=context, hierarchical)               (R, Kc, L*D_student)
  p, p_c  = predictor(z, context, target ids)                            the target and context heads
  loss    = mean |p - target[target ids]|
            + lambda_t * mean(|p_c - target[context]| / sqrt(d_min))
d_min: a context token's distance, in (t, h, w) token units on the configured grid, to the
nearest target token (the context loss weighs tokens near the masked region most). lambda_t is 0
until `start`, rises linearly to lambda by `end`, then holds; image steps have their own lambda.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vjepa_fast.model import Encoder, Predictor, gather_tokens
from vjepa_fast.ops.rope import token_positions


@torch.no_grad()
def level_targets(encoder: Encoder, video: Tensor) -> Tensor:
    """(B, N, L*D) hierarchical features of the whole clip, each level layer-normed on its own."""
    levels = []
    encoder(video, None, None, None, levels)
    h = levels[0]
    width = encoder.config.hidden_size
    return torch.cat([F.layer_norm(part, (width,)) for part in h.split(width, dim=-1)], dim=-1)


def context_distances(context: Tensor, target: Tensor, grid: tuple[int, int]) -> Tensor:
    """(R, Kc) sqrt of each context token's Euclidean distance, in token units, to the nearest
    target token; positions decoded on the (rows, cols) grid, time-major."""
    c = token_positions(context, *grid).float()  # (R, Kc, 3)
    t = token_positions(target, *grid).float()   # (R, Kt, 3)
    # Context and target tokens are disjoint, so the distance is at least 1 (the clamp guards overlaps).
    return torch.cdist(c, t).amin(dim=-1).clamp_min(1.0).sqrt()


def context_lambda(step: int, value: float, start: int, end: int) -> float:
    """0 before `start`, linear to `value` at `end`, `value` after (start == end: a step)."""
    if step < start:
        return 0.0
    if step >= end:
        return value
    return value * (step - start) / (end - start)


class JEPA21(nn.Module):
    """The trained pair under the 2.1 objective; one forward = the loss of one group of mask configs."""

    def __init__(self, encoder: Encoder, predictor: Predictor, distance_weights: bool):
        super().__init__()
        self.encoder, self.predictor, self.distance_weights = encoder, predictor, distance_weights

    def forward(self, clips: Tensor, context: Tensor, target_ids: Tensor, target: Tensor,
                context_weight: float) -> Tensor:
        """clips (R, T, C, H, W), context (R, Kc), target_ids (R, Kt), target (R, N, L*D) level-normed
        features -> the loss (fp32). context_weight is lambda_t (0: no context loss)."""
        c = self.encoder.config
        levels = []
        self.encoder(clips, context, None, None, levels)
        grid = (c.grid_size, c.grid_size)  # Meta's 2.1 predictor decodes positions on its configured grid
        pred, pred_context = self.predictor(levels[0], context, target_ids, grid, mask_index=1,
                                            image=self.encoder.is_image(clips), return_context=True)
        loss = (pred.float() - gather_tokens(target, [target_ids]).float()).abs().mean()
        if context_weight > 0:
            error = (pred_context.float() - gather_tokens(target, [context]).float()).abs()  # (R, Kc, L*D)
            if self.distance_weights:
                error = error / context_distances(context, target_ids, grid)[..., None]
            loss = loss + context_weight * error.mean()
        return loss
