"""Compiles every configuration the rope_attention op can launch on a GPU (head dims 32/64/80,
fp16/bf16, causal or not; forward and both backward kernels for sm_90, the forward for sm_80)
without a GPU: catches tl.dot shape rules, shared memory overflows, register spills and missing
wgmma before a GPU is touched. One subprocess per architecture compiles all its kernels."""
from __future__ import annotations

import pytest
import torch

from aot_utils import AotRequest, compile_kernels, steady_loop
from vjepa_fast.kernels import rope_attention as ra

TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
CONSTEXPRS = ("HEAD_DIM", "SEG", "TILE", "CAUSAL", "FAST_TRIG", "DOT_PRECISION", "BLOCK_M", "BLOCK_N", "D_LO", "D_HI",
              "BLOCK_R", "BLOCK_D")
# Positions, lse and delta are fp32 whatever the activation dtype.
FP32_POINTERS = ("POS", "QPOS", "KPOS", "LSE", "DELTA")


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
KERNELS = {90: (("rotate", "_rotate_kernel"), ("fwd", "_fwd_kernel"), ("dkdv", "_bwd_dkdv_kernel"),
                ("dq", "_bwd_dq_kernel")),
           80: (("rotate", "_rotate_kernel"), ("fwd", "_fwd_kernel"))}


def _divisible(kernel, lengths: bool) -> tuple[str, ...]:
    """The arguments Triton's runtime finds divisible by 16: every pointer (PyTorch's allocations
    and the model's q/k/v views are 16-byte aligned), the strides and the head count, and with
    `lengths` the token counts too (8192 tokens; the AC predictor's 258-token steps are not)."""
    names = ("n_heads",) + (("n_q", "n_k", "n_rows") if lengths else ())
    return tuple(n for n in kernel.arg_names if (n.isupper() and n not in CONSTEXPRS)
                 or (n.startswith("stride") and not n.endswith("pb")) or n in names)


# The specialisations compiled: none (unaligned pointers, odd strides: must compile), aligned
# with odd lengths, and everything 16-divisible (both must compile without spills).
SPECIALISATIONS = {"general": None, "aligned": False, "aligned, 16-divisible lengths": True}


def _shorts(kernel: str, hd: int, arch: int) -> tuple[bool, ...]:
    """The tilings LaunchConfig has for this kernel: default, and short grids where they differ."""
    wide, short = (ra.LaunchConfig(hd, torch.bfloat16, kernel, arch, s) for s in (False, True))
    return (False,) if (wide.block_m, wide.block_n) == (short.block_m, short.block_n) else (False, True)


def _request(kernel: str, name: str, hd: int, dtype, causal: bool, arch: int, specialisation: str,
             short: bool = False) -> AotRequest:
    cfg = ra.LaunchConfig(hd, dtype, kernel, arch, short)
    fn = getattr(ra, name)
    return AotRequest(module=ra.__name__, kernel=name, signature=_signature(fn, TRITON_DTYPES[dtype]),
                      constexprs=cfg.constexprs(hd, tile=True, causal=causal, fast_trig=True), arch=arch,
                      num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                      divisible=() if SPECIALISATIONS[specialisation] is None
                      else _divisible(fn, SPECIALISATIONS[specialisation]),
                      label=f"{name} hd={hd} {TRITON_DTYPES[dtype]} causal={causal} sm_{arch}"
                            f"{' short grid' if short else ''} ({specialisation})")


def _requests(arch: int) -> list[AotRequest]:
    # TILE only changes integer arithmetic on the channel index (same registers either way), so
    # the tile-mode build stands for both modes; the rotation kernel does not depend on causal.
    # fp16 and bf16 differ only in the conversion instructions: fp16 in one specialisation stands for it.
    return [_request(kernel, name, hd, dtype, causal, arch, special, short)
            for hd in ra.HEAD_DIMS for dtype, specials in ((torch.bfloat16, SPECIALISATIONS), (torch.float16, ["aligned"]))
            for special in specials for kernel, name in KERNELS[arch]
            for causal in ((False,) if kernel == "rotate" else (False, True)) for short in _shorts(kernel, hd, arch)]


@pytest.mark.parametrize("arch", [90, 80])
def test_every_launch_config_compiles_without_spills(arch):
    """The runtime's specialisations for aligned tensors compile without spills; the general one
    (unaligned pointers, odd strides: rare) must compile, and its spills are printed."""
    results = compile_kernels(_requests(arch))
    spills = lambda rs: [f"{r.request.label}: stack {r.stack} B, local {r.local} B, {r.registers} regs"
                         for r in rs if r.spills]
    general = [r for r in results if "general" in r.request.label]
    print("spills of the general specialisation:\n" + "\n".join(spills(general) or ["none"]))
    spilled = spills([r for r in results if r not in general])
    assert not spilled, "register spills:\n" + "\n".join(spilled)
    limit = 227 * 1024 if arch == 90 else 163 * 1024
    too_big = [f"{r.request.label}: {r.shared} B" for r in results if r.shared > limit]
    assert not too_big, "shared memory over the limit:\n" + "\n".join(too_big)
    if arch == 90:
        # The op sends only 16-bit tensors to the kernel on a GPU (fp32 goes to SDPA), so every
        # attention configuration must use Hopper's warpgroup tensor-core instructions.
        no_wgmma = [r.request.label for r in results if r.request.kernel != "_rotate_kernel" and not r.wgmma]
        assert not no_wgmma, "attention kernels without wgmma on sm_90:\n" + "\n".join(no_wgmma)


def _tile_flop(kernel: str, cfg, hd: int) -> int:
    """Matrix-product FLOP of one trip of the kernel's loop: forward q k^T and p v; dkdv
    k q^T, v do^T, p^T do and ds^T q; dq q k^T, do v^T and ds k."""
    products = {"fwd": 2, "dkdv": 4, "dq": 3}[kernel]
    return products * 2 * cfg.block_m * cfg.block_n * hd


def _yardstick(hd: int, cfg) -> AotRequest:
    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "n": "i32", "qk_scale": "fp32",
           **{c: "constexpr" for c in ("HEAD_DIM", "BLOCK_M", "BLOCK_N", "D_LO", "D_HI")}}
    return AotRequest(module="flash_yardstick", kernel="plain_flash_fwd", signature=sig,
                      constexprs=dict(HEAD_DIM=hd, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, D_LO=cfg.d_lo,
                                      D_HI=cfg.d_hi),
                      num_warps=cfg.num_warps, num_stages=cfg.num_stages, divisible=("Q", "K", "V", "O", "n"),
                      label=f"plain flash-attention forward hd={hd}")


# The goals for the modelled steady loops (sm_90, bf16, 16-divisible specialisation).
FWD_VS_PLAIN = {64: 1.15, 32: 1.3, 80: 1.3}   # instructions, against the yardstick with the same tiles
FWD_MUFU_VS_PLAIN = 1.1
FWD_CEILING_HD64 = 0.65
BWD_CEILING = 0.45


def test_inner_loops_modelled_from_sm90_code(capsys):
    """Reads the compiled steady loop of every attention kernel (sm_90, bf16, the runtime's
    specialisation) and the plain flash-attention yardstick: instructions, MUFU, HGMMA and
    scalar loads per warp per trip, and the issue-bound ceiling (a model, not a measurement)."""
    rows = []
    for hd in ra.HEAD_DIMS:
        for kernel, name in KERNELS[90][1:]:
            for causal in (False, True):
                for short in _shorts(kernel, hd, 90):
                    rows.append((kernel, hd, causal, short, _request(kernel, name, hd, torch.bfloat16, causal, 90,
                                                                     "aligned, 16-divisible lengths", short)))
        for short in _shorts("fwd", hd, 90):
            rows.append(("plain", hd, False, short, _yardstick(hd, ra.LaunchConfig(hd, torch.bfloat16, "fwd", 90,
                                                                                   short))))
    results = compile_kernels([r for *_, r in rows])
    table, profiles = [], {}
    for (kernel, hd, causal, short, req), res in zip(rows, results):
        cfg = ra.LaunchConfig(hd, torch.bfloat16, "fwd" if kernel == "plain" else kernel, 90, short)
        loop = steady_loop(res.sass)
        # The loop read is the one whose products make the tile: the model counts the right work.
        assert loop.cta_flop(cfg.num_warps) == _tile_flop("fwd" if kernel == "plain" else kernel, cfg, hd), req.label
        ceiling = loop.ceiling(cfg.num_warps)
        profiles[kernel, hd, causal, short] = loop, ceiling
        table.append(f"{kernel:6} hd {hd:3} {'causal' if causal else '      '} {cfg.block_m:4}x{cfg.block_n:<4}"
                     f"{cfg.num_warps} warps {cfg.num_stages} stages {res.registers:4} regs | {loop.instructions:4} "
                     f"instr {loop.mufu:3} MUFU {loop.hgmma:3} HGMMA {loop.scalar_loads:3} LDG | {ceiling:5.0%}")
    with capsys.disabled():
        print("\nsteady inner loop per warp per trip, sm_90 bf16 (modelled ceiling of the tensor-core peak):")
        print("\n".join(table))
    failures = []
    for (kernel, hd, causal, short), (loop, ceiling) in profiles.items():
        label = f"{kernel} hd {hd} causal={causal}{' short grid' if short else ''}"
        if kernel == "fwd":
            plain, _ = profiles["plain", hd, False, short]
            if loop.instructions > FWD_VS_PLAIN[hd] * plain.instructions:
                failures.append(f"{label}: {loop.instructions} instructions vs plain {plain.instructions} "
                                f"(limit x{FWD_VS_PLAIN[hd]})")
            if loop.mufu > FWD_MUFU_VS_PLAIN * plain.mufu:
                failures.append(f"{label}: {loop.mufu} MUFU vs plain {plain.mufu}")
            if hd == 64 and ceiling < FWD_CEILING_HD64:
                failures.append(f"{label}: modelled ceiling {ceiling:.0%} < {FWD_CEILING_HD64:.0%}")
        if kernel != "plain" and loop.scalar_loads:
            failures.append(f"{label}: {loop.scalar_loads} scalar global loads")
        if kernel in ("dkdv", "dq") and hd == 64 and ceiling < BWD_CEILING:
            failures.append(f"{label}: modelled ceiling {ceiling:.0%} < {BWD_CEILING:.0%}")
    assert not failures, "\n".join(failures)
