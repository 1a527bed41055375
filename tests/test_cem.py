"""cem_update: the reference against the update rule of Meta's planning notebook, the compiled op
(C++ on CPU, CUDA on GPU) against the reference, opcheck, torch.compile, argument errors, and
the CUDA source compiling for sm_90 with nvcc."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F

from vjepa_fast.ops import cem
from vjepa_fast.ops.cem import cem_update, cem_update_ref

needs_ext = pytest.mark.skipif(not cem.COMPILED, reason="vjepa_fast._C with cem_update is not built")


def _inputs(N, P, D, H, A, dtype=torch.float32, preds_dtype=None, device="cpu", top_k=3):
    g = torch.Generator().manual_seed(N * 1000 + P * 100 + D)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    low, high = -r(A).abs() - 0.5, r(A).abs() + 0.5
    args = dict(preds=r(N, P, D).to(preds_dtype or dtype), goal=F.layer_norm(r(P, D), (D,)), noise=r(N, H, A),
                actions=r(N, H, A), mean=r(H, A) * 0.1, std=r(H, A).abs() + 0.1, top_k=top_k,
                momentum_mean=torch.rand(A, generator=g), momentum_std=torch.rand(A, generator=g), low=low, high=high)
    return {k: v.to(device=device, dtype=v.dtype if k in ("preds", "goal") else dtype) if torch.is_tensor(v) else v
            for k, v in args.items()}


def _meta_cem_step(final_state, goal, actions, mean, std, noise, topk, maxnorm, m_mean, m_std, m_mean_g, m_std_g):
    """One iteration of Meta's notebooks/utils/mpc_utils.cem, written from its update rule: L1 objective
    on flattened states, topk lowest, elite mean/std (torch.std), xyz and gripper momenta blended
    with torch.cat, xyz clipped to +-maxnorm, gripper to +-0.75, rotation deltas zero."""
    sims = torch.mean(torch.abs(final_state.flatten(1) - goal.flatten(1)), dim=-1)
    selected = actions[sims.topk(topk, largest=False).indices]
    sel_mean, sel_std = selected.mean(dim=0), selected.std(dim=0)
    new_mean = torch.cat([sel_mean[..., :3] * (1 - m_mean) + mean[..., :3] * m_mean,
                          torch.zeros_like(mean[..., 3:6]),
                          sel_mean[..., -1:] * (1 - m_mean_g) + mean[..., -1:] * m_mean_g], dim=-1)
    new_std = torch.cat([sel_std[..., :3] * (1 - m_std) + std[..., :3] * m_std,
                         torch.zeros_like(std[..., 3:6]),
                         sel_std[..., -1:] * (1 - m_std_g) + std[..., -1:] * m_std_g], dim=-1)
    samples = noise * new_std + new_mean
    samples = torch.cat([samples[..., :3].clip(-maxnorm, maxnorm), torch.zeros_like(samples[..., 3:6]),
                         samples[..., -1:].clip(-0.75, 0.75)], dim=-1)
    return sims, new_mean, new_std, samples


def test_reference_matches_meta_update_rule():
    N, P, D, H, topk, maxnorm = 25, 6, 16, 2, 5, 0.05
    preds = torch.randn(N, P, D)
    goal = F.layer_norm(torch.randn(P, D), (D,))
    actions = torch.randn(N, H, 7) * maxnorm
    actions[..., 3:6] = 0  # Meta samples zero rotation deltas
    mean, std = torch.randn(H, 7) * 0.01, torch.rand(H, 7) * maxnorm
    mean[..., 3:6] = 0
    std[..., 3:6] = 0
    noise = torch.randn(N, H, 7)
    per_dim = lambda xyz, grip: torch.tensor([xyz] * 6 + [grip])  # noqa: E731
    ours = cem_update_ref(preds, goal, noise, actions, mean, std, topk, per_dim(0.25, 0.15), per_dim(0.95, 0.15),
                          torch.tensor([-maxnorm] * 3 + [0.0] * 3 + [-0.75]),
                          torch.tensor([maxnorm] * 3 + [0.0] * 3 + [0.75]))
    meta = _meta_cem_step(F.layer_norm(preds, (D,)), goal.expand(N, P, D), actions, mean, std, noise, topk,
                          maxnorm, 0.25, 0.95, 0.15, 0.15)
    for name, a, b in zip(("energies", "new_mean", "new_std", "next_actions"), ours, meta):
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}")
    assert (ours[3][..., 3:6] == 0).all()


@needs_ext
@pytest.mark.parametrize("N,P,D,H,A,top_k", [(7, 5, 9, 3, 4, 3), (33, 1, 31, 1, 7, 2), (2, 17, 3, 5, 1, 2)])
@pytest.mark.parametrize("dtype,preds_dtype", [(torch.float32, torch.float32), (torch.float64, torch.float16),
                                               (torch.float32, torch.bfloat16)])
def test_compiled_matches_reference(N, P, D, H, A, top_k, dtype, preds_dtype):
    args = _inputs(N, P, D, H, A, dtype, preds_dtype, top_k=top_k)
    got = torch.ops.vjepa_fast.cem_update(**args)
    want = cem_update_ref(**args)
    for name, a, b in zip(("energies", "new_mean", "new_std", "next_actions"), got, want):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}")


@needs_ext
def test_opcheck_and_torch_compile():
    args = _inputs(9, 3, 5, 2, 3)
    torch.library.opcheck(torch.ops.vjepa_fast.cem_update.default, tuple(args.values()))
    compiled = torch.compile(cem_update, backend="aot_eager", fullgraph=True)
    for a, b in zip(compiled(**args), cem_update_ref(**args)):
        torch.testing.assert_close(a, b)


@needs_ext
def test_reference_env_var_forces_reference(monkeypatch):
    args = _inputs(6, 2, 4, 1, 2)
    sentinel = object()
    monkeypatch.setattr(cem, "_cem_math", lambda *a: sentinel)
    assert cem_update(**args) is not sentinel
    monkeypatch.setenv("VJEPA_FAST_REFERENCE", "1")
    assert cem_update(*args.values()) is sentinel


def test_zero_bounds_hold_a_dimension_at_zero():
    args = _inputs(8, 3, 5, 2, 3)
    args["low"][1] = args["high"][1] = 0.0
    next_actions = cem_update(**args)[3]
    assert (next_actions[..., 1] == 0).all() and (next_actions[..., 0] != 0).any()


@pytest.mark.parametrize("op", [cem_update_ref] + ([torch.ops.vjepa_fast.cem_update] if cem.COMPILED else []))
@pytest.mark.parametrize("change,match", [
    (dict(preds=torch.randn(8, 5)), "preds must be"),
    (dict(goal=torch.randn(3, 6)), "goal must have shape"),
    (dict(noise=torch.randn(8, 2, 4)), "noise must have shape"),
    (dict(actions=torch.randn(7, 2, 3)), "actions must be"),
    (dict(mean=torch.randn(3, 3)), "mean must have shape"),
    (dict(std=torch.randn(2)), "std must have shape"),
    (dict(momentum_mean=torch.rand(2)), "momentum_mean must have shape"),
    (dict(high=torch.ones(4)), "high must have shape"),
    (dict(low=torch.zeros(3, dtype=torch.float64)), "low must have the dtype of actions"),
    (dict(top_k=9), r"top_k must be an int in \[2, N=8\]"),
    (dict(top_k=1), r"top_k must be an int in \[2, N=8\]"),
    (dict(top_k=0), r"top_k must be an int in \[2, N=8\]"),
])
def test_bad_arguments_are_named(op, change, match):
    args = _inputs(8, 3, 5, 2, 3)
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        op(**args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not cem.COMPILED, reason="needs a GPU and the CUDA build")
@pytest.mark.parametrize("preds_dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_reference(preds_dtype):
    args = _inputs(301, 65, 1024, 3, 7, torch.float32, preds_dtype, device="cuda", top_k=30)
    got = torch.ops.vjepa_fast.cem_update(**args)
    want = cem_update_ref(**args)
    for name, a, b in zip(("energies", "new_mean", "new_std", "next_actions"), got, want):
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit (nvcc)")
def test_cuda_source_compiles_for_sm90_without_spills(tmp_path):
    from torch.utils.cpp_extension import include_paths
    from aot_utils import parse_resource_usage, tool_path

    # CPU wheels of torch lack this generated header (CUDA wheels ship it); it only sets an export macro.
    shim = tmp_path / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    source = os.path.join(os.path.dirname(__file__), "..", "csrc", "cem_cuda.cu")
    cubin = tmp_path / "cem_cuda.cubin"
    includes = [f"-I{p}" for p in [str(tmp_path), *include_paths()]]
    subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-O3", "-w", "-cubin", source, "-o", str(cubin),
                    *includes], check=True, capture_output=True, timeout=600)
    dump = subprocess.run([tool_path("cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                          text=True, check=True).stdout
    kernels = [block for block in dump.split("Function ")[1:]]
    assert len(kernels) == 8, dump  # energies + elite kernels for fp32, fp64, fp16, bf16
    for block in kernels:
        usage = parse_resource_usage(block)
        assert usage["stack"] == 0 and usage["local"] == 0, block
