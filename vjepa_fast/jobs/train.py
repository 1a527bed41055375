"""`python -m vjepa_fast.train`: V-JEPA 2 pre-training from the command line (see --help).

With no arguments it trains a small model on generated physics clips on the CPU in a few minutes,
then checks what the encoder learnt with a frozen-feature probe: ridge regression of the red
ball's velocity, of its position one frame after the clip and of the number of balls, from the
trained target encoder's token features and from a randomly initialised encoder's. Under torchrun the same command trains with
DDP (or FSDP2 with --fsdp).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vjepa_fast.files import atomic_write
from vjepa_fast.model import Encoder, VJEPA2Model
from vjepa_fast.worlds.physics import PhysicsConfig, clip_seed, generate_clip
from vjepa_fast.video import normalize
from vjepa_fast.jobs.train_config import TrainConfig, parse_args
from vjepa_fast.jobs import cli
from vjepa_fast.jobs.trainer import Trainer

PROBE_SEED = 10_000  # probe clips come from another stream than the training clips


@torch.no_grad()
def token_features(encoder: Encoder, videos: Tensor, batch: int = 32) -> Tensor:
    """(N, T, 3, H, W) -> (N, tokens*D): every token's features side by side. Pooling over space
    would throw away where the ball is, which is what the probe asks about."""
    return torch.cat([encoder(chunk).flatten(1) for chunk in videos.split(batch)]).double()


def probe_data(config: TrainConfig, count: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Clips of config.frames frames, plus targets: the red ball's (ball 0) velocity at the last
    frame, its position at the frame after the clip (simulated, never shown), and the number of
    balls."""
    physics = PhysicsConfig(frames=config.frames + 1, size=config.crop_size, max_balls=config.max_balls)
    videos, targets = [], {"velocity": [], "next position": [], "ball count": []}
    for i in range(count):
        video, info = generate_clip(physics, clip_seed(config.seed + PROBE_SEED, i))
        videos.append(normalize(video[:-1].permute(0, 3, 1, 2)))
        targets["velocity"].append(info["velocities"][-2, 0])
        targets["next position"].append(info["positions"][-1, 0])
        targets["ball count"].append(torch.tensor([float(info["num_balls"])]))
    return torch.stack(videos), {name: torch.stack(y).double() for name, y in targets.items()}


def ridge_r2(x_fit: Tensor, y_fit: Tensor, x_test: Tensor, y_test: Tensor) -> float:
    """R^2 on the test set of a ridge regression on standardised features; the penalty is chosen
    on a held-out quarter of the fitting set. Solved in the dual (n x n) form, since features
    usually outnumber clips."""
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
    x_fit, x_test = (x_fit - mean) / std, (x_test - mean) / std
    y_mean = y_fit.mean(0)

    def predict(x, y, x_new, penalty):
        gram = x @ x.T + penalty * x.shape[1] * torch.eye(len(x), dtype=x.dtype)
        return x_new @ (x.T @ torch.linalg.solve(gram, y - y_mean)) + y_mean

    def r2(pred, y):
        return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())

    split = len(x_fit) * 3 // 4
    penalties = [10.0 ** k for k in range(-4, 3)]
    best = max(penalties, key=lambda a: r2(predict(x_fit[:split], y_fit[:split], x_fit[split:], a), y_fit[split:]))
    return r2(predict(x_fit, y_fit, x_test, best), y_test)


@dataclass
class ProbeResult:
    trained: dict[str, float]   # target name -> test R^2
    random: dict[str, float]


def probe(config: TrainConfig, encoder: Encoder) -> ProbeResult:
    videos, targets = probe_data(config, config.probe_clips)
    torch.manual_seed(config.seed + 1)
    random_encoder = VJEPA2Model(config.model_config()).encoder
    split = len(videos) * 3 // 4
    scores = []
    for model in (encoder, random_encoder):
        model = model.eval().to("cpu")
        x = token_features(model, videos)
        scores.append({name: ridge_r2(x[:split], y[:split], x[split:], y[split:]) for name, y in targets.items()})
    return ProbeResult(*scores)


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [h["loss"] for h in history], lw=1, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 loss (mean over both mask configs)")
    lr_axis = ax.twinx()
    lr_axis.plot(steps, [h["lr"] for h in history], color="tab:orange", lw=1, label="learning rate")
    lr_axis.set_ylabel("learning rate")
    fig.legend(loc="center right", bbox_to_anchor=(0.85, 0.5))
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def run(config: TrainConfig) -> ProbeResult | None:
    trainer = Trainer(config)
    try:
        trainer.run()
        if config.export:
            trainer.export(trainer.out / "hf")
        result = None
        if trainer.rank == 0:
            history = trainer.history
            plot_losses(history, trainer.out / "loss.png")
            first, last = history[0]["loss"], sum(h["loss"] for h in history[-10:]) / len(history[-10:])
            print(f"loss {first:.4f} -> {last:.4f} (mean of the last 10 steps) over {len(history)} steps; "
                  f"{trainer.skipped} unreadable videos skipped; log {trainer.out / 'log.csv'}, "
                  f"plot {trainer.out / 'loss.png'}, checkpoint {trainer.out / 'latest.pt'}"
                  + (f", transformers export {trainer.out / 'hf'}" if config.export else ""))
            if config.probe and config.data == "physics" and trainer.world == 1:
                result = probe(config, trainer.target)
                print("frozen-feature ridge probe on held-out physics clips (test R^2, 1 = perfect, 0 = mean guess):")
                for name in result.trained:
                    print(f"  {name:14s} trained encoder {result.trained[name]:6.3f}   "
                          f"random encoder {result.random[name]:6.3f}")
        return result
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> None:
    cli.run(run, parse_args(argv), "python -m vjepa_fast.train")


if __name__ == "__main__":
    main()
