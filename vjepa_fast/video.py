"""Video in: decode a clip with torchcodec, pick its frames, and turn uint8 frames into the
normalised pixels the encoder takes, exactly as transformers' VJEPA2VideoProcessor does.

The processor recipe (transformers' BaseVideoProcessor running torchvision's v2 kernels):
  1. Resize so the shortest edge is int(crop * 256 / 224) (292 for a 256 crop); the other edge is
     int(shortest * long / short), truncated. Bilinear, antialias, align_corners=False. The frames
     stay uint8: torchvision (0.28, the release for torch 2.13) interpolates uint8 natively on
     AVX2/AVX512 and ARM CPUs; elsewhere (CUDA, CPUs without AVX2) in float32, rounding half to
     even back to uint8. The two paths differ by one grey level here and there, so we take the
     same one.
  2. Centre crop: top = (H - crop) // 2, left = (W - crop) // 2.
  3. (x - 255 * mean) / (255 * std) in float32: transformers folds the 1/255 rescale into mean
     and std, which rounds differently from x / 255 followed by (x - mean) / std.
"""
from __future__ import annotations

import csv
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vjepa_fast.config import IMAGENET_MEAN, IMAGENET_STD

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")

# Frames resized at once: a 1080p frame is 25 MB in float32, so 64 at a time would need 1.6 GB.
_RESIZE_CHUNK = 8


@dataclass
class ProcessorConfig:
    """transformers' VJEPA2VideoProcessor options. resize_size (its size["shortest_edge"]) is
    int(crop_size * 256 / 224) unless given; the do_* flags switch the recipe's steps off."""
    crop_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_size: int | None = None
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    rescale_factor: float = 1 / 255

    def __post_init__(self):
        for name in ("crop_size", "resize_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"ProcessorConfig.{name} must be a positive int, got {value!r}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"ProcessorConfig.mean and std must hold 3 values (R, G, B), "
                             f"got {self.mean} and {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"ProcessorConfig.std must be positive, got {self.std}")

    @property
    def shortest_edge(self) -> int:
        """The resize target of the shortest edge, before the centre crop (256 -> 292)."""
        return int(self.crop_size * 256 / 224) if self.resize_size is None else self.resize_size

    def to_dict(self) -> dict:
        """video_preprocessor_config.json as transformers writes it."""
        return {"crop_size": {"height": self.crop_size, "width": self.crop_size},
                "do_center_crop": self.do_center_crop, "do_normalize": self.do_normalize,
                "do_rescale": self.do_rescale, "do_resize": self.do_resize, "image_mean": list(self.mean),
                "image_std": list(self.std), "resample": 2, "rescale_factor": self.rescale_factor,
                "size": {"shortest_edge": self.shortest_edge}, "video_processor_type": "VJEPA2VideoProcessor"}

    @classmethod
    def from_dict(cls, d: dict, overrides: dict | None = None) -> "ProcessorConfig":
        """A processor config.json (transformers' names); overrides: per-call options, same names.
        As transformers' VJEPA2VideoProcessor, a saved size follows crop_size; a per-call one counts."""
        kind = d.get("video_processor_type") or d.get("image_processor_type") or d.get("processor_class")
        if kind not in (None, "VJEPA2VideoProcessor"):
            raise ValueError(f"processor config: expected a VJEPA2VideoProcessor, got {kind!r}")
        merged = {**d, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        crop = merged.get("crop_size", 256)
        if isinstance(crop, dict):
            if crop.get("height") != crop.get("width") or "height" not in crop:
                raise ValueError(f"crop_size: expected a square crop (an int or height == width), got {crop}")
            crop = crop["height"]
        size = (overrides or {}).get("size")
        if size is not None and (not isinstance(size, dict) or set(size) != {"shortest_edge"}):
            raise ValueError(f"size: expected {{'shortest_edge': n}} (the resize before the crop), got {size!r}")
        return cls(crop_size=crop, mean=merged.get("image_mean", IMAGENET_MEAN), std=merged.get("image_std", IMAGENET_STD),
                   resize_size=None if size is None else size["shortest_edge"],
                   **{k: merged[k] for k in ("do_resize", "do_center_crop", "do_rescale", "do_normalize",
                                            "rescale_factor") if k in merged})


def resized_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) with the shortest edge at `shortest_edge`; the long edge is truncated."""
    if height <= width:
        return shortest_edge, int(shortest_edge * width / height)
    return int(shortest_edge * height / width), shortest_edge


def _native_uint8_resize(device: torch.device) -> bool:
    """torchvision's rule for when bilinear interpolation runs on uint8 directly."""
    if device.type != "cpu":
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def resize(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """(T, 3, H, W) -> (T, 3, *size), bilinear with antialias (see the module docstring). uint8
    stays uint8; float frames are interpolated in float32, as torchvision does."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    uint8 = frames.dtype == torch.uint8
    native = uint8 and _native_uint8_resize(frames.device)
    out = []
    for chunk in frames.split(_RESIZE_CHUNK):
        x = chunk if native else chunk.float()
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        out.append(x.round_().to(torch.uint8) if uint8 and not native else x)
    return torch.cat(out)


def _channels_first(frames: Tensor, channels_last: bool | None) -> Tensor:
    """(..., H, W, 3) or (..., 3, H, W) -> (..., 3, H, W)."""
    if channels_last is None:
        last, first = frames.shape[-1] == 3, frames.shape[-3] == 3
        if last == first:
            raise ValueError(f"frames: cannot tell the channel dimension of shape {tuple(frames.shape)}; "
                             "expected 3 channels in the last or the third-last dimension "
                             "(pass channels_last=True or False)")
        channels_last = last
    channel_dim = -1 if channels_last else -3
    if frames.shape[channel_dim] != 3:
        raise ValueError(f"frames: expected 3 (RGB) channels in dimension {channel_dim}, "
                         f"got shape {tuple(frames.shape)}")
    return frames.movedim(-1, -3) if channels_last else frames


def _as_tensor(frames) -> Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, Tensor):
        raise TypeError(f"frames: expected a torch.Tensor or numpy array of pixels, got {type(frames).__name__}")
    if frames.dtype != torch.uint8 and not frames.is_floating_point():
        raise TypeError(f"frames: expected uint8 pixels (as decoded) or floats in [0, 255], got {frames.dtype}")
    return frames


class VideoBatch(dict):
    """What the processor returns, as transformers' BatchFeature: a dict (so `model(**batch)`
    works) whose keys are also attributes, with `.to(device or dtype)`."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"VideoBatch has no {name!r}; it has {sorted(self)}") from None

    def to(self, device_or_dtype) -> "VideoBatch":
        """Tensors moved to a device, or floating tensors cast to a dtype."""
        if isinstance(device_or_dtype, torch.dtype):
            return VideoBatch({k: v.to(device_or_dtype) if v.is_floating_point() else v for k, v in self.items()})
        return VideoBatch({k: v.to(device_or_dtype) for k, v in self.items()})


RETURN_TENSORS = (None, "pt", "np")


class VideoProcessor:
    """Frames -> the encoder's pixels, as transformers' VJEPA2VideoProcessor (also importable
    under that name), including its interface:

    processor(videos, return_tensors="pt") takes one video ((T, H, W, 3) or (T, 3, H, W), uint8
    or float, tensor or numpy; an image is a one-frame video) or a batch (a list of videos, or
    one 5-d array) and returns {"pixel_values_videos": (B, T, 3, crop, crop)}; the keyword options
    transformers takes (crop_size, size, do_resize, ...) override the config for one call.
    processor.process(frames) is the same recipe on a tensor: (T, ...) -> (T, 3, crop, crop),
    (B, T, ...) -> (B, T, 3, crop, crop). The layout is read from where the 3 channels are;
    channels_last=True/False says it when both places hold 3."""

    def __init__(self, config: ProcessorConfig | None = None):
        self.config = ProcessorConfig() if config is None else config

    def __call__(self, videos, return_tensors: str | None = None, crop_size: int | dict | None = None,
                 size: dict | None = None, do_resize: bool | None = None, do_center_crop: bool | None = None,
                 do_rescale: bool | None = None, do_normalize: bool | None = None, image_mean=None, image_std=None,
                 rescale_factor: float | None = None, channels_last: bool | None = None) -> VideoBatch:
        if return_tensors not in RETURN_TENSORS:
            raise ValueError(f"return_tensors must be one of {RETURN_TENSORS} ('pt': torch, 'np': numpy, "
                             f"None: a list of tensors), got {return_tensors!r}")
        overrides = dict(crop_size=crop_size, size=size, do_resize=do_resize, do_center_crop=do_center_crop,
                         do_rescale=do_rescale, do_normalize=do_normalize, image_mean=image_mean,
                         image_std=image_std, rescale_factor=rescale_factor)
        config = self.config
        if any(v is not None for v in overrides.values()):
            # As transformers: a per-call crop_size crops the frames resized for the processor's own crop.
            overrides["size"] = overrides["size"] or {"shortest_edge": self.config.shortest_edge}
            config = ProcessorConfig.from_dict(self.config.to_dict(), overrides)
        if isinstance(videos, (list, tuple)):
            videos = [_as_tensor(v) for v in videos]
            if videos and all(v.dim() == 3 for v in videos):
                videos = [torch.stack(videos)]  # a list of frames is one video
        else:
            videos = _as_tensor(videos)
            videos = list(videos) if videos.dim() == 5 else [videos[None] if videos.dim() == 3 else videos]
        if not videos:
            raise ValueError("videos: expected a video or a non-empty list of videos, got an empty list")
        out = [_process(v, config, channels_last) for v in videos]
        if return_tensors is None:
            return VideoBatch(pixel_values_videos=out)
        if len({v.shape for v in out}) > 1:
            raise ValueError(f"videos: return_tensors={return_tensors!r} stacks the videos, but they come out in "
                             f"different shapes {sorted({tuple(v.shape) for v in out})} (different frame counts, "
                             "or sizes without the centre crop); pass return_tensors=None for a list")
        stacked = torch.stack(out)
        return VideoBatch(pixel_values_videos=stacked.numpy() if return_tensors == "np" else stacked)

    def process(self, frames: Tensor | np.ndarray, channels_last: bool | None = None) -> Tensor:
        frames = _as_tensor(frames)
        if frames.dim() not in (4, 5):
            raise ValueError(f"frames: expected (T, H, W, 3), (T, 3, H, W) or a batch of those, "
                             f"got shape {tuple(frames.shape)}")
        return _process(frames, self.config, channels_last)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *, revision: str | None = None,
                        cache_dir: str | None = None, local_files_only: bool = False,
                        token: str | bool | None = None, subfolder: str = "") -> "VideoProcessor":
        """video_preprocessor_config.json (or the older preprocessor_config.json) of a checkpoint
        directory or hub id."""
        from vjepa_fast.checkpoints import CheckpointError, Source
        directory = Source(str(pretrained_model_name_or_path), revision, cache_dir, local_files_only, token,
                           subfolder).resolve()
        for name in PROCESSOR_FILES:
            if (directory / name).is_file():
                return cls(ProcessorConfig.from_dict(json.loads((directory / name).read_text())))
        raise CheckpointError(f"{directory}: no {' or '.join(PROCESSOR_FILES)}")

    def save_pretrained(self, save_directory: str | Path) -> None:
        from vjepa_fast.files import atomic_write
        text = json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(Path(save_directory) / PROCESSOR_FILES[0], lambda p: Path(p).write_text(text))


PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


def _process(frames: Tensor, c: ProcessorConfig, channels_last: bool | None) -> Tensor:
    """The recipe on (..., T, H, W, 3) or (..., T, 3, H, W) frames -> (..., T, 3, crop, crop)."""
    frames = _channels_first(frames, channels_last)
    *lead, _, H, W = frames.shape
    if H == 0 or W == 0 or 0 in lead:
        raise ValueError(f"frames: empty video of shape {tuple(frames.shape)}")
    frames = frames.reshape(-1, 3, H, W)
    if frames.dtype == torch.float64:
        frames = frames.float()
    if c.do_resize:
        frames = resize(frames, resized_size(H, W, c.shortest_edge))
    if c.do_center_crop:
        h, w = frames.shape[-2:]
        top, left = (h - c.crop_size) // 2, (w - c.crop_size) // 2
        if top < 0 or left < 0:
            raise ValueError(f"frames: {h}x{w} frames are smaller than crop_size={c.crop_size}; resize them first")
        frames = frames[..., top:top + c.crop_size, left:left + c.crop_size]
    if c.do_normalize and c.do_rescale and c.rescale_factor == 1 / 255:
        frames = normalize(frames, c.mean, c.std)  # the released recipe, rounded as transformers does
    elif c.do_normalize or c.do_rescale:
        frames = frames.float() * (c.rescale_factor if c.do_rescale else 1.0)
        if c.do_normalize:
            m, s = (torch.tensor(v, device=frames.device)[:, None, None] for v in (c.mean, c.std))
            frames = (frames - m) / s
    return frames.reshape(*lead, *frames.shape[-3:])


def normalize(frames: Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> Tensor:
    """(..., 3, H, W) pixels in [0, 255] (uint8, or float after a resize) -> float32
    (x - 255 * mean) / (255 * std): step 3 of the processor, the one normalisation of the package."""
    m = torch.tensor(mean, device=frames.device) * 255.0
    s = torch.tensor(std, device=frames.device) * 255.0
    return (frames.float() - m[:, None, None]) / s[:, None, None]


# ---- Decoding and frame sampling ------------------------------------------------------------

@dataclass
class ClipSampling:
    """Which frames of a video make the clip. At most one of frame_step, fps and uniform:
      frame_step  every frame_step-th frame from start_frame (the default, with step 1);
      fps         a target rate: frame_step = ceil(video fps) // fps, Meta's pre-training rule
                  (4 fps from a 30 fps video takes every 7th frame);
      uniform     num_frames spread evenly over the video from start_frame."""
    num_frames: int = 64
    frame_step: int | None = None
    fps: float | None = None
    uniform: bool = False
    start_frame: int = 0

    def __post_init__(self):
        _check_int("num_frames", self.num_frames, 1)
        _check_int("start_frame", self.start_frame, 0)
        if self.frame_step is not None:
            _check_int("frame_step", self.frame_step, 1)
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and not isinstance(self.fps, bool)
                                         and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")
        chosen = [name for name, on in (("frame_step", self.frame_step is not None),
                                        ("fps", self.fps is not None), ("uniform", self.uniform)) if on]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} are exclusive ways to sample a clip; give one")


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def frame_indices(sampling: ClipSampling, total_frames: int, video_fps: float | None,
                  source: str = "video") -> Tensor:
    """(num_frames,) int64 indices into a video of total_frames frames at video_fps."""
    s = sampling
    available = total_frames - s.start_frame
    if s.uniform:
        if available < s.num_frames:
            raise ValueError(f"num_frames={s.num_frames} spread uniformly from start_frame={s.start_frame} "
                             f"needs {s.num_frames} frames, but {source} has {total_frames}")
        # floor(i * available / n): transformers' default spread
        return s.start_frame + torch.arange(s.num_frames, dtype=torch.int64) * available // s.num_frames
    step = 1 if s.frame_step is None else s.frame_step
    if s.fps is not None:
        if not video_fps:
            raise ValueError(f"fps={s.fps}: {source} reports no frame rate; sample with frame_step instead")
        step = int(math.ceil(video_fps) // s.fps)
        if step < 1:
            raise ValueError(f"fps={s.fps} is above the frame rate of {source} ({video_fps:g} fps)")
    needed = (s.num_frames - 1) * step + 1
    if available < needed:
        raise ValueError(f"num_frames={s.num_frames} every {step} frame(s) from start_frame={s.start_frame} "
                         f"needs {s.start_frame + needed} frames, but {source} has {total_frames}")
    return s.start_frame + torch.arange(s.num_frames, dtype=torch.int64) * step


@dataclass
class Clip:
    frames: Tensor         # (T, 3, H, W) uint8, as decoded
    indices: Tensor        # (T,) int64 frame indices in the video
    video_fps: float       # the video's average frame rate (0.0 when the file gives none)
    total_frames: int      # frames in the video


def load_clip(path: str | Path, sampling: ClipSampling | None = None) -> Clip:
    """Decode the frames `sampling` picks from the video file at `path` (torchcodec, exact seeking)."""
    sampling = ClipSampling() if sampling is None else sampling
    decoder = open_video(path)
    total, video_fps = decoder.metadata.num_frames or 0, decoder.metadata.average_fps or 0.0
    indices = frame_indices(sampling, total, video_fps, source=str(path))
    frames = decoder.get_frames_at(indices.tolist()).data  # (T, 3, H, W) uint8
    return Clip(frames, indices, float(video_fps), total)


def open_video(path: str | Path, device: str = "cpu"):
    """torchcodec's VideoDecoder (exact seeking) for the file at `path`, decoding on `device`;
    a missing, empty or undecodable file is an error naming it."""
    # Imported here: torchcodec loads the FFmpeg libraries on import, which the processor never needs.
    from torchcodec.decoders import VideoDecoder

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: no such video file: {path}")
    if not path.is_file():
        raise ValueError(f"path: expected a video file, got a directory or special file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"path: video file is empty: {path}")
    try:
        return VideoDecoder(str(path), seek_mode="exact", device=device)
    except (RuntimeError, ValueError) as e:
        if "best video stream is unknown" in str(e):  # FFmpeg found streams, none of them video
            raise ValueError(f"path: {path} has no video stream (audio only?)") from e
        raise ValueError(f"path: cannot decode {path} as a video: {e}") from e


def list_videos(source: str, flag: str) -> list[Path]:
    """A video file, a folder (searched recursively for video suffixes) or a CSV/text file whose
    first column (comma- or space-separated, as in Meta's lists) is a video path; relative paths
    are taken from the list's folder. `flag` names the argument in errors."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{flag}: no such file or folder: {source}")
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    elif path.is_file():
        files = []
        with open(path, newline="") as f:
            for row in csv.reader(f):
                if row and row[0].strip():
                    name = Path(row[0].strip().split(" ")[0])
                    files.append(name if name.is_absolute() else path.parent / name)
    else:
        raise ValueError(f"{flag}: {source} is neither a video, a folder of videos nor a CSV/text list")
    if not files:
        raise ValueError(f"{flag}: no videos found in {source} (looked for {', '.join(VIDEO_EXTENSIONS)})")
    return files
