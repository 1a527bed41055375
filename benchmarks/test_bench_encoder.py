"""Encoder forward: vjepa_fast vs transformers' VJEPA2Model, same weights, same precision, timed in
alternating rounds of one test.

CPU: ViT-L layout (width 1024, 16 heads) at depth 2, 16 frames x 256 px (2048 tokens).
CUDA: the full 24-layer ViT-L at 64 frames x 256 px (8192 tokens)."""

import pytest
import torch

from model_bench import alternate, autocast, device, sync

DEV = device()
DEPTH, FRAMES = (24, 64) if DEV == "cuda" else (2, 16)
PRECISIONS = {"fp32": None, "bf16-autocast": torch.bfloat16}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from vjepa_fast.testing import hf_model
    from vjepa_fast import VJEPA2Model
    ref = hf_model("vitl", depth=DEPTH, pred_depth=2, attn="sdpa", crop_size=256, frames_per_clip=FRAMES)
    path = tmp_path_factory.mktemp("vitl")
    ref.save_pretrained(path)
    ours = VJEPA2Model.from_pretrained(str(path)).eval()
    return ref.to(DEV), ours.to(DEV)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_encoder_forward(benchmark, models, precision):
    video = torch.randn(1, FRAMES, 3, 256, 256, device=DEV)

    def runner(model):
        def run():
            with torch.no_grad(), autocast(DEV, PRECISIONS[precision]):
                out = model.get_vision_features(video)
            sync(DEV)
            assert out.shape == (1, FRAMES // 2 * 256, 1024)
        return run

    benchmark.group = f"encoder-{precision}"
    alternate(benchmark, f"encoder forward, ViT-L layout depth {DEPTH}, {FRAMES} f x 256 px, {precision}",
              "transformers", *map(runner, models))
