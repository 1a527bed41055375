"""One CEM update (energies, elite selection, refit, resample): the plain PyTorch reference
against the compiled op (C++ on CPU, CUDA kernels on GPU) when the extension is built.

CUDA: 300 samples, 256 predicted tokens of width 1408 (ViT-g), horizon 3, 7-D actions;
CPU: 100 samples of 64 x 256."""
import pytest
import torch
import torch.nn.functional as F

from model_bench import device, machine, sync
from vjepa_fast.ops import cem

DEV = device()
N, P, D = (300, 256, 1408) if DEV == "cuda" else (100, 64, 256)
H, A, TOP_K = 3, 7, 30
PROVIDERS = {"reference": cem.cem_update_ref, "compiled": torch.ops.vjepa_fast.cem_update if cem.COMPILED else None}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_cem_update(benchmark, provider):
    if PROVIDERS[provider] is None:
        pytest.skip("vjepa_fast._C with cem_update is not built")
    g = torch.Generator(device=DEV).manual_seed(0)
    preds = torch.randn(N, P, D, device=DEV, generator=g)
    goal = F.layer_norm(torch.randn(P, D, device=DEV, generator=g), (D,))
    actions, noise = (torch.randn(N, H, A, device=DEV, generator=g) for _ in range(2))
    mean, std = torch.zeros(H, A, device=DEV), torch.full((H, A), 0.05, device=DEV)
    per_dim = [torch.full((A,), v, device=DEV) for v in (0.25, 0.95, -0.05, 0.05)]
    fn = PROVIDERS[provider]

    def run():
        out = fn(preds, goal, noise, actions, mean, std, TOP_K, per_dim[0], per_dim[1], per_dim[2], per_dim[3])
        sync(DEV)
        return out

    run()  # warm-up
    energies, new_mean, _, next_actions = benchmark.pedantic(run, rounds=10, iterations=3)
    assert energies.shape == (N,) and next_actions.shape == (N, H, A)
    benchmark.group = "cem_update"
    benchmark.extra_info.update(machine(), shape=f"N{N} P{P} D{D} H{H} A{A} top_k{TOP_K}",
                                gbps=preds.nbytes / benchmark.stats.stats.median / 1e9)
