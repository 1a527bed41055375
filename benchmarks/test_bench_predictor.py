"""Predictor forward: vjepa_fast vs transformers, same weights, masks and precision, timed in
alternating rounds of one test.

Realistic pre-training masks at 16 frames x 256 px: ~500 context and ~1000 target tokens per
sample, batch 2, through the 384-wide predictor (depth 4 on CPU, the released 12 on CUDA)."""

import pytest
import torch

from model_bench import alternate, autocast, device, sync

DEV = device()
PRED_DEPTH = 12 if DEV == "cuda" else 4
PRECISIONS = {"fp32": None, "bf16-autocast": torch.bfloat16}
N, N_CTX, N_TGT, B = 2048, 500, 1000, 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from vjepa_fast.testing import hf_model
    from vjepa_fast import VJEPA2Model
    ref = hf_model("vitl", depth=1, pred_depth=PRED_DEPTH, attn="sdpa", crop_size=256, frames_per_clip=16)
    path = tmp_path_factory.mktemp("vitl-pred")
    ref.save_pretrained(path)
    ours = VJEPA2Model.from_pretrained(str(path)).eval()
    return ref.predictor.to(DEV), ours.to(DEV)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_predictor_forward(benchmark, models, precision):
    g = torch.Generator().manual_seed(0)
    perms = [torch.randperm(N, generator=g) for _ in range(B)]
    ctx = torch.stack([p[:N_CTX].sort().values for p in perms]).to(DEV)
    tgt = torch.stack([p[N_CTX:N_CTX + N_TGT].sort().values for p in perms]).to(DEV)
    hidden = torch.randn(B, N, 1024, device=DEV)
    reference, ours = models
    grid = ours.config.grid_size, ours.config.grid_size
    calls = (lambda: reference(hidden, [ctx], [tgt]).last_hidden_state,
             # transformers gathers the context inside its predictor; ours takes it gathered
             lambda: ours.predictor(torch.gather(hidden, 1, ctx[..., None].expand(-1, -1, 1024)), ctx, tgt, grid))

    def runner(call):
        def run():
            with torch.no_grad(), autocast(DEV, PRECISIONS[precision]):
                out = call()
            sync(DEV)
            assert out.shape == (B, N_TGT, 1024)
        return run

    benchmark.group = f"predictor-{precision}"
    alternate(benchmark, f"predictor forward, width 384 depth {PRED_DEPTH}, B {B}, {N_CTX} ctx / {N_TGT} tgt, "
              f"{precision}", "transformers", *map(runner, calls))
