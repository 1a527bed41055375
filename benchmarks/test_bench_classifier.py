"""Video classification forward (encoder + attentive pooler + head): vjepa_fast vs transformers'
VJEPA2ForVideoClassification, same weights, same precision, timed in alternating rounds of one test.

CPU (fp32): ViT-L layout (width 1024, 16 heads) at depth 2, 16 frames x 128 px (512 tokens).
CUDA (fp32 and bf16 autocast): the full 24-layer ViT-L at 16 frames x 256 px (2048 tokens), the
shape of the released SSv2 probe (174 labels). bf16 is skipped without a GPU.
Run: pytest benchmarks/test_bench_classifier.py --benchmark-only
"""

import pytest
import torch

from model_bench import alternate, autocast, device, sync

DEV = device()
DEPTH, FRAMES, SIZE = (24, 16, 256) if DEV == "cuda" else (2, 16, 128)
LABELS = 174
PRECISIONS = {"fp32": None, "bf16-autocast": torch.bfloat16}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from vjepa_fast import VJEPA2ForVideoClassification
    cfg = transformers.VJEPA2Config(hidden_size=1024, num_attention_heads=16, num_hidden_layers=DEPTH,
                                    pred_num_hidden_layers=2, crop_size=SIZE, frames_per_clip=FRAMES,
                                    num_labels=LABELS)
    cfg._attn_implementation = "sdpa"
    ref = transformers.VJEPA2ForVideoClassification(cfg).eval()
    path = tmp_path_factory.mktemp("classifier")
    ref.save_pretrained(path)
    ours = VJEPA2ForVideoClassification.from_pretrained(str(path)).eval()
    return ref.to(DEV), ours.to(DEV)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_classifier_forward(benchmark, models, precision):
    if PRECISIONS[precision] is not None and DEV != "cuda":
        pytest.skip("bf16 classification is benchmarked on CUDA only")
    video = torch.randn(2, FRAMES, 3, SIZE, SIZE, device=DEV)
    labels = torch.randint(0, LABELS, (2,), device=DEV)

    def runner(model):
        def run():
            with torch.no_grad(), autocast(DEV, PRECISIONS[precision]):
                out = model(video, labels=labels)
            sync(DEV)
            assert out.logits.shape == (2, LABELS) and torch.isfinite(out.loss)
        return run

    benchmark.group = f"classifier-{precision}"
    alternate(benchmark, f"classifier forward (encoder + attentive probe), depth {DEPTH}, {FRAMES} f x {SIZE} px, "
              f"{precision}", "transformers", *map(runner, models))
