"""One CEM update (energies, elite selection, refit, resample): the plain PyTorch reference
against the compiled op (C++ on CPU, CUDA kernels on GPU) when the extension is built, in
alternating rounds of one test.

CUDA: 300 samples, 256 predicted tokens of width 1408 (ViT-g), horizon 3, 7-D actions;
CPU: 100 samples of 64 x 256."""
import pytest
import torch
import torch.nn.functional as F

from model_bench import alternate, device, sync
from vjepa_fast.ops import cem

DEV = device()
N, P, D = (300, 256, 1408) if DEV == "cuda" else (100, 64, 256)
H, A, TOP_K = 3, 7, 30


def test_cem_update(benchmark):
    if not cem.COMPILED:
        pytest.skip("vjepa_fast._C with cem_update is not built")
    g = torch.Generator(device=DEV).manual_seed(0)
    preds = torch.randn(N, P, D, device=DEV, generator=g)
    goal = F.layer_norm(torch.randn(P, D, device=DEV, generator=g), (D,))
    actions, noise = (torch.randn(N, H, A, device=DEV, generator=g) for _ in range(2))
    mean, std = torch.zeros(H, A, device=DEV), torch.full((H, A), 0.05, device=DEV)
    per_dim = [torch.full((A,), v, device=DEV) for v in (0.25, 0.95, -0.05, 0.05)]

    def runner(fn):
        def run():
            energies, _, _, next_actions = fn(preds, goal, noise, actions, mean, std, TOP_K, *per_dim)
            sync(DEV)
            assert energies.shape == (N,) and next_actions.shape == (N, H, A)
        return run

    benchmark.group = "cem_update"
    alternate(benchmark, f"CEM update op, N{N} P{P} D{D} H{H} A{A} top_k{TOP_K}", "PyTorch reference",
              runner(cem.cem_update_ref), runner(torch.ops.vjepa_fast.cem_update), rounds=10, memory=False, repeat=10)
