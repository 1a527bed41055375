"""The attentive-probe entry point: learning, caching, resuming, video folders/CSVs, bad inputs."""
import dataclasses
import json
import shutil

import pytest
import torch

from vjepa_fast.jobs import loop, probe
from vjepa_fast import VJEPA2Config, VJEPA2ForVideoClassification
from vjepa_fast.worlds.physics import PhysicsConfig, generate_clip, write_mp4
from vjepa_fast.jobs.probe import ProbeConfig, run, spatial_views, window_indices

# The embedded physics task at reduced size: 4-frame videos, two 2-frame clips each (16 tokens a clip).
SMALL = dict(physics_train=64, physics_test=32, physics_frames=4, frames=2, epochs=6, batch_size=8, lr=2e-3,
             feature_dtype="float32", save_classifier=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_probe_learns_the_physics_task_and_its_classifier_runs_in_transformers(tmp_path):
    config = ProbeConfig(out=str(tmp_path), **{**SMALL, "save_classifier": True})
    metrics = run(config)
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < 0.75 * losses[0]
    assert metrics["top1"] > metrics["chance"] + 0.15  # chance: always answering the commonest class
    confusion = torch.tensor(metrics["confusion"])
    assert confusion.sum() == metrics["num_test"] == 32
    assert confusion.diag().sum().item() / 32 == pytest.approx(metrics["top1"])
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "metrics.json").read_text())["top1"] == metrics["top1"]

    # The saved classifier, run by transformers on the test videos (logits averaged over the two
    # clips), scores what the probe measured on its cached features.
    transformers = pytest.importorskip("transformers")
    ref = transformers.VJEPA2ForVideoClassification.from_pretrained(tmp_path / "classifier").eval()
    assert ref.config.id2label == {0: "1 ball", 1: "2 balls", 2: "3 balls"}
    _, test_set, names = probe.load_data(config)
    processor = probe.VideoProcessor(probe.ProcessorConfig(crop_size=64))
    correct = 0
    with torch.no_grad():
        for i in range(len(test_set)):
            pixels, label = probe.video_pixels(test_set, i, config, 2, processor)  # (2 clips, 2, 3, 64, 64)
            correct += int(ref(pixels).logits.mean(0).argmax()) == names.index(label)
    assert correct / 32 == pytest.approx(metrics["top1"])


def test_resume_after_a_crash_matches_an_uninterrupted_run_and_reuses_features(tmp_path, monkeypatch):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run(ProbeConfig(out=str(whole), **{**SMALL, "epochs": 3}))
    broken.mkdir()
    for name in ("features_train.safetensors", "features_test.safetensors"):
        shutil.copy(whole / name, broken / name)

    def no_extraction(*args):
        raise AssertionError("features were extracted again although the cache matches")
    monkeypatch.setattr(probe, "video_pixels", no_extraction)
    real_write = loop.atomic_write

    def crash_after_first_epoch(path, write):
        real_write(path, write)
        if path.name == "state.pt":
            raise KeyboardInterrupt
    monkeypatch.setattr(loop, "atomic_write", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(ProbeConfig(out=str(broken), **{**SMALL, "epochs": 3}))
    assert torch.load(broken / "state.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(loop, "atomic_write", real_write)
    metrics = run(ProbeConfig(out=str(broken), resume=True, **{**SMALL, "epochs": 3}))

    expected = torch.load(whole / "state.pt", weights_only=True)
    got = torch.load(broken / "state.pt", weights_only=True)
    assert got["epoch"] == 3 and len(metrics["history"]) == 3
    for part in ("pooler", "classifier"):
        for k, v in expected[part].items():
            assert torch.equal(got[part][k], v), k


def test_changed_settings_extract_again(tmp_path):
    run(ProbeConfig(out=str(tmp_path), **{**SMALL, "epochs": 0, "physics_train": 4, "physics_test": 4}))
    run(ProbeConfig(out=str(tmp_path), **{**SMALL, "epochs": 0, "physics_train": 4, "physics_test": 4, "clips": 3}))
    from safetensors.torch import load_file
    assert load_file(tmp_path / "features_test.safetensors")["features"].shape[:2] == (4, 3)


def write_video(path, seed, width=96):
    """A physics clip padded to a non-square frame, as an MP4."""
    video, _ = generate_clip(PhysicsConfig(frames=5, size=64), seed)
    padded = torch.zeros(5, 64, width, 3, dtype=torch.uint8)
    padded[:, :, :64] = video
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(padded, path)


def test_video_folder_and_csv_with_clips_and_views(tmp_path):
    for label in ("left", "right"):
        for i in range(3):
            write_video(tmp_path / "train" / label / f"{i}.mp4", seed=10 * len(label) + i)
    write_video(tmp_path / "test" / "a.mp4", seed=100)
    write_video(tmp_path / "test" / "b.mp4", seed=101)
    (tmp_path / "test.csv").write_text("path,label\ntest/a.mp4,right\ntest/b.mp4,left\n")
    config = ProbeConfig(data=str(tmp_path / "train"), test_data=str(tmp_path / "test.csv"),
                         out=str(tmp_path / "out"), frames=2, clips=2, views=3, epochs=1, batch_size=4,
                         feature_dtype="float32", save_classifier=False)
    metrics = run(config)
    assert metrics["labels"] == ["left", "right"] and metrics["num_train"] == 6 and metrics["num_test"] == 2
    from safetensors.torch import load_file
    features = load_file(tmp_path / "out" / "features_test.safetensors")
    assert features["features"].shape[:2] == (2, 6)          # 2 clips x 3 views per video
    assert features["labels"].tolist() == [1, 0]
    views = features["features"][0].view(2, 3, -1)
    assert not torch.equal(views[0, 0], views[0, 2])          # the left and right crops differ


def test_window_indices_spread_and_clamp():
    assert window_indices(20, 4, 2, 2).tolist() == [[0, 2, 4, 6], [13, 15, 17, 19]]
    assert window_indices(20, 4, 1, 1).tolist() == [[8, 9, 10, 11]]
    assert window_indices(3, 4, 1, 2).tolist() == [[0, 1, 2, 2], [0, 1, 2, 2]]  # short: last frame repeats


def test_spatial_views_slide_along_the_long_edge():
    frames = torch.randint(0, 255, (2, 3, 40, 100), dtype=torch.uint8)
    left, middle, right = spatial_views(frames, 3)
    assert torch.equal(left, frames[..., :40]) and torch.equal(right, frames[..., 60:])
    assert torch.equal(middle, frames[..., 30:70])
    assert torch.equal(spatial_views(frames.transpose(-1, -2), 2)[1], frames.transpose(-1, -2)[..., 60:, :])


def test_empty_class_folder_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"\0")
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match=r"b: empty class folder"):
        probe.load_data(ProbeConfig(data=str(tmp_path)))


def test_unknown_label_in_csv_is_named(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"\0")
    (tmp_path / "train.csv").write_text("x.mp4,cat\nx.mp4,dog\n")
    (tmp_path / "test.csv").write_text("path,label\nx.mp4,cat\nx.mp4,bird\n")
    with pytest.raises(ValueError, match=r"test_data .*unknown label\(s\) \['bird'\]"):
        probe.load_data(ProbeConfig(data=str(tmp_path / "train.csv"), test_data=str(tmp_path / "test.csv")))
    (tmp_path / "test.csv").write_text("x.mp4,cat\nmissing.mp4,dog\n")
    with pytest.raises(FileNotFoundError, match=r"test.csv: line 2: no such video file: .*missing.mp4"):
        probe.load_data(ProbeConfig(data=str(tmp_path / "train.csv"), test_data=str(tmp_path / "test.csv")))


def test_num_labels_mismatch_with_the_checkpoint_is_named(tmp_path):
    config = VJEPA2Config.from_name("tiny").with_labels(["1 ball", "2 balls"])
    VJEPA2ForVideoClassification(config).save_pretrained(str(tmp_path / "ckpt"))
    bad = ProbeConfig(model=str(tmp_path / "ckpt"), out=str(tmp_path / "out"), **SMALL)
    with pytest.raises(ValueError, match="num_labels=2 but the data has 3 classes"):
        run(bad)


def test_cli_flags_are_the_config_fields(capsys):
    with pytest.raises(SystemExit) as e:
        probe.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(ProbeConfig):
        assert "--" + f.name.replace("_", "-") in text
    parsed = probe.parse_args(["--clips", "3", "--no-save-classifier", "--lr", "0.01"])
    assert parsed == ProbeConfig(clips=3, save_classifier=False, lr=0.01)
    with pytest.raises(SystemExit):
        probe.parse_args(["--clips", "0"])
    assert "--clips must be an int >= 1" in capsys.readouterr().err


def test_missing_data_is_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert "python -m vjepa_fast.probe: error: data: expected a folder of class sub-folders" in str(exit_info.value.code)


def test_diverging_head_stops_the_probe(tmp_path):
    with pytest.raises(loop.TrainingDiverged, match="weights are no longer finite .* no checkpoint was written yet"):
        run(ProbeConfig(out=str(tmp_path), **{**SMALL, "lr": 1e38, "epochs": 2}))
    assert not (tmp_path / "state.pt").exists()
