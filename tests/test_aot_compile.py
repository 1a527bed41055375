"""Compiles every configuration the rope_attention op can launch on a GPU (head dims 32/64/80,
fp16/bf16, causal or not; forward and both backward kernels for sm_90, the forward for sm_80)
without a GPU: catches tl.dot shape rules, shared memory overflows, register spills and missing
wgmma before a GPU is touched. One subprocess per architecture compiles all its kernels."""
from __future__ import annotations

import pytest
import torch

from aot_utils import AotRequest, compile_kernels
from vjepa_fast.kernels import rope_attention as ra

TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
CONSTEXPRS = ("HEAD_DIM", "SEG", "TILE", "CAUSAL", "FAST_TRIG", "DOT_PRECISION", "BLOCK_M", "BLOCK_N", "D_LO", "D_HI")
# Positions, lse and delta are fp32 whatever the activation dtype.
FP32_POINTERS = ("QPOS", "KPOS", "LSE", "DELTA")


def _signature(kernel, dtype: str) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in CONSTEXPRS:
            sig[name] = "constexpr"
        elif name.isupper():
            sig[name] = "*fp32" if name in FP32_POINTERS else f"*{dtype}"
        elif name in ("qk_scale", "sm_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


# The op runs the backward kernels on sm_90 and newer only (vjepa_fast/ops/rope_attention.py:
# _kernel_backward_supported): with sm_80's mma layouts they spill at every tile size tried.
KERNELS = {90: (("fwd", "_fwd_kernel"), ("dkdv", "_bwd_dkdv_kernel"), ("dq", "_bwd_dq_kernel")),
           80: (("fwd", "_fwd_kernel"),)}


def _requests(arch: int) -> list[AotRequest]:
    requests = []
    for hd in ra.HEAD_DIMS:
        for dtype in ra.GPU_DTYPES:
            for causal in (False, True):
                for kernel, name in KERNELS[arch]:
                    cfg = ra.LaunchConfig(hd, dtype, kernel)
                    requests.append(AotRequest(
                        module=ra.__name__, kernel=name, signature=_signature(getattr(ra, name), TRITON_DTYPES[dtype]),
                        constexprs=cfg.constexprs(hd, tile=True, causal=causal, fast_trig=True), arch=arch,
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                        label=f"{name} hd={hd} {TRITON_DTYPES[dtype]} causal={causal} sm_{arch}"))
    return requests


@pytest.mark.parametrize("arch", [90, 80])
def test_every_launch_config_compiles_without_spills(arch):
    # TILE only changes integer arithmetic on the channel index (same registers either way), so
    # the tile-mode build stands for both modes and halves the compile time.
    results = compile_kernels(_requests(arch))
    spilled = [f"{r.request.label}: stack {r.stack} B, local {r.local} B, {r.registers} regs"
               for r in results if r.spills]
    assert not spilled, "register spills:\n" + "\n".join(spilled)
    limit = 227 * 1024 if arch == 90 else 163 * 1024
    too_big = [f"{r.request.label}: {r.shared} B" for r in results if r.shared > limit]
    assert not too_big, "shared memory over the limit:\n" + "\n".join(too_big)
    if arch == 90:
        # The op sends only 16-bit tensors to the kernel on a GPU (fp32 goes to SDPA), so every
        # forward configuration must use Hopper's warpgroup tensor-core instructions.
        no_wgmma = [r.request.label for r in results if r.request.kernel == "_fwd_kernel" and not r.wgmma]
        assert not no_wgmma, "forward kernels without wgmma on sm_90:\n" + "\n".join(no_wgmma)
