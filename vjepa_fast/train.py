"""`python -m vjepa_fast.train`: V-JEPA 2 pre-training from the command line (see --help).

With no arguments it trains a small model on generated physics clips on the CPU in a few minutes,
then checks what the encoder learnt with a frozen-feature probe: ridge regression of the red
ball's velocity and of its position one frame after the clip, from the trained encoder's pooled
features and from a randomly initialised encoder's. Under torchrun the same command trains with
DDP (or FSDP2 with --fsdp).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vjepa_fast.checkpoints import atomic_write
from vjepa_fast.model import Encoder, VJEPA2Model
from vjepa_fast.physics import PhysicsConfig, clip_seed, generate_clip
from vjepa_fast.data import normalize
from vjepa_fast.train_config import TrainConfig, parse_args
from vjepa_fast.trainer import Trainer, TrainingDiverged

PROBE_SEED = 10_000  # probe clips come from another stream than the training clips


@torch.no_grad()
def pooled_features(encoder: Encoder, videos: Tensor, batch: int = 32) -> Tensor:
    """(N, T, 3, H, W) -> (N, Tp*D): tokens averaged over space, one vector per tubelet time step
    (the time axis is kept so motion stays linearly readable)."""
    out = []
    for chunk in videos.split(batch):
        tokens = encoder(chunk)  # (B, Tp*Hp*Wp, D)
        Tp = encoder.grid(encoder.frames(chunk))[0]
        out.append(tokens.view(tokens.shape[0], Tp, -1, tokens.shape[-1]).mean(2).flatten(1))  # (B, Tp*D)
    return torch.cat(out).double()


def probe_data(config: TrainConfig, count: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Clips of config.frames frames, plus targets for ball 0 (red): its velocity at the last frame
    and its position at the frame after the clip (simulated, never shown)."""
    physics = PhysicsConfig(frames=config.frames + 1, size=config.crop_size, max_balls=config.max_balls)
    videos, velocity, next_position = [], [], []
    for i in range(count):
        video, info = generate_clip(physics, clip_seed(config.seed + PROBE_SEED, i))
        videos.append(normalize(video[:-1].permute(0, 3, 1, 2)))
        velocity.append(info["velocities"][-2, 0])
        next_position.append(info["positions"][-1, 0])
    return torch.stack(videos), {"velocity": torch.stack(velocity).double(),
                                 "next position": torch.stack(next_position).double()}


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
        x = pooled_features(model, videos)
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
    fig.legend(loc="upper right")
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
                    print(f"  red ball {name:14s} trained encoder {result.trained[name]:6.3f}   "
                          f"random encoder {result.random[name]:6.3f}")
        return result
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    try:
        run(config)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
