"""V-JEPA 2.1 encoder forward against our V-JEPA 2 encoder of the same size, timed in alternating
rounds of one test: the cost of 2.1's modality vector, interpolated positions and four
hierarchical LayerNorms (the inference output uses one; parity expected). The "reference" column
is the V-JEPA 2 encoder, so the speed-up column reads 2 / 2.1.

CPU: the ViT-L layout at depth 4 (taps every block), 16 frames x 256 px (2048 tokens), fp32.
CUDA: the full 24-layer ViT-L at 64 frames x 256 px, bf16 autocast."""
import dataclasses

import torch

from model_bench import alternate, autocast, device, sync

DEV = device()
DEPTH, FRAMES = (24, 64) if DEV == "cuda" else (4, 16)
DTYPE = torch.bfloat16 if DEV == "cuda" else None


def test_encoder21_forward_against_v2(benchmark):
    from vjepa_fast import VJEPA2Model
    from vjepa_fast.config import VJEPA2Config, hierarchical_taps
    v2 = VJEPA2Config.from_name("vitl")
    v2 = dataclasses.replace(v2, num_hidden_layers=DEPTH, pred_num_hidden_layers=1, frames_per_clip=FRAMES)
    v21 = dataclasses.replace(v2, **{k: v for k, v in VJEPA2Config.from_name("vitl-2.1").__dict__.items()
                                     if k in ("rope_mode", "use_modality_embeddings", "use_image_patch_embedder",
                                              "interpolate_rope", "use_context_projection")},
                              hierarchical_layers=hierarchical_taps(DEPTH), num_distillation_outputs=1)
    models = [VJEPA2Model(c).eval().to(DEV) for c in (v2, v21)]
    video = torch.randn(1, FRAMES, 3, 256, 256, device=DEV)

    def runner(model):
        def run():
            with torch.no_grad(), autocast(DEV, DTYPE):
                out = model.get_vision_features(video)
            sync(DEV)
            assert out.shape == (1, FRAMES // 2 * 256, 1024)
        return run

    benchmark.group = "encoder21"
    alternate(benchmark, f"2.1 encoder forward, ViT-L layout depth {DEPTH}, {FRAMES} f x 256 px, "
              f"{'bf16-autocast' if DTYPE else 'fp32'}", "our V-JEPA 2 encoder", *map(runner, models))
