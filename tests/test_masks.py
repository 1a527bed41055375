import json
from pathlib import Path

import pytest
import torch

from vjepa_fast.ops.dispatch import extension_available
from vjepa_fast.masks import DEFAULT_MASKS, LONG_RANGE, SHORT_RANGE, MaskConfig, sample_masks
from vjepa_fast.ops.masks import multiblock_context, multiblock_context_ref

SAMPLERS = [pytest.param(False, id="python"),
            pytest.param(True, id="cpp", marks=pytest.mark.skipif(not extension_available(),
                                                                   reason="vjepa_fast._C not built"))]
META_SIZES = Path(__file__).parent / "data" / "meta_mask_sizes.json"


@pytest.mark.parametrize("use_extension", SAMPLERS)
@pytest.mark.parametrize("grid,batch", [((8, 16, 16), 4), ((1, 4, 4), 1), ((3, 5, 7), 3), ((2, 2, 3), 5)])
def test_masks_are_sorted_disjoint_and_complementary(grid, batch, use_extension):
    T, H, W = grid
    seed = int(torch.randint(0, 2**40, ()))
    masks = sample_masks(grid, batch, DEFAULT_MASKS, seed, use_extension)
    assert len(masks) == 2
    for ctx, tgt in masks:
        assert ctx.dtype == tgt.dtype == torch.int64 and ctx.shape[0] == tgt.shape[0] == batch
        assert ctx.shape[1] >= 1 and tgt.shape[1] >= 1
        for c, t in zip(ctx, tgt):
            assert (c.diff() > 0).all() and (t.diff() > 0).all()
            assert c.min() >= 0 and t.min() >= 0 and max(c.max(), t.max()) < T * H * W
            assert not set(c.tolist()) & set(t.tolist())
        # Blocks span all time: the first frame's pattern repeats in every frame the cut keeps whole.
        c0 = ctx[0][ctx[0] < H * W]
        for frame in range(1, ctx.shape[1] // max(len(c0), 1)):
            assert torch.equal(ctx[0][frame * len(c0):(frame + 1) * len(c0)], c0 + frame * H * W)
    # Deterministic under the seed; another seed gives other masks.
    again = sample_masks(grid, batch, DEFAULT_MASKS, seed, use_extension)
    assert all(torch.equal(a, b) for pair, pair2 in zip(masks, again) for a, b in zip(pair, pair2))


@pytest.mark.parametrize("use_extension", SAMPLERS)
def test_uncut_sample_covers_the_grid(use_extension):
    # The clip with the fewest tokens is not cut: its context and target partition the grid.
    grid = (4, 6, 5)
    for ctx, tgt in sample_masks(grid, 6, DEFAULT_MASKS, 11, use_extension):
        sizes = [len(c) for c in ctx]
        assert ctx.shape[1] == min(sizes)
    ctx, tgt = sample_masks((1, 6, 5), 1, (MaskConfig(3, 0.2),), 5, use_extension)[0]
    assert sorted(ctx[0].tolist() + tgt[0].tolist()) == list(range(30))


def test_different_seeds_differ():
    a = sample_masks((4, 8, 8), 2, DEFAULT_MASKS, 1)
    b = sample_masks((4, 8, 8), 2, DEFAULT_MASKS, 2)
    assert any(x.shape != y.shape or not torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def _context_stats(sampler, n, H, W, blocks, bh, bw):
    sizes, coverage = [], torch.zeros(H * W)
    for seed in range(n // 50):
        for s in sampler(50, H, W, blocks, bh, bw, seed):
            sizes.append(len(s))
            coverage[s] += 1
    return torch.tensor(sizes, dtype=torch.float64), coverage / len(sizes)


@pytest.mark.skipif(not extension_available(), reason="vjepa_fast._C not built")
@pytest.mark.parametrize("H,W,blocks,bh,bw", [(16, 16, 8, 6, 6), (16, 16, 2, 14, 12), (5, 9, 3, 2, 4)])
def test_cpp_and_python_samplers_draw_the_same_distribution(H, W, blocks, bh, bw):
    cpp = lambda *a: multiblock_context(*a, use_extension=True)
    n = 3000
    size_cpp, cov_cpp = _context_stats(cpp, n, H, W, blocks, bh, bw)
    size_ref, cov_ref = _context_stats(multiblock_context_ref, n, H, W, blocks, bh, bw)
    stderr = ((size_cpp.var() + size_ref.var()) / n).sqrt()
    assert abs(size_cpp.mean() - size_ref.mean()) < 4 * stderr + 1e-9
    assert abs(size_cpp.std() - size_ref.std()) < 0.1 * size_ref.std() + 0.05
    # Per-token probability of being context: same map (corners are context more often than centres).
    assert (cov_cpp - cov_ref).abs().max() < 0.06


@pytest.mark.parametrize("config,name", [(SHORT_RANGE, "short"), (LONG_RANGE, "long")], ids=["short", "long"])
def test_sizes_match_metas_collator(config, name):
    """Same distribution of (cut) context and target sizes as Meta's collator, 16 frames x 256 px.
    Meta's sizes were drawn once by its own code (tests/data/make_meta_mask_sizes.py)."""
    meta = json.loads(META_SIZES.read_text())
    grid, batch = tuple(meta["grid"]), meta["batch"]
    meta_sizes = torch.tensor(meta[name], dtype=torch.float64)
    draws = len(meta_sizes)
    ours = torch.tensor([[m.shape[1] for m in sample_masks(grid, batch, (config,), seed)[0]]
                         for seed in range(draws)], dtype=torch.float64)
    for i, what in enumerate(("context", "target")):
        m, o = meta_sizes[:, i], ours[:, i]
        stderr = ((m.var() + o.var()) / draws).sqrt()
        assert abs(m.mean() - o.mean()) < 4 * stderr + 1, (what, m.mean(), o.mean())


@pytest.mark.parametrize("kwargs,match", [(dict(num_blocks=0, spatial_scale=0.1), "num_blocks"),
                                          (dict(num_blocks=2, spatial_scale=1.5), "spatial_scale"),
                                          (dict(num_blocks=2, spatial_scale=0.1, aspect_ratio=(2.0, 1.0)), "aspect")])
def test_bad_mask_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskConfig(**kwargs)


def test_bad_grid_is_rejected():
    with pytest.raises(ValueError, match="grid"):
        sample_masks((0, 4, 4), 2, DEFAULT_MASKS, 0)
    with pytest.raises(ValueError, match="2 tokens"):
        sample_masks((4, 1, 1), 2, DEFAULT_MASKS, 0)


@pytest.mark.skipif(not extension_available(), reason="vjepa_fast._C not built")
def test_cpp_sampler_registration_and_reference_switch(monkeypatch):
    """Schema and fake (data-dependent output length) of the C++ op; VJEPA_FAST_REFERENCE=1 sends
    the sampler to the PyTorch reference."""
    torch.library.opcheck(torch.ops.vjepa_fast.multiblock_context, (3, 6, 7, 2, 3, 2, 11),
                          test_utils=("test_schema", "test_faketensor"))
    args = (4, 8, 8, 3, 3, 3, 5)
    reference = multiblock_context_ref(*args)
    assert not all(torch.equal(a, b) for a, b in zip(multiblock_context(*args), reference))
    monkeypatch.setenv("VJEPA_FAST_REFERENCE", "1")
    assert all(torch.equal(a, b) for a, b in zip(multiblock_context(*args), reference))
