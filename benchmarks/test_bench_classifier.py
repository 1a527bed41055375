"""Video classification forward (encoder + attentive pooler + head): vjepa_fast vs transformers'
VJEPA2ForVideoClassification, same weights, same precision, one run.

CPU (fp32): ViT-L layout (width 1024, 16 heads) at depth 2, 16 frames x 128 px (512 tokens).
CUDA (fp32 and bf16 autocast): the full 24-layer ViT-L at 16 frames x 256 px (2048 tokens), the
shape of the released SSv2 probe (174 labels). bf16 is skipped without a GPU.
Run: pytest benchmarks/test_bench_classifier.py --benchmark-only
"""

import pytest
import torch

from model_bench import RatioTable, autocast, device, peak_memory_mib, sync

DEV = device()
DEPTH, FRAMES, SIZE = (24, 16, 256) if DEV == "cuda" else (2, 16, 128)
LABELS = 174
PRECISIONS = {"fp32": None, "bf16-autocast": torch.bfloat16}
TABLE = RatioTable("classifier forward", "transformers", "vjepa_fast")


@pytest.fixture(scope="module")
def models(tmp_path_factory, request):
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
    yield {"transformers": ref.to(DEV), "vjepa_fast": ours.to(DEV)}
    TABLE.report(request.config)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("provider", ["transformers", "vjepa_fast"])
def test_classifier_forward(benchmark, models, provider, precision):
    if PRECISIONS[precision] is not None and DEV != "cuda":
        pytest.skip("bf16 classification is benchmarked on CUDA only")
    model = models[provider]
    video = torch.randn(2, FRAMES, 3, SIZE, SIZE, device=DEV)
    labels = torch.randint(0, LABELS, (2,), device=DEV)

    def run():
        with torch.no_grad(), autocast(DEV, PRECISIONS[precision]):
            out = model(video, labels=labels)
        sync(DEV)
        return out

    run()  # warm-up
    memory = peak_memory_mib(run, DEV)
    out = benchmark.pedantic(run, rounds=3, iterations=1)
    assert out.logits.shape == (2, LABELS) and torch.isfinite(out.loss)
    benchmark.group = f"classifier-{precision}"
    TABLE.add(f"{precision} {FRAMES}f x {SIZE}px d{DEPTH}", provider, benchmark, memory)
