"""Planning with V-JEPA 2-AC: the Cross-Entropy Method over action sequences, and receding-horizon MPC.

Energy of an action sequence = mean |LN(predicted features after the last step) - LN(goal features)|.
CEM (Meta's notebooks/utils/mpc_utils.cem): the mean starts at 0 and the std at `maxnorm` for xyz
and `gripper_std` for the gripper; each iteration samples N sequences around (mean, std), clips
xyz to +-maxnorm and the gripper to +-gripper_max, fills the rotation deltas with 0, rolls the
predictor out, keeps the top_k lowest energies and refits mean and std with momentum (separate
momenta for xyz and the gripper). The plan is the final mean, gripper entries with |g| below
`gripper_threshold` set to 0. `fixed` dimensions are sampled at their value only (Meta's axis),
and from rollout step `close_gripper` on the gripper delta is 1 (Meta's close_gripper). MPC
executes its first action, observes, and plans again.

Two implementations of the same maths:
  CEMPlanner.plan    all N samples in one batch, the predictor stepped with a key/value cache
                     (each rollout step feeds only its own tokens), poses advanced by a
                     vectorised torch function, the elite update fused in `cem_update`.
  plan_reference     Meta's structure: the whole prefix re-run at every rollout step, fp32,
                     poses advanced per sample in Python. The oracle for tests and benchmarks.
Given the same noise they sample the same actions, score them the same and keep the same elites.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vjepa_fast.ac_model import ACCache, ACPredictor
from vjepa_fast.ops.cem import cem_update

ACTION_DIM = 7  # DROID: delta xyz, delta euler (xyz), delta gripper
GRIPPER = 6


@dataclass
class CEMConfig:
    horizon: int = 2                  # rollout steps per plan (Meta: 2)
    samples: int = 400                # action sequences per CEM iteration (Meta: 400; paper: 800)
    top_k: int = 10                   # elites kept per iteration
    iterations: int = 10              # CEM iterations per plan
    maxnorm: float = 0.05             # xyz deltas clipped to +-maxnorm; also their initial std
    gripper_max: float = 0.75         # gripper deltas clipped to +-gripper_max
    gripper_std: float = 1.0          # initial std of the gripper delta
    momentum_mean: float = 0.15       # xyz: mean <- (1-m) * elite mean + m * mean
    momentum_std: float = 0.15        # xyz: std  <- (1-m) * elite std  + m * std
    momentum_mean_gripper: float = 0.15
    momentum_std_gripper: float = 0.15
    gripper_threshold: float = 0.25   # planned gripper deltas with |g| below this become 0
    # Action dimensions held at a value, {index: value} over the 7-d action (0-2 xyz, 6 gripper);
    # Meta's axis={3: v} (its 4-d xyz + gripper) is {6: v}. Rotation deltas (3-5) are always 0.
    fixed: dict[int, float] = field(default_factory=dict)
    # Rollout steps h >= close_gripper sample only the gripper delta 1.0 (close), over `fixed` and
    # gripper_max: Meta's close_gripper, for plans that must hold an object. None: never forced.
    close_gripper: int | None = None

    def __post_init__(self):
        for name in ("horizon", "samples", "top_k", "iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CEMConfig.{name} must be a positive int, got {value!r}")
        if not 2 <= self.top_k <= self.samples:
            raise ValueError(f"CEMConfig.top_k must be in [2, samples={self.samples}] (the elite std needs "
                             f"two elites), got {self.top_k}")
        if self.maxnorm <= 0 or self.gripper_max < 0 or self.gripper_std < 0:
            raise ValueError("CEMConfig: maxnorm must be > 0, gripper_max and gripper_std >= 0")
        bad = [d for d in self.fixed if d not in (0, 1, 2, GRIPPER)]
        if bad or not all(math.isfinite(v) for v in self.fixed.values()):
            raise ValueError(f"CEMConfig.fixed must map action dimensions 0, 1, 2 (xyz) or 6 (gripper) to finite "
                             f"values, got {self.fixed}")
        cg = self.close_gripper
        if cg is not None and (not isinstance(cg, int) or isinstance(cg, bool) or not 0 <= cg < self.horizon):
            raise ValueError(f"CEMConfig.close_gripper must be None or a rollout step in [0, horizon={self.horizon}), "
                             f"got {cg!r}")

    def per_dimension(self) -> dict[str, Tensor]:
        """The (7,) vectors cem_update takes: initial mean/std, momenta, bounds. A fixed dimension
        has low == high, so sampling and clipping put it at its value whatever the noise."""
        m, g = self.maxnorm, self.gripper_max
        low = torch.tensor([-m, -m, -m, 0, 0, 0, -g])
        high = torch.tensor([m, m, m, 0, 0, 0, g])
        mean = torch.zeros(ACTION_DIM)
        std = torch.tensor([m, m, m, 0, 0, 0, self.gripper_std])
        for d, value in self.fixed.items():
            low[d] = high[d] = mean[d] = value
        mm, ms = self.momentum_mean, self.momentum_std
        return dict(low=low, high=high, mean=mean, std=std,
                    momentum_mean=torch.tensor([mm] * 6 + [self.momentum_mean_gripper]),
                    momentum_std=torch.tensor([ms] * 6 + [self.momentum_std_gripper]))

    def close(self, actions: Tensor) -> Tensor:
        """(N, H, 7) sampled actions with the gripper delta set to 1 from step close_gripper on."""
        if self.close_gripper is not None:
            actions[:, self.close_gripper:, GRIPPER] = 1.0
        return actions


@dataclass
class PlanResult:
    actions: Tensor   # (H, 7) the planned sequence; MPC executes actions[0]
    energies: Tensor  # (iterations, N) energy of every sample at every CEM iteration


# ---- poses -------------------------------------------------------------------------------------

def euler_to_matrix(e: Tensor) -> Tensor:
    """(..., 3) extrinsic "xyz" Euler angles -> (..., 3, 3) = Rz(c) @ Ry(b) @ Rx(a)."""
    ca, cb, cc = e.cos().unbind(-1)
    sa, sb, sc = e.sin().unbind(-1)
    rows = [cb * cc, sa * sb * cc - ca * sc, ca * sb * cc + sa * sc,
            cb * sc, sa * sb * sc + ca * cc, ca * sb * sc - sa * cc,
            -sb, sa * cb, ca * cb]
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def matrix_to_euler(R: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 3) extrinsic "xyz" angles, b in [-pi/2, pi/2] (scipy's convention away
    from gimbal lock, |b| = pi/2, where the split between a and c is arbitrary)."""
    b = torch.asin((-R[..., 2, 0]).clamp(-1.0, 1.0))
    a = torch.atan2(R[..., 2, 1], R[..., 2, 2])
    c = torch.atan2(R[..., 1, 0], R[..., 0, 0])
    return torch.stack((a, b, c), dim=-1)


def advance_poses(poses: Tensor, actions: Tensor) -> Tensor:
    """(N, 7) poses, (N, 7) actions -> (N, 7): xyz += dxyz; R <- R(dtheta) @ R(theta);
    gripper = clip(gripper + dg, 0, 1). Meta's compute_new_pose, vectorised."""
    R = euler_to_matrix(actions[:, 3:6]) @ euler_to_matrix(poses[:, 3:6])  # (N, 3, 3)
    grip = (poses[:, 6:] + actions[:, 6:]).clamp(0.0, 1.0)
    return torch.cat((poses[:, :3] + actions[:, :3], matrix_to_euler(R), grip), dim=-1)


def advance_pose_ref(pose: list[float], action: list[float]) -> list[float]:
    """One pose in plain Python floats, as Meta's per-sample scipy loop computes it."""
    def mat(a, b, c):
        ca, cb, cc, sa, sb, sc = math.cos(a), math.cos(b), math.cos(c), math.sin(a), math.sin(b), math.sin(c)
        return [[cb * cc, sa * sb * cc - ca * sc, ca * sb * cc + sa * sc],
                [cb * sc, sa * sb * sc + ca * cc, ca * sb * sc - sa * cc],
                [-sb, sa * cb, ca * cb]]

    D, R = mat(*action[3:6]), mat(*pose[3:6])
    M = [[sum(D[i][k] * R[k][j] for k in range(3)) for j in range(3)] for i in range(3)]
    euler = [math.atan2(M[2][1], M[2][2]), math.asin(max(-1.0, min(1.0, -M[2][0]))), math.atan2(M[1][0], M[0][0])]
    grip = min(1.0, max(0.0, pose[6] + action[6]))
    return [pose[i] + action[i] for i in range(3)] + euler + [grip]


# ---- the fast planner --------------------------------------------------------------------------

def check_plan_inputs(predictor: ACPredictor, z: Tensor, state: Tensor, goal: Tensor) -> None:
    c = predictor.config
    if c.action_dim != ACTION_DIM or c.state_dim != ACTION_DIM:
        raise ValueError(f"planner: the predictor must take 7-d DROID actions and states, got action_dim="
                         f"{c.action_dim}, state_dim={c.state_dim}")
    shape = (c.tokens_per_frame, c.enc_dim)
    if tuple(z.shape) != shape:
        raise ValueError(f"planner: current features z must be (tokens_per_frame, enc_dim) = {shape}, got {tuple(z.shape)}")
    if tuple(goal.shape) != shape:
        raise ValueError(f"planner: goal features must be {shape} (the goal image must have the size the "
                         f"predictor was trained on), got {tuple(goal.shape)}")
    if tuple(state.shape) != (ACTION_DIM,):
        raise ValueError(f"planner: state must be (7,) = (xyz, euler, gripper), got {tuple(state.shape)}")


def draw_noise(config: CEMConfig, generator: torch.Generator | None) -> Tensor:
    """(iterations, N, H, 7) standard normal noise: every sample of every CEM iteration."""
    c = config
    return torch.randn(c.iterations, c.samples, c.horizon, ACTION_DIM, generator=generator)


class CEMPlanner:
    """dtype: the predictor's compute dtype. float32 reproduces the reference; bfloat16 runs a
    bf16 copy of the predictor (several times faster on GPUs and on CPUs with AMX/AVX512-BF16,
    slower on CPUs without) while poses, energies and the CEM statistics stay in fp32."""

    def __init__(self, predictor: ACPredictor, config: CEMConfig, dtype: torch.dtype = torch.float32):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"CEMPlanner: dtype must be float32, bfloat16 or float16, got {dtype}")
        predictor = predictor.eval()
        self.predictor = predictor if dtype == torch.float32 else copy.deepcopy(predictor).to(dtype)
        self.config = config
        self.dtype = dtype

    @torch.no_grad()
    def rollout(self, z: Tensor, state: Tensor, actions: Tensor) -> Tensor:
        """z (P, D_enc) layer-normed features of the current frame, state (7,), actions (N, H, 7)
        -> (N, P, D_enc) raw prediction after the last step. Each step feeds only its own tokens;
        earlier steps are in the key/value cache. Predictions are layer-normed before being fed
        back, as Meta's planner does."""
        N, H, _ = actions.shape
        cache = ACCache()
        zs = z.to(self.dtype).expand(N, -1, -1)
        poses = state.float().expand(N, -1)
        for h in range(H):
            pred = self.predictor.step(zs, actions[:, h].to(self.dtype), poses.to(self.dtype), cache)  # (N, P, D_enc)
            if h + 1 < H:
                zs = F.layer_norm(pred, (pred.shape[-1],))
                poses = advance_poses(poses, actions[:, h])
        return pred.float()

    @torch.no_grad()
    def plan(self, z: Tensor, state: Tensor, goal: Tensor, generator: torch.Generator | None = None,
             noise: Tensor | None = None) -> PlanResult:
        """z, goal (P, D_enc) layer-normed features; state (7,). noise (iterations, N, H, 7) if given
        (tests share it with plan_reference), else drawn from `generator`."""
        check_plan_inputs(self.predictor, z, state, goal)
        c = self.config
        noise = draw_noise(c, generator) if noise is None else noise
        v = {k: t.to(z.device) for k, t in c.per_dimension().items()}
        mean = v["mean"].expand(c.horizon, -1).clone()  # (H, 7)
        std = v["std"].expand(c.horizon, -1).clone()
        noise = noise.to(z.device)
        actions = c.close(torch.clamp(mean + std * noise[0], v["low"], v["high"]))  # (N, H, 7)
        energies = []
        for i in range(c.iterations):
            preds = self.rollout(z, state, actions)
            # The last iteration's resample is not used: give it zero noise.
            nxt = noise[i + 1] if i + 1 < c.iterations else torch.zeros_like(noise[0])
            e, mean, std, actions = cem_update(preds, goal, nxt, actions, mean, std, c.top_k, v["momentum_mean"],
                                               v["momentum_std"], v["low"], v["high"])
            actions = c.close(actions)
            energies.append(e)
        return PlanResult(final_actions(mean, c), torch.stack(energies))


def final_actions(mean: Tensor, config: CEMConfig) -> Tensor:
    """The plan: the CEM mean with small gripper deltas rounded to 0 (Meta's round_small_elements)."""
    out = mean.clone()
    g = out[:, GRIPPER]
    out[:, GRIPPER] = torch.where(g.abs() < config.gripper_threshold, torch.zeros_like(g), g)
    return out


# ---- the reference planner (Meta's structure) ----------------------------------------------------

@torch.no_grad()
def plan_reference(predictor: ACPredictor, z: Tensor, state: Tensor, goal: Tensor, config: CEMConfig,
                   noise: Tensor) -> PlanResult:
    """Meta's cem + WorldModel.infer_next_action: 4-d (xyz, gripper) mean/std, the full prefix
    re-run through predictor.forward at every rollout step in fp32, poses advanced one sample at
    a time in Python. Uses noise[i][:, h, (0, 1, 2, 6)] where Meta draws randn(N, 4)."""
    check_plan_inputs(predictor, z, state, goal)
    c = config
    N, H, P = c.samples, c.horizon, z.shape[0]
    keep = [0, 1, 2, GRIPPER]
    mean = torch.zeros(H, 4)
    std = torch.cat((torch.full((H, 3), c.maxnorm), torch.full((H, 1), c.gripper_std)), dim=1)
    for d, value in c.fixed.items():
        mean[:, keep.index(d)] = value
    goal_flat = goal.float().flatten()
    energies = []
    for i in range(c.iterations):
        frames, poses, actions = z.float()[None, None].repeat(N, 1, 1, 1), state.float()[None, None].repeat(N, 1, 1), None
        for h in range(H):
            a = noise[i][:, h, keep] * std[h] + mean[h]  # (N, 4)
            a[:, :3] = a[:, :3].clip(-c.maxnorm, c.maxnorm)
            a[:, 3:] = a[:, 3:].clip(-c.gripper_max, c.gripper_max)
            for d, value in c.fixed.items():
                a[:, keep.index(d)] = value
            a = torch.cat((a[:, :3], torch.zeros(N, 3), a[:, 3:]), dim=1)[:, None]  # (N, 1, 7)
            if c.close_gripper is not None and h >= c.close_gripper:
                a[:, :, -1] = 1.0
            actions = a if actions is None else torch.cat((actions, a), dim=1)
            out = predictor(frames.flatten(1, 2), actions, poses)[:, -P:]  # the whole prefix again
            nxt = F.layer_norm(out, (out.shape[-1],))[:, None]
            new_pose = torch.tensor([advance_pose_ref(p.tolist(), q.tolist())
                                     for p, q in zip(poses[:, -1], actions[:, -1])])[:, None]
            frames, poses = torch.cat((frames, nxt), dim=1), torch.cat((poses, new_pose), dim=1)
        e = (frames[:, -1].flatten(1) - goal_flat).abs().mean(dim=1)
        elites = actions[e.topk(c.top_k, largest=False).indices]
        em, es = elites.mean(dim=0), elites.std(dim=0)
        mean = torch.cat((em[:, :3] * (1 - c.momentum_mean) + mean[:, :3] * c.momentum_mean,
                          em[:, 6:] * (1 - c.momentum_mean_gripper) + mean[:, 3:] * c.momentum_mean_gripper), dim=1)
        std = torch.cat((es[:, :3] * (1 - c.momentum_std) + std[:, :3] * c.momentum_std,
                         es[:, 6:] * (1 - c.momentum_std_gripper) + std[:, 3:] * c.momentum_std_gripper), dim=1)
        energies.append(e)
    full = torch.cat((mean[:, :3], torch.zeros(H, 3), mean[:, 3:]), dim=1)
    return PlanResult(final_actions(full, c), torch.stack(energies))


# ---- receding-horizon MPC ----------------------------------------------------------------------

@dataclass
class Episode:
    success: bool
    steps: int
    distances: list[float]                 # distance to the goal after reset and after each step
    frames: list[np.ndarray]               # observed frames, first to last
    plan_seconds: list[float] = field(default_factory=list)  # wall time of each plan
    energies: list[Tensor] = field(default_factory=list)     # (iterations, N) per plan

    @classmethod
    def begin(cls, env, seed: int) -> tuple[Episode, dict]:
        """Resets env with seed; returns the new episode and the first observation."""
        obs, info = env.reset(seed)
        return cls(False, 0, [info["distance"]], [obs["image"]]), obs

    def step(self, env, action: np.ndarray, plan_start: float) -> tuple[dict, bool]:
        """Executes `action` (planned since perf_counter() was plan_start) and records what
        follows; returns the observation and whether the episode is over."""
        self.plan_seconds.append(time.perf_counter() - plan_start)
        obs, _, terminated, truncated, info = env.step(action)
        self.steps += 1
        self.distances.append(info["distance"])
        self.frames.append(obs["image"])
        self.success = bool(info["success"])
        return obs, terminated or truncated


def mpc_episode(env, encode, planner: CEMPlanner | None, seed: int, generator: torch.Generator) -> Episode:
    """Runs one episode: plan, execute the first action, observe, re-plan, until the env says
    terminated (success) or truncated. `encode(frame (H, W, 3) uint8) -> (P, D_enc)` layer-normed
    features. planner=None executes uniform random xyz steps of at most 5 cm per axis (the baseline)."""
    ep, obs = Episode.begin(env, seed)
    goal = encode(env.goal_image()) if planner is not None else None
    done = False
    while not done:
        start = time.perf_counter()
        if planner is None:
            action = random_action(generator)
        else:
            result = planner.plan(encode(obs["image"]), torch.from_numpy(obs["state"]), goal, generator)
            action = result.actions[0]
            ep.energies.append(result.energies)
        obs, done = ep.step(env, action.numpy().astype(np.float64), start)
    return ep


def random_action(generator: torch.Generator, maxnorm: float = 0.05) -> Tensor:
    """A random xyz step inside +-maxnorm, no rotation, no gripper move."""
    a = torch.zeros(ACTION_DIM)
    a[:3] = (torch.rand(3, generator=generator) * 2 - 1) * maxnorm
    return a
