"""Predictor forward: vjepa_fast vs transformers, same weights, masks and precision, one run.

Realistic pre-training masks at 16 frames x 256 px: ~500 context and ~1000 target tokens per
sample, batch 2, through the 384-wide predictor (depth 4 on CPU, the released 12 on CUDA)."""

import pytest
import torch

from model_bench import RatioTable, autocast, device, peak_memory_mib, sync

DEV = device()
PRED_DEPTH = 12 if DEV == "cuda" else 4
PRECISIONS = {"fp32": None, "bf16-autocast": torch.bfloat16}
TABLE = RatioTable("predictor forward", "transformers", "vjepa_fast")
N, N_CTX, N_TGT, B = 2048, 500, 1000, 2


@pytest.fixture(scope="module")
def models(tmp_path_factory, request):
    from vjepa_fast.testing import hf_model
    from vjepa_fast import VJEPA2Model
    ref = hf_model("vitl", depth=1, pred_depth=PRED_DEPTH, attn="sdpa", crop_size=256, frames_per_clip=16)
    path = tmp_path_factory.mktemp("vitl-pred")
    ref.save_pretrained(path)
    ours = VJEPA2Model.from_pretrained(str(path)).eval()
    yield {"transformers": ref.predictor.to(DEV), "vjepa_fast": ours.to(DEV)}
    TABLE.report(request.config)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("provider", ["transformers", "vjepa_fast"])
def test_predictor_forward(benchmark, models, provider, precision):
    g = torch.Generator().manual_seed(0)
    perms = [torch.randperm(N, generator=g) for _ in range(B)]
    ctx = torch.stack([p[:N_CTX].sort().values for p in perms]).to(DEV)
    tgt = torch.stack([p[N_CTX:N_CTX + N_TGT].sort().values for p in perms]).to(DEV)
    hidden = torch.randn(B, N, 1024, device=DEV)
    model = models[provider]
    if provider == "transformers":
        call = lambda: model(hidden, [ctx], [tgt]).last_hidden_state
    else:
        context = torch.gather(hidden, 1, ctx[..., None].expand(-1, -1, 1024))  # transformers gathers inside
        grid = model.config.grid_size, model.config.grid_size
        call = lambda: model.predictor(torch.gather(hidden, 1, ctx[..., None].expand(-1, -1, 1024)), ctx, tgt, grid)
        assert context.shape == (B, N_CTX, 1024)

    def run():
        with torch.no_grad(), autocast(DEV, PRECISIONS[precision]):
            out = call()
        sync(DEV)
        return out

    run()
    memory = peak_memory_mib(run, DEV)
    out = benchmark.pedantic(run, rounds=3, iterations=1)
    assert out.shape == (B, N_TGT, 1024)
    benchmark.group = f"predictor-{precision}"
    TABLE.add(f"{precision} B{B} ctx{N_CTX} tgt{N_TGT} d{PRED_DEPTH}", provider, benchmark, memory)
