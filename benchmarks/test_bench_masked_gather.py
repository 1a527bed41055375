"""Predictor input assembly (context tokens + mask tokens + RoPE positions): the reference
(torch.cat + token_positions, what the predictor did before) against the Triton kernel (CUDA only).

CUDA: 8 samples, 1024 context + 1024 target tokens of width 384 (the predictor's); CPU: 2 x (128 + 128) x 96."""
import pytest
import torch

from model_bench import device, machine, sync
from vjepa_fast.ops.masked_gather import masked_gather, masked_gather_ref

DEV = device()
B, NC, NT, D = (8, 1024, 1024, 384) if DEV == "cuda" else (2, 128, 128, 96)
DTYPE = torch.bfloat16 if DEV == "cuda" else torch.float32
PROVIDERS = {"reference": masked_gather_ref, "triton": masked_gather}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_masked_gather(benchmark, provider):
    if provider == "triton" and DEV != "cuda":
        pytest.skip("the Triton kernel runs on CUDA tensors")
    grid = (16, 16)
    ids = torch.stack([torch.randperm(8 * 16 * 16, device=DEV)[:NC + NT] for _ in range(B)])
    x = torch.randn(B, NC, D, device=DEV, dtype=DTYPE)
    mask_token = torch.randn(D, device=DEV, dtype=DTYPE)
    fn = PROVIDERS[provider]

    def run():
        with torch.no_grad():
            out = fn(x, mask_token, ids[:, :NC], ids[:, NC:], *grid)
        sync(DEV)
        return out

    run()  # warm-up (and Triton compilation)
    tokens, positions = benchmark.pedantic(run, rounds=10, iterations=5)
    assert tokens.shape == (B, NC + NT, D) and positions.shape == (B, NC + NT, 3)
    moved = x.nbytes + tokens.nbytes + positions.nbytes + ids.nbytes
    benchmark.group = "masked_gather"
    benchmark.extra_info.update(machine(), dtype=str(DTYPE), shape=f"B{B} Nc{NC} Nt{NT} D{D}",
                                gbps=moved / benchmark.stats.stats.median / 1e9)
