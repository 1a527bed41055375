"""Feature extraction at dataset scale (vjepa_fast.extract): MP4s written with torchcodec's encoder
-> decoding workers -> batched encoder -> safetensors shards + manifest, against
get_vision_features on the same clips; faults, windows, pooling, layers, resume after kill -9,
two torchrun processes against one."""
import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vjepa_fast.config import VJEPA2Config
from vjepa_fast.extract import ExtractConfig, extract, iter_features, load_features, main
from vjepa_fast.jobs.extract import write_demo_video
from vjepa_fast.jobs.extract_data import ShardWriter, list_inputs
from vjepa_fast.model import VJEPA2Model
from vjepa_fast.video import ClipSampling, ProcessorConfig, VideoProcessor, load_clip


def moving_video(path, T, H, W, fps=8.0):
    """Random-coloured frames with a square that moves: every clip differs from its neighbours."""
    from torchcodec.encoders import VideoEncoder
    frames = torch.randint(40, 200, (1, 3, 1, 1), dtype=torch.uint8).expand(T, 3, H, W).clone()
    for t in range(T):
        top, left = (5 * t) % (H - 8), (7 * t) % (W - 8)
        frames[t, :, top:top + 8, left:left + 8] = torch.randint(0, 256, (3, 1, 1), dtype=torch.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    VideoEncoder(frames, frame_rate=fps).to_file(str(path))
    return Path(path)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model = VJEPA2Model(VJEPA2Config.from_name("tiny")).eval()
    directory = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(str(directory))
    return directory, model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six short videos of different sizes, two in a subfolder."""
    root = tmp_path_factory.mktemp("videos")
    for i, (T, H, W) in enumerate([(12, 40, 56), (10, 72, 48), (9, 48, 48), (14, 64, 80), (8, 40, 40), (11, 50, 70)]):
        moving_video(root / ("sub" if i < 2 else "") / f"clip {i}.mp4", T, H, W)
    return root


def expected_features(model, video, sampling, crop=64):
    clip = load_clip(video, sampling)
    pixels = VideoProcessor(ProcessorConfig(crop_size=crop)).process(clip.frames)[None]  # (1, T, 3, crop, crop)
    with torch.no_grad():
        return model.get_vision_features(pixels)[0], clip


def config(directory, out, videos, **kwargs):
    return ExtractConfig(videos=[str(v) for v in videos], model=str(directory), out=str(out), num_frames=4,
                         frame_step=2, progress=False, **kwargs)


def manifest(out):
    with open(Path(out) / "manifest.csv", newline="") as f:
        return {row["key"]: row for row in csv.DictReader(f)}


def test_extract_matches_get_vision_features(tmp_path, tiny_checkpoint, folder):
    directory, model = tiny_checkpoint
    out = tmp_path / "features"
    rows = extract(config(directory, out, [folder], batch_size=4, workers=2))
    saved = load_features(out)
    assert sorted(saved) == ["clip_2", "clip_3", "clip_4", "clip_5", "sub/clip_0", "sub/clip_1"]
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    table = manifest(out)
    for key, tensor in saved.items():
        expected, clip = expected_features(model, folder / (key.replace("_", " ") + ".mp4"), ClipSampling(4, 2))
        assert tensor.shape == (2 * 4 * 4, 192)  # 4 frames / tubelet 2, (64 / 16)^2 patches, width 192
        torch.testing.assert_close(tensor, expected, atol=1e-5, rtol=1e-5)
        row = table[key]
        assert row["frame_indices"] == "0 2 4 6" and float(row["fps"]) == 8 and row["status"] == "ok"
        assert row["shape"] == "32x192" and (out / row["shard"]).is_file() and row["path"].endswith(".mp4")
    assert json.loads((out / "extract_config.json").read_text())["model"] == str(directory)


@pytest.mark.parametrize("threads, batch_size, shares", [(3, 5, [(1, 2), (1, 2), (1, 1)]),
                                                       (4, 2, [(2, 1)] * 5),
                                                       (2, 1, [(2, 1)] * 5)])
def test_cpu_batches_are_split_over_threads(tiny_checkpoint, monkeypatch, threads, batch_size, shares):
    """On the CPU a batch goes to min(threads, batch size) threads at once, each running torch
    with its part of the threads; the features come back in order and the thread count is
    the caller's between batches. A batch size of 1 keeps every thread for its clip."""
    from vjepa_fast.jobs import extract as job
    _, model = tiny_checkpoint
    clips = [torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8) for _ in range(5)]
    cfg = ExtractConfig(videos=["x"], model="x", num_frames=4, batch_size=batch_size, progress=False)
    alone = [job.encode(model, [clip], cfg, torch.device("cpu"))[0] for clip in clips]
    seen, encode = [], job.encode
    monkeypatch.setattr(job, "encode", lambda *a: seen.append((threading.current_thread().name,
                                                                  torch.get_num_threads(), len(a[1]))) or encode(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with job.batch_encoder(model, cfg, torch.device("cpu")) as encode_batch:
            features = []
            for i in range(0, 5, batch_size):
                features += encode_batch(clips[i:i + batch_size])
                assert torch.get_num_threads() == threads  # the caller's, between batches
    finally:
        torch.set_num_threads(before)
    assert sorted((n, size) for _, n, size in seen) == sorted(shares)
    assert all(name.startswith("encode") == (batch_size > 1) for name, *_ in seen)  # not the calling thread
    for got, expected in zip(features, alone, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_fps_sampling_through_cli(tmp_path, tiny_checkpoint):
    directory, model = tiny_checkpoint
    video = moving_video(tmp_path / "v.mp4", 24, 48, 64, fps=12)
    out = tmp_path / "f"
    main([str(video), "--model", str(directory), "--out", str(out), "--num-frames", "4", "--fps", "4",
          "--no-progress"])
    expected, clip = expected_features(model, video, ClipSampling(num_frames=4, fps=4))
    assert clip.indices.tolist() == [0, 3, 6, 9] and manifest(out)["v"]["frame_indices"] == "0 3 6 9"
    torch.testing.assert_close(load_features(out)["v"], expected, atol=1e-5, rtol=1e-5)


def test_bfloat16_autocast_and_feature_dtype(tmp_path, tiny_checkpoint):
    directory, model = tiny_checkpoint
    video = moving_video(tmp_path / "v.mp4", 8, 40, 40)
    out = tmp_path / "f"
    extract(config(directory, out, [video], dtype="bfloat16", feature_dtype="bfloat16"))
    saved = load_features(out)["v"]
    expected, _ = expected_features(model, video, ClipSampling(4, 2))
    assert saved.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: features (post-LN, about unit scale) agree to a few percent
    assert 0 < (saved.float() - expected).abs().mean() < 0.05


def test_broken_videos_are_listed_counted_and_skipped(tmp_path, tiny_checkpoint, capsys):
    directory, model = tiny_checkpoint
    videos = tmp_path / "videos"
    good = [moving_video(videos / f"good{i}.mp4", 10, 40, 40) for i in range(2)]
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "noise.mp4").write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    whole = moving_video(tmp_path / "whole.mp4", 40, 64, 64).read_bytes()
    (videos / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    moving_video(videos / "short.mp4", 5, 40, 40)  # 4 frames every 2nd need 7
    out = tmp_path / "f"
    main([str(videos), "--model", str(directory), "--out", str(out), "--num-frames", "4", "--frame-step", "2",
          "--no-progress"])
    table = manifest(out)
    assert {k for k, r in table.items() if r["status"] == "ok"} == {"good0", "good1"}
    failed = {k: r["error"] for k, r in table.items() if r["status"] == "error"}
    assert set(failed) == {"empty", "noise", "truncated", "short"}
    assert "empty" in failed["empty"] and "needs 7 frames" in failed["short"] and "cannot decode" in failed["noise"]
    assert "2 clips of 2/6 videos, 4 failed" in capsys.readouterr().out
    assert sorted(load_features(out)) == ["good0", "good1"]
    expected, _ = expected_features(model, good[0], ClipSampling(4, 2))
    torch.testing.assert_close(load_features(out)["good0"], expected, atol=1e-5, rtol=1e-5)


def test_nothing_extracted_is_an_error(tmp_path, tiny_checkpoint, capsys):
    directory, _ = tiny_checkpoint
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"not a video")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "v"), "--model", str(directory), "--out", str(tmp_path / "f"), "--no-progress"])
    message = str(exit_info.value.code)
    assert "no clip could be extracted: all 1 videos failed" in message and "Traceback" not in message
    assert manifest(tmp_path / "f")["a"]["status"] == "error"


def test_windows_cover_a_long_video_with_their_start_times(tmp_path, tiny_checkpoint):
    directory, model = tiny_checkpoint
    video = moving_video(tmp_path / "long.mp4", 20, 40, 48, fps=10)
    out = tmp_path / "f"
    extract(config(directory, out, [video], window_stride=5))
    saved, table = load_features(out), manifest(out)
    assert sorted(saved) == ["long#0", "long#1", "long#2"]  # starts 0, 5, 10; 15 + 6 would pass frame 19
    for w in range(3):
        row = table[f"long#{w}"]
        assert int(row["start_frame"]) == 5 * w and float(row["start_time"]) == pytest.approx(0.5 * w)
        assert row["windows"] == "3" and row["video"] == "long"
        expected, _ = expected_features(model, video, ClipSampling(4, 2, start_frame=5 * w))
        torch.testing.assert_close(saved[f"long#{w}"], expected, atol=1e-5, rtol=1e-5)
    capped = tmp_path / "capped"
    extract(config(directory, capped, [video], window_stride=5, max_windows=2))
    assert sorted(load_features(capped)) == ["long#0", "long#1"]


def test_pooling_and_layers(tmp_path, tiny_checkpoint):
    directory, model = tiny_checkpoint
    video = moving_video(tmp_path / "v.mp4", 8, 40, 40)
    runs = {}
    for name, kwargs in {"tokens": {}, "mean": dict(pool="mean"), "layers": dict(layers="2,4"),
                         "layers-mean": dict(layers="2,4", pool="mean")}.items():
        extract(config(directory, tmp_path / name, [video], **kwargs))
        runs[name] = load_features(tmp_path / name)["v"]
    assert runs["tokens"].shape == (32, 192) and runs["mean"].shape == (192,)
    assert runs["layers"].shape == (2, 32, 192) and runs["layers-mean"].shape == (2, 192)
    torch.testing.assert_close(runs["mean"], runs["tokens"].mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(runs["layers"][1], runs["tokens"], atol=1e-6, rtol=1e-6)  # block 4 of 4 = last
    torch.testing.assert_close(runs["layers-mean"], runs["layers"].mean(1), atol=1e-6, rtol=1e-6)
    hidden = []
    with torch.no_grad():
        clip, = VideoProcessor(ProcessorConfig(crop_size=64)).process(load_clip(video, ClipSampling(4, 2)).frames[None])
        model.encoder(clip[None], None, hidden)
        torch.testing.assert_close(runs["layers"][0], model.encoder.norm(hidden[2])[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="--layers 2,9: the encoder has 4 blocks"):
        extract(config(directory, tmp_path / "bad", [video], layers="2,9"))


def test_keys_are_sanitised_unique_and_never_reserved(tmp_path, tiny_checkpoint):
    for name in ("__metadata__.mp4", "a b@c.mp4", "x/a b@c.mp4", "a_b_c.mp4"):
        moving_video(tmp_path / "v" / name, 8, 40, 40)
    moving_video(tmp_path / "w" / "a_b_c.mp4", 8, 40, 40)
    (tmp_path / "list.csv").write_text("v/a_b_c.mp4,label\nw/a_b_c.mp4,label\n")
    videos = list_inputs([str(tmp_path / "v"), str(tmp_path / "list.csv")])
    assert [v.key for v in videos] == ["v__metadata__", "a_b_c", "a_b_c_2", "x/a_b_c", "v/a_b_c", "w/a_b_c"]
    directory, _ = tiny_checkpoint
    extract(config(directory, tmp_path / "f", [tmp_path / "v" / "__metadata__.mp4"]))
    assert list(load_features(tmp_path / "f")) == ["v__metadata__"]  # the shard opens: its key is not reserved


def test_manifest_reads_with_pyarrow(tmp_path, tiny_checkpoint, folder):
    from pyarrow import csv as pacsv
    directory, _ = tiny_checkpoint
    (folder / "broken.mp4").write_bytes(b"")
    try:
        extract(config(directory, tmp_path / "f", [folder]))
    finally:
        (folder / "broken.mp4").unlink()
    table = pacsv.read_csv(tmp_path / "f" / "manifest.csv").to_pylist()
    assert len(table) == 7 and sum(r["status"] == "ok" for r in table) == 6
    row = next(r for r in table if r["key"] == "sub/clip_0")
    assert row["frame_indices"] == "0 2 4 6" and row["window"] == 0 and row["fps"] == 8.0
    with safe_open(str(tmp_path / "f" / row["shard"]), "pt") as f:
        assert list(f.get_slice(row["key"]).get_shape()) == [int(n) for n in row["shape"].split("x")]


def test_shard_writer_streams_features_to_disk_and_safetensors_reads_them(tmp_path):
    """Features go to the shard's temporary file as they come (the writer keeps no tensor), and
    the shard is a safetensors file its own reader takes: tensors of every feature dtype, the
    manifest rows in the metadata, a failure-only shard with no tensors."""
    from safetensors.torch import load_file
    writer = ShardWriter(tmp_path, 0, limit_bytes=2**30, limit_clips=5)
    clips = {f"v{i}": torch.randn(3, 5 + i).to(dtype) for i, dtype in
             enumerate([torch.float32, torch.bfloat16, torch.float16, torch.float32])}
    for key, features in clips.items():
        copy = features.clone()
        alive = weakref.ref(copy)
        writer.add({"key": key, "last": True}, copy)
        del copy
        assert alive() is None  # on disk, not held
    writer.add({"key": "broken", "last": True, "status": "failed"}, None)  # no features: not a clip
    writer.flush()
    assert load_file(tmp_path / "shard-r000-00000.safetensors").keys() == clips.keys()
    for key, got in load_file(tmp_path / "shard-r000-00000.safetensors").items():
        assert got.dtype == clips[key].dtype and torch.equal(got, clips[key])
    with safe_open(str(tmp_path / "shard-r000-00000.safetensors"), "pt") as f:
        rows = json.loads(f.metadata()["rows"])
    assert [r["key"] for r in rows] == [*clips, "broken"] and rows[0]["shape"] == "3x5"
    writer.add({"key": "late", "last": True, "status": "failed"}, None)
    writer.flush()
    assert load_file(tmp_path / "shard-r000-00001.safetensors") == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-r000-00000.safetensors",
                                                          "shard-r000-00001.safetensors"]


# An extraction in its own process whose third shard write stops half-way through the file (the
# first half written to the temporary file, then it waits to be killed); the test kills it there.
KILLED_MID_SHARD = """
import json, sys, time
import torch
from vjepa_fast.extract import ExtractConfig, extract
from vjepa_fast.jobs.extract_data import ShardWriter
torch.set_num_threads(int(sys.argv[2]))  # the test process's: the same kernels, the same bits
real_write, writes = ShardWriter.write, []
def write_and_hang(self, path):
    writes.append(path)
    real_write(self, path)
    if len(writes) == 3:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        print("mid-write", flush=True)
        time.sleep(600)
ShardWriter.write = write_and_hang
extract(ExtractConfig(**json.loads(sys.argv[1])))
"""


def test_kill_9_mid_shard_loses_only_that_shard_and_resume_completes(tmp_path, tiny_checkpoint, folder):
    import dataclasses
    directory, _ = tiny_checkpoint
    # A shard per clip, one clip per batch and no workers: the same arithmetic in both runs.
    whole = config(directory, tmp_path / "whole", [folder], batch_size=1, workers=0, shard_size_mb=0)
    extract(whole)
    killed = dataclasses.replace(whole, out=str(tmp_path / "killed"))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_SHARD, json.dumps(dataclasses.asdict(killed)),
                             str(torch.get_num_threads())],
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "mid-write"
    finally:
        proc.kill()
        proc.wait()
    out = tmp_path / "killed"
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-r000-00000.safetensors",
                                                           "shard-r000-00001.safetensors"]
    partial = [p for p in out.iterdir() if p.name.startswith(".shard-r000-00002.safetensors.")]
    assert len(partial) == 2 and not (out / "manifest.csv").exists()  # the streamed features, the half-written shard
    assert len(load_features(out)) == 2  # the two finished shards read whole
    rows = extract(killed)
    assert not any(p.exists() for p in partial) and len(rows) == 6
    assert len(list(out.glob("shard-*"))) == 6  # the 2 finished clips were not extracted again
    resumed, uninterrupted = load_features(out), load_features(tmp_path / "whole")
    assert sorted(resumed) == sorted(uninterrupted)
    for key in uninterrupted:
        assert torch.equal(resumed[key], uninterrupted[key])
    assert manifest(out).keys() == manifest(tmp_path / "whole").keys()


def test_resume_refuses_other_settings_and_skips_what_is_done(tmp_path, tiny_checkpoint, folder, capsys):
    directory, _ = tiny_checkpoint
    out = tmp_path / "f"
    extract(config(directory, out, [folder], shard_clips=4))
    shards = sorted(out.glob("shard-*"))
    assert len(shards) == 2  # 4 clips, then 2
    extract(config(directory, out, [folder], batch_size=3))  # a setting the features do not depend on
    assert sorted(out.glob("shard-*")) == shards and "nothing left to do" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"holds features made with other settings \(--pool 'none' there, "
                                         r"'mean' now\)"):
        extract(config(directory, out, [folder], pool="mean"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_processes_give_the_features_of_one(tmp_path, tiny_checkpoint, folder):
    directory, _ = tiny_checkpoint
    extract(config(directory, tmp_path / "one", [folder], workers=0))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                    str(_free_port()), "-m", "vjepa_fast.extract", str(folder), "--model", str(directory), "--out",
                    str(tmp_path / "two"), "--num-frames", "4", "--frame-step", "2", "--workers", "0",
                    "--device", "cpu", "--no-progress"], check=True, env=env, cwd=tmp_path, timeout=300)
    shards = sorted(p.name for p in (tmp_path / "two").glob("shard-*"))
    assert shards == ["shard-r000-00000.safetensors", "shard-r001-00000.safetensors"]  # each rank its own
    one, two = load_features(tmp_path / "one"), load_features(tmp_path / "two")
    assert sorted(one) == sorted(two)
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=1e-6)
    assert manifest(tmp_path / "two").keys() == manifest(tmp_path / "one").keys()  # rank 0 merged both


def test_iter_features_in_memory(tmp_path, tiny_checkpoint, folder):
    directory, _ = tiny_checkpoint
    out = tmp_path / "f"
    extract(config(directory, out, [folder]))
    in_memory = dict(iter_features(config(directory, tmp_path / "unused", [folder])))
    assert not (tmp_path / "unused").exists()
    on_disk = load_features(out)
    assert sorted(in_memory) == sorted(on_disk)
    for key in on_disk:
        torch.testing.assert_close(in_memory[key], on_disk[key], atol=1e-6, rtol=1e-6)
    assert sorted(load_features(out, keys=["clip_2"])) == ["clip_2"]
    with pytest.raises(KeyError, match="keys: not in"):
        load_features(out, keys=["nope"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(model="m"), "videos: give at least one video"),
    (dict(videos=["a.mp4"]), "model: give a checkpoint"),
    (dict(videos=["a.mp4"], model="m", dtype="int8"), "--dtype must be one of"),
    (dict(videos=["a.mp4"], model="m", feature_dtype="int8"), "--feature-dtype must be one of"),
    (dict(videos=["a.mp4"], model="m", pool="max"), "--pool must be one of"),
    (dict(videos=["a.mp4"], model="m", layers="6,x"), "--layers must be 'last' or block numbers"),
    (dict(videos=["a.mp4"], model="m", window_stride=0), "--window-stride must be an int >= 1"),
    (dict(videos=["a.mp4"], model="m", max_windows=3), "--max-windows needs --window-stride"),
    (dict(videos=["a.mp4"], model="m", window_stride=4, uniform=True), "--window-stride and --uniform"),
    (dict(videos=["a.mp4"], model="m", batch_size=0), "--batch-size must be an int >= 1"),
    (dict(videos=["a.mp4"], model="m", workers=-1), "--workers must be an int >= 0"),
    (dict(videos=["a.mp4"], model="m", shard_size_mb=-1), "--shard-size-mb must be a finite number"),
    (dict(videos=["a.mp4"], model="m", shard_clips=0), "--shard-clips must be an int >= 1"),
    (dict(videos=["a.mp4"], model="m", decode_device="gpu"), "--decode-device must be one of"),
    (dict(videos=["a.mp4"], model="m", rope_grid="grid"), "--rope-grid must be one of"),
    (dict(videos=["a.mp4"], model="m", num_frames=0), "num_frames must be an int >= 1"),
    (dict(videos=["a.mp4"], model="m", fps=4, frame_step=2), "frame_step and fps are exclusive"),
    (dict(demo=True, model="m"), "demo makes its own video and model"),
])
def test_extract_config_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExtractConfig(**kwargs)


def test_demo_runs_offline(tmp_path, capsys):
    out = tmp_path / "outputs" / "features"
    main(["--demo", "--out", str(out), "--num-frames", "8", "--no-progress"])
    printed = capsys.readouterr().out
    assert "demo_video: features [64, 192]" in printed  # 8 frames / 2 x (64 / 16)^2 tokens, tiny width
    assert load_features(out)["demo_video"].shape == (64, 192)
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
                 "--window-stride", "--max-windows", "--pool", "--layers", "--batch-size", "--workers",
                 "--shard-size-mb", "--shard-clips", "--device", "--dtype", "--feature-dtype", "--decode-device",
                 "--rope-grid",
                 "--progress", "--demo", "torchrun"):
        assert flag in printed


def test_seed_example_vitl_shape(tmp_path):
    """64 frames of an 848x480 video through a ViT-L-shaped checkpoint (1 encoder and 1 predictor
    layer to stay fast) -> features (8192, 1024): 32 tubelets x 16 x 16 patches of the 256 crop."""
    config = VJEPA2Config.from_name("vitl")
    config.num_hidden_layers, config.pred_num_hidden_layers = 1, 1
    VJEPA2Model(config).save_pretrained(str(tmp_path / "vitl-1layer"))
    video = moving_video(tmp_path / "seed.mp4", 64, 480, 848, fps=30)
    start = time.perf_counter()
    extract(ExtractConfig(videos=[str(video)], model=str(tmp_path / "vitl-1layer"), out=str(tmp_path / "seed"),
                          progress=False))
    print(f"seed example: decode + process + encode 64 x 848x480 took {time.perf_counter() - start:.1f} s")
    features = load_features(tmp_path / "seed")["seed"]
    assert list(features.shape) == [8192, 1024] and torch.isfinite(features).all()


@pytest.mark.parametrize("argv,message", [
    (["x.mp4", "--model", "m", "--num-frames", "-1"], "num_frames must be an int >= 1, got -1"),
    (["/no/such/video.mp4", "--model", "m"], "VIDEO: no such file or folder: /no/such/video.mp4"),
    (["x.mp4", "--model", "m", "--layers", "last,1"], "--layers must be 'last' or block numbers"),
    (["x.mp4", "--model", "m", "--decode-device", "cuda", "--device", "cpu"], "--decode-device cuda needs the model"),
])
def test_bad_input_is_one_line_error(capsys, tmp_path, tiny_checkpoint, argv, message):
    """Usage errors and missing inputs end the program with a message naming the problem, no traceback."""
    directory, _ = tiny_checkpoint
    moving_video(tmp_path / "x.mp4", 8, 40, 40)
    argv = [str(tmp_path / a) if a == "x.mp4" else str(directory) if a == "m" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--out", str(tmp_path / "f")])
    text = str(exit_info.value.code) + capsys.readouterr().err
    assert message in text and "Traceback" not in text
