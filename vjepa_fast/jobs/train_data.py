"""Pre-training data: clips (generated physics or real videos), augmentation, masks, batching.

Every clip is addressed by its position k in an unbounded stream, and everything random about it
(which video, where the clip starts, the crop, the flip) is seeded by (seed, k); every batch's
masks are seeded by (seed, its first k). So a batch is the same in any worker process, on resume,
and whatever the number of workers, which is what makes `--resume` exact. Rank r of a world of W
takes positions [s*W*B + r*B, s*W*B + (r+1)*B) at step s (B clips per rank and step).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vjepa_fast.masks import MaskConfig, mix_seed, sample_masks
from vjepa_fast.worlds.physics import PhysicsClips, PhysicsConfig
from vjepa_fast.video import normalize

log = logging.getLogger(__name__)


class PhysicsTrainClips(Dataset):
    """Generated physics clips, (T, 3, S, S) normalised; no augmentation (the scenes are already
    random). Returns (clip, stream position, 0 unreadable files)."""

    def __init__(self, frames: int, size: int, max_balls: int, seed: int):
        self.clips = PhysicsClips(PhysicsConfig(frames=frames, size=size, max_balls=max_balls), seed=seed)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, k: int) -> tuple[Tensor, int, int]:
        video, _ = self.clips[k]
        return normalize(video.permute(0, 3, 1, 2)), k, 0


@dataclass
class Augment:
    size: int
    scale: tuple[float, float] = (0.3, 1.0)
    aspect: tuple[float, float] = (0.75, 1.35)

    def crop_box(self, height: int, width: int, g: torch.Generator) -> tuple[int, int, int, int]:
        """Random-resized-crop box (top, left, h, w) as torchvision draws it: area and log-aspect
        uniform, ten tries, then the largest centred box of an allowed aspect ratio."""
        area = height * width
        for _ in range(10):
            target = area * (self.scale[0] + float(torch.rand((), generator=g)) * (self.scale[1] - self.scale[0]))
            log_lo, log_hi = math.log(self.aspect[0]), math.log(self.aspect[1])
            aspect = math.exp(log_lo + float(torch.rand((), generator=g)) * (log_hi - log_lo))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return top, left, h, w
        aspect = min(max(width / height, self.aspect[0]), self.aspect[1])
        w, h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, frames: Tensor, g: torch.Generator) -> Tensor:
        """(T, 3, H, W) uint8 -> (T, 3, size, size) normalised: one crop and flip for all frames."""
        top, left, h, w = self.crop_box(frames.shape[2], frames.shape[3], g)
        x = frames[:, :, top:top + h, left:left + w].float()
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        if torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)
        return normalize(x.clamp(0, 255))


def decode_clip(decoder_class, path: Path, frames: int, fps: float, g: torch.Generator) -> Tensor:
    """`frames` frames at about `fps` (Meta's rule: every ceil(video fps) // fps-th frame) from a
    random start; a video too short for that is sampled with a smaller step, and one shorter than
    `frames` repeats its last frame. (T, 3, H, W) uint8."""
    decoder = decoder_class(str(path))
    total = decoder.metadata.num_frames or 0
    if total < 1:
        raise ValueError(f"{path}: no frames")
    step = max(1, int(math.ceil(decoder.metadata.average_fps or fps) // fps))
    if (frames - 1) * step + 1 > total:
        step = max(1, (total - 1) // max(frames - 1, 1))
    span = (frames - 1) * step + 1
    start = int(torch.randint(0, max(total - span, 0) + 1, (), generator=g))
    indices = [min(start + i * step, total - 1) for i in range(frames)]
    return decoder.get_frames_at(indices).data


class VideoClips(Dataset):
    """Clips from video files. Stream position k reads file perm_e[k mod n] of the epoch
    e = k div n (a fresh permutation per epoch); a file that cannot be decoded is logged, counted
    and replaced by the next file of the permutation. Returns (clip, k, unreadable files met)."""

    def __init__(self, files: list[Path], frames: int, fps: float, augment: Augment, seed: int):
        self.files, self.frames, self.fps, self.augment, self.seed = files, frames, fps, augment, seed
        self._perm: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def order(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self.files), generator=torch.Generator().manual_seed(
                mix_seed(self.seed, epoch))))
        return self._perm[1]

    def __getitem__(self, k: int) -> tuple[Tensor, int, int]:
        # Imported outside the try below: FFmpeg missing is an installation error, not a bad file.
        from torchcodec.decoders import VideoDecoder
        n = len(self.files)
        order = self.order(k // n)
        g = torch.Generator().manual_seed(mix_seed(self.seed, k, 1))
        for attempt in range(n):
            path = self.files[int(order[(k + attempt) % n])]
            try:
                frames = decode_clip(VideoDecoder, path, self.frames, self.fps, g)
            except (RuntimeError, ValueError, OSError) as e:
                log.warning("skipping unreadable video %s: %s", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
                continue
            return self.augment(frames, g), k, attempt
        raise RuntimeError(f"none of the {n} videos could be decoded; see the warnings above")


@dataclass
class Batch:
    video: Tensor                          # (B, T, 3, H, W) normalised
    masks: list[tuple[Tensor, Tensor]]     # per mask config: context (B, Kc), target (B, Kt)
    skipped: int                           # unreadable files met while reading this batch

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader (pin_memory=True) so host-to-GPU copies can be asynchronous."""
        return Batch(self.video.pin_memory(), [(c.pin_memory(), t.pin_memory()) for c, t in self.masks], self.skipped)


@dataclass
class Collate:
    grid: tuple[int, int, int]
    configs: tuple[MaskConfig, ...]
    seed: int

    def __call__(self, items: list[tuple[Tensor, int, int]]) -> Batch:
        video = torch.stack([item[0] for item in items])
        masks = sample_masks(self.grid, len(items), self.configs, mix_seed(self.seed, items[0][1], 2))
        return Batch(video, masks, sum(item[2] for item in items))


@dataclass
class StreamBatches:
    """Batch sampler: the stream positions of each micro-batch of this rank, from `start_step` on."""
    start_step: int
    batch_size: int   # clips per rank and optimizer step
    micro_batches: int
    world_size: int
    rank: int

    def __iter__(self):
        step = self.start_step
        micro = self.batch_size // self.micro_batches
        while True:
            first = (step * self.world_size + self.rank) * self.batch_size
            for m in range(self.micro_batches):
                yield list(range(first + m * micro, first + (m + 1) * micro))
            step += 1


def make_loader(dataset: Dataset, collate: Collate, batches: StreamBatches, workers: int, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                      pin_memory=pin, persistent_workers=workers > 0)
