"""What feature extraction reads and writes: the input list and its keys, the clip windows of a
video, the decoding stream the DataLoader workers run, and the shards and manifest on disk.

On disk, OUT holds shard-r<rank>-<n>.safetensors files, each written atomically with the
manifest rows of its tensors (and of the failures met meanwhile) in its metadata: a shard is
the unit of truth, so a killed run loses only the shard it had not yet written, and a resumed
run reads every shard's rows to know what is done. manifest.csv merges them at the end.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from vjepa_fast.files import atomic_write
from vjepa_fast.video import ClipSampling, ProcessorConfig, VideoProcessor, frame_indices, list_videos, open_video

MANIFEST_COLUMNS = ("key", "video", "path", "window", "windows", "start_frame", "start_time", "fps",
                    "frame_indices", "shape", "shard", "status", "error")
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


@dataclass(frozen=True)
class Video:
    key: str    # the sanitised path below its input (folder or list), without the suffix
    path: str


def list_inputs(sources: list[str]) -> list[Video]:
    """Every video of the VIDEO arguments (files, folders searched recursively, CSV/text lists),
    in order, with unique keys that safetensors accepts (never its reserved '__metadata__')."""
    videos, keys = [], set()
    for source in sources:
        root = Path(source) if Path(source).is_dir() else Path(source).parent
        for path in list_videos(source, "VIDEO"):
            try:
                name = path.relative_to(root).with_suffix("").as_posix()
            except ValueError:  # a list naming a file outside its folder
                name = path.stem
            key = re.sub(r"[^A-Za-z0-9_./-]", "_", name) or "video"
            if key.startswith("__"):
                key = "v" + key
            unique, n = key, 2
            while unique in keys:
                unique, n = f"{key}_{n}", n + 1
            keys.add(unique)
            videos.append(Video(unique, str(path)))
    return videos


def window_starts(sampling: ClipSampling, stride: int | None, max_windows: int | None, total_frames: int,
                  video_fps: float, source: str) -> list[Tensor]:
    """The frame indices of each clip: one clip, or (with stride) a clip every `stride` frames
    while it fits in the video, at most max_windows of them."""
    first = frame_indices(sampling, total_frames, video_fps, source)
    if stride is None:
        return [first]
    count = 1 + (total_frames - 1 - int(first[-1])) // stride
    count = count if max_windows is None else min(count, max_windows)
    return [first + w * stride for w in range(count)]


def window_key(video_key: str, window: int, windowed: bool) -> str:
    return f"{video_key}#{window}" if windowed else video_key  # '#' never survives sanitising


@dataclass
class Windows:
    """How clips are cut and cropped: ClipSampling per window, a window stride, the crop."""
    sampling: ClipSampling
    stride: int | None
    max_windows: int | None
    crop_size: int


class ClipStream(IterableDataset):
    """Yields (row, frames) per clip window: frames (T, 3, crop, crop) uint8, the processor's
    resize and centre crop (normalisation happens in the encoder's tubelet embedding), or None
    with row["status"] == "error" for a video that cannot be read or is too short. Worker w of
    W takes videos w, w + W, ...; windows in `done` are skipped, and videos whose windows are
    all done are not opened."""

    def __init__(self, videos: list[Video], windows: Windows, done: set[str], finished: set[str],
                 decode_device: str = "cpu"):
        self.videos, self.windows, self.done, self.finished = videos, windows, done, finished
        self.decode_device = decode_device
        self.processor = VideoProcessor(ProcessorConfig(crop_size=windows.crop_size, do_rescale=False,
                                                        do_normalize=False))

    def __iter__(self) -> Iterator[tuple[dict, Tensor | None]]:
        info = get_worker_info()
        videos = self.videos if info is None else self.videos[info.id::info.num_workers]
        for video in videos:
            if video.key not in self.finished:
                yield from self.clips(video)

    def clips(self, video: Video) -> Iterator[tuple[dict, Tensor | None]]:
        w = self.windows
        windowed = w.stride is not None
        row = {"video": video.key, "path": video.path, "key": window_key(video.key, 0, windowed), "window": 0}
        try:
            decoder = open_video(video.path, self.decode_device)
            total, fps = decoder.metadata.num_frames or 0, float(decoder.metadata.average_fps or 0.0)
            starts = window_starts(w.sampling, w.stride, w.max_windows, total, fps, video.path)
            todo = [i for i in range(len(starts)) if window_key(video.key, i, windowed) not in self.done]
            for i in todo:
                indices = starts[i]
                row = {"video": video.key, "path": video.path, "key": window_key(video.key, i, windowed),
                       "window": i, "windows": len(starts), "start_frame": int(indices[0]),
                       "start_time": round(int(indices[0]) / fps, 6) if fps else None, "fps": fps,
                       "frame_indices": " ".join(map(str, indices.tolist())), "last": i == todo[-1]}
                frames = self.processor.process(decoder.get_frames_at(indices.tolist()).data)
                yield {**row, "status": "ok"}, frames
        except Exception as e:  # any unreadable video is recorded and skipped, never fatal
            yield {**row, "status": "error", "error": f"{type(e).__name__}: {e}".replace("\n", " "),
                   "last": True}, None


def shard_paths(out: Path) -> list[Path]:
    return sorted(out.glob("shard-r*-*.safetensors"))


def shard_rows(path: Path) -> list[dict]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()["rows"])
    except Exception as e:
        raise ValueError(f"{path}: unreadable shard ({e}); delete it to extract its clips again") from None


def merged_rows(out: Path) -> list[dict]:
    """One row per clip key over every shard: the extracted one, else the latest failure."""
    rows: dict[str, dict] = {}
    for path in shard_paths(out):
        for row in shard_rows(path):
            if rows.get(row["key"], {}).get("status") != "ok":
                rows[row["key"]] = row
    return list(rows.values())


def progress(rows: list[dict]) -> tuple[set[str], set[str]]:
    """(window keys extracted, video keys all of whose windows are extracted)."""
    done = {r["key"] for r in rows if r["status"] == "ok"}
    per_video: dict[str, int] = {}
    for r in rows:
        if r["status"] == "ok":
            per_video[r["video"]] = per_video.get(r["video"], 0) + 1
    windows = {r["video"]: r["windows"] for r in rows if r["status"] == "ok"}
    return done, {v for v, n in per_video.items() if n == windows[v]}


class ShardWriter:
    """Streams each clip's features to a temporary file in OUT as they come, and writes the shard
    (safetensors' header, then those bytes) once they pass limit_bytes or it holds limit_clips
    clips: no features are held in memory whatever the shard size, and a kill loses only the
    shard being filled (its temporary file is removed when the run resumes)."""

    def __init__(self, out: Path, rank: int, limit_bytes: int, limit_clips: int):
        self.out, self.rank, self.limit, self.limit_clips = out, rank, limit_bytes, limit_clips
        numbers = [int(p.stem.rsplit("-", 1)[1]) for p in out.glob(f"shard-r{rank:03d}-*.safetensors")]
        self.number = max(numbers, default=-1) + 1
        self.spill: BinaryIO | None = None
        self.header: dict[str, dict] = {}  # key -> safetensors' dtype, shape and data_offsets
        self.rows: list[dict] = []
        self.bytes = 0

    @property
    def name(self) -> str:
        return f"shard-r{self.rank:03d}-{self.number:05d}.safetensors"

    def add(self, row: dict, features: Tensor | None) -> None:
        row = {k: v for k, v in row.items() if k != "last"}
        if features is not None:
            if self.spill is None:
                self.spill = tempfile.NamedTemporaryFile(dir=self.out, prefix=f".{self.name}.", delete=False)
            data = features.contiguous().view(torch.uint8).numpy()
            self.header[row["key"]] = {"dtype": SAFETENSORS_DTYPES[features.dtype], "shape": list(features.shape),
                                       "data_offsets": [self.bytes, self.bytes + data.nbytes]}
            self.spill.write(data)
            self.bytes += data.nbytes
            row.update(shape="x".join(map(str, features.shape)), shard=self.name)
        self.rows.append(row)
        if self.bytes >= self.limit or len(self.header) >= self.limit_clips:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        atomic_write(self.out / self.name, self.write)
        if self.spill is not None:
            self.spill.close()
            os.unlink(self.spill.name)
        self.number += 1
        self.spill, self.header, self.rows, self.bytes = None, {}, [], 0

    def write(self, path: str) -> None:
        """The shard being filled as a safetensors file: 8-byte header length, JSON header (the
        manifest rows in its metadata, padded to 8 bytes), the tensors' bytes."""
        header = json.dumps({"__metadata__": {"rows": json.dumps(self.rows)}, **self.header}).encode()
        header += b" " * (-len(header) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            if self.spill is not None:
                self.spill.seek(0)
                shutil.copyfileobj(self.spill, f, 2**24)


def write_manifest(path: Path, rows: list[dict]) -> None:
    """manifest.csv: one row per clip window (or failed video), the columns of MANIFEST_COLUMNS."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, MANIFEST_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda r: (r["video"], r["window"])))
    atomic_write(path, write)


def load_features(out: str | Path, keys: list[str] | None = None) -> dict[str, Tensor]:
    """{key: features} of an extraction folder (every clip, or those of `keys`), read by shard."""
    from safetensors import safe_open
    wanted = None if keys is None else set(keys)
    features = {}
    for path in shard_paths(Path(out)):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if wanted is None or key in wanted:
                    features[key] = f.get_tensor(key)
    missing = [] if wanted is None else sorted(wanted - set(features))
    if missing:
        raise KeyError(f"keys: not in {out}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return features


def stack(frames: list[Tensor], device: torch.device) -> Tensor:
    """(B, T, 3, crop, crop) on device; each clip copied on its own (from pinned memory on CUDA)."""
    return torch.stack([f.to(device, non_blocking=True) for f in frames])
