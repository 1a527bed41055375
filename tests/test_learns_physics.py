"""The no-argument run at reduced size: the JEPA loss falls on ever-new physics clips, and the
trained target encoder's frozen features beat a randomly initialised encoder's on the ridge probe
of where the red ball will be one frame after the clip."""
import math

import pytest
import torch

from vjepa_fast.jobs.ridge_probe import ridge_r2
from vjepa_fast.jobs.train import run
from vjepa_fast.jobs.train_config import TrainConfig

MARGIN = 0.1  # test R^2, trained minus random
STEPS = 600


def config(tmp_path, **overrides) -> TrainConfig:
    base = dict(width=96, depth=2, heads=2, pred_width=64, pred_depth=2, pred_heads=2, steps=STEPS, warmup_steps=20,
                cooldown_steps=60, ema=0.995, batch_size=8, out=str(tmp_path), progress=False, export=False,
                workers=0, checkpoint_every=STEPS, probe_clips=240, threads=0)
    return TrainConfig(**{**base, **overrides})


@pytest.mark.slow
def test_loss_falls_and_trained_encoder_beats_random_one(tmp_path, capsys):
    result = run(config(tmp_path))
    out = capsys.readouterr().out
    history = [float(line.split(",")[1]) for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert len(history) == STEPS
    first, last = sum(history[:5]) / 5, sum(history[-10:]) / 10
    assert last < 0.8 * first, f"the loss did not fall: {first:.3f} -> {last:.3f}"
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert "trained encoder" in out and "random encoder" in out
    assert set(result.trained) == set(result.random) == {"velocity", "next position", "ball count"}
    assert all(math.isfinite(v) for v in list(result.trained.values()) + list(result.random.values()))
    trained, random = result.trained["next position"], result.random["next position"]
    assert trained > random + MARGIN, f"next position R^2: trained {trained:.3f}, random {random:.3f}"


def test_ridge_probe_finds_a_linear_signal_and_none_in_shuffled_targets():
    # Features with more dimensions than clips, as in the probe: a noisy linear image of two targets.
    n, d = 200, 600
    y = torch.randn(n, 2, dtype=torch.float64)
    x = y @ torch.randn(2, d, dtype=torch.float64) + 0.5 * torch.randn(n, d, dtype=torch.float64)
    fit, test = slice(0, 150), slice(150, n)
    assert ridge_r2(x[fit], y[fit], x[test], y[test]) > 0.8
    shuffled = y[torch.randperm(n)]
    assert ridge_r2(x[fit], shuffled[fit], x[test], shuffled[test]) < 0.15
