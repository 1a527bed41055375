"""Feature extraction end to end (vjepa_fast.extract): MP4 written with torchcodec's encoder ->
decode -> processor -> encoder -> safetensors, against get_vision_features on the same clip."""
import json
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vjepa_fast.config import VJEPA2Config
from vjepa_fast.jobs.extract import ExtractConfig, extract, feature_keys, main, write_demo_video
from vjepa_fast.model import VJEPA2Model
from vjepa_fast.video import ClipSampling, ProcessorConfig, VideoProcessor, load_clip


def moving_video(path, T, H, W, fps=8.0):
    """Random-coloured frames with a square that moves: every clip differs from its neighbours."""
    from torchcodec.encoders import VideoEncoder
    frames = torch.randint(40, 200, (1, 3, 1, 1), dtype=torch.uint8).expand(T, 3, H, W).clone()
    for t in range(T):
        top, left = (5 * t) % (H - 8), (7 * t) % (W - 8)
        frames[t, :, top:top + 8, left:left + 8] = torch.randint(0, 256, (3, 1, 1), dtype=torch.uint8)
    VideoEncoder(frames, frame_rate=fps).to_file(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model = VJEPA2Model(VJEPA2Config.from_name("tiny")).eval()
    directory = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(str(directory))
    return directory, model


def expected_features(model, video, sampling, crop):
    clip = load_clip(video, sampling)
    pixels = VideoProcessor(ProcessorConfig(crop_size=crop)).process(clip.frames)[None]  # (1, T, 3, crop, crop)
    with torch.no_grad():
        return model.get_vision_features(pixels), clip


def test_extract_matches_get_vision_features(tmp_path, tiny_checkpoint):
    directory, model = tiny_checkpoint
    videos = [moving_video(tmp_path / "clip one.mp4", 20, 40, 56),
              moving_video(tmp_path / "portrait.mp4", 12, 72, 48, fps=4)]
    out = tmp_path / "feats" / "features.safetensors"
    config = ExtractConfig(videos=[str(v) for v in videos], model=str(directory), out=str(out),
                           num_frames=6, frame_step=2)
    returned = extract(config)
    saved = load_file(str(out))
    assert sorted(saved) == ["clip_one", "portrait"]
    sampling = ClipSampling(num_frames=6, frame_step=2)
    for key, video in zip(["clip_one", "portrait"], videos):
        expected, clip = expected_features(model, video, sampling, crop=64)
        assert saved[key].shape == (1, 3 * 4 * 4, 192)  # 6 frames / tubelet 2, 64 / 16 squared
        torch.testing.assert_close(saved[key], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(returned[key], saved[key], atol=0, rtol=0)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    sources = json.loads(meta["videos"])
    assert sources["clip_one"]["frame_indices"] == [0, 2, 4, 6, 8, 10]
    assert sources["portrait"]["video_fps"] == pytest.approx(4)
    assert json.loads(meta["config"])["model"] == str(directory)
    assert not saved["clip_one"].equal(saved["portrait"])


def test_extract_fps_sampling_through_cli(tmp_path, tiny_checkpoint):
    directory, model = tiny_checkpoint
    video = moving_video(tmp_path / "v.mp4", 24, 48, 64, fps=12)
    out = tmp_path / "f.safetensors"
    main([str(video), "--model", str(directory), "--out", str(out), "--num-frames", "4", "--fps", "4"])
    expected, clip = expected_features(model, video, ClipSampling(num_frames=4, fps=4), crop=64)
    assert clip.indices.tolist() == [0, 3, 6, 9]
    torch.testing.assert_close(load_file(str(out))["v"], expected, atol=1e-5, rtol=1e-5)


def test_extract_bfloat16(tmp_path, tiny_checkpoint):
    directory, model = tiny_checkpoint
    video = moving_video(tmp_path / "v.mp4", 8, 40, 40)
    out = tmp_path / "f.safetensors"
    extract(ExtractConfig(videos=[str(video)], model=str(directory), out=str(out), num_frames=8, dtype="bfloat16"))
    saved = load_file(str(out))["v"]
    expected, _ = expected_features(model, video, ClipSampling(num_frames=8), crop=64)
    assert saved.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: features (post-LN, about unit scale) agree to a few percent
    assert (saved.float() - expected).abs().mean() < 0.05
    assert (saved.float() - expected).abs().mean() > 0  # it did run in bf16


def test_feature_keys_sanitised_and_unique():
    assert feature_keys(["a/clip 1.mp4", "b/clip 1.mp4", "x/ü@.webm", "c/.mp4"]) == \
        ["clip_1", "clip_1_1", "__", ".mp4"]
    keys = feature_keys(["a.mp4", "a_2.mkv", "b/a.mp4"])
    assert len(set(keys)) == 3 and keys[:2] == ["a", "a_2"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(model="m"), "videos: give at least one video"),
    (dict(videos=["a.mp4"]), "model: give a checkpoint"),
    (dict(videos=["a.mp4"], model="m", dtype="int8"), "dtype must be one of"),
    (dict(videos=["a.mp4"], model="m", rope_grid="grid"), "--rope-grid must be one of"),
    (dict(videos=["a.mp4"], model="m", num_frames=0), "num_frames must be an int >= 1"),
    (dict(videos=["a.mp4"], model="m", fps=4, frame_step=2), "frame_step and fps are exclusive"),
    (dict(demo=True, model="m"), "demo makes its own video and model"),
])
def test_extract_config_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExtractConfig(**kwargs)


def test_extract_missing_video_fails_before_loading(tmp_path):
    out = tmp_path / "f.safetensors"
    with pytest.raises(FileNotFoundError, match="videos: no such file"):
        extract(ExtractConfig(videos=[str(tmp_path / "nope.mp4")], model=str(tmp_path / "no-model"), out=str(out)))
    assert not out.exists()


def test_demo_runs_offline(tmp_path, capsys):
    out = tmp_path / "outputs" / "demo_features.safetensors"
    main(["--demo", "--out", str(out), "--num-frames", "8"])
    printed = capsys.readouterr().out
    assert "demo_video: features [1, 64, 192]" in printed  # 8 frames / 2 x (64 / 16)^2 tokens, tiny width
    assert load_file(str(out))["demo_video"].shape == (1, 64, 192)
    assert (tmp_path / "outputs" / "demo_video.mp4").stat().st_size > 0


def test_demo_video_moves(tmp_path):
    path = tmp_path / "d.mp4"
    write_demo_video(path, 8)
    frames = load_clip(path, ClipSampling(num_frames=8)).frames.float()
    assert (frames[1:] - frames[:-1]).abs().mean() > 1


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for flag in ("--model", "--out", "--num-frames", "--frame-step", "--fps", "--uniform", "--start-frame",
                 "--device", "--dtype", "--rope-grid", "--demo"):
        assert flag in printed


def test_seed_example_vitl_shape(tmp_path):
    """64 frames of an 848x480 video through a ViT-L-shaped checkpoint (1 encoder and 1 predictor
    layer to stay fast) -> features (1, 8192, 1024): 32 tubelets x 16 x 16 patches of the 256 crop."""
    config = VJEPA2Config.from_name("vitl")
    config.num_hidden_layers, config.pred_num_hidden_layers = 1, 1
    VJEPA2Model(config).save_pretrained(str(tmp_path / "vitl-1layer"))
    video = moving_video(tmp_path / "seed.mp4", 64, 480, 848, fps=30)
    start = time.perf_counter()
    features = extract(ExtractConfig(videos=[str(video)], model=str(tmp_path / "vitl-1layer"),
                                     out=str(tmp_path / "seed.safetensors")))
    print(f"seed example: decode + process + encode 64 x 848x480 took {time.perf_counter() - start:.1f} s")
    assert list(features["seed"].shape) == [1, 8192, 1024]
    assert torch.isfinite(features["seed"]).all()


@pytest.mark.parametrize("argv,message", [
    (["x.mp4", "--model", "m", "--num-frames", "-1"], "num_frames must be an int >= 1, got -1"),
    (["/no/such/video.mp4", "--model", "m"], "no such file"),
])
def test_bad_input_is_one_line_error(capsys, tmp_path, argv, message):
    """Usage errors and missing inputs end the program with a message naming the problem, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--out", str(tmp_path / "f.safetensors")])
    text = str(exit_info.value.code) + capsys.readouterr().err
    assert message in text and "Traceback" not in text
