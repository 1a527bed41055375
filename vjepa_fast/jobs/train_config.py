"""Pre-training configuration: one dataclass, recipe presets, and a CLI generated from its fields.

Every field is one `--flag` (underscores become dashes) whose help text is the comment on the
field; booleans take `--flag` / `--no-flag`. `--preset NAME` first sets every field to the
recipe's value, and flags given on the command line override it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from vjepa_fast.config import PRESETS, VJEPA2Config, hierarchical_taps
from vjepa_fast.jobs import cli
from vjepa_fast.jobs.loop import Schedule, resume_help
from vjepa_fast.masks import MaskConfig


# What --resume lets differ from the run it continues: nothing that changes what is computed, and the length.
RESUME_CHANGEABLE = ("steps", "checkpoint_every", "resume", "out", "workers", "device", "threads", "probe",
                     "probe_clips", "export", "progress", "compile", "activation_checkpointing")


@dataclass
class TrainConfig:
    preset: str = field(default="tiny", metadata={"help": "recipe the other defaults come from: " + ", ".join(
        ["tiny", "vitl", "vith", "vitg", "tiny-2.1", "vitb-2.1", "vitl-2.1", "vitg-2.1", "vitG-2.1"])})
    # ---- model
    model: str = field(default="tiny", metadata={"help": f"model shape preset ({', '.join(PRESETS)})"})
    width: int = field(default=96, metadata={"help": "encoder width (0: the model preset's)"})
    depth: int = field(default=2, metadata={"help": "encoder blocks (0: the model preset's)"})
    heads: int = field(default=2, metadata={"help": "encoder attention heads (0: the model preset's)"})
    pred_width: int = field(default=64, metadata={"help": "predictor width (0: the model preset's)"})
    pred_depth: int = field(default=2, metadata={"help": "predictor blocks (0: the model preset's)"})
    pred_heads: int = field(default=2, metadata={"help": "predictor heads (0: the model preset's)"})
    patch_size: int = field(default=16, metadata={"help": "spatial patch size in pixels"})
    crop_size: int = field(default=64, metadata={"help": "training resolution (square crops), pixels"})
    frames: int = field(default=8, metadata={"help": "frames per clip"})
    rope_mode: str = field(default="tile", metadata={"help": "tile (V-JEPA 2) or interleave (V-JEPA 2.1; the 2.1 "
                                                             "model presets set it)"})
    # ---- data
    data: str = field(default="physics", metadata={"help": "'physics' (embedded generated clips), a folder of "
                                                           "videos, or a CSV whose first column is a video path"})
    fps: float = field(default=4.0, metadata={"help": "frame rate clips are sampled at from real videos"})
    min_scale: float = field(default=0.3, metadata={"help": "random-resized-crop: smallest area fraction"})
    max_scale: float = field(default=1.0, metadata={"help": "random-resized-crop: largest area fraction"})
    min_aspect: float = field(default=0.75, metadata={"help": "random-resized-crop: smallest aspect ratio"})
    max_aspect: float = field(default=1.35, metadata={"help": "random-resized-crop: largest aspect ratio"})
    max_balls: int = field(default=3, metadata={"help": "physics data: most balls per clip"})
    workers: int = field(default=1, metadata={"help": "DataLoader worker processes per rank"})
    # ---- masks
    short_blocks: int = field(default=8, metadata={"help": "short-range mask: blocks per clip"})
    short_scale: float = field(default=0.15, metadata={"help": "short-range mask: frame fraction per block"})
    long_blocks: int = field(default=2, metadata={"help": "long-range mask: blocks per clip"})
    long_scale: float = field(default=0.7, metadata={"help": "long-range mask: frame fraction per block"})
    # ---- V-JEPA 2.1 objective (models with hierarchical levels: the *-2.1 presets)
    context_lambda: float = field(default=0.5, metadata={"help": "2.1: weight of the context loss on video steps"})
    context_lambda_image: float = field(default=0.7, metadata={"help": "2.1: weight of the context loss on image steps"})
    lambda_start: int = field(default=100, metadata={"help": "2.1: step the context-loss weight starts rising from 0 "
                                                             "(Meta: 15000)"})
    lambda_end: int = field(default=300, metadata={"help": "2.1: step it reaches its value and holds (Meta: 30000)"})
    distance_weights: bool = field(default=True, metadata={"help": "2.1: weigh each context token by 1/sqrt of its "
                                                                   "distance to the nearest masked token"})
    image_every: int = field(default=4, metadata={"help": "2.1: every N-th step trains on images (each clip's "
                                                          "first frame, through the image tokenizer); 0: never"})
    teacher: str = field(default="", metadata={"help": "2.1: a frozen teacher encoder (a checkpoint folder) whose "
                                                       "levels are the targets (distillation, how B and L were "
                                                       "trained); empty: the EMA target encoder's own levels"})
    # ---- optimisation
    steps: int = field(default=600, metadata={"help": "optimizer steps in total"})
    batch_size: int = field(default=8, metadata={"help": "clips per optimizer step per rank"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches each step is split into"})
    warmup_steps: int = field(default=30, metadata={"help": "linear warm-up from start_lr to lr"})
    cooldown_steps: int = field(default=250, metadata={"help": "final linear decay from lr to final_lr"})
    start_lr: float = field(default=2e-4, metadata={"help": "learning rate at step 0"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate after warm-up"})
    final_lr: float = field(default=1e-5, metadata={"help": "learning rate at the end of the cool-down"})
    weight_decay: float = field(default=0.04, metadata={"help": "AdamW weight decay (not on biases and 1-D params)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    ema: float = field(default=0.995, metadata={"help": "target-encoder EMA momentum (the paper's recipes: "
                                                       "0.99925; a short run needs the target to move faster)"})
    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 autocast on CUDA, float32 on CPU), "
                                                         "float32 or bfloat16"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute block activations in backward"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the encoder and predictor"})
    fsdp: bool = field(default=False, metadata={"help": "shard parameters with FSDP2 instead of replicating (DDP)"})
    # ---- run
    out: str = field(default="outputs/train", metadata={"help": "folder for checkpoints, logs, plots, export"})
    resume: bool = field(default=False, metadata={"help": resume_help("latest.pt", RESUME_CHANGEABLE)})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between checkpoints (and at the end)"})
    seed: int = field(default=0, metadata={"help": "seed of the weights, data order, augmentation and masks"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    threads: int = field(default=1, metadata={"help": "CPU threads per process (0: torch's default); the CPU "
                                                       "default leaves the second core to the data worker"})
    probe: bool = field(default=True, metadata={"help": "after training on physics data: ridge-probe trained vs "
                                                        "random encoder features"})
    probe_clips: int = field(default=384, metadata={"help": "physics clips for the probe (3/4 fit, 1/4 test)"})
    export: bool = field(default=True, metadata={"help": "write the target encoder as a transformers checkpoint "
                                                         "to <out>/hf at the end"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self):
        cli.check_fields(self, at_least_1=("patch_size", "crop_size", "frames", "short_blocks", "long_blocks", "steps",
                                           "batch_size", "grad_accum", "checkpoint_every", "probe_clips", "max_balls"),
                         at_least_0=("width", "depth", "heads", "pred_width", "pred_depth", "pred_heads", "workers",
                                     "warmup_steps", "cooldown_steps", "seed", "threads", "lambda_start", "lambda_end",
                                     "image_every"),
                         numbers=("fps", "start_lr", "lr", "final_lr", "weight_decay", "ema", "beta1", "beta2",
                                  "min_scale", "max_scale", "min_aspect", "max_aspect", "short_scale", "long_scale",
                                  "context_lambda", "context_lambda_image"),
                         choices={"preset": TRAIN_PRESETS, "model": PRESETS, "dtype": ("auto", "float32", "bfloat16"),
                                  "device": ("auto", "cpu", "cuda"), "rope_mode": ("tile", "interleave")},
                         folders=("out",))
        for name in ("ema", "beta1", "beta2"):
            if not getattr(self, name) < 1:
                raise ValueError(f"{cli.flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.fps <= 0 or self.lr <= 0:
            raise ValueError(f"--fps and --lr must be > 0, got {self.fps} and {self.lr}")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError(f"--min-scale/--max-scale must satisfy 0 < min <= max <= 1, got {self.min_scale}, {self.max_scale}")
        if not 0 < self.min_aspect <= self.max_aspect:
            raise ValueError(f"--min-aspect/--max-aspect must satisfy 0 < min <= max, got {self.min_aspect}, {self.max_aspect}")
        if self.warmup_steps + self.cooldown_steps > self.steps:
            raise ValueError(f"--warmup-steps ({self.warmup_steps}) + --cooldown-steps ({self.cooldown_steps}) "
                             f"must not exceed --steps ({self.steps})")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"--batch-size ({self.batch_size}) must be divisible by --grad-accum ({self.grad_accum})")
        if self.crop_size % self.patch_size:
            raise ValueError(f"--crop-size ({self.crop_size}) must be a multiple of --patch-size ({self.patch_size})")
        if self.lambda_end < self.lambda_start:
            raise ValueError(f"--lambda-end ({self.lambda_end}) must not come before --lambda-start ({self.lambda_start})")
        if min(self.context_lambda, self.context_lambda_image) < 0:
            raise ValueError(f"--context-lambda and --context-lambda-image must be >= 0, got {self.context_lambda}, "
                             f"{self.context_lambda_image}")
        model = self.model_config()  # width/heads divisibility and the like, with the model's own messages
        if self.teacher and not model.is_v21:
            raise ValueError(f"--teacher belongs to the V-JEPA 2.1 objective: --model {self.model} is a V-JEPA 2 layout "
                             "(choose a *-2.1 model)")
        self.mask_configs()

    def schedule(self) -> Schedule:
        return Schedule(self.steps, self.lr, self.start_lr, self.final_lr, self.warmup_steps, self.cooldown_steps)

    def model_config(self) -> VJEPA2Config:
        preset = PRESETS[self.model]
        overrides = dict(patch_size=self.patch_size, crop_size=self.crop_size, frames_per_clip=self.frames,
                         rope_mode=self.rope_mode)
        for ours, theirs in (("width", "hidden_size"), ("depth", "num_hidden_layers"), ("heads", "num_attention_heads"),
                             ("pred_width", "pred_hidden_size"), ("pred_depth", "pred_num_hidden_layers"),
                             ("pred_heads", "pred_num_attention_heads")):
            if getattr(self, ours):
                overrides[theirs] = getattr(self, ours)
        if preset.get("hierarchical_layers"):  # 2.1: taps for the depth trained, targets its own or the teacher's
            taps = hierarchical_taps(overrides.get("num_hidden_layers", preset["num_hidden_layers"]))
            levels = len(taps) if preset["num_distillation_outputs"] > 1 else 1
            overrides.update(hierarchical_layers=taps, num_distillation_outputs=levels, teacher_embed_dim=None,
                             rope_mode="interleave")  # 2.1's true rotation, whatever --rope-mode says
            if self.teacher:
                teacher = VJEPA2Config.from_pretrained(self.teacher)
                if not teacher.is_v21:
                    raise ValueError(f"--teacher {self.teacher}: a V-JEPA 2 checkpoint; the teacher must be a 2.1 "
                                     "encoder (its hierarchical levels are the targets)")
                if teacher.num_distillation_outputs not in (1, len(taps)):
                    raise ValueError(f"--teacher {self.teacher}: its {teacher.num_distillation_outputs} levels cannot be "
                                     f"predicted by a student with {len(taps)} taps (1 or {len(taps)} levels)")
                overrides.update(num_distillation_outputs=teacher.num_distillation_outputs,
                                 teacher_embed_dim=teacher.num_distillation_outputs * teacher.hidden_size)
        return VJEPA2Config(**{**preset, **overrides})

    def mask_configs(self) -> tuple[MaskConfig, MaskConfig]:
        for name in ("short_scale", "long_scale"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{cli.flag(name)} must be in (0, 1], got {getattr(self, name)}")
        return (MaskConfig(self.short_blocks, self.short_scale), MaskConfig(self.long_blocks, self.long_scale))


# The paper's recipe (per-GPU batch 24 x 128 GPUs = 3072; lr 1e-4 -> 5.25e-4 over 12k warm-up
# steps, then constant; 16 frames at 256 px, 4 fps; EMA 0.99925; bf16; activation checkpointing).
# steps/cooldown: 240k + 12k as in the released schedule (the cool-down there also moves to 64
# frames, which is a second run with --frames 64 --resume).
_PAPER = dict(width=0, depth=0, heads=0, pred_width=0, pred_depth=0, pred_heads=0,  # the model preset's shape
              patch_size=16, crop_size=256, frames=16, batch_size=24, steps=252_000, warmup_steps=12_000,
              cooldown_steps=12_000, start_lr=1e-4, lr=5.25e-4, final_lr=1e-6, ema=0.99925,
              activation_checkpointing=True, workers=8, threads=0, probe=False, checkpoint_every=1000)
# The CPU default (the dataclass defaults): a small model (encoder width 96 x 2 blocks, predictor
# 64 x 2) on the embedded physics clips that trains in about a minute on two cores (one for the
# model, one for the data worker); EMA 0.995 so the target encoder moves well away from its
# initialisation within 600 steps (at 0.99925 it would still be 64 % its random init).
PROG = "python -m vjepa_fast.train"
DESCRIPTION = ("V-JEPA 2 self-supervised pre-training (stage 1). With no arguments: a small model on generated "
               "physics clips, on the CPU, in a few minutes.")
TRAIN_PRESETS: dict[str, dict] = {
    "tiny": {},  # the dataclass defaults
    "vitl": dict(_PAPER, model="vitl"),
    "vith": dict(_PAPER, model="vith"),
    "vitg": dict(_PAPER, model="vitg", steps=252_000),
    # V-JEPA 2.1: four levels, context loss (lambda 0 until 15k steps, then up to 0.5 video / 0.7
    # image by 30k), a quarter of the steps on images. B and L were distilled: add --teacher DIR.
    "tiny-2.1": dict(model="tiny-2.1"),
    "vitb-2.1": dict(_PAPER, model="vitb-2.1", lambda_start=15_000, lambda_end=30_000),
    "vitl-2.1": dict(_PAPER, model="vitl-2.1", lambda_start=15_000, lambda_end=30_000),
    "vitg-2.1": dict(_PAPER, model="vitg-2.1", lambda_start=15_000, lambda_end=30_000),
    "vitG-2.1": dict(_PAPER, model="vitG-2.1", lambda_start=15_000, lambda_end=30_000),
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    argv = sys.argv[1:] if argv is None else argv
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset", default="tiny")
    known, _ = first.parse_known_args(argv)
    if known.preset not in TRAIN_PRESETS:
        cli.build_parser(TrainConfig, PROG, DESCRIPTION).error(f"--preset must be one of {tuple(TRAIN_PRESETS)}, got {known.preset!r}")
    defaults = TrainConfig(**{**TRAIN_PRESETS[known.preset], "preset": known.preset})
    return cli.parse(TrainConfig, argv, PROG, DESCRIPTION, defaults)
