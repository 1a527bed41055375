"""The block-position half of V-JEPA's multi-block mask: per clip, the spatial positions that
`num_blocks` random blocks of block_h x block_w leave uncovered (the context of one frame).

`multiblock_context` runs torch.ops.vjepa_fast.multiblock_context (csrc/masks.cpp, a fast C++
sampler) when the extension is built, else `multiblock_context_ref`; VJEPA_FAST_REFERENCE=1
forces the reference. The two draw from different generators: each is seeded, neither matches
the other's draws (tests compare their statistics).
"""
from __future__ import annotations

import torch
from torch import Tensor

from vjepa_fast.ops.dispatch import extension_available, reference_forced


def multiblock_context_ref(batch: int, height: int, width: int, num_blocks: int, block_h: int, block_w: int,
                           seed: int) -> list[Tensor]:
    """Per clip, the sorted spatial indices y*W + x covered by no block. A clip whose blocks cover
    the whole frame is redrawn. Returns `batch` int64 tensors."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.arange(height), torch.arange(width)
    out = []
    for _ in range(batch):
        while True:
            top = torch.randint(0, height - block_h + 1, (num_blocks,), generator=g)
            left = torch.randint(0, width - block_w + 1, (num_blocks,), generator=g)
            in_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + block_h)    # (blocks, H)
            in_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + block_w)  # (blocks, W)
            masked = (in_rows[:, :, None] & in_cols[:, None, :]).any(0).flatten()             # (H*W,)
            if not masked.all():
                break
        out.append(torch.nonzero(~masked).squeeze(1))
    return out


def _multiblock_context_fake(batch, height, width, num_blocks, block_h, block_w, seed):
    """(flat indices of every clip (data-dependent length), per-clip counts (batch,))."""
    total = torch.library.get_ctx().new_dynamic_size()
    return torch.empty(total, dtype=torch.int64), torch.empty(batch, dtype=torch.int64)


COMPILED = extension_available() and hasattr(torch.ops.vjepa_fast, "multiblock_context")
if COMPILED:  # torch.compile and opcheck trace the op through its fake
    torch.library.register_fake("vjepa_fast::multiblock_context")(_multiblock_context_fake)


def multiblock_context(batch: int, height: int, width: int, num_blocks: int, block_h: int, block_w: int,
                       seed: int, use_extension: bool | None = None) -> list[Tensor]:
    """Same contract as multiblock_context_ref; the C++ sampler when built (use_extension=None),
    or as asked (True/False)."""
    if use_extension is None:
        use_extension = COMPILED and not reference_forced()
    if not use_extension:
        return multiblock_context_ref(batch, height, width, num_blocks, block_h, block_w, seed)
    flat, counts = torch.ops.vjepa_fast.multiblock_context(batch, height, width, num_blocks, block_h, block_w, seed)
    return list(flat.split(counts.tolist()))
