"""Planning latency per action: the fast CEM planner against the Meta-structured reference.

Same random weights, same settings, same noise. The model is the CPU-sized one `python -m
vjepa_fast.plan` uses (ac-tiny on the tiny encoder: 16 patch tokens per frame); horizon 2 is
the released setting, horizon 4 shows how re-running the prefix grows with the horizon.
"fast-bf16" runs the predictor in bf16 (fast on GPUs and on CPUs with AMX/AVX512-BF16 only).
Run: pytest benchmarks/test_bench_planner.py --benchmark-only
"""
import pytest
import torch
import torch.nn.functional as F

from model_bench import alternate
from vjepa_fast.ac_model import ACConfig, ACPredictor
from vjepa_fast.planner import CEMConfig, CEMPlanner, draw_noise, plan_reference

PROVIDERS = ["fast", "fast-bf16", "fast-cuda", "fast-cuda-bf16"]


@pytest.mark.parametrize("horizon", [2, 4])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_plan_latency(benchmark, provider, horizon):
    """The reference planner and the fast one (provider), alternating rounds of one test."""
    if "cuda" in provider and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = "cuda" if "cuda" in provider else "cpu"
    torch.manual_seed(0)
    ac = ACConfig.from_name("ac-tiny")
    model = ACPredictor(ac).eval().to(device)
    cem = CEMConfig(horizon=horizon, samples=100, top_k=10, iterations=5, fixed={6: 0.0})
    z = F.layer_norm(torch.randn(ac.tokens_per_frame, ac.enc_dim, device=device), (ac.enc_dim,))
    goal = F.layer_norm(torch.randn(ac.tokens_per_frame, ac.enc_dim, device=device), (ac.enc_dim,))
    state = torch.rand(7, device=device)
    noise = draw_noise(cem, torch.Generator().manual_seed(1))
    planner = CEMPlanner(model, cem, dtype=torch.bfloat16 if provider.endswith("bf16") else torch.float32)

    def finish(result):
        assert result.actions.shape == (horizon, 7)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"plan-h{horizon}"
    alternate(benchmark, f"planning, one action, ac-tiny, 100 samples x 5 iterations, horizon {horizon}, {provider}",
              "reference planner", lambda: finish(plan_reference(model, z, state, goal, cem, noise)),
              lambda: finish(planner.plan(z, state, goal, noise=noise)), memory=False)
