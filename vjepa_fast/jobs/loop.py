"""What every training job shares: the learning-rate schedule, AdamW's parameter groups, atomic
checkpoints with exact resume, log.csv, the progress bar and the guard against a diverged loss.
Pre-training, AC post-training and the probe each add only their loss and their data.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from vjepa_fast.files import FolderLock, atomic_write, remove_stale_temps
from vjepa_fast.jobs.cli import flag

log = logging.getLogger("vjepa_fast")


def resume_help(checkpoint: str, changeable: tuple[str, ...]) -> str:
    return f"continue exactly from OUT/{checkpoint}; only {', '.join(flag(k) for k in changeable)} may differ"


class TrainingDiverged(FloatingPointError):
    pass


@dataclass
class Schedule:
    """Linear warm-up from start_lr to lr over warmup_steps, then constant with a linear cool-down
    over the last cooldown_steps that reaches final_lr at the last step, or (cosine) a cosine
    decay from lr to final_lr over everything after the warm-up."""
    steps: int
    lr: float
    start_lr: float = 0.0
    final_lr: float = 0.0
    warmup_steps: int = 0
    cooldown_steps: int = 0
    cosine: bool = False

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_lr + (self.lr - self.start_lr) * step / self.warmup_steps
        if self.cosine:
            progress = min((step - self.warmup_steps + 1) / max(1, self.steps - self.warmup_steps), 1.0)
            return self.final_lr + (self.lr - self.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        decay_start = self.steps - self.cooldown_steps
        if step < decay_start:
            return self.lr
        return self.lr + (self.final_lr - self.lr) * (step - decay_start + 1) / self.cooldown_steps


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: biases and 1-D parameters (norm weights) are not decayed (Meta's split)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Run:
    """The bookkeeping of one training run in the folder `out`: step, history (one dict per step,
    written as log.csv with every checkpoint), the schedule applied to the optimizer, and the
    checkpoint `out/checkpoint` that `resume` continues from exactly."""

    def __init__(self, out: Path, checkpoint: str, schedule: Schedule, optimizer: torch.optim.Optimizer,
                 writer: bool = True, config=None, changeable: tuple[str, ...] = ()):
        self.out, self.path, self.schedule, self.optimizer = Path(out), Path(out) / checkpoint, schedule, optimizer
        # The job's settings, saved with every checkpoint; resume refuses other values for any
        # field not in `changeable` (those that do not change what is computed, and --steps).
        self.settings = {} if config is None else dataclasses.asdict(config)
        self.changeable = changeable
        if writer:  # one run per folder; then what an interrupted write of an earlier run left goes
            FolderLock(self.out).acquire()
            for name in remove_stale_temps(self.out):
                log.warning(f"{self.out}: removed {name}, left by an interrupted write")
        self.writer = writer  # False on every rank but 0 of a distributed run
        self.step, self.history = 0, []
        self.saved = False  # whether self.path holds a checkpoint of this run (saved or resumed)

    def set_lr(self, step: int | None = None) -> float:
        """The schedule's rate at `step` (default: the run's step) on every parameter group."""
        lr = self.schedule.lr_at(self.step if step is None else step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def check(self, loss: float) -> float:
        """Stops the run on a NaN/inf loss, before the optimizer step spoils the weights."""
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            self._diverged(f"loss is {loss}")
        return loss

    def check_weights(self) -> None:
        """After the optimizer step, before anything is saved: stops the run when a finite but
        huge loss (or gradient) has made any trained weight NaN/inf. One fused norm per group."""
        params = [p.to_local() if hasattr(p, "to_local") else p  # an FSDP shard: this rank's part
                  for g in self.optimizer.param_groups for p in g["params"]]
        finite = torch.stack(torch._foreach_norm(params)).isfinite().all().float()
        if dist.is_available() and dist.is_initialized():  # every rank stops, or none
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            self._diverged("the weights are no longer finite after the optimizer step")

    def _diverged(self, what: str):
        good = f"the last good checkpoint is {self.path} (step {self.saved_step})" if self.saved else \
            "no checkpoint was written yet"
        raise TrainingDiverged(f"{what} at step {self.step + 1}: training stopped; {good}")

    def record(self, **row) -> None:
        """One finished optimizer step: its figures join the history."""
        self.step += 1
        self.history.append({"step": self.step, **row})

    def progress(self, until: int, desc: str, enabled: bool = True) -> tqdm:
        return tqdm(total=until, initial=self.step, desc=desc, unit="step", dynamic_ncols=True,
                    disable=not (enabled and self.writer))

    def save(self, state: dict) -> None:
        """`state` (the job's weights, optimizer, RNG) plus step and history, written atomically,
        and log.csv beside it."""
        if not self.writer:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        payload = {**state, "step": self.step, "history": self.history, "settings": self.settings}
        if self.path.is_file():  # the one before stays beside it, so a bad save never loses the only good one
            previous = self.path.with_name(f"{self.path.stem}.previous{self.path.suffix}")
            link = previous.with_name(f".{previous.name}.link")
            link.unlink(missing_ok=True)
            os.link(self.path, link)
            os.replace(link, previous)
        atomic_write(self.path, lambda p: torch.save(payload, p))
        self.saved, self.saved_step = True, self.step
        rows = self.history
        if rows:
            text = ",".join(rows[0]) + "\n" + "".join(
                ",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in r.values()) + "\n" for r in rows)
            atomic_write(self.out / "log.csv", lambda p: Path(p).write_text(text))

    def resume(self) -> dict:
        """The saved state; step and history continue from it. A missing checkpoint is an error."""
        if not self.path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.path}")
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, not a checkpoint, or a pickle that would run code (refused)
            raise ValueError(f"--resume: {self.path} cannot be read as a checkpoint "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        stored = state.get("settings", {})
        changed = [f"{flag(k)} {stored[k]!r} -> {v!r}" for k, v in self.settings.items()
                   if k in stored and k not in self.changeable and stored[k] != v]
        if changed:
            raise ValueError(f"--resume: {self.path} was written with other settings ({'; '.join(changed)}); "
                             f"only {', '.join(flag(k) for k in self.changeable)} may differ")
        self.step, self.history = state["step"], state["history"]
        self.saved, self.saved_step = True, self.step
        return state
