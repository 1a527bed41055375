"""Writes meta_mask_sizes.json: the (context, target) token counts Meta's own mask collator
(src/masks/multiseq_multiblock3d.py of facebookresearch/vjepa2) draws on 8 x 16 x 16 tubelets,
batch 8, 60 draws, for V-JEPA 2's short- and long-range configs. Run once, from a checkout of
that repository:  python tests/data/make_meta_mask_sizes.py /path/to/vjepa2
"""
import importlib.util
import json
import sys
from pathlib import Path

import torch

from vjepa_fast.masks import LONG_RANGE, SHORT_RANGE

T, H, BATCH, DRAWS = 8, 16, 8, 60


def meta_sizes(repo: Path, config) -> list[list[int]]:
    spec = importlib.util.spec_from_file_location("meta_masks", repo / "src/masks/multiseq_multiblock3d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    generator = module._MaskGenerator(
        crop_size=(H * 16, H * 16), num_frames=2 * T, spatial_patch_size=(16, 16), temporal_patch_size=2,
        spatial_pred_mask_scale=(config.spatial_scale,) * 2, temporal_pred_mask_scale=(1.0, 1.0),
        aspect_ratio=config.aspect_ratio, npred=config.num_blocks)
    return [[m.shape[1] for m in generator(BATCH)] for _ in range(DRAWS)]


if __name__ == "__main__":
    repo = Path(sys.argv[1])
    out = {"grid": [T, H, H], "batch": BATCH, "short": meta_sizes(repo, SHORT_RANGE),
           "long": meta_sizes(repo, LONG_RANGE)}
    (Path(__file__).parent / "meta_mask_sizes.json").write_text(json.dumps(out) + "\n")
