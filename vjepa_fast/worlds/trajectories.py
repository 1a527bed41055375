"""Robot trajectories on disk: generation from the built-in sim, writing and loading.

On-disk format: one pair of files per trajectory, in one directory:
  <name>.mp4  T RGB frames, H.264 (libx264, crf 0, yuv444p: near-lossless, <= 2 levels of
              colour-conversion rounding), written and read with torchcodec.
  <name>.npz  states  (T, 7) float32: the pose at each frame (xyz, euler, gripper closedness);
              actions (T-1, 7) float32: the action taken between frame t and frame t+1
              (delta xyz, delta euler, delta gripper), DROID conventions.
Any dataset converted to this layout (e.g. DROID episodes, with states from the robot's
cartesian position and actions as pose differences) trains with vjepa_fast.train_ac.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from vjepa_fast.files import atomic_write
from vjepa_fast.worlds.sim import SimConfig, TabletopEnv


@dataclass
class Trajectory:
    frames: Tensor   # (T, H, W, 3) uint8
    states: Tensor   # (T, 7) float32
    actions: Tensor  # (T-1, 7) float32


def write_trajectory(stem: Path, frames: np.ndarray, states: np.ndarray, actions: np.ndarray) -> None:
    """Writes stem.mp4 and stem.npz (each atomically); frames (T, H, W, 3) uint8."""
    from torchcodec.encoders import VideoEncoder
    T = len(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_trajectory: frames must be (T, H, W, 3) uint8, got {frames.dtype} {frames.shape}")
    if states.shape[0] != T or actions.shape[0] != T - 1:
        raise ValueError(f"write_trajectory: need T={T} states and T-1={T - 1} actions, got "
                         f"{states.shape[0]} and {actions.shape[0]}")
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W)
    # Encoded in memory: the container is named explicitly, since atomic_write's temporary name has no .mp4.
    mp4 = VideoEncoder(video, frame_rate=4).to_tensor("mp4", codec="libx264", crf=0, pixel_format="yuv444p")
    atomic_write(stem.with_suffix(".mp4"), lambda p: Path(p).write_bytes(mp4.numpy().tobytes()))
    arrays = {"states": states.astype(np.float32), "actions": actions.astype(np.float32)}

    def save(p):
        with open(p, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(stem.with_suffix(".npz"), save)


def load_trajectory(stem: Path) -> Trajectory:
    from torchcodec.decoders import VideoDecoder
    stem = Path(stem)
    data = np.load(stem.with_suffix(".npz"))
    frames = VideoDecoder(str(stem.with_suffix(".mp4")))[:].permute(0, 2, 3, 1)  # (T, H, W, 3)
    states, actions = torch.from_numpy(data["states"]), torch.from_numpy(data["actions"])
    if len(frames) != len(states) or len(actions) != len(states) - 1:
        raise ValueError(f"{stem}: {len(frames)} frames, {len(states)} states and {len(actions)} actions; "
                         "expected T frames, T states and T-1 actions")
    return Trajectory(frames, states, actions)


def list_trajectories(directory: Path) -> list[Path]:
    """Stems of the complete (mp4 + npz) trajectories in a directory, sorted."""
    stems = sorted(p.with_suffix("") for p in Path(directory).glob("*.npz"))
    return [s for s in stems if s.with_suffix(".mp4").exists()]


def random_actions(rng: np.random.Generator, count: int, max_delta: float) -> np.ndarray:
    """(count, 7) exploration actions: uniform xyz deltas, zero rotation, occasional gripper moves."""
    actions = np.zeros((count, 7))
    actions[:, :3] = rng.uniform(-max_delta, max_delta, (count, 3))
    actions[:, 6] = np.where(rng.random(count) < 0.2, rng.uniform(-1, 1, count), 0.0)
    return actions


def generate_trajectories(directory: Path, count: int, frames: int, seed: int,
                          sim: SimConfig | None = None) -> list[Path]:
    """count random-action trajectories of `frames` frames from the sim, named traj_00000 ...;
    trajectory i starts from env.reset(seed + i), so the set is reproducible."""
    if frames < 2:
        raise ValueError(f"generate_trajectories: frames must be >= 2 (one action), got {frames}")
    env = TabletopEnv(sim)
    rng = np.random.default_rng(seed)
    stems = []
    for i in tqdm(range(count), desc="sim trajectories", leave=False):
        obs, _ = env.reset(seed + i)
        images, states = [obs["image"]], [obs["state"]]
        actions = random_actions(rng, frames - 1, env.config.max_delta)
        for a in actions:
            obs, *_ = env.step(a)
            images.append(obs["image"])
            states.append(obs["state"])
        stem = Path(directory) / f"traj_{i:05d}"
        write_trajectory(stem, np.stack(images), np.stack(states), actions)
        stems.append(stem)
    return stems
