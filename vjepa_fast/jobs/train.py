"""`python -m vjepa_fast.train`: V-JEPA 2 pre-training from the command line (see --help).

With no arguments it trains a small model on generated physics clips on the CPU in a few minutes,
then checks what the encoder learnt with a frozen-feature probe: ridge regression of the red
ball's velocity, of its position one frame after the clip and of the number of balls, from the
trained target encoder's token features and from a randomly initialised encoder's (see
jobs/ridge_probe.py). Under torchrun the same command trains with DDP (or FSDP2 with --fsdp).
"""
from __future__ import annotations

from pathlib import Path

from vjepa_fast.files import atomic_write
from vjepa_fast.jobs import cli
from vjepa_fast.jobs.ridge_probe import ProbeResult, ridge_probe
from vjepa_fast.jobs.train_config import TrainConfig, parse_args
from vjepa_fast.jobs.trainer import Trainer


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
                result = ridge_probe(config, trainer.target)
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
