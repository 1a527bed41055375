"""Closed-loop planning: V-JEPA 2-AC + CEM + receding-horizon MPC, on the built-in sim or in Fetch.

    python -m vjepa_fast.plan                  # the reach task, end to end, on a CPU in a few minutes
    python -m vjepa_fast.plan --env fetch-reach   # the same in gymnasium-robotics' Fetch (MuJoCo, the sim extra)

In Fetch the predictor is trained on trajectories collected there first (vjepa_fast.collect,
CACHE_DIR/trajectories), and the environment's scripted oracle is evaluated beside the planner
and random actions (Reach: straight to the goal; Push: behind the object, then along the line
to the goal).

Without --checkpoint it uses CACHE_DIR/ac_predictor.pt, training one first with
vjepa_fast.train_ac (sim trajectories, random-init tiny encoder) when it is missing. Then it runs
EPISODES reach episodes with fixed seeds (episode i: env.reset(seed + i)) with the planner and
with random actions, and writes to OUT: results.json, trajectory.png (the frames of the
first planned episode and its goal), energy.png (energy per CEM iteration) and episodes.mp4 (the
first three planned episodes, each frame beside its goal).

CPU defaults: 100 samples, 5 iterations, horizon 2 (Meta: 400 samples, 10 iterations, horizon 2);
the gripper delta is fixed to 0 (--fix 6=0), as reaching does not use it (Meta's axis={3: 0}).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vjepa_fast.ac_model import ACConfig, ACPredictor, encode_frames
from vjepa_fast.config import VJEPA2Config
from vjepa_fast.model import VJEPA2Model
from vjepa_fast.planner import CEMConfig, CEMPlanner, Episode, mpc_episode
from vjepa_fast.worlds.fetch import FETCH_TASKS
from vjepa_fast.worlds.sim import SimConfig, TabletopEnv
from vjepa_fast.files import atomic_write
from vjepa_fast.jobs import cli
from vjepa_fast.jobs.train_ac import TrainACConfig, train


@dataclass
class PlanConfig:
    checkpoint: str = field(default="", metadata={"help": "trained predictor (ac_predictor.pt from train_ac); empty: "
                                                          "CACHE_DIR/ac_predictor.pt, trained first if missing"})
    env: str = field(default="tabletop", metadata={"help": "tabletop (the built-in reach sim) or a Fetch task: "
                                                        + ", ".join(FETCH_TASKS)})
    cache_dir: str = field(default="", metadata={"help": "where the default predictor is trained and kept (default "
                                                        "outputs/ac, in Fetch outputs/ac-<env>)"})
    collect_episodes: int = field(default=300, metadata={"help": "Fetch: trajectories collected to train a predictor"})
    train_steps: int | None = field(default=None, metadata={"help": "optimizer steps when a predictor has to be "
                                                                    "trained (default 1200 on the tabletop, 2400 in "
                                                                    "Fetch)"})
    out: str = field(default="outputs/plan", metadata={"help": "results.json, trajectory.png and energy.png go here"})
    episodes: int = field(default=20, metadata={"help": "episodes for the planner and for the random baseline each"})
    seed: int = field(default=1000, metadata={"help": "episode i uses env.reset(seed + i); planning noise is seeded too"})
    max_steps: int = field(default=12, metadata={"help": "actions per episode before it is truncated"})
    horizon: int = field(default=2, metadata={"help": "CEM rollout steps"})
    samples: int = field(default=100, metadata={"help": "CEM samples per iteration (Meta: 400)"})
    top_k: int = field(default=10, metadata={"help": "CEM elites"})
    iterations: int = field(default=5, metadata={"help": "CEM iterations per action (Meta: 10)"})
    maxnorm: float = field(default=0.05, metadata={"help": "bound and initial std of the xyz deltas (metres)"})
    momentum_mean: float = field(default=0.15, metadata={"help": "CEM momentum of the mean"})
    momentum_std: float = field(default=0.15, metadata={"help": "CEM momentum of the std"})
    fix: str = field(default="6=0", metadata={"help": "action dimensions the planner holds, index=value pairs (0-2 "
                                                   "xyz, 6 gripper; Meta's axis={3: 0} is 6=0); empty: none"})
    close_gripper: int | None = field(default=None, metadata={"help": "rollout step from which every sampled plan "
                                                                      "closes the gripper (delta 1, over --fix); "
                                                                      "Meta's close_gripper. Unset: never"})
    dtype: str = field(default="float32", metadata={"help": "predictor compute dtype while planning: float32 or "
                                                            "bfloat16 (faster on GPUs and CPUs with AMX/AVX512-BF16)"})

    def __post_init__(self):
        if not self.cache_dir:
            self.cache_dir = "outputs/ac" if self.env == "tabletop" else f"outputs/ac-{self.env}"
        if self.train_steps is None:
            self.train_steps = 1200 if self.env == "tabletop" else 2400
        cli.check_fields(self, at_least_1=("collect_episodes", "train_steps"),
                         choices={"dtype": ("float32", "bfloat16"), "env": ("tabletop", *FETCH_TASKS)},
                         folders=("out", "cache_dir"))
        if self.episodes < 1 or self.max_steps < 1:
            raise ValueError(f"PlanConfig: episodes and max_steps must be >= 1, got {self.episodes}, {self.max_steps}")
        self.cem()  # the CEM settings' own checks, before any training or planning starts

    def cem(self) -> CEMConfig:
        # Fetch realises at most 3.3 cm a step (its collected actions stay within that too).
        maxnorm = self.maxnorm if self.env == "tabletop" else min(self.maxnorm, 0.05 * 0.66)
        return CEMConfig(horizon=self.horizon, samples=self.samples, top_k=self.top_k, iterations=self.iterations,
                         maxnorm=maxnorm, momentum_mean=self.momentum_mean, momentum_std=self.momentum_std,
                         fixed=self.fixed_dims(), close_gripper=self.close_gripper)

    def fixed_dims(self) -> dict[int, float]:
        """--fix "index=value,..." as the planner's {dimension: value}."""
        try:
            return {int(d): float(v) for d, v in (item.split("=") for item in self.fix.split(",") if item.strip())}
        except ValueError:
            raise ValueError(f"--fix must be index=value pairs separated by commas (e.g. 6=0 or 2=0,6=0), "
                             f"got {self.fix!r}") from None


def load_models(config: PlanConfig) -> tuple[ACPredictor, VJEPA2Model]:
    path = Path(config.checkpoint or Path(config.cache_dir) / "ac_predictor.pt")
    if not path.exists():
        if config.checkpoint:
            raise FileNotFoundError(f"--checkpoint {path}: no such file")
        print(f"no predictor at {path}: training one (python -m vjepa_fast.train_ac --out {config.cache_dir})")
        steps = config.train_steps
        data_dir = ""
        if config.env != "tabletop":
            from vjepa_fast.jobs.collect import CollectConfig, collect
            data_dir = str(Path(config.cache_dir) / "trajectories")
            collect(CollectConfig(env=config.env, episodes=config.collect_episodes, frames=8,
                                  image_size=VJEPA2Config.from_name("tiny").crop_size, out=data_dir))
        path = train(TrainACConfig(out=config.cache_dir, data_dir=data_dir, steps=steps,
                                   cooldown_steps=min(200, steps // 3), warmup_steps=min(50, steps // 10 + 1)))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    predictor = ACPredictor.from_meta_checkpoint(path, ACConfig(**ckpt["ac_config"])).eval()
    bad = [name for name, p in predictor.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"--checkpoint {path}: the predictor's weights are not finite ({len(bad)} tensors, e.g. "
                         f"{bad[0]}); it cannot plan")
    encoder_path = ckpt["encoder"]
    if not Path(encoder_path).exists() and (path.parent / "encoder").exists():
        encoder_path = path.parent / "encoder"  # a relative path saved from another working directory
    encoder = VJEPA2Model.from_pretrained(str(encoder_path)).eval()
    return predictor, encoder


def summarise(episodes: list[Episode]) -> dict:
    seconds = [s for ep in episodes for s in ep.plan_seconds]
    return {"success_rate": float(np.mean([ep.success for ep in episodes])),
            "mean_steps": float(np.mean([ep.steps for ep in episodes])),
            "mean_final_distance": float(np.mean([ep.distances[-1] for ep in episodes])),
            "seconds_per_action": float(np.mean(seconds)), "actions": len(seconds)}


def plot_trajectory(path: Path, episode: Episode, goal: np.ndarray, task: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    frames = episode.frames + [goal]
    fig, axes = plt.subplots(1, len(frames), figsize=(1.3 * len(frames), 1.7))
    for i, (ax, frame) in enumerate(zip(np.atleast_1d(axes), frames)):
        ax.imshow(frame)
        ax.set_axis_off()
        last = i == len(frames) - 1
        ax.set_title("goal" if last else f"t={i}\n{episode.distances[i] * 100:.1f} cm", fontsize=7)
    fig.suptitle(f"planned {task} episode: {'success' if episode.success else 'failure'} in {episode.steps} steps", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_episodes_video(path: Path, episodes: list[Episode], goals: list[np.ndarray], fps: int = 2) -> None:
    """An MP4 of the given episodes, each frame the observation beside its goal, episodes one
    after the other (the last frame of each held for a second)."""
    from torchcodec.encoders import VideoEncoder
    frames = []
    for episode, goal in zip(episodes, goals):
        shown = [np.concatenate([frame, goal], axis=1) for frame in episode.frames]
        frames += shown + [shown[-1]] * fps
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()  # (T, 3, H, 2W)
    mp4 = VideoEncoder(video, frame_rate=fps).to_tensor("mp4", codec="libx264", crf=18, pixel_format="yuv444p")
    atomic_write(path, lambda p: Path(p).write_bytes(mp4.numpy().tobytes()))


def plot_energy(path: Path, episodes: list[Episode], top_k: int) -> None:
    """Energy per CEM iteration, averaged over every plan of every episode: best sample and elites."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    energies = torch.stack([e for ep in episodes for e in ep.energies])  # (plans, iterations, N)
    ranked = energies.sort(dim=-1).values
    it = np.arange(1, energies.shape[1] + 1)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(it, ranked[..., 0].mean(0), "o-", label="best sample")
    ax.plot(it, ranked[..., :top_k].mean((0, 2)), "s-", label=f"top-{top_k} mean")
    ax.plot(it, energies.mean((0, 2)), "^-", label="all samples")
    ax.set_xlabel("CEM iteration")
    ax.set_ylabel("energy (mean |LN(pred) - goal|)")
    ax.set_title(f"{energies.shape[0]} plans", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def oracle_episode(env, seed: int) -> Episode:
    """The environment's scripted oracle in Fetch, from the simulator's own positions. Reach: a
    step straight to the goal; Push: over a point 5 cm behind the object on the line from the
    goal, down, then along that line (re-aimed every step)."""
    from vjepa_fast.worlds.fetch import MAX_DELTA, TRACKING
    step = MAX_DELTA * TRACKING
    ep, obs = Episode.begin(env, seed)
    u = env.env.unwrapped
    aligned, done = False, False
    while not done:
        start = time.perf_counter()
        ee = obs["state"][:3]
        if not u.has_object:
            delta = u.goal - ee
        else:
            obj = u._utils.get_site_xpos(u.model, u.data, "object0").copy()
            line = (u.goal - obj) * np.array([1.0, 1.0, 0.0])
            line /= max(np.linalg.norm(line), 1e-6)
            behind = obj - line * 0.05
            aligned = aligned or np.linalg.norm((behind - ee)[:2]) < 0.01
            if not aligned:  # keep above the object until behind it
                delta = behind + np.array([0.0, 0.0, 0.05 if np.linalg.norm((behind - ee)[:2]) > 0.02 else 0.0]) - ee
            else:
                delta = line * min(step, np.linalg.norm((u.goal - obj)[:2])) + np.array([0.0, 0.0, obj[2] - ee[2]])
        action = np.zeros(7)
        action[:3] = np.clip(delta, -step, step)
        obs, done = ep.step(env, action, start)
    return ep


def make_env(config: PlanConfig, image_size: int):
    if config.env == "tabletop":
        return TabletopEnv(SimConfig(task="reach", image_size=image_size, max_steps=config.max_steps))
    from vjepa_fast.worlds.fetch import fetch_adapter
    return fetch_adapter(config.env, image_size, config.max_steps)


def run(config: PlanConfig) -> dict:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    predictor, encoder = load_models(config)
    size = encoder.config.crop_size
    env = make_env(config, size)

    def encode(frame: np.ndarray) -> torch.Tensor:
        return encode_frames(encoder.encoder, torch.from_numpy(frame)[None])[0]  # (P, D)

    planner = CEMPlanner(predictor, config.cem(), getattr(torch, config.dtype))
    results = {}
    agents = [("planner", planner), ("random", None)] + ([("oracle", "oracle")] if config.env in
                                                         ("fetch-reach", "fetch-push") else [])
    for name, agent in agents:
        generator = torch.Generator().manual_seed(config.seed)
        episodes = [oracle_episode(env, config.seed + i) if agent == "oracle" else
                    mpc_episode(env, encode, agent, config.seed + i, generator)
                    for i in tqdm(range(config.episodes), desc=f"{name} episodes")]
        results[name] = summarise(episodes)
        if agent is planner:
            goals = []
            for i in range(min(3, config.episodes)):
                env.reset(config.seed + i)
                goals.append(env.goal_image())
            plot_trajectory(out / "trajectory.png", episodes[0], goals[0], config.env)
            plot_energy(out / "energy.png", episodes, config.top_k)
            write_episodes_video(out / "episodes.mp4", episodes[:3], goals)
    if hasattr(env, "close"):
        env.close()
    results["config"] = asdict(config)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> None:
    config = cli.parse(PlanConfig, argv, PROG, __doc__)
    results = cli.run(run, config, PROG)
    for name in ("planner", "random", "oracle"):
        if name not in results:
            continue
        r = results[name]
        print(f"{name:8s} success {r['success_rate'] * 100:5.1f}%  steps {r['mean_steps']:.1f}  "
              f"final distance {r['mean_final_distance'] * 100:.1f} cm  {r['seconds_per_action'] * 1e3:.1f} ms/action")
    print(f"wrote {config.out}/results.json, trajectory.png, energy.png, episodes.mp4")


PROG = "python -m vjepa_fast.plan"

if __name__ == "__main__":
    main()
