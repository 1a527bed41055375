"""One Cross-Entropy-Method update for planning: score, select elites, refit, resample.

Given N sampled action trajectories (N, H, A), the world model's predicted final states
preds (N, P, D) and the goal state (P, D) (already layer-normed), one step:

    energies    = mean over (P, D) of |layer_norm(preds, D) - goal|          (N,)
    elites      = actions of the top_k lowest energies                        (top_k, H, A)
    new_mean    = (1 - momentum_mean) * elites.mean(0) + momentum_mean * mean  (H, A)
    new_std     = (1 - momentum_std)  * elites.std(0)  + momentum_std  * std   (H, A)
    next_actions = clamp(new_mean + new_std * noise, low, high)               (N, H, A)

This is the update of Meta's planning notebook (mpc_utils.cem): L1 energy, unbiased std of the
elites, momentum on mean and std, clipping of the new samples. Momenta and bounds are per action
dimension, which expresses Meta's separate xyz / gripper settings; a dimension with
low == high == 0 stays at 0 (Meta's zeroed rotation deltas). The caller draws `noise` from its own
torch.Generator, so a plan is reproducible and the op itself is deterministic.

`cem_update` runs the compiled op torch.ops.vjepa_fast.cem_update (csrc/cem.cpp, csrc/cem_cuda.cu)
when the extension is built, else `cem_update_ref`; VJEPA_FAST_REFERENCE=1 forces the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vjepa_fast.ops.dispatch import extension_available, reference_forced

LN_EPS = 1e-5


def _check(preds: Tensor, goal: Tensor, noise: Tensor, actions: Tensor, mean: Tensor, std: Tensor,
           top_k: int, momentum_mean: Tensor, momentum_std: Tensor, low: Tensor, high: Tensor) -> None:
    """Shape/dtype/device checks at the op boundary; messages name the argument and what was expected."""
    if preds.dim() != 3:
        raise ValueError(f"cem_update: preds must be (N, P, D), got shape {tuple(preds.shape)}")
    N, P, D = preds.shape
    if actions.dim() != 3 or actions.shape[0] != N:
        raise ValueError(f"cem_update: actions must be (N={N}, H, A), got shape {tuple(actions.shape)}")
    _, H, A = actions.shape
    expected = {"goal": (P, D), "noise": (N, H, A), "mean": (H, A), "std": (H, A),
                "momentum_mean": (A,), "momentum_std": (A,), "low": (A,), "high": (A,)}
    given = {"goal": goal, "noise": noise, "mean": mean, "std": std, "momentum_mean": momentum_mean,
             "momentum_std": momentum_std, "low": low, "high": high}
    for name, shape in expected.items():
        if tuple(given[name].shape) != shape:
            raise ValueError(f"cem_update: {name} must have shape {shape}, got {tuple(given[name].shape)}")
    for name, t in {"preds": preds, "actions": actions, **given}.items():
        if not t.is_floating_point():
            raise TypeError(f"cem_update: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != preds.device:
            raise ValueError(f"cem_update: {name} is on {t.device} but preds is on {preds.device}")
    for name in ("noise", "mean", "std", "momentum_mean", "momentum_std", "low", "high"):
        if given[name].dtype != actions.dtype:
            raise TypeError(f"cem_update: {name} must have the dtype of actions ({actions.dtype}), "
                            f"got {given[name].dtype}")
    if not isinstance(top_k, int) or top_k < 2 or top_k > N:
        # The elite std is unbiased (as in Meta's planner): it needs at least two elites.
        raise ValueError(f"cem_update: top_k must be an int in [2, N={N}], got {top_k!r}")


def cem_energies_ref(preds: Tensor, goal: Tensor) -> Tensor:
    """(N, P, D), (P, D) -> (N,): mean L1 distance of the layer-normed prediction to the goal, in fp32."""
    normed = F.layer_norm(preds.float(), (preds.shape[-1],), eps=LN_EPS)
    return (normed - goal.float()).abs().mean(dim=(1, 2))


def cem_update_ref(preds: Tensor, goal: Tensor, noise: Tensor, actions: Tensor, mean: Tensor, std: Tensor,
                   top_k: int, momentum_mean: Tensor, momentum_std: Tensor, low: Tensor, high: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Plain PyTorch CEM step (see the module docstring); the oracle for the compiled op."""
    _check(preds, goal, noise, actions, mean, std, top_k, momentum_mean, momentum_std, low, high)
    return _cem_math(preds, goal, noise, actions, mean, std, top_k, momentum_mean, momentum_std, low, high)


def _cem_math(preds, goal, noise, actions, mean, std, top_k, momentum_mean, momentum_std, low, high):
    energies = cem_energies_ref(preds, goal)
    elites = actions[energies.topk(top_k, largest=False).indices]  # (top_k, H, A)
    new_mean = (1 - momentum_mean) * elites.mean(dim=0) + momentum_mean * mean
    new_std = (1 - momentum_std) * elites.std(dim=0) + momentum_std * std
    next_actions = torch.clamp(new_mean + new_std * noise, low, high)
    return energies, new_mean, new_std, next_actions


def _cem_update_fake(preds, goal, noise, actions, mean, std, top_k, momentum_mean, momentum_std, low, high):
    return (preds.new_empty((preds.shape[0],), dtype=torch.float32), mean.new_empty(mean.shape),
            std.new_empty(std.shape), actions.new_empty(actions.shape))


# The schema comes from csrc/cem.cpp; a stale build of the extension may lack it.
COMPILED = extension_available() and hasattr(torch.ops.vjepa_fast, "cem_update")
if COMPILED:  # torch.compile and opcheck trace the op through its fake
    torch.library.register_fake("vjepa_fast::cem_update")(_cem_update_fake)


def cem_update(preds: Tensor, goal: Tensor, noise: Tensor, actions: Tensor, mean: Tensor, std: Tensor,
               top_k: int, momentum_mean: Tensor, momentum_std: Tensor, low: Tensor, high: Tensor
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One CEM step -> (energies (N,) fp32, new_mean (H, A), new_std (H, A), next_actions (N, H, A))."""
    _check(preds, goal, noise, actions, mean, std, top_k, momentum_mean, momentum_std, low, high)
    if reference_forced() or not COMPILED:
        return _cem_math(preds, goal, noise, actions, mean, std, top_k, momentum_mean, momentum_std, low, high)
    return torch.ops.vjepa_fast.cem_update(preds, goal, noise, actions, mean, std, top_k,
                                           momentum_mean, momentum_std, low, high)
