"""Planning latency per action: the fast CEM planner against the Meta-structured reference.

Same random weights, same settings, same noise. The model is the CPU-sized one `python -m
vjepa_fast.plan` uses (ac-tiny on the tiny encoder: 16 patch tokens per frame); horizon 2 is
the released setting, horizon 4 shows how re-running the prefix grows with the horizon.
"fast-bf16" runs the predictor in bf16 (fast on GPUs and on CPUs with AMX/AVX512-BF16 only).
Run: pytest benchmarks/test_bench_planner.py --benchmark-only
"""
import platform

import pytest
import torch
import torch.nn.functional as F

from vjepa_fast.ac_model import ACConfig, ACPredictor
from vjepa_fast.planner import CEMConfig, CEMPlanner, draw_noise, plan_reference

PROVIDERS = ["reference", "fast", "fast-bf16", "fast-cuda", "fast-cuda-bf16"]


@pytest.mark.parametrize("horizon", [2, 4])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_plan_latency(benchmark, provider, horizon):
    if "cuda" in provider and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = "cuda" if "cuda" in provider else "cpu"
    torch.manual_seed(0)
    ac = ACConfig.from_name("ac-tiny")
    model = ACPredictor(ac).eval().to(device)
    cem = CEMConfig(horizon=horizon, samples=100, top_k=10, iterations=5, gripper_fixed=0.0)
    z = F.layer_norm(torch.randn(ac.tokens_per_frame, ac.enc_dim, device=device), (ac.enc_dim,))
    goal = F.layer_norm(torch.randn(ac.tokens_per_frame, ac.enc_dim, device=device), (ac.enc_dim,))
    state = torch.rand(7, device=device)
    noise = draw_noise(cem, torch.Generator().manual_seed(1))
    planner = CEMPlanner(model, cem, dtype=torch.bfloat16 if provider.endswith("bf16") else torch.float32)

    def run():
        if provider == "reference":
            out = plan_reference(model, z, state, goal, cem, noise)
        else:
            out = planner.plan(z, state, goal, noise=noise)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    result = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert result.actions.shape == (horizon, 7)
    benchmark.extra_info.update({
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "model": "ac-tiny",
        "samples": cem.samples, "iterations": cem.iterations, "horizon": horizon})
