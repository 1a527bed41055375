"""Encoder features for video files, saved to one safetensors file.

    python -m vjepa_fast.extract a.mp4 b.mp4 --model facebook/vjepa2-vitl-fpc64-256 --out feats.safetensors
    python -m vjepa_fast.extract --demo --out outputs/demo_features.safetensors   # no downloads

Each video becomes one tensor, get_vision_features' output (1, N, D), keyed by its file stem
(sanitised, made unique). The file's metadata holds "config" (these settings) and "videos"
(per key: source path, frame indices, frame rate), both JSON.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from vjepa_fast.files import atomic_write
from vjepa_fast.jobs import cli
from vjepa_fast.config import DTYPES, ROPE_GRIDS, VJEPA2Config
from vjepa_fast.model import VJEPA2Model
from vjepa_fast.video import ClipSampling, ProcessorConfig, VideoProcessor, load_clip



@dataclass
class ExtractConfig:
    videos: list[str] = field(default_factory=list, metadata={"help": "video files to encode"})
    model: str | None = field(default=None, metadata={"help": "checkpoint directory (config.json + "
                                                               "model.safetensors) or hub id"})
    out: str = field(default="features.safetensors", metadata={"help": "the .safetensors file to write"})
    num_frames: int = field(default=64, metadata={"help": "frames per clip"})
    frame_step: int | None = field(default=None, metadata={"help": "take every N-th frame (unset: 1)"})
    fps: float | None = field(default=None, metadata={"help": "sample at this rate instead (step = ceil(video "
                                                               "fps) // fps)"})
    uniform: bool = field(default=False, metadata={"help": "spread the frames evenly over the whole video instead"})
    start_frame: int = field(default=0, metadata={"help": "first frame of the clip"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu or cuda"})
    dtype: str = field(default="float32", metadata={"help": f"model and feature dtype: {sorted(DTYPES)}"})
    rope_grid: str | None = field(default=None, metadata={"help": "token position grid: 'config' (transformers) "
                                                                   "or 'input' (Meta); unset: the checkpoint's"})
    demo: bool = field(default=False, metadata={"help": "generate a short MP4 and a random tiny model, extract, "
                                                        "print the shape (no downloads)"})

    def __post_init__(self):
        cli.check_fields(self, choices={"dtype": DTYPES, "rope_grid": (*ROPE_GRIDS, None)}, files=("out",))
        if self.demo and (self.videos or self.model):
            raise ValueError("demo makes its own video and model: pass neither VIDEO nor --model with --demo")
        if not self.demo and not self.videos:
            raise ValueError("videos: give at least one video file (or --demo)")
        if not self.demo and not self.model:
            raise ValueError("model: give a checkpoint directory or hub id with --model (or --demo)")
        self.sampling()  # bad sampling arguments fail here, before any model is loaded

    def sampling(self) -> ClipSampling:
        return ClipSampling(self.num_frames, self.frame_step, self.fps, self.uniform, self.start_frame)


def feature_keys(videos: list[str]) -> list[str]:
    """File stems made safe and unique: 'my clip.mp4' -> 'my_clip'; a repeated stem gets '_<index>'."""
    keys = []
    for i, video in enumerate(videos):
        key = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(video).stem) or f"video_{i}"
        while key in keys:  # a loop: 'a', 'a_2', 'a' would otherwise give 'a_2' twice
            key = f"{key}_{i}"
        keys.append(key)
    return keys


def extract(config: ExtractConfig, model: VJEPA2Model | None = None) -> dict[str, Tensor]:
    """Encode every video of `config` and write config.out; returns {key: (1, N, D) features}.
    `model` replaces loading config.model (the demo passes its random one; config.rope_grid
    then applies only where the model was built)."""
    from safetensors.torch import save_file

    missing = [v for v in config.videos if not Path(v).is_file()]
    if missing:
        raise FileNotFoundError(f"videos: no such file(s): {', '.join(missing)}")
    if model is None:
        model = VJEPA2Model.from_pretrained(config.model, rope_grid=config.rope_grid)
    dtype = DTYPES[config.dtype]
    device = cli.resolve_device(config.device)
    model = model.to(device=device, dtype=dtype).eval()
    processor = VideoProcessor(ProcessorConfig(crop_size=model.config.crop_size))
    sampling = config.sampling()
    features, sources = {}, {}
    keys = feature_keys(config.videos)
    for key, video in tqdm(list(zip(keys, config.videos)), desc="extract", unit="video"):
        clip = load_clip(video, sampling)
        pixels = processor.process(clip.frames.to(device))[None].to(dtype)  # (1, T, 3, crop, crop)
        with torch.inference_mode():
            features[key] = model.get_vision_features(pixels).cpu().contiguous()  # (1, N, D)
        sources[key] = {"path": str(video), "frame_indices": clip.indices.tolist(),
                        "video_fps": clip.video_fps, "total_frames": clip.total_frames}
    metadata = {"config": json.dumps(dataclasses.asdict(config)), "videos": json.dumps(sources)}
    atomic_write(Path(config.out), lambda p: save_file(features, p, metadata=metadata))
    return features


DEMO_FPS = 16


def write_demo_video(path: Path, num_frames: int, height: int = 96, width: int = 128) -> None:
    """A short MP4 at DEMO_FPS: a bright square and a disc moving over a gradient."""
    from torchcodec.encoders import VideoEncoder

    t = torch.arange(num_frames, dtype=torch.float32)[:, None, None]    # (T, 1, 1)
    y = torch.arange(height, dtype=torch.float32)[None, :, None]         # (1, H, 1)
    x = torch.arange(width, dtype=torch.float32)[None, None, :]          # (1, 1, W)
    background = (40 + 80 * x / width).expand(num_frames, height, width)
    sx = (t * 3) % (width - 24)
    square = (x >= sx) & (x < sx + 24) & (y >= 20) & (y < 44)
    cx, cy = width / 2 + width / 3 * torch.cos(t * 2 * math.pi / num_frames), height * 0.65
    disc = (x - cx) ** 2 + (y - cy) ** 2 < 14 ** 2
    r = torch.where(square, 230.0, background)
    g = torch.where(disc, 200.0, background)
    b = torch.where(square | disc, 60.0, 255 - background)
    frames = torch.stack([r, g, b], dim=1).round().to(torch.uint8)      # (T, 3, H, W)
    path.parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=DEMO_FPS).to_file(str(path))


def demo(config: ExtractConfig) -> dict[str, Tensor]:
    """Everything generated locally: a moving-shapes MP4 beside config.out and a random 'tiny' model."""
    video = Path(config.out).parent / "demo_video.mp4"
    step = config.frame_step or (DEMO_FPS // config.fps if config.fps else 1)
    write_demo_video(video, config.start_frame + config.num_frames * max(1, int(step)))
    print(f"wrote {video}")
    with torch.random.fork_rng():  # seeded: the same random model, hence features, on every run
        torch.manual_seed(0)
        tiny = VJEPA2Config.from_name("tiny")
        model = VJEPA2Model(dataclasses.replace(tiny, rope_grid=config.rope_grid or tiny.rope_grid))
    run = dataclasses.replace(config, videos=[str(video)], model="random tiny (demo)", demo=False)
    features = extract(run, model)
    for key, value in features.items():
        print(f"{key}: features {list(value.shape)} -> {config.out}")
    return features


PROG = "python -m vjepa_fast.extract"


def main(argv: list[str] | None = None) -> None:
    config = cli.parse(ExtractConfig, argv, PROG, __doc__)
    cli.run(demo if config.demo else extract, config, PROG)


if __name__ == "__main__":
    main()
