"""3D multi-block masks for V-JEPA pre-training (Meta's multiseq_multiblock3d semantics).

For each mask config and each clip: draw `num_blocks` rectangles of one shared size (h, w) at
uniformly random places; every block spans all time steps. The target is the union of the blocks,
the context its complement (a clip whose blocks cover everything is redrawn). Token indices are
time-major, n = t*H*W + y*W + x, sorted ascending, and every list of a batch is cut to the
shortest one in the batch so the batch is rectangular (the cut drops the LAST indices, i.e. the
end of the last frames, exactly as Meta's collator does).

The block size is drawn once per batch: keep = int(H*W*spatial_scale) tokens per frame, aspect
ratio a ~ U(aspect_ratio), h = round(sqrt(keep*a)), w = round(sqrt(keep/a)), clipped to the grid.

`sample_masks` is deterministic under its seed. The block positions come from the C++ sampler
(vjepa_fast.ops.masks: the C++ sampler csrc/masks.cpp when the extension is built, else its
plain PyTorch reference): both draw from the same distribution, not the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vjepa_fast.ops.masks import multiblock_context


@dataclass(frozen=True)
class MaskConfig:
    num_blocks: int
    spatial_scale: float                       # fraction of a frame's tokens one block covers
    aspect_ratio: tuple[float, float] = (0.75, 1.5)

    def __post_init__(self):
        if not isinstance(self.num_blocks, int) or self.num_blocks < 1:
            raise ValueError(f"MaskConfig.num_blocks must be a positive int, got {self.num_blocks!r}")
        if not 0 < self.spatial_scale <= 1:
            raise ValueError(f"MaskConfig.spatial_scale must be in (0, 1], got {self.spatial_scale!r}")
        lo, hi = self.aspect_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"MaskConfig.aspect_ratio must be (low, high) with 0 < low <= high, got {self.aspect_ratio}")


# V-JEPA 2's pre-training masks: 8 small blocks (short range) and 2 large ones (long range).
SHORT_RANGE = MaskConfig(num_blocks=8, spatial_scale=0.15)
LONG_RANGE = MaskConfig(num_blocks=2, spatial_scale=0.7)
DEFAULT_MASKS = (SHORT_RANGE, LONG_RANGE)


def mix_seed(*values: int) -> int:
    """One 63-bit seed from several integers (independent streams for seed, step, config, ...)."""
    return int(np.random.SeedSequence(list(values)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def block_size(config: MaskConfig, height: int, width: int, generator: torch.Generator) -> tuple[int, int]:
    keep = int(height * width * config.spatial_scale)
    lo, hi = config.aspect_ratio
    aspect = lo + float(torch.rand((), generator=generator)) * (hi - lo)
    h = min(max(round(math.sqrt(keep * aspect)), 1), height)
    w = min(max(round(math.sqrt(keep / aspect)), 1), width)
    return h, w


def expand_over_time(spatial: list[Tensor], frames: int, height: int, width: int) -> Tensor:
    """Per-clip sorted spatial indices -> (B, K) sorted time-major 3D indices, cut to the shortest."""
    per_frame = height * width
    offsets = torch.arange(frames) * per_frame
    full = [(offsets[:, None] + s[None]).flatten() for s in spatial]  # each (frames*len(s),) sorted
    keep = min(len(f) for f in full)
    return torch.stack([f[:keep] for f in full])


def complement(spatial: list[Tensor], height: int, width: int) -> list[Tensor]:
    out = []
    for s in spatial:
        keep = torch.ones(height * width, dtype=torch.bool)
        keep[s] = False
        out.append(torch.nonzero(keep).squeeze(1))
    return out


def sample_masks(grid: tuple[int, int, int], batch: int, configs: tuple[MaskConfig, ...], seed: int,
                 use_extension: bool | None = None) -> list[tuple[Tensor, Tensor]]:
    """For each mask config, (context (B, Kc), target (B, Kt)) int64 token indices on a
    (frames, height, width) token grid: sorted, disjoint, cut to the batch minimum."""
    frames, height, width = grid
    if min(grid) < 1 or batch < 1:
        raise ValueError(f"sample_masks: grid and batch must be positive, got grid={grid}, batch={batch}")
    if height * width < 2:
        raise ValueError(f"sample_masks: a frame needs at least 2 tokens to split into context and target, got {height}x{width}")
    out = []
    for i, config in enumerate(configs):
        g = torch.Generator().manual_seed(mix_seed(seed, i))
        h, w = block_size(config, height, width, g)
        if h * w == height * width:  # one block covers everything: no context is possible
            h, w = (h - 1, w) if h > 1 else (h, w - 1)
        position_seed = int(torch.randint(0, 2**62, (), generator=g))
        context = multiblock_context(batch, height, width, config.num_blocks, h, w, position_seed, use_extension)
        target = complement(context, height, width)
        out.append((expand_over_time(context, frames, height, width), expand_over_time(target, frames, height, width)))
    return out
