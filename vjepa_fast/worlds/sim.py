"""A small built-in tabletop for planning experiments, with a gymnasium-style interface.

Seen from above, an end-effector (a soft disk: larger when higher, green when the gripper is
open, red when closed) moves over a table; in the "push" task a blue block lies on the table and
is pushed along when the end-effector touches it while low. Actions follow the DROID conventions
the released V-JEPA 2-AC model was trained with: 7-d (delta xyz in metres, delta euler angles,
delta gripper); the rotation deltas are accepted and ignored (the end-effector keeps a fixed
orientation). The state is 7-d (xyz, euler, gripper closedness in [0, 1]).

Tasks:
  "reach": the goal is an end-effector position on the working height; success when the
           end-effector is within `success_radius` of it.
  "push":  the goal is a block position; success when the block is within `success_radius`.

Everything is numpy and deterministic under `reset(seed)`. Frames are (S, S, 3) uint8 RGB.
The end-effector is drawn as a smooth blob on purpose: the rendered image (and so its features)
changes gradually with position, which gives the planner's energy a slope to follow.

`GymAdapter` lets any gymnasium-style environment drive the planner instead (see its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

TASKS = ("reach", "push")


@dataclass
class SimConfig:
    task: str = "reach"             # "reach" or "push"
    image_size: int = 64            # rendered frames are image_size x image_size RGB
    workspace: float = 0.3          # x, y in [-workspace, workspace] metres; the frame shows exactly that
    z_min: float = 0.0              # table height
    z_max: float = 0.2
    start_z: float = 0.1            # reach: start and goal height
    max_delta: float = 0.05         # per-step |delta xyz| is clipped to this (metres)
    goal_min_dist: float = 0.08     # goals are drawn this far ...
    goal_max_dist: float = 0.2      # ... to this far from the start (metres)
    success_radius: float = 0.04
    max_steps: int = 12             # an episode is truncated after this many steps
    blob_sigma: float = 0.04        # end-effector blob width at z = start_z (metres)
    block_half: float = 0.03        # push: half side of the block (metres)
    push_height: float = 0.05       # push: the end-effector pushes only below this height

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"SimConfig.task must be one of {TASKS}, got {self.task!r}")
        if self.image_size < 16:
            raise ValueError(f"SimConfig.image_size must be >= 16, got {self.image_size}")
        if not 0 < self.goal_min_dist <= self.goal_max_dist < self.workspace:
            raise ValueError("SimConfig: need 0 < goal_min_dist <= goal_max_dist < workspace, got "
                             f"{self.goal_min_dist}, {self.goal_max_dist}, {self.workspace}")


class TabletopEnv:
    """reset(seed) -> (obs, info); step(action (7,)) -> (obs, reward, terminated, truncated, info);
    render() -> (S, S, 3) uint8; goal_image() -> the frame of the goal configuration.
    obs = {"image": render(), "state": (7,) float32}; reward = -distance to the goal."""

    action_dim = 7
    state_dim = 7

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        c = self.config
        # Pixel centres in metres, (S,) each: the image spans [-workspace, workspace] in x and y.
        centres = (np.arange(c.image_size) + 0.5) / c.image_size * 2 * c.workspace - c.workspace
        self._px, self._py = np.meshgrid(centres, -centres)  # row 0 is the far edge (+y)
        self.ee = np.zeros(3)
        self.gripper = 0.0
        self.block = np.zeros(2)
        self.goal = np.zeros(3)
        self.steps = 0

    # ---- gymnasium-style interface ------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[dict, dict]:
        c = self.config
        rng = np.random.default_rng(seed)
        lim = c.workspace - c.goal_max_dist  # keep start + goal inside the frame
        self.ee = np.array([*rng.uniform(-lim, lim, 2), c.start_z])
        self.gripper = 0.0
        angle = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(c.goal_min_dist, c.goal_max_dist)
        offset = dist * np.array([np.cos(angle), np.sin(angle)])
        if c.task == "reach":
            self.block = np.full(2, np.inf)  # no block
            self.goal = np.array([*(self.ee[:2] + offset), c.start_z])
        else:
            self.block = self.ee[:2] + 0.5 * offset
            self.goal = np.array([*(self.block + offset), 0.0])
        self.steps = 0
        return self._obs(), self._info()

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        c = self.config
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,):
            raise ValueError(f"TabletopEnv.step: action must have shape (7,) = (delta xyz, delta euler, "
                             f"delta gripper), got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError("TabletopEnv.step: action contains NaN or inf")
        delta = np.clip(action[:3], -c.max_delta, c.max_delta)
        self.ee = self.ee + delta
        self.ee[:2] = np.clip(self.ee[:2], -c.workspace, c.workspace)
        self.ee[2] = np.clip(self.ee[2], c.z_min, c.z_max)
        self.gripper = float(np.clip(self.gripper + action[6], 0.0, 1.0))
        if c.task == "push":
            self._push()
        self.steps += 1
        info = self._info()
        return self._obs(), -info["distance"], bool(info["success"]), self.steps >= c.max_steps, info

    def render(self) -> np.ndarray:
        return self._draw(self.ee, self.gripper, self.block)

    def goal_image(self) -> np.ndarray:
        """Reach: the end-effector at the goal. Push: the block at the goal, the end-effector where it is."""
        if self.config.task == "reach":
            return self._draw(self.goal, self.gripper, self.block)
        return self._draw(self.ee, self.gripper, self.goal[:2])

    def state(self) -> np.ndarray:
        """(7,) float32: xyz, euler (always 0: the orientation is fixed), gripper closedness."""
        return np.array([*self.ee, 0.0, 0.0, 0.0, self.gripper], dtype=np.float32)

    # ---- internals -----------------------------------------------------------------------
    def _push(self) -> None:
        """A low end-effector closer than block_half + its reach pushes the block straight away."""
        c = self.config
        if self.ee[2] > c.push_height:
            return
        reach = c.block_half + c.blob_sigma
        gap = self.block - self.ee[:2]
        d = float(np.linalg.norm(gap))
        if d < reach:
            direction = gap / d if d > 1e-9 else np.array([1.0, 0.0])
            self.block = np.clip(self.ee[:2] + direction * reach, -c.workspace, c.workspace)

    def _info(self) -> dict:
        c = self.config
        if c.task == "reach":
            distance = float(np.linalg.norm(self.ee - self.goal))
        else:
            distance = float(np.linalg.norm(self.block - self.goal[:2]))
        return {"distance": distance, "success": distance < c.success_radius, "goal": self.goal.copy()}

    def _obs(self) -> dict:
        return {"image": self.render(), "state": self.state()}

    def _draw(self, ee: np.ndarray, gripper: float, block: np.ndarray) -> np.ndarray:
        c = self.config
        img = np.empty((c.image_size, c.image_size, 3))
        img[:] = (0.82, 0.72, 0.55)  # table
        if np.isfinite(block).all():
            inside = (np.abs(self._px - block[0]) < c.block_half) & (np.abs(self._py - block[1]) < c.block_half)
            img[inside] = (0.15, 0.3, 0.85)
        # Higher end-effector -> wider blob (closer to the camera).
        sigma = c.blob_sigma * (1.0 + (ee[2] - c.start_z) / (c.z_max - c.z_min))
        r2 = (self._px - ee[0]) ** 2 + (self._py - ee[1]) ** 2
        alpha = np.exp(-r2 / (2 * sigma**2))[..., None]  # (S, S, 1)
        colour = (1 - gripper) * np.array((0.1, 0.75, 0.2)) + gripper * np.array((0.85, 0.1, 0.1))
        img = (1 - alpha) * img + alpha * colour
        return (img * 255).round().astype(np.uint8)


class GymAdapter:
    """Makes a gymnasium-style environment look like TabletopEnv to the planner and MPC loop.

    The planner works in DROID conventions: 7-d delta actions (xyz, euler, gripper) and a 7-d
    pose state. Any environment plugs in with two small functions:
      state_fn(env) -> (7,) pose of its end-effector (xyz, euler, gripper);
      action_fn(action (7,)) -> the action its step() takes;
    plus goal_fn(env) -> (S, S, 3) uint8 goal frame. Frames come from env.render(), which must
    return RGB uint8 (gymnasium's render_mode="rgb_array"). gymnasium itself is not needed:
    anything with reset(seed=...), step(action) -> 5-tuple and render() works. The MPC loop
    (vjepa_fast.planner.mpc_episode) reads info["distance"] and info["success"] from reset and
    step: wrap the env (gymnasium.Wrapper or a small class) to add them if it lacks them.
    """

    action_dim = 7
    state_dim = 7

    def __init__(self, env, state_fn: Callable, action_fn: Callable, goal_fn: Callable):
        self.env, self.state_fn, self.action_fn, self.goal_fn = env, state_fn, action_fn, goal_fn

    def _obs(self) -> dict:
        return {"image": self.render(), "state": np.asarray(self.state_fn(self.env), dtype=np.float32)}

    def reset(self, seed: int | None = None) -> tuple[dict, dict]:
        _, info = self.env.reset(seed=seed)
        return self._obs(), info

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        _, reward, terminated, truncated, info = self.env.step(self.action_fn(np.asarray(action)))
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        frame = np.ascontiguousarray(self.env.render())  # MuJoCo's frames come flipped (negative strides)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"GymAdapter: env.render() must return (H, W, 3) uint8 RGB, got "
                             f"{frame.dtype} {frame.shape} (use render_mode='rgb_array')")
        return frame

    def goal_image(self) -> np.ndarray:
        return np.asarray(self.goal_fn(self.env))

    def close(self) -> None:
        """Closes the environment (MuJoCo frees its rendering context here, not at interpreter exit)."""
        if hasattr(self.env, "close"):
            self.env.close()

    def state(self) -> np.ndarray:
        return np.asarray(self.state_fn(self.env), dtype=np.float32)
