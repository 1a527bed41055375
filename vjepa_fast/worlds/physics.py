"""Procedurally generated physics clips: balls under gravity bouncing off walls and each other.

The embedded default data set for pre-training (no download needed) and the source of labelled
tasks for probes: every clip comes with the ground-truth state of every ball at every frame.

Units: a clip is `size` x `size` pixels; positions are in pixels (x to the right, y down, origin at
the top-left corner), velocities in pixels per frame. Physical parameters in PhysicsConfig are
given as fractions of the frame size so a clip looks the same at any resolution.

Ball i is always drawn in PALETTE[i], so a probe can ask about "ball 0" (red) unambiguously.
The balls move over a static grey background with a blocky random brightness texture (a new one
per clip): on a flat background most tokens of a clip are identical and JEPA training mostly learns
to predict "background"; the texture is detail that a masked block cannot predict from the rest of
the clip, so learnt features give it little weight, while a random encoder's mix it with the balls.
Everything is deterministic under the seed (numpy's PCG64).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

# RGB in [0, 1]: red, green, blue, yellow, magenta, cyan, orange, white.
PALETTE = np.array([[0.95, 0.2, 0.2], [0.2, 0.85, 0.3], [0.25, 0.45, 1.0], [0.95, 0.9, 0.2],
                    [0.9, 0.3, 0.9], [0.2, 0.9, 0.9], [1.0, 0.6, 0.15], [0.95, 0.95, 0.95]], dtype=np.float32)
BACKGROUND = np.array([0.35, 0.35, 0.38], dtype=np.float32)


@dataclass
class PhysicsConfig:
    frames: int = 16            # frames per clip
    size: int = 64              # clip height = width, pixels
    min_balls: int = 1
    max_balls: int = 3
    gravity: float = 0.004      # downward acceleration, frame heights per frame^2
    min_radius: float = 0.07    # ball radius, fraction of the frame size
    max_radius: float = 0.12
    max_speed: float = 0.05     # initial speed per axis, U(-max, max), frame sizes per frame
    restitution: float = 1.0    # fraction of speed kept by a wall bounce (1 = elastic)
    substeps: int = 8           # integration steps per frame (collisions are resolved per step)
    texture: float = 0.25       # background brightness noise, U(-texture, texture) per cell (0 = flat)
    texture_cells: int = 8      # background texture cells per side

    def __post_init__(self):
        for name in ("frames", "size", "min_balls", "max_balls", "substeps", "texture_cells"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PhysicsConfig.{name} must be a positive int, got {value!r}")
        if self.max_balls < self.min_balls or self.max_balls > len(PALETTE):
            raise ValueError(f"PhysicsConfig: need min_balls <= max_balls <= {len(PALETTE)}, "
                             f"got {self.min_balls} and {self.max_balls}")
        if not 0 < self.min_radius <= self.max_radius < 0.25:
            raise ValueError(f"PhysicsConfig: need 0 < min_radius <= max_radius < 0.25 (fractions of the "
                             f"frame), got {self.min_radius} and {self.max_radius}")
        if not 0 <= self.texture <= 0.35:
            raise ValueError(f"PhysicsConfig.texture must be in [0, 0.35] (brightness), got {self.texture!r}")
        if self.gravity < 0 or self.max_speed < 0 or not 0 <= self.restitution <= 1:
            raise ValueError("PhysicsConfig: gravity and max_speed must be >= 0 and restitution in [0, 1], got "
                             f"{self.gravity}, {self.max_speed}, {self.restitution}")


def _place_balls(rng: np.random.Generator, radii: np.ndarray, size: float) -> np.ndarray:
    """Non-overlapping starting positions by rejection sampling (few balls, so this is quick);
    after many failures the balls are allowed to overlap, and the first collision separates them."""
    positions = np.zeros((len(radii), 2))
    for i, r in enumerate(radii):
        for _ in range(100):
            p = rng.uniform(r, size - r, size=2)
            if all(np.hypot(*(p - positions[j])) >= r + radii[j] for j in range(i)):
                break
        positions[i] = p
    return positions


def _collide_pairs(pos: np.ndarray, vel: np.ndarray, radii: np.ndarray) -> bool:
    """Elastic collisions between overlapping, approaching balls (mass ~ area); returns whether any
    happened. Overlap is pushed apart along the normal so balls never stick together."""
    hit = False
    mass = radii ** 2
    for i in range(len(radii)):
        for j in range(i + 1, len(radii)):
            delta = pos[j] - pos[i]
            dist = np.hypot(*delta)
            overlap = radii[i] + radii[j] - dist
            if overlap <= 0:
                continue
            normal = delta / dist if dist > 1e-9 else np.array([1.0, 0.0])
            approach = np.dot(vel[i] - vel[j], normal)
            if approach > 0:
                impulse = 2 * approach / (mass[i] + mass[j])
                vel[i] -= impulse * mass[j] * normal
                vel[j] += impulse * mass[i] * normal
                hit = True
            share = overlap / (mass[i] + mass[j])
            pos[i] -= share * mass[j] * normal
            pos[j] += share * mass[i] * normal
    return hit


def _bounce_walls(pos: np.ndarray, vel: np.ndarray, radii: np.ndarray, size: float, restitution: float) -> None:
    for axis in range(2):
        low, high = pos[:, axis] < radii, pos[:, axis] > size - radii
        pos[low, axis] = 2 * radii[low] - pos[low, axis]
        pos[high, axis] = 2 * (size - radii[high]) - pos[high, axis]
        vel[low, axis] = np.abs(vel[low, axis]) * restitution
        vel[high, axis] = -np.abs(vel[high, axis]) * restitution


def simulate(config: PhysicsConfig, rng: np.random.Generator) -> dict:
    """The ball states at every frame (before rendering)."""
    c = config
    n = int(rng.integers(c.min_balls, c.max_balls + 1))
    radii = rng.uniform(c.min_radius, c.max_radius, size=n) * c.size
    pos = _place_balls(rng, radii, c.size)
    vel = rng.uniform(-c.max_speed, c.max_speed, size=(n, 2)) * c.size
    gravity = np.array([0.0, c.gravity * c.size])
    dt = 1.0 / c.substeps
    positions, velocities, collided = np.zeros((c.frames, n, 2)), np.zeros((c.frames, n, 2)), False
    for t in range(c.frames):
        positions[t], velocities[t] = pos, vel
        for _ in range(c.substeps):
            # Semi-implicit Euler: velocity first, so a ball resting on the floor stays there.
            vel += gravity * dt
            pos += vel * dt
            _bounce_walls(pos, vel, radii, c.size, c.restitution)
            collided |= _collide_pairs(pos, vel, radii)
    return {"positions": positions, "velocities": velocities, "radii": radii, "collided": bool(collided)}


def background(config: PhysicsConfig, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32: BACKGROUND plus a grey brightness offset drawn per texture cell."""
    cells = rng.uniform(-config.texture, config.texture, size=(config.texture_cells, config.texture_cells))
    rows = np.arange(config.size) * config.texture_cells // config.size  # pixel -> cell index
    return (BACKGROUND + cells[rows][:, rows, None]).astype(np.float32)


def render(positions: np.ndarray, radii: np.ndarray, size: int, backdrop: np.ndarray | None = None) -> np.ndarray:
    """(T, n, 2) pixel positions -> (T, size, size, 3) uint8: anti-aliased discs (one pixel of
    soft edge) painted in index order over `backdrop` (size, size, 3), by default plain BACKGROUND."""
    T, n, _ = positions.shape
    centres = np.arange(size, dtype=np.float32) + 0.5
    backdrop = BACKGROUND if backdrop is None else backdrop
    frames = np.broadcast_to(backdrop, (T, size, size, 3)).copy()
    for i in range(n):
        dx = centres[None, None, :] - positions[:, i, 0, None, None].astype(np.float32)  # (T, 1, W)
        dy = centres[None, :, None] - positions[:, i, 1, None, None].astype(np.float32)  # (T, H, 1)
        cover = np.clip(radii[i] - np.sqrt(dx * dx + dy * dy) + 0.5, 0.0, 1.0)[..., None]  # (T, H, W, 1)
        frames = frames * (1 - cover) + PALETTE[i] * cover
    return (frames * 255 + 0.5).astype(np.uint8)


def generate_clip(config: PhysicsConfig, seed: int) -> tuple[torch.Tensor, dict]:
    """One clip: uint8 video (T, H, W, 3) and its ground truth
    {"positions": (T, n, 2), "velocities": (T, n, 2) float32 pixels (per frame), "num_balls": n,
     "collided": whether two balls collided, "radii": (n,) pixels}."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"generate_clip: seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    state = simulate(config, rng)
    # Drawn after the simulation, so the texture setting does not change the balls' motion.
    video = torch.from_numpy(render(state["positions"], state["radii"], config.size, background(config, rng)))
    info = {"positions": torch.from_numpy(state["positions"]).float(),
            "velocities": torch.from_numpy(state["velocities"]).float(),
            "num_balls": len(state["radii"]), "collided": state["collided"],
            "radii": torch.from_numpy(state["radii"]).float()}
    return video, info


def clip_seed(seed: int, index: int) -> int:
    """The generator seed of clip `index` of a data set seeded with `seed` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class PhysicsClips(Dataset):
    """Clip `index` of this data set is generate_clip(config, clip_seed(seed, index)): any index is
    valid (the data set is unbounded, `length` only sets what len() reports to samplers), and the
    same index always gives the same clip, in any worker, on any rank."""

    def __init__(self, config: PhysicsConfig, seed: int = 0, length: int = 2**31 - 1):
        self.config, self.seed, self.length = config, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return generate_clip(self.config, clip_seed(self.seed, index))


def write_mp4(video: torch.Tensor, path: str | Path, fps: float = 8.0) -> None:
    """(T, H, W, 3) uint8 -> an MP4 file, with torchcodec's encoder."""
    from torchcodec.encoders import VideoEncoder
    VideoEncoder(video.permute(0, 3, 1, 2).contiguous(), frame_rate=fps).to_file(str(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write physics clips as MP4 files (a look at the embedded data).")
    parser.add_argument("--out", default="outputs/physics", help="output folder")
    parser.add_argument("--count", type=int, default=4, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="data set seed")
    parser.add_argument("--frames", type=int, default=32, help="frames per clip")
    parser.add_argument("--size", type=int, default=128, help="clip height and width in pixels")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    try:
        clips = PhysicsClips(PhysicsConfig(frames=args.frames, size=args.size), seed=args.seed)
    except ValueError as e:
        parser.error(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        video, info = clips[i]
        write_mp4(video, out / f"clip_{i:04d}.mp4")
        print(f"{out / f'clip_{i:04d}.mp4'}: {info['num_balls']} balls, collided={info['collided']}")


if __name__ == "__main__":
    main()
