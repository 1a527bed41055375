"""Encoder features for whole datasets, streamed to safetensors shards with a manifest.

    python -m vjepa_fast.extract videos/ --model facebook/vjepa2-vitl-fpc64-256 --out features/
    torchrun --nproc-per-node 8 -m vjepa_fast.extract list.csv --model DIR --out features/
    python -m vjepa_fast.extract --demo     # a generated MP4 and a random tiny model, no downloads

VIDEO arguments are files, folders (searched recursively) or CSV/text lists (first column a
path). DataLoader workers decode and crop; the model encodes batches of clips. OUT gets
shard-r<rank>-<n>.safetensors files (each written atomically once it holds --shard-size-mb
of features, streamed to disk as they come) and manifest.csv (key, video, path, window, start frame and time,
frame indices, fps, shape, shard, status, error). A video that cannot be read is listed with
its error and skipped. The same command again resumes: what the shards hold is skipped. Under
torchrun each rank takes every WORLD_SIZE-th video and rank 0 writes the manifest.

A clip's features are get_vision_features' (N, D) (--layers: (L, N, D), each block's output
through the final LayerNorm as Meta's evaluations take them; --pool mean: (D,) or (L, D)).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from vjepa_fast.config import DTYPES, ROPE_GRIDS, VJEPA2Config
from vjepa_fast.files import FolderLock, atomic_write, remove_stale_temps
from vjepa_fast.jobs import cli
from vjepa_fast.jobs.extract_data import (ClipStream, ShardWriter, Video, Windows, list_inputs, load_features,
                                          merged_rows, progress, stack, write_manifest)
from vjepa_fast.model import VJEPA2Model
from vjepa_fast.video import ClipSampling, open_video

log = logging.getLogger("vjepa_fast")
# What the features depend on: a resumed run must have the same values.
SETTINGS = ("model", "num_frames", "frame_step", "fps", "uniform", "start_frame", "window_stride", "max_windows",
            "pool", "layers", "dtype", "feature_dtype", "rope_grid")


@dataclass
class ExtractConfig:
    videos: list[str] = field(default_factory=list, metadata={
        "help": "video files, folders (searched recursively) or CSV/text lists whose first column is a path"})
    model: str | None = field(default=None, metadata={"help": "checkpoint directory (config.json + "
                                                               "model.safetensors) or hub id"})
    out: str = field(default="outputs/features", metadata={"help": "folder for the shards and manifest.csv"})
    num_frames: int = field(default=64, metadata={"help": "frames per clip"})
    frame_step: int | None = field(default=None, metadata={"help": "take every N-th frame (unset: 1)"})
    fps: float | None = field(default=None, metadata={"help": "sample at this rate instead (step = ceil(video "
                                                               "fps) // fps)"})
    uniform: bool = field(default=False, metadata={"help": "spread the frames evenly over the whole video instead"})
    start_frame: int = field(default=0, metadata={"help": "first frame of the (first) clip"})
    window_stride: int | None = field(default=None, metadata={
        "help": "a clip every N frames of the video while one fits (keys KEY#0, KEY#1, ...); unset: one clip"})
    max_windows: int | None = field(default=None, metadata={"help": "at most this many clips per video"})
    pool: str = field(default="none", metadata={"help": "none: every token's features; mean: their mean"})
    layers: str = field(default="last", metadata={"help": "last (the encoder's output), or encoder block "
                                                          "numbers such as 6,12,18,24"})
    batch_size: int = field(default=8, metadata={"help": "clips per forward pass"})
    workers: int | None = field(default=None, metadata={"help": "decoding processes (0: decode in the main process); "
                                                                "unset: half the CPU cores, at least 2"})
    shard_size_mb: float = field(default=256, metadata={"help": "a shard is written once its features pass this "
                                                                "(0: one shard per clip) ..."})
    shard_clips: int = field(default=1000, metadata={"help": "... or once it holds this many clips (what a kill "
                                                             "can lose: the shard being filled)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu or cuda"})
    dtype: str = field(default="auto", metadata={"help": "compute precision: auto (bfloat16 autocast on CUDA, "
                                                         f"float32 on CPU) or one of {sorted(DTYPES)}"})
    feature_dtype: str = field(default="float32", metadata={"help": f"dtype of the saved features: {sorted(DTYPES)}"})
    decode_device: str = field(default="auto", metadata={
        "help": "cpu (in the workers), cuda (torchcodec's GPU decoder, in the main process) or auto: cuda when "
                "the model runs on CUDA and torchcodec can decode there, else cpu"})
    rope_grid: str | None = field(default=None, metadata={"help": "token position grid: 'config' (transformers) "
                                                                   "or 'input' (Meta); unset: the checkpoint's"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    demo: bool = field(default=False, metadata={"help": "generate a short MP4 and a random tiny model, extract, "
                                                        "print the shape (no downloads)"})

    def __post_init__(self):
        cli.check_fields(self, at_least_1=("batch_size", "shard_clips"),
                         numbers=("shard_size_mb",),
                         choices={"dtype": ("auto", *DTYPES), "feature_dtype": DTYPES, "pool": ("none", "mean"),
                                  "decode_device": ("auto", "cpu", "cuda"), "rope_grid": (*ROPE_GRIDS, None)},
                         folders=("out",))
        for name, low in (("window_stride", 1), ("max_windows", 1), ("workers", 0)):
            if getattr(self, name) is not None:
                cli.check_fields(self, **{"at_least_1" if low else "at_least_0": (name,)})
        if self.max_windows is not None and self.window_stride is None:
            raise ValueError("--max-windows needs --window-stride (without it each video gives one clip)")
        if self.window_stride is not None and self.uniform:
            raise ValueError("--window-stride and --uniform are exclusive: --uniform spreads one clip over the video")
        self.layer_numbers()
        if self.demo and (self.videos or self.model):
            raise ValueError("demo makes its own video and model: pass neither VIDEO nor --model with --demo")
        if not self.demo and not self.videos:
            raise ValueError("videos: give at least one video file, folder or list (or --demo)")
        if not self.demo and not self.model:
            raise ValueError("model: give a checkpoint directory or hub id with --model (or --demo)")
        self.sampling()  # bad sampling arguments fail here, before any model is loaded

    def sampling(self) -> ClipSampling:
        return ClipSampling(self.num_frames, self.frame_step, self.fps, self.uniform, self.start_frame)

    def layer_numbers(self) -> list[int] | None:
        """None for 'last', else the block numbers (1 = the first block's output)."""
        if self.layers == "last":
            return None
        parts = self.layers.split(",")
        if not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f"--layers must be 'last' or block numbers >= 1 such as 6,12, got {self.layers!r}")
        return [int(p) for p in parts]


def precision(config: ExtractConfig, device: torch.device) -> str:
    if config.dtype == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    return config.dtype


def load_model(config: ExtractConfig, model: VJEPA2Model | None, device: torch.device) -> VJEPA2Model:
    if model is None:
        model = VJEPA2Model.from_pretrained(config.model, rope_grid=config.rope_grid)
    depth = model.config.num_hidden_layers
    if any(n > depth for n in config.layer_numbers() or []):
        raise ValueError(f"--layers {config.layers}: the encoder has {depth} blocks (1..{depth})")
    return model.to(device).eval()


def decode_device(config: ExtractConfig, device: torch.device, videos: list[Video]) -> str:
    """Where torchcodec decodes: the GPU when asked (or, under auto, when it works there)."""
    if config.decode_device == "cpu" or (config.decode_device == "auto" and device.type != "cuda"):
        return "cpu"
    if device.type != "cuda":
        raise ValueError(f"--decode-device cuda needs the model on CUDA, but it runs on {device}")
    if config.decode_device == "auto":
        try:
            open_video(videos[0].path, str(device))
        except Exception as e:
            log.warning(f"torchcodec cannot decode on {device} ({e}); decoding on the CPU in --workers processes")
            return "cpu"
    return str(device)


def encode(model: VJEPA2Model, clips: list[Tensor], config: ExtractConfig, device: torch.device) -> list[Tensor]:
    """uint8 crops (T, 3, crop, crop) -> one feature tensor per clip, on the CPU."""
    video = stack(clips, device)
    dtype = precision(config, device)
    autocast = torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "float32")
    layers = config.layer_numbers()
    with torch.inference_mode(), autocast:
        if layers is None:
            h = model.encoder(video)                                                    # (B, N, D)
        else:
            hidden = []  # the embeddings, then every block's output
            model.encoder(video, None, hidden)
            h = torch.stack([model.encoder.output_norm(hidden[n]) for n in layers], dim=1)    # (B, L, N, D)
        if config.pool == "mean":
            h = h.float().mean(dim=-2)
        h = h.to(DTYPES[config.feature_dtype]).cpu()
    return list(h)  # views of the batch: the shard writer copies their bytes to disk at once


def clips_with_features(config: ExtractConfig, model: VJEPA2Model, device: torch.device, videos: list[Video],
                        done: set[str], finished: set[str]) -> Iterator[tuple[dict, Tensor | None]]:
    """(row, features) for every clip of `videos` not in done, (row, None) for a failed video."""
    where = decode_device(config, device, videos)
    windows = Windows(config.sampling(), config.window_stride, config.max_windows, model.config.crop_size)
    workers = max(2, (os.cpu_count() or 1) // 2) if config.workers is None else config.workers
    workers = 0 if where != "cpu" else min(workers, len(videos))
    import torchcodec.decoders  # noqa: F401  loaded once here: forked workers inherit FFmpeg's libraries
    loader = DataLoader(ClipStream(videos, windows, done, finished, where), batch_size=None, num_workers=workers,
                        pin_memory=device.type == "cuda", worker_init_fn=_one_thread,
                        prefetch_factor=max(2, 2 * config.batch_size // workers) if workers else None)
    with batch_encoder(model, config, device) as encode_batch:
        batch = []
        for row, frames in loader:
            if frames is None:
                yield row, None
                continue
            batch.append((row, frames))
            if len(batch) == config.batch_size:
                yield from zip([r for r, _ in batch], encode_batch([f for _, f in batch]))
                batch = []
                hand_back_freed_memory()
        if batch:
            yield from zip([r for r, _ in batch], encode_batch([f for _, f in batch]))


@contextlib.contextmanager
def batch_encoder(model: VJEPA2Model, config: ExtractConfig,
                  device: torch.device) -> Iterator[Callable[[list[Tensor]], list[Tensor]]]:
    """encode for a batch of clips. On the CPU a batch is split into min(torch.get_num_threads(),
    --batch-size) shares encoded at once, each by a thread running torch with an equal part of
    the threads: one forward on every thread would keep every core busy between its operations
    (OpenMP threads spin while they wait), cores the decoding workers need, and would make its
    threads wait on each other at every operation. The caller's thread count stays as it was."""
    threads = torch.get_num_threads()
    shares = min(threads, config.batch_size)
    if device.type != "cpu" or shares == 1:
        yield lambda clips: encode(model, clips, config, device)
        return

    with ThreadPoolExecutor(shares, thread_name_prefix="encode") as pool:
        def encode_batch(clips: list[Tensor]) -> list[Tensor]:
            size = -(-len(clips) // shares)
            torch.set_num_threads(threads // shares)  # what a pool thread takes, for good, at its first op
            try:
                parts = pool.map(lambda i: encode(model, clips[i:i + size], config, device),
                                 range(0, len(clips), size))
                return [features for part in parts for features in part]
            finally:
                torch.set_num_threads(threads)
        yield encode_batch


@functools.cache
def _malloc_trim():
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def hand_back_freed_memory() -> None:
    """glibc keeps the pages of the encoder's freed temporaries and lays the next batch's out
    beside them, so the peak RSS would creep up batch after batch (small layout on a CPU: +8 to
    +56 % from 10 to 100 videos); malloc_trim hands them back (a millisecond). A no-op where the
    C library has no malloc_trim."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # the workers only decode and crop; the cores are the model's


def iter_features(config: ExtractConfig, model: VJEPA2Model | None = None) -> Iterator[tuple[str, Tensor]]:
    """(key, features) for every clip of config.videos, in memory, nothing written (a video that
    cannot be read is logged and skipped). `model` replaces loading config.model."""
    device = cli.resolve_device(config.device)
    videos = list_inputs(config.videos)
    model = load_model(config, model, device)
    for row, features in clips_with_features(config, model, device, videos, set(), set()):
        if features is None:
            log.warning(f"{row['path']}: skipped ({row['error']})")
        else:
            yield row["key"], features.clone()  # its own storage: a clip the caller keeps does not keep the batch


def extract(config: ExtractConfig, model: VJEPA2Model | None = None) -> list[dict]:
    """Extracts every clip of config.videos into config.out (resuming what is there) and returns
    the manifest rows. `model` replaces loading config.model (the demo passes its random one)."""
    rank, world, device = cli.setup_distributed(config.device)
    out = Path(config.out)
    try:
        videos = list_inputs(config.videos)
        model = load_model(config, model, device)
        settings = {name: getattr(config, name) for name in SETTINGS} | {"dtype": precision(config, device)}
        _on_rank0(rank, world, lambda: _claim(out, settings))
        done, finished = progress(merged_rows(out))
        mine = [v for v in videos[rank::world] if v.key not in finished]
        start, clips = time.perf_counter(), 0
        writer = ShardWriter(out, rank, int(config.shard_size_mb * 2**20), config.shard_clips)
        bar = tqdm(total=len(mine), desc="extract", unit="video", disable=not config.progress or rank != 0)
        for row, features in clips_with_features(config, model, device, mine, done, finished):
            writer.add(row, features)
            clips += features is not None
            if row["last"]:
                bar.update(1)
                bar.set_postfix(clips_per_s=f"{clips / (time.perf_counter() - start):.2f}", refresh=False)
        writer.flush()
        bar.close()
        if world > 1:
            dist.barrier()  # every rank's shards are written
        rows = merged_rows(out)
        if rank == 0:
            write_manifest(out / "manifest.csv", rows)
            _summary(out, rows, len(done), time.perf_counter() - start, len(videos))
    finally:
        if world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    if not any(r["status"] == "ok" for r in rows):
        raise ValueError(f"no clip could be extracted: all {len(rows)} videos failed (see {out / 'manifest.csv'})")
    return rows


def _claim(out: Path, settings: dict) -> None:
    """Rank 0: one run per folder, leftovers of a killed write removed, and a resumed folder
    checked to hold features made with these settings."""
    FolderLock(out).acquire()
    remove_stale_temps(out)
    path = out / "extract_config.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = [f"{cli.flag(k)} {before.get(k)!r} there, {v!r} now"
                   for k, v in settings.items() if before.get(k) != v]
        if changed:
            raise ValueError(f"--out {out} holds features made with other settings ({'; '.join(changed)}); "
                             "give another --out, or the same settings to resume")
    else:
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(settings, indent=2) + "\n"))


def _on_rank0(rank: int, world: int, step) -> None:
    """Runs step on rank 0; its error, if any, is raised on every rank (none is left waiting)."""
    error = None
    if rank == 0:
        try:
            step()
        except ValueError as e:
            error = str(e)
    if world > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise ValueError(error)


def _summary(out: Path, rows: list[dict], done_before: int, seconds: float, videos: int) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    new = len(ok) - done_before
    rate = f"{new / seconds:.2f} clips/s" if new else "nothing left to do"
    print(f"{out}: {len(ok)} clips of {len({r['video'] for r in ok})}/{videos} videos, {len(failed)} failed "
          f"(listed in manifest.csv); this run {new} clips in {seconds:.1f} s ({rate})")


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


def demo(config: ExtractConfig) -> list[dict]:
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
    rows = extract(run, model)
    for key, value in load_features(config.out).items():
        print(f"{key}: features {list(value.shape)} -> {config.out}")
    return rows


PROG = "python -m vjepa_fast.extract"


def main(argv: list[str] | None = None) -> None:
    config = cli.parse(ExtractConfig, argv, PROG, __doc__)
    cli.run(demo if config.demo else extract, config, PROG)


if __name__ == "__main__":
    main()
