"""RoPE attention: PyTorch reference (separate RoPE + SDPA), the same compiled with torch.compile,
and the fused Triton kernel, forward and backward, on the same inputs in one run.

CUDA (bf16): ViT-L/g attention at 16 frames x 256 px (2048 tokens, head dim 64) and at 64 frames
(8192 tokens: the shape of the kernel's >= 400 TFLOP/s forward goal), ViT-H (head dim
80), and the AC predictor's block-causal attention over 8 steps of 258 tokens. CPU (fp32, quick):
the reference providers at small shapes. TFLOP/s counts the useful work only (visible query/key
pairs; backward = 2.5x forward, its five matrix products against two).
Run: pytest benchmarks/test_bench_rope_attention.py --benchmark-only
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from vjepa_fast.ops.rope import make_rope
from vjepa_fast.ops.rope_attention import rope_attention, rope_attention_ref


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    heads: int
    tokens: int
    head_dim: int
    causal_block: int = 0


CUDA_SHAPES = [Shape("vitl-2048tok", 2, 16, 2048, 64), Shape("vitl-8192tok", 1, 16, 8192, 64),
               Shape("vith-2048tok", 2, 16, 2048, 80),
               Shape("ac-8x258tok", 2, 16, 258 * 8, 64, 258)]
CPU_SHAPES = [Shape("small-256tok", 1, 2, 256, 64), Shape("ac-2x258tok", 1, 2, 258 * 2, 64, 258)]
SHAPES = CUDA_SHAPES if torch.cuda.is_available() else CPU_SHAPES
PROVIDERS = ["reference", "compiled-reference", "triton"]


def _visible_pairs(s: Shape) -> int:
    if s.causal_block <= 0:
        return s.tokens * s.tokens
    steps = -(-s.tokens // s.causal_block)
    return sum(s.causal_block * min(s.tokens, (t + 1) * s.causal_block) for t in range(steps))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_rope_attention(benchmark, extra_info, device, shape, provider, mode):
    if provider == "triton" and device.type != "cuda":
        pytest.skip("the Triton kernel runs on CUDA tensors only")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    s = shape
    q, k, v = (torch.randn(s.batch, s.heads, s.tokens, s.head_dim, device=device, dtype=dtype,
                           requires_grad=mode == "bwd") for _ in range(3))
    positions = torch.randint(0, 16, (1, s.tokens, 3), device=device).float()
    rope = make_rope(positions, s.head_dim, "tile")
    if provider == "reference":
        rope.cos  # the model builds the tables once per forward pass, outside the layers: not timed
        attend = rope_attention_ref
    elif provider == "compiled-reference":
        rope.cos
        attend = torch.compile(rope_attention_ref, fullgraph=True, dynamic=False)
    else:
        attend = rope_attention

    def forward():
        return attend(q, k, v, rope, rope, s.causal_block)

    flops = 4 * s.batch * s.heads * s.head_dim * _visible_pairs(s)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                out = forward()
            _sync(device)
            return out
        run()  # compile / autotune outside the timing
        benchmark(run)
    else:
        flops = flops * 5 // 2
        grad = torch.randn(s.batch, s.heads, s.tokens, s.head_dim, device=device, dtype=dtype)

        def setup():
            out = forward()
            _sync(device)
            return (out,), {}

        def run(out):
            out.backward(grad)
            _sync(device)
        run(*setup()[0])
        benchmark.pedantic(run, setup=setup, rounds=20 if device.type == "cuda" else 5, warmup_rounds=1)
    extra_info.update(shape=s.name, dtype=str(dtype).removeprefix("torch."), flops=flops)
    if benchmark.stats is not None:  # None with --benchmark-disable
        extra_info["tflops"] = round(flops / benchmark.stats.stats.median / 1e12, 3)
