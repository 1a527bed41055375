"""Reference models for the tests and benchmarks: random-weight transformers VJEPA2 models shaped
like each preset at reduced depth. transformers is imported only when a model is built."""
from __future__ import annotations

import torch

# name -> transformers config kwargs (head dims 64 / 80 / 64 with 22 heads; predictor head dim 32)
SHAPES = {
    "vitl": dict(hidden_size=1024, num_attention_heads=16, crop_size=64),
    "vith": dict(hidden_size=1280, num_attention_heads=16, crop_size=64),
    "vitg": dict(hidden_size=1408, num_attention_heads=22, mlp_ratio=48 / 11, crop_size=64),
}


def hf_model(shape: str, depth: int = 2, pred_depth: int = 2, attn: str = "eager", **overrides):
    """A transformers VJEPA2Model of `shape` with random weights, in eval mode."""
    import transformers

    kwargs = {"frames_per_clip": 8, **SHAPES[shape], **overrides}
    cfg = transformers.VJEPA2Config(num_hidden_layers=depth, pred_num_hidden_layers=pred_depth, **kwargs)
    cfg._attn_implementation = attn
    model = transformers.VJEPA2Model(cfg).eval()
    # Non-zero mask tokens and non-trivial norms, so a wrong index or a dropped LN shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mask_tokens" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model
