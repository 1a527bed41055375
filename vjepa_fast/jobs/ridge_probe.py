"""The frozen-feature ridge probe that ends a default pre-training run: how well a linear map
from the trained target encoder's token features (and, for comparison, a random encoder's)
predicts the red ball's velocity, its position one frame after the clip and the number of balls.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vjepa_fast.jobs.train_config import TrainConfig
from vjepa_fast.model import Encoder, VJEPA2Model
from vjepa_fast.video import normalize
from vjepa_fast.worlds.physics import PhysicsConfig, clip_seed, generate_clip

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


def ridge_probe(config: TrainConfig, encoder: Encoder) -> ProbeResult:
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
