"""The video processor and clip loading (vjepa_fast.video).

The processor is checked against transformers' VJEPA2VideoProcessor directly (it runs on
torchvision's kernels: `make setup` installs torchvision 0.28 --no-deps and guards its CUDA-only op
registrations, .ci/patch_torchvision.py; the test fails, not skips, without it). Beside it, a plain
re-implementation of the recipe, written per frame and in float64 with its own size and crop
arithmetic, pins both of torchvision's resize paths (uint8 natively, or float32 and round), of
which a machine runs only one.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vjepa_fast.video import (ClipSampling, ProcessorConfig, VideoProcessor, frame_indices, load_clip,
                              resized_size)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# (height, width, crop): 480p and 720p landscape, portrait, smaller than the crop (upsampling),
# odd sizes, and an exact fit that skips the resize
CASES = [(480, 848, 256), (720, 1280, 64), (1280, 720, 256), (17, 23, 256), (301, 257, 64),
         (93, 410, 256), (292, 292, 256), (73, 73, 64)]


def reference(frames_thwc: torch.Tensor, crop: int, native_uint8: bool) -> torch.Tensor:
    """The recipe, one frame at a time: (T, H, W, 3) uint8 -> (T, 3, crop, crop) float64."""
    out = []
    short_target = int(crop * 256 / 224)
    for frame in frames_thwc:
        H, W = frame.shape[:2]
        if H <= W:
            h, w = short_target, math.floor(short_target * W / H)
        else:
            h, w = math.floor(short_target * H / W), short_target
        x = frame.permute(2, 0, 1)[None].contiguous()  # (1, 3, H, W)
        if (h, w) != (H, W):
            if native_uint8:
                x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True)
            else:
                x = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True)
                x = torch.round(x).clamp(0, 255).to(torch.uint8)
        top, left = int((h - crop) / 2.0), int((w - crop) / 2.0)
        x = x[0, :, top:top + crop, left:left + crop].double() / 255.0
        mean = torch.tensor(MEAN, dtype=torch.float64)[:, None, None]
        std = torch.tensor(STD, dtype=torch.float64)[:, None, None]
        out.append((x - mean) / std)
    return torch.stack(out)


def random_video(T: int, H: int, W: int) -> torch.Tensor:
    """(T, H, W, 3) uint8: smooth structure plus noise, so resizing is neither trivial nor pure noise."""
    y = torch.linspace(0, 6, H)[:, None, None]
    x = torch.linspace(0, 9, W)[None, :, None]
    base = 127 + 80 * torch.sin(x + y * torch.tensor([1.0, 0.5, -0.7]))
    noise = torch.randn(T, H, W, 3) * 30
    return (base + noise).clamp(0, 255).round().to(torch.uint8)


@pytest.mark.parametrize("native_uint8", [True, False], ids=["uint8-path", "float-path"])
@pytest.mark.parametrize("H, W, crop", CASES, ids=[f"{h}x{w}-crop{c}" for h, w, c in CASES])
def test_processor_matches_recipe(H, W, crop, native_uint8, monkeypatch):
    # torchvision picks the resize path from the CPU capability string; pin it both ways.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2" if native_uint8 else "DEFAULT")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    video = random_video(2, H, W)
    out = VideoProcessor(ProcessorConfig(crop_size=crop)).process(video)
    assert out.shape == (2, 3, crop, crop) and out.dtype == torch.float32
    # The fused (x - 255 mean) / (255 std) in float32 differs from float64 by rounding only;
    # one grey level is 1 / (255 * 0.225) ~ 0.017, so 1e-5 catches any pixel off by one.
    torch.testing.assert_close(out.double(), reference(video, crop, native_uint8), atol=1e-5, rtol=0)


def test_resize_paths_differ():
    """Which path runs matters: without the rule above, outputs would be off by a grey level."""
    video = random_video(2, 720, 1280)
    a, b = reference(video, 64, True), reference(video, 64, False)
    assert (a - b).abs().max() > 0.01


def test_processor_layouts_and_batches():
    proc = VideoProcessor(ProcessorConfig(crop_size=64))
    video = random_video(4, 50, 90)                           # (T, H, W, 3)
    expected = proc.process(video)
    torch.testing.assert_close(proc.process(video.permute(0, 3, 1, 2)), expected, atol=0, rtol=0)  # (T, 3, H, W)
    torch.testing.assert_close(proc.process(video.numpy()), expected, atol=0, rtol=0)
    other = random_video(4, 50, 90)
    batch = proc.process(torch.stack([video, other]))                 # (B, T, H, W, 3) -> (B, T, 3, c, c)
    assert batch.shape == (2, 4, 3, 64, 64)
    torch.testing.assert_close(batch[0], expected, atol=0, rtol=0)
    torch.testing.assert_close(batch[1], proc.process(other), atol=0, rtol=0)


def test_resized_size():
    assert resized_size(480, 848, 292) == (292, 515)          # 292 * 848 / 480 = 515.9 -> truncated
    assert resized_size(1280, 720, 292) == (519, 292)
    assert resized_size(300, 300, 292) == (292, 292)
    assert ProcessorConfig().shortest_edge == 292 and ProcessorConfig(crop_size=384).shortest_edge == 438


@pytest.mark.parametrize("frames, match", [
    (torch.zeros(2, 32, 32, 3, dtype=torch.int32), "frames: expected uint8 pixels \\(as decoded\\) or floats"),
    (torch.zeros(32, 32, 3, dtype=torch.uint8), "frames: expected \\(T, H, W, 3\\)"),
    (torch.zeros(2, 3, 8, 3, dtype=torch.uint8), "frames: cannot tell the channel dimension"),
    (torch.zeros(2, 32, 32, 4, dtype=torch.uint8), "frames: cannot tell the channel dimension"),
    (torch.zeros(0, 32, 32, 3, dtype=torch.uint8), "frames: empty video"),
    ([[1, 2, 3]], "frames: expected a torch.Tensor or numpy array"),
])
def test_processor_rejects_bad_frames(frames, match):
    with pytest.raises((ValueError, TypeError), match=match):
        VideoProcessor().process(frames)


def test_processor_config_rejects_bad_values():
    with pytest.raises(ValueError, match="crop_size"):
        ProcessorConfig(crop_size=0)
    with pytest.raises(ValueError, match="std"):
        ProcessorConfig(std=(0.2, 0.0, 0.2))


# ---- Decoding -------------------------------------------------------------------------------

def write_mp4(path: Path, frames: torch.Tensor, fps: float) -> Path:
    from torchcodec.encoders import VideoEncoder
    VideoEncoder(frames, frame_rate=fps).to_file(str(path))
    return path


def level_video(T: int, H: int = 32, W: int = 48) -> torch.Tensor:
    """(T, 3, H, W) uint8, frame i a flat grey of level 8 * i + 4: survives lossy coding and tells
    which frame was decoded."""
    levels = (torch.arange(T) * 8 + 4).to(torch.uint8)
    return levels[:, None, None, None].expand(T, 3, H, W).contiguous()


def decoded_frame_ids(frames: torch.Tensor) -> list[int]:
    return ((frames.float().mean(dim=(1, 2, 3)) - 4) / 8).round().int().tolist()


@pytest.fixture(scope="module")
def level_mp4(tmp_path_factory):
    """30 frames at 12 fps."""
    return write_mp4(tmp_path_factory.mktemp("video") / "levels.mp4", level_video(30), fps=12)


def test_load_clip_frame_step(level_mp4):
    clip = load_clip(level_mp4, ClipSampling(num_frames=5, frame_step=3, start_frame=2))
    assert clip.frames.shape == (5, 3, 32, 48) and clip.frames.dtype == torch.uint8
    assert clip.indices.tolist() == [2, 5, 8, 11, 14]
    assert decoded_frame_ids(clip.frames) == [2, 5, 8, 11, 14]
    assert clip.total_frames == 30 and clip.video_fps == pytest.approx(12)


def test_load_clip_consecutive_by_default(level_mp4):
    clip = load_clip(level_mp4, ClipSampling(num_frames=30))
    assert decoded_frame_ids(clip.frames) == list(range(30))


def test_load_clip_fps(level_mp4):
    # 12 fps video, 4 fps wanted: every 3rd frame
    clip = load_clip(level_mp4, ClipSampling(num_frames=8, fps=4))
    assert decoded_frame_ids(clip.frames) == [0, 3, 6, 9, 12, 15, 18, 21]


def test_load_clip_uniform(level_mp4):
    clip = load_clip(level_mp4, ClipSampling(num_frames=4, uniform=True))
    assert decoded_frame_ids(clip.frames) == [0, 7, 15, 22]  # floor(i * 30 / 4)


def test_frame_indices_fps_rounds_rate_up_like_meta():
    # 29.97 fps counts as 30: 4 fps -> every 7th frame, as Meta's pre-training loader
    idx = frame_indices(ClipSampling(num_frames=4, fps=4), total_frames=100, video_fps=29.97)
    assert idx.tolist() == [0, 7, 14, 21]


def test_decoded_values_roughly_preserved(tmp_path):
    """Smooth colour content through H.264 and back: a few grey levels of error on average."""
    T, H, W = 6, 64, 96
    t = torch.arange(T)[:, None, None, None].float()
    y = torch.linspace(0, 1, H)[None, None, :, None]
    x = torch.linspace(0, 1, W)[None, None, None, :]
    ch = torch.tensor([0.0, 1.0, 2.0])[None, :, None, None]
    frames = (128 + 90 * torch.sin(3 * x + 2 * y + ch + 0.3 * t)).round().to(torch.uint8)
    clip = load_clip(write_mp4(tmp_path / "smooth.mp4", frames, fps=8), ClipSampling(num_frames=T))
    err = (clip.frames.float() - frames.float()).abs()
    assert err.mean() < 4, err.mean()


def test_load_clip_processes(level_mp4):
    clip = load_clip(level_mp4, ClipSampling(num_frames=4))
    pixels = VideoProcessor(ProcessorConfig(crop_size=32)).process(clip.frames)
    assert pixels.shape == (4, 3, 32, 32)


# ---- Bad inputs -----------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: no such video file"):
        load_clip(tmp_path / "nope.mp4")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="path: video file is empty"):
        load_clip(tmp_path / "empty.mp4")


def test_corrupt_file(tmp_path):
    (tmp_path / "notes.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="path: cannot decode .* as a video"):
        load_clip(tmp_path / "notes.mp4")


def test_audio_only_file(tmp_path):
    from torchcodec.encoders import AudioEncoder
    tone = torch.sin(torch.arange(16000) / 16000 * 2 * torch.pi * 440)[None]  # (channels, samples)
    AudioEncoder(tone, sample_rate=16000).to_file(str(tmp_path / "voice.mp4"))
    with pytest.raises(ValueError, match=r"path: .*voice.mp4 has no video stream \(audio only\?\)"):
        load_clip(tmp_path / "voice.mp4")


def test_directory(tmp_path):
    with pytest.raises(ValueError, match="path: expected a video file"):
        load_clip(tmp_path)


@pytest.mark.parametrize("sampling, match", [
    (ClipSampling(num_frames=31), "num_frames=31 every 1 frame\\(s\\) from start_frame=0 needs 31 frames, but .* has 30"),
    (ClipSampling(num_frames=11, frame_step=3), "num_frames=11 every 3 .* needs 31 frames"),
    (ClipSampling(num_frames=5, start_frame=27), "start_frame=27 needs 32 frames"),
    (ClipSampling(num_frames=31, uniform=True), "num_frames=31 spread uniformly"),
    (ClipSampling(num_frames=2, fps=24), "fps=24 is above the frame rate"),
])
def test_too_few_frames(level_mp4, sampling, match):
    with pytest.raises(ValueError, match=match):
        load_clip(level_mp4, sampling)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_frames=0), "num_frames must be an int >= 1"),
    (dict(num_frames=2.5), "num_frames must be an int"),
    (dict(frame_step=0), "frame_step must be an int >= 1"),
    (dict(start_frame=-1), "start_frame must be an int >= 0"),
    (dict(fps=0), "fps must be a positive number"),
    (dict(fps=float("nan")), "fps must be a positive number"),
    (dict(fps=4, frame_step=2), "frame_step and fps are exclusive"),
    (dict(fps=4, uniform=True), "fps and uniform are exclusive"),
])
def test_bad_sampling_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClipSampling(**kwargs)


@pytest.mark.parametrize("H, W, crop", CASES[:4], ids=[f"{h}x{w}-crop{c}" for h, w, c in CASES[:4]])
def test_processor_matches_transformers(H, W, crop):
    """Directly against transformers (its processor runs on torchvision: see the module docstring)."""
    from transformers import VJEPA2VideoProcessor
    theirs = VJEPA2VideoProcessor(crop_size=crop)
    video = random_video(2, H, W)
    expected = theirs(video, return_tensors="pt")["pixel_values_videos"][0]
    torch.testing.assert_close(VideoProcessor(ProcessorConfig(crop_size=crop)).process(video), expected, atol=0, rtol=0)
