"""Trajectory collection in the Fetch simulator, for V-JEPA 2-AC post-training.

    python -m vjepa_fast.collect --env fetch-push --episodes 200      # OUT = outputs/collect/fetch-push

Each episode i starts from env.reset(seed + i) and is written as OUT/traj_<i>.mp4 + .npz in the
project's trajectory format (vjepa_fast.worlds.trajectories; train_ac --data-dir OUT reads it).
Actions are DROID deltas, the planner's action space: a share of the episodes (--scripted) are
noisy scripted motions that reach for the object (Push: come from behind it and push it a few
steps along a random direction; PickAndPlace: descend over it, close, lift; Reach: head for a random point),
the rest random exploration; both are clipped to what Fetch realises in one step. Episodes run in
--workers processes (each with its own simulator); a finished trajectory is never redone, so an
interrupted run continues where it stopped (other settings in the same OUT are refused).
"""
from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vjepa_fast.files import FolderLock, atomic_write, remove_stale_temps
from vjepa_fast.jobs import cli
from vjepa_fast.worlds.fetch import FETCH_TASKS, MAX_DELTA, TRACKING
from vjepa_fast.worlds.trajectories import list_trajectories, write_trajectory

STEP = MAX_DELTA * TRACKING  # the largest xyz delta Fetch realises in one step (metres)
# What the trajectories depend on: a resumed folder must have been collected with the same.
SETTINGS = ("env", "frames", "image_size", "seed", "scripted", "noise")


@dataclass
class CollectConfig:
    env: str = field(default="fetch-push", metadata={"help": f"Fetch task: {', '.join(FETCH_TASKS)}"})
    episodes: int = field(default=200, metadata={"help": "trajectories to collect"})
    frames: int = field(default=16, metadata={"help": "frames per trajectory (frames - 1 actions)"})
    image_size: int = field(default=64, metadata={"help": "rendered frames are this many pixels square (the "
                                                          "encoder's crop: 64 for the tiny one, 256 for ViT-L)"})
    out: str = field(default="", metadata={"help": "output folder (default outputs/collect/<env>)"})
    seed: int = field(default=0, metadata={"help": "episode i resets the environment with seed + i"})
    scripted: float = field(default=0.5, metadata={"help": "share of episodes that are scripted motions toward the "
                                                           "object (the rest random exploration)"})
    noise: float = field(default=0.006, metadata={"help": "std of the Gaussian noise on scripted deltas (metres)"})
    workers: int = field(default=2, metadata={"help": "simulator processes"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self):
        if not self.out:
            self.out = f"outputs/collect/{self.env}"
        cli.check_fields(self, at_least_1=("episodes", "image_size", "workers"), at_least_0=("seed",),
                         numbers=("scripted", "noise"), choices={"env": FETCH_TASKS}, folders=("out",))
        if self.frames < 2:
            raise ValueError(f"--frames must be >= 2 (one action), got {self.frames}")
        if not 0 <= self.scripted <= 1 or self.noise < 0:
            raise ValueError(f"--scripted must be in [0, 1] and --noise >= 0, got {self.scripted}, {self.noise}")


def scripted_delta(task: str, state: np.ndarray, obj: np.ndarray, plan: dict, t: int) -> np.ndarray:
    """The scripted policy's xyz delta and gripper delta at step t (before noise and clipping)."""
    ee = state[:3]
    if task == "fetch-reach":
        return np.concatenate([plan["point"] - ee, [0.0]])
    direction = plan["direction"]
    if task == "fetch-push":  # over a point behind the object, down beside it, a push of a few steps, rest
        behind = obj - direction * 0.06
        if t < plan["approach"]:
            return np.concatenate([behind + np.array([0.0, 0.0, 0.05]) - ee, [0.0]])
        if t < plan["approach"] + 2:
            return np.concatenate([behind - ee, [0.0]])
        if t < plan["approach"] + 2 + plan["push"]:
            return np.concatenate([direction * STEP, [0.0]])
        return np.zeros(4)
    # pick and place: open and go over the object, descend, close, lift
    above = obj + np.array([0.0, 0.0, 0.06])
    if t < plan["approach"]:
        return np.concatenate([above - ee, [-1.0]])
    if t < plan["approach"] + 3:
        return np.concatenate([obj - ee, [-1.0]])
    if t < plan["approach"] + 5:
        return np.array([0.0, 0.0, 0.0, 1.0])
    return np.array([0.0, 0.0, STEP, 1.0])


def collect_episode(env, config: CollectConfig, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames (T, S, S, 3), states (T, 7), actions (T-1, 7)) of episode `index`."""
    rng = np.random.default_rng([config.seed, index])
    obs, _ = env.reset(seed=config.seed + index)
    u = env.env.unwrapped
    scripted = rng.random() < config.scripted
    angle = rng.uniform(0, 2 * np.pi)
    plan = {"direction": np.array([np.cos(angle), np.sin(angle), 0.0]), "approach": int(rng.integers(4, 7)),
            "push": int(rng.integers(2, 6)),
            "point": u.initial_gripper_xpos + rng.uniform([-0.15, -0.15, -0.1], [0.15, 0.15, 0.1])}
    images, states, actions = [obs["image"]], [obs["state"]], []
    for t in range(config.frames - 1):
        obj = u._utils.get_site_xpos(u.model, u.data, "object0").copy() if u.has_object else None
        if scripted:
            delta = scripted_delta(config.env, obs["state"], obj, plan, t)
            delta[:3] += rng.normal(0, config.noise, 3)
        else:
            delta = np.concatenate([rng.uniform(-STEP, STEP, 3), [rng.uniform(-1, 1) if rng.random() < 0.3 else 0.0]])
        action = np.zeros(7)
        action[:3] = np.clip(delta[:3], -STEP, STEP)
        action[6] = np.clip(delta[3], -1.0, 1.0)
        obs, *_ = env.step(action)
        images.append(obs["image"])
        states.append(obs["state"])
        actions.append(action)
    return np.stack(images), np.stack(states), np.stack(actions).astype(np.float32)


_ENV = None  # each worker process's simulator


def _worker_episodes(config: CollectConfig, indices: list[int]) -> list[int]:
    global _ENV
    from vjepa_fast.worlds.fetch import fetch_adapter
    if _ENV is None:
        _ENV = fetch_adapter(config.env, config.image_size, max_steps=config.frames)
    for i in indices:
        frames, states, actions = collect_episode(_ENV, config, i)
        write_trajectory(Path(config.out) / f"traj_{i:05d}", frames, states, actions)
    return indices


def _claim(out: Path, config: CollectConfig) -> None:
    """One run per folder; a folder collected with other settings is refused by name."""
    FolderLock(out).acquire()
    remove_stale_temps(out)
    path = out / "collect.json"
    settings = {k: getattr(config, k) for k in SETTINGS}
    if path.exists():
        before = json.loads(path.read_text())
        changed = [f"{cli.flag(k)} {before.get(k)!r} there, {v!r} now" for k, v in settings.items() if before.get(k) != v]
        if changed:
            raise ValueError(f"--out {out} holds trajectories collected with other settings ({'; '.join(changed)}): "
                             "give another --out")
    text = json.dumps(settings, indent=2)
    atomic_write(path, lambda p: Path(p).write_text(text))


def collect(config: CollectConfig) -> list[Path]:
    """Collects the episodes not yet in config.out; returns every trajectory stem there."""
    out = Path(config.out)
    _claim(out, config)
    done = {int(s.name.split("_")[1]) for s in list_trajectories(out)}
    todo = [i for i in range(config.episodes) if i not in done]
    bar = tqdm(total=config.episodes, initial=config.episodes - len(todo), desc=f"collect {config.env}",
               unit="episode", disable=not config.progress)
    if todo:
        workers = min(config.workers, len(todo))
        chunks = [todo[w::workers] for w in range(workers)]
        chunks = [c[i:i + 4] for c in chunks for i in range(0, len(c), 4)]  # small tasks: a steady bar
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_worker_episodes, config, chunk) for chunk in chunks]):
                bar.update(len(future.result()))
    bar.close()
    stems = [s for s in list_trajectories(out) if int(s.name.split("_")[1]) < config.episodes]
    print(f"{out}: {len(stems)} trajectories of {config.frames} frames ({len(todo)} collected now, "
          f"{config.episodes - len(todo)} there before); train with: python -m vjepa_fast.train_ac --data-dir {out}")
    return stems


PROG = "python -m vjepa_fast.collect"


def main(argv: list[str] | None = None) -> None:
    config = cli.parse(CollectConfig, argv, PROG, __doc__)
    cli.run(collect, config, PROG)

