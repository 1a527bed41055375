"""The no-argument run at reduced size: the JEPA loss falls on ever-new physics clips, and the
frozen-feature probe that follows it measures something real.

What this does NOT assert: that the trained encoder beats a randomly initialised one on the probe.
At the CPU budget (a few hundred steps) it does not (see the README's training section); a
random ViT's token features are a strong linear baseline for where a ball is on such clips."""
import math

import pytest
import torch

from vjepa_fast.model import VJEPA2Model
from vjepa_fast.train import probe_data, ridge_r2, run, token_features
from vjepa_fast.train_config import TrainConfig


def config(tmp_path, **overrides) -> TrainConfig:
    base = dict(width=96, depth=2, heads=2, pred_width=64, pred_depth=2, pred_heads=2, steps=60, warmup_steps=6,
                cooldown_steps=12, batch_size=8, out=str(tmp_path), progress=False, export=False, workers=0,
                checkpoint_every=60, probe_clips=160, threads=0)
    return TrainConfig(**{**base, **overrides})


@pytest.mark.slow
def test_loss_falls_and_probe_runs(tmp_path, capsys):
    c = config(tmp_path)
    result = run(c)
    out = capsys.readouterr().out
    history = [float(line.split(",")[1]) for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert len(history) == 60
    first, last = sum(history[:5]) / 5, sum(history[-10:]) / 10
    assert last < 0.6 * first, f"the loss did not fall: {first:.3f} -> {last:.3f}"
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert "trained encoder" in out and "random encoder" in out
    assert set(result.trained) == set(result.random) == {"velocity", "next position", "ball count"}
    assert all(math.isfinite(v) for v in list(result.trained.values()) + list(result.random.values()))


@pytest.mark.slow
def test_probe_finds_information_that_is_there_and_none_that_is_not(tmp_path):
    c = config(tmp_path)
    videos, targets = probe_data(c, 200)
    torch.manual_seed(3)
    x = token_features(VJEPA2Model(c.model_config()).encoder.eval(), videos)
    fit, test = slice(0, 150), slice(150, 200)
    for name in ("next position", "ball count"):
        y = targets[name]
        assert ridge_r2(x[fit], y[fit], x[test], y[test]) > 0.4, name
        shuffled = y[torch.randperm(len(y))]
        assert ridge_r2(x[fit], shuffled[fit], x[test], shuffled[test]) < 0.15, name
