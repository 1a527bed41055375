"""Tubelet embedding: Conv3d (what transformers runs) and the patchify + GEMM reference against
the fused Triton kernel (CUDA only), on float frames and on uint8 frames normalised in the op.

CUDA: 2 clips of 64 frames x 256 px into width 1024 (ViT-L); CPU: 1 clip of 4 frames x 64 px into 256."""
import pytest
import torch
import torch.nn.functional as F

from model_bench import alternate, device, sync
from vjepa_fast.ops.tubelet_embed import tubelet_embed, tubelet_embed_ref

DEV = device()
B, T, S, D = (2, 64, 256, 1024) if DEV == "cuda" else (1, 4, 64, 256)
DTYPE = torch.bfloat16 if DEV == "cuda" else torch.float32


def conv3d(video, weight, bias, mean, std):
    x = video if mean is None else (video.float() - mean.view(1, 1, -1, 1, 1)) / std.view(1, 1, -1, 1, 1)
    out = F.conv3d(x.to(weight.dtype).permute(0, 2, 1, 3, 4), weight, bias, stride=weight.shape[2:])  # (B, D, Tp, Hp, Wp)
    return out.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("frames", ["float", "uint8"])
@pytest.mark.parametrize("candidate", ["reference", "triton"])
def test_tubelet_embed(benchmark, candidate, frames):
    """Conv3d (what transformers runs) against the patchify + GEMM reference (CPU) or the fused
    Triton kernel (CUDA), alternating rounds of one test."""
    if candidate == "triton" and DEV != "cuda":
        pytest.skip("the Triton kernel runs on CUDA tensors")
    weight = torch.randn(D, 3, 2, 16, 16, device=DEV, dtype=DTYPE) * 0.02
    bias = torch.randn(D, device=DEV, dtype=DTYPE)
    if frames == "uint8":
        video = torch.randint(0, 256, (B, T, 3, S, S), device=DEV, dtype=torch.uint8)
        mean, std = torch.tensor([123.7, 116.3, 103.5], device=DEV), torch.tensor([58.4, 57.1, 57.4], device=DEV)
    else:
        video, mean, std = torch.randn(B, T, 3, S, S, device=DEV, dtype=DTYPE), None, None
    fn = tubelet_embed if candidate == "triton" else tubelet_embed_ref

    def runner(call):
        def run():
            with torch.no_grad():
                out = call()
            sync(DEV)
            assert out.shape == (B, T // 2 * (S // 16) ** 2, D)
        return run

    benchmark.group = f"tubelet_embed-{frames}"
    alternate(benchmark, f"tubelet embedding ({candidate}), {frames} frames, B{B} T{T} {S} px D{D}", "Conv3d",
              runner(lambda: conv3d(video, weight, bias, mean, std)),
              runner(lambda: fn(video, weight, bias, None, mean, std)), memory=False, repeat=10)
