"""V-JEPA 2 pre-training (stage 1): the loss, the step, the loop, distributed runs and checkpoints.
V-JEPA 2.1 models train with the objective of jobs/objective21.py instead (levels, context loss,
image steps, an optional frozen teacher).

One step, as in Meta's app/vjepa/train.py:
  target  = layer_norm(target_encoder(whole clip))                     (no grad, no affine)
  for each mask config (context ids, target ids):
      z   = encoder(clip, token_ids=context)   only the context tokens are embedded and encoded
      p   = predictor(z, context, target)      with mask token 0 (Meta's index for a single
                                               frames-per-clip group)
      l_i = mean |p - target[target ids]|
  loss = mean_i l_i;  AdamW;  target_encoder <- m * target_encoder + (1 - m) * encoder.
"""
from __future__ import annotations

import copy
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vjepa_fast.checkpoints import meta_to_ours, ours_to_meta, strip_meta_prefix
from vjepa_fast.jobs import cli
from vjepa_fast.jobs.loop import Run, param_groups
from vjepa_fast.jobs.train_data import Collate, PhysicsTrainClips, StreamBatches, VideoClips, Augment, make_loader
from vjepa_fast.jobs.train_config import RESUME_CHANGEABLE, TrainConfig
from vjepa_fast.jobs.objective21 import JEPA21, context_lambda, level_targets
from vjepa_fast.masks import mix_seed, sample_masks
from vjepa_fast.model import Encoder, Predictor, VJEPA2Model, gather_tokens
from vjepa_fast.video import list_videos


class JEPA(nn.Module):
    """The trained pair; one forward = the masked-prediction loss of one group of mask configs, so
    DDP/FSDP see a single module."""

    def __init__(self, encoder: Encoder, predictor: Predictor):
        super().__init__()
        self.encoder, self.predictor = encoder, predictor

    def forward(self, clips: Tensor, context: Tensor, target_ids: Tensor, target: Tensor) -> Tensor:
        """clips (R, T, C, H, W), context (R, Kc), target_ids (R, Kt), target (R, N, D) layer-normed
        target-encoder tokens -> mean L1 loss (fp32)."""
        z = self.encoder(clips, token_ids=context)                                               # (R, Kc, D)
        pred = self.predictor(z, context, target_ids, self.encoder.position_grid(clips), mask_index=0)  # (R, Kt, D)
        goal = gather_tokens(target, [target_ids])                                               # (R, Kt, D)
        return (pred.float() - goal.float()).abs().mean()


def batch_mask_configs(video: Tensor, target: Tensor, masks: list[tuple[Tensor, Tensor]]):
    """Mask configs whose index lists have the same shapes run as one batch (clip and targets
    repeated); yields (clips, context ids, target ids, targets, number of configs in the group)."""
    if len({(c.shape, t.shape) for c, t in masks}) == 1 and len(masks) > 1:
        M = len(masks)
        yield (video.repeat(M, 1, 1, 1, 1), torch.cat([c for c, _ in masks]), torch.cat([t for _, t in masks]),
               target.repeat(M, 1, 1), M)
        return
    for context, target_ids in masks:
        yield video, context, target_ids, target, 1


@torch.no_grad()
def target_features(target_encoder: Encoder, video: Tensor) -> Tensor:
    h = target_encoder(video)
    return F.layer_norm(h, (h.shape[-1],))


@torch.no_grad()
def ema_update(target: list[Tensor], online: list[Tensor], momentum: float) -> None:
    torch._foreach_mul_(target, momentum)
    torch._foreach_add_(target, online, alpha=1 - momentum)


def rng_state() -> dict:
    """Every generator's state, as tensors and tuples so torch.load(weights_only=True) reads it."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, config: TrainConfig):
        c = self.config = config
        if c.threads:
            torch.set_num_threads(c.threads)
        self.rank, self.world, self.device = cli.setup_distributed(c.device)
        self.out = Path(c.out)
        self.model_config = c.model_config()
        torch.manual_seed(c.seed)  # the same initial weights on every rank
        model = VJEPA2Model(self.model_config)  # Meta's initialisation
        self.v21 = self.model_config.is_v21
        self.jepa = (JEPA21(model.encoder, model.predictor, c.distance_weights) if self.v21
                     else JEPA(model.encoder, model.predictor)).to(self.device)
        self.jepa.encoder.gradient_checkpointing = c.activation_checkpointing
        self.jepa.predictor.gradient_checkpointing = c.activation_checkpointing
        self.target = copy.deepcopy(self.jepa.encoder).requires_grad_(False)
        self.target.gradient_checkpointing = False
        # 2.1 distillation: the targets are a frozen teacher's levels (the EMA target is still kept).
        self.teacher = None
        if c.teacher:
            self.teacher = VJEPA2Model.from_pretrained(c.teacher).encoder.to(self.device).eval().requires_grad_(False)
        use_bf16 = c.dtype == "bfloat16" or (c.dtype == "auto" and self.device.type == "cuda")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16)
        self.model = self._distribute()
        if c.compile:  # in place (after sharding, as FSDP2 asks), so state-dict keys keep their names
            self.jepa.encoder.compile()
            self.jepa.predictor.compile()
            self.target.compile()
        # The fused AdamW kernel (one pass over each tensor) where parameters are plain tensors.
        self.optimizer = torch.optim.AdamW(param_groups(self.jepa, c.weight_decay), lr=c.start_lr,
                                           betas=(c.beta1, c.beta2), eps=1e-8, fused=not (c.fsdp and self.world > 1))
        self.loop = Run(self.out, "latest.pt", c.schedule(), self.optimizer, writer=self.rank == 0, config=c,
                        changeable=RESUME_CHANGEABLE)
        self.skipped = 0
        if c.resume:
            self.load()

    @property
    def step(self) -> int:
        return self.loop.step

    @property
    def history(self) -> list[dict]:
        return self.loop.history

    def _distribute(self) -> nn.Module:
        if self.world == 1:
            return self.jepa
        if self.config.fsdp:
            from torch.distributed.fsdp import fully_shard
            for module in (self.jepa.encoder, self.jepa.predictor, self.target):
                for block in module.blocks:
                    fully_shard(block)
            fully_shard(self.target)
            return fully_shard(self.jepa)
        from torch.nn.parallel import DistributedDataParallel
        # Only one of the predictor's mask tokens is used, so some parameters get no gradient.
        return DistributedDataParallel(self.jepa, find_unused_parameters=True,
                                       device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def loader(self):
        c = self.config
        if c.data == "physics":
            dataset = PhysicsTrainClips(c.frames, c.crop_size, c.max_balls, c.seed)
        else:
            augment = Augment(c.crop_size, (c.min_scale, c.max_scale), (c.min_aspect, c.max_aspect))
            dataset = VideoClips(list_videos(c.data, "--data"), c.frames, c.fps, augment, c.seed)
        mc = self.model_config
        # The encoder repeats a clip shorter than a tubelet and drops a trailing partial one.
        grid = (max(c.frames // mc.tubelet_size, 1), c.crop_size // mc.patch_size, c.crop_size // mc.patch_size)
        batches = StreamBatches(self.step, c.batch_size, c.grad_accum, self.world, self.rank)
        return make_loader(dataset, Collate(grid, c.mask_configs(), c.seed), batches, c.workers,
                           pin=self.device.type == "cuda")

    def image_step(self) -> bool:
        """2.1: every image_every-th step trains on images (the clips' first frames)."""
        c = self.config
        return self.v21 and self.model_config.use_image_patch_embedder and c.image_every > 0 \
            and self.step % c.image_every == c.image_every - 1

    def targets(self, video: Tensor) -> Tensor:
        if not self.v21:
            return target_features(self.target, video)
        return level_targets(self.teacher if self.teacher is not None else self.target, video)

    def train_step(self, micro_batches: list) -> float:
        """One optimizer step over the micro-batches of this rank; returns the loss averaged over
        micro-batches and ranks. Raises TrainingDiverged (before updating anything) on NaN/inf."""
        c = self.config
        self.loop.set_lr()
        image = self.image_step()
        lam = context_lambda(self.step, c.context_lambda_image if image else c.context_lambda, c.lambda_start,
                             c.lambda_end)
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            video = batch.video.to(self.device, non_blocking=True)
            masks = [(m.to(self.device), t.to(self.device)) for m, t in batch.masks]
            if image:  # the first frame of each clip, with masks on its one-frame grid
                video = video[:, :1]
                grid = (1, c.crop_size // c.patch_size, c.crop_size // c.patch_size)
                masks = [(m.to(self.device), t.to(self.device)) for m, t in
                         sample_masks(grid, video.shape[0], c.mask_configs(), mix_seed(c.seed, self.step, i, 3))]
            with self.autocast:
                target = self.targets(video)
            groups = list(batch_mask_configs(video, target, masks))
            for j, (clips, context, target_ids, goal, rows) in enumerate(groups):
                last = i == len(micro_batches) - 1 and j == len(groups) - 1
                sync = self.model.no_sync() if hasattr(self.model, "no_sync") and not last else nullcontext()
                with sync:
                    with self.autocast:
                        # Every mask config weighs the same, whatever its token count (Meta's mean of means).
                        loss = self.model(clips, context, target_ids, goal, *((lam,) if self.v21 else ()))
                        loss = loss * rows / (len(masks) * len(micro_batches))
                    # Backward per mask config: one config's activations are freed before the next
                    # config's forward, so the peak holds one graph, not two (same gradients).
                    loss.backward()
                total += loss.detach()
        if self.world > 1:
            dist.all_reduce(total)
            total /= self.world
        value = self.loop.check(float(total))
        self.optimizer.step()
        self.loop.check_weights()
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.fsdp and self.world > 1:
            # FSDP2 leaves a root module's parameters unsharded after forward; the EMA pairs shards.
            self.jepa.reshard()
            self.target.reshard()
        ema_update(list(self.target.parameters()), list(self.jepa.encoder.parameters()), self.config.ema)
        return value

    def run(self, until: int | None = None) -> list[float]:
        """Trains up to step `until` (default: config.steps); returns this run's losses."""
        c = self.config
        until = c.steps if until is None else min(until, c.steps)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        losses = []
        if self.step >= until:
            return losses
        bar = self.loop.progress(until, "pre-training", c.progress)
        data = iter(self.loader())
        t0, clips = time.perf_counter(), 0
        while self.step < until:
            micro = [next(data) for _ in range(c.grad_accum)]
            skipped = sum(b.skipped for b in micro)
            lr = self.loop.schedule.lr_at(self.step)
            v21 = {}
            if self.v21:
                image = self.image_step()
                v21 = dict(image_step=int(image), context_lambda=context_lambda(
                    self.step, c.context_lambda_image if image else c.context_lambda, c.lambda_start, c.lambda_end))
            loss = self.train_step(micro)
            clips += c.batch_size * self.world
            self.skipped += skipped
            speed = clips / (time.perf_counter() - t0)
            losses.append(loss)
            self.loop.record(loss=loss, lr=lr, clips_per_s=speed, skipped_videos=self.skipped, **v21)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{speed:.1f}")
            bar.update(1)
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                self.save()
        bar.close()
        return losses

    # ---- checkpoints -------------------------------------------------------------------------

    def _full_state(self) -> tuple[dict, dict, dict]:
        """Unsharded (model, target, optimizer) state dicts, gathered on every rank under FSDP."""
        if self.config.fsdp and self.world > 1:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return (get_model_state_dict(self.jepa, options=options),
                    get_model_state_dict(self.target, options=options),
                    get_optimizer_state_dict(self.jepa, self.optimizer, options=options))
        return self.jepa.state_dict(), self.target.state_dict(), self.optimizer.state_dict()

    def save(self) -> None:
        """Meta's checkpoint keys (module.backbone.-prefixed Meta layouts) plus what exact resume needs."""
        model_state, target_state, opt_state = self._full_state()
        if self.rank == 0:
            encoder, predictor = ours_to_meta(model_state)
            target_encoder, _ = ours_to_meta({f"encoder.{k}": v for k, v in target_state.items()})
            history = self.history
            self.loop.save({"encoder": encoder, "predictor": predictor, "target_encoder": target_encoder,
                            "opt": opt_state, "scaler": None, "epoch": self.step,
                            "loss": history[-1]["loss"] if history else None,
                            "batch_size": self.config.batch_size, "world_size": self.world,
                            "lr": self.loop.schedule.lr_at(max(self.step - 1, 0)),
                            "data_position": self.step * self.world * self.config.batch_size,
                            "skipped_videos": self.skipped, "rng": rng_state(), "config": asdict(self.config)})
        if self.world > 1:
            dist.barrier()

    def load(self) -> None:
        path = self.loop.path
        state = self.loop.resume()
        for key in ("batch_size", "world_size"):
            ours = self.config.batch_size if key == "batch_size" else self.world
            if state[key] != ours:
                raise ValueError(f"--resume: {path} was written with {key}={state[key]}, this run has {ours}; "
                                 "exact resume needs the same value")
        predictor = strip_meta_prefix(state["predictor"])
        expected = self.jepa.state_dict()
        ours = meta_to_ours(expected, strip_meta_prefix(state["encoder"]), predictor, str(path))
        target = meta_to_ours(expected, strip_meta_prefix(state["target_encoder"]), predictor, str(path))
        target = {k[len("encoder."):]: v for k, v in target.items() if k.startswith("encoder.")}
        if self.config.fsdp and self.world > 1:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)
            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.jepa, ours, options=options)
            set_model_state_dict(self.target, target, options=options)
            set_optimizer_state_dict(self.jepa, self.optimizer, state["opt"], options=options)
        else:
            self.jepa.load_state_dict(ours, strict=True)
            self.target.load_state_dict(target, strict=True)
            self.optimizer.load_state_dict(state["opt"])
        self.skipped = state["skipped_videos"]
        set_rng_state(state["rng"])

    def export(self, directory: Path) -> None:
        """The target encoder (what Meta releases) and the predictor, as a transformers checkpoint."""
        model_state, target_state, _ = self._full_state()
        if self.rank == 0:
            model = VJEPA2Model(self.model_config)
            model.predictor.load_state_dict({k[len("predictor."):]: v for k, v in model_state.items()
                                             if k.startswith("predictor.")})
            model.encoder.load_state_dict(target_state)
            model.save_pretrained(str(directory))

    def close(self) -> None:
        """Releases the model and, under torchrun, leaves the process group cleanly (gloo can abort
        at exit when a process group is left open)."""
        del self.model, self.jepa, self.target, self.optimizer
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
