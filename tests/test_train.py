import dataclasses
import logging

import pytest
import torch

from vjepa_fast.jobs.train_data import Augment, VideoClips
from vjepa_fast.video import list_videos
from vjepa_fast.masks import mix_seed
from vjepa_fast.worlds.physics import PhysicsConfig, generate_clip, write_mp4
from vjepa_fast.jobs import cli
from vjepa_fast.jobs.loop import TrainingDiverged, param_groups
from vjepa_fast.jobs.train_config import TrainConfig, parse_args
from vjepa_fast.jobs.trainer import Trainer, ema_update
from vjepa_fast.testing import hf_copy, reference_optimizer, reference_step

transformers = pytest.importorskip("transformers")


def small_config(tmp_path, **overrides) -> TrainConfig:
    """A model small enough for a step in well under a second, with odd sizes (batch 3, head dim 48)."""
    base = dict(width=96, depth=2, heads=2, pred_width=64, pred_depth=2, pred_heads=2, patch_size=8, crop_size=32,
                frames=4, batch_size=3, steps=6, warmup_steps=2, cooldown_steps=2, checkpoint_every=3,
                out=str(tmp_path / "run"), progress=False, probe=False, export=False, threads=0)
    return TrainConfig(**{**base, **overrides})


# ---- the step against a plain reference assembled from transformers' modules -------------------

@pytest.mark.parametrize("checkpointing", [False, True])
def test_step_matches_plain_reference(tmp_path, checkpointing):
    config = small_config(tmp_path, warmup_steps=0, ema=0.9, activation_checkpointing=checkpointing)
    trainer = Trainer(config)
    # Start from a target encoder that differs from the online one, as after some training.
    with torch.no_grad():
        for p in trainer.target.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    online, target = hf_copy(trainer, tmp_path)
    trainer.jepa.encoder.gradient_checkpointing = checkpointing
    batch = next(iter(trainer.loader()))
    loss = trainer.train_step([batch])
    optimizer = reference_optimizer(online, config.lr, config.weight_decay)
    ref_loss = reference_step(online, target, optimizer, batch, config.ema)
    assert abs(loss - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))
    updated_online, updated_target = hf_copy(trainer, tmp_path / "after")
    # AdamW's first step moves every weight by about lr * g / (|g| + eps): where a gradient is near
    # eps, fp32 rounding in g shows up at a fraction of lr, so that is the tolerance.
    for ours, ref, part in ((updated_online, online, ""), (updated_target, target, "encoder.")):
        ref_state = ref.state_dict()
        for name, value in ours.state_dict().items():
            if not name.startswith(part):
                continue
            torch.testing.assert_close(value, ref_state[name], atol=0.05 * config.lr, rtol=1e-5,
                                       msg=lambda m: f"{name}: {m}")
    # The step did change the weights (so the comparison above is not vacuous).
    assert not torch.allclose(updated_online.encoder.layer[0].mlp.fc1.weight,
                              transformers.VJEPA2Model.from_pretrained(str(tmp_path / "online")).encoder.layer[0].mlp.fc1.weight)
    trainer.close()


def test_gradient_accumulation_matches_one_batch(tmp_path):
    """Two micro-batches of 2 = one batch of 4 when the masks are the same (the loss is a mean)."""
    a = Trainer(small_config(tmp_path / "a", batch_size=4, warmup_steps=0))
    b = Trainer(small_config(tmp_path / "b", batch_size=4, grad_accum=2, warmup_steps=0))
    batch = next(iter(a.loader()))
    batch.masks = [(c[:, :min(c.shape[1], 9)], t[:, :9]) for c, t in batch.masks]  # same shapes for both halves
    halves = [dataclasses.replace(batch, video=batch.video[i:i + 2], masks=[(c[i:i + 2], t[i:i + 2]) for c, t in batch.masks])
              for i in (0, 2)]
    loss_a, loss_b = a.train_step([batch]), b.train_step(halves)
    assert abs(loss_a - loss_b) < 1e-6
    for pa, pb in zip(a.jepa.parameters(), b.jepa.parameters()):
        torch.testing.assert_close(pa, pb, atol=0.05 * a.config.lr, rtol=1e-5)  # as in the test above


# ---- pieces ------------------------------------------------------------------------------------

def test_ema_update_matches_loop():
    target = [torch.randn(5, 3), torch.randn(7)]
    online = [torch.randn(5, 3), torch.randn(7)]
    expected = [0.99925 * t + (1 - 0.99925) * o for t, o in zip(target, online)]
    ema_update(target, online, 0.99925)
    for t, e in zip(target, expected):
        torch.testing.assert_close(t, e)


def test_lr_schedule(tmp_path):
    c = small_config(tmp_path, steps=20, warmup_steps=5, cooldown_steps=4, start_lr=1e-4, lr=5e-4, final_lr=1e-6)
    lrs = [c.schedule().lr_at(s) for s in range(20)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[5] == pytest.approx(5e-4)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6]))              # linear warm-up
    assert lrs[5:16] == [pytest.approx(5e-4)] * 11                    # constant
    assert all(a > b for a, b in zip(lrs[15:], lrs[16:]))             # linear cool-down
    assert lrs[-1] == pytest.approx(1e-6)
    assert lrs[1] - lrs[0] == pytest.approx(lrs[2] - lrs[1])


def test_weight_decay_skips_biases_and_1d_params(tmp_path):
    trainer = Trainer(small_config(tmp_path))
    decay, no_decay = param_groups(trainer.jepa, 0.04)
    names = {id(p): n for n, p in trainer.jepa.named_parameters()}
    assert decay["weight_decay"] == 0.04 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 and not names[id(p)].endswith("bias") for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"encoder.patch_embed.bias", "encoder.norm.weight", "predictor.proj.bias"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(trainer.jepa.parameters()))
    trainer.close()


# ---- checkpoints, resume, export, divergence ---------------------------------------------------

def test_exact_resume(tmp_path):
    full = Trainer(small_config(tmp_path / "full"))
    losses = full.run()
    interrupted = Trainer(small_config(tmp_path / "split"))
    first = interrupted.run(until=3)
    interrupted.close()
    resumed = Trainer(small_config(tmp_path / "split", resume=True))
    assert resumed.step == 3
    rest = resumed.run()
    assert first + rest == losses  # bit for bit
    for a, b in zip(full.jepa.parameters(), resumed.jepa.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(full.target.parameters(), resumed.target.parameters()):
        assert torch.equal(a, b)
    full.close()
    resumed.close()


# A training run in its own process whose second checkpoint save stops half-way through the file
# (the first half written, then it waits to be killed): the test kills it there with SIGKILL.
KILLED_MID_SAVE = """
import json, sys, time, torch
from vjepa_fast.jobs.train_config import TrainConfig
from vjepa_fast.jobs.trainer import Trainer
real_save, saves = torch.save, []
def save_and_hang(obj, path):
    saves.append(path)
    if len(saves) == 2:
        real_save(obj, path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        print("mid-save", flush=True)
        time.sleep(600)
    real_save(obj, path)
torch.save = save_and_hang
Trainer(TrainConfig(**json.loads(sys.argv[1]))).run()
"""


def test_kill_9_during_a_save_loses_nothing_and_resumes_exactly(tmp_path, one_thread):
    import json
    import subprocess
    import sys
    # One thread on both sides: the killed process and this one sum in the same order.
    full = Trainer(small_config(tmp_path / "full", checkpoint_every=2, threads=1))
    losses = full.run()
    killed = small_config(tmp_path / "killed", checkpoint_every=2, threads=1)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_SAVE, json.dumps(dataclasses.asdict(killed))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "mid-save"
    finally:
        proc.kill()
        proc.wait()
    run = tmp_path / "killed" / "run"
    partial = [p for p in run.iterdir() if p.name.startswith(".latest.pt.")]
    assert len(partial) == 1  # the half-written temporary file; latest.pt is the step-2 one, whole
    assert torch.load(run / "latest.pt", weights_only=True)["step"] == 2
    resumed = Trainer(dataclasses.replace(killed, resume=True))
    assert resumed.step == 2 and not partial[0].exists()
    rest = resumed.run()
    assert rest == losses[2:]  # bit for bit
    for a, b in zip(full.jepa.parameters(), resumed.jepa.parameters()):
        assert torch.equal(a, b)
    full.close()
    resumed.close()


def test_checkpoint_is_metas_format_and_export_loads_in_transformers(tmp_path):
    from vjepa_fast.model import VJEPA2Model
    trainer = Trainer(small_config(tmp_path, steps=3, warmup_steps=1, cooldown_steps=1, export=True))
    trainer.run()
    path = tmp_path / "run" / "latest.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", "loss", "batch_size",
                "world_size", "lr", "step", "rng", "data_position"):
        assert key in state
    assert all(k.startswith("module.backbone.") for part in ("encoder", "predictor", "target_encoder")
               for k in state[part])
    assert "module.backbone.blocks.0.attn.qkv.weight" in state["target_encoder"]
    assert "module.backbone.mask_tokens.0" in state["predictor"]
    # Our loader of Meta's checkpoints reads it back strictly.
    model = VJEPA2Model.from_meta_checkpoint(str(path), config=trainer.model_config, encoder_key="target_encoder")
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        expected = trainer.target(video)
        torch.testing.assert_close(model.get_vision_features(video), expected)
        trainer.export(tmp_path / "hf")
        hf = transformers.VJEPA2Model.from_pretrained(str(tmp_path / "hf")).eval()
        torch.testing.assert_close(hf.get_vision_features(video), expected, atol=1e-5, rtol=1e-4)
    trainer.close()


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    trainer = Trainer(small_config(tmp_path, steps=6, checkpoint_every=1))
    trainer.run(until=2)
    path = tmp_path / "run" / "latest.pt"
    saved = path.read_bytes()
    batch = next(iter(trainer.loader()))
    batch.video[0, 0, 0, 0, 0] = float("nan")
    before = [p.clone() for p in trainer.jepa.parameters()]
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3: .*latest.pt \(step 2\)"):
        trainer.train_step([batch])
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.jepa.parameters()))
    assert path.read_bytes() == saved
    trainer.close()


def test_weights_poisoned_by_a_finite_loss_are_never_saved(tmp_path):
    """A finite but huge update makes the weights NaN: the step stops the run before any save,
    and the checkpoint before it (kept beside the latest) stays good."""
    trainer = Trainer(small_config(tmp_path, steps=6, checkpoint_every=1))
    trainer.run(until=2)
    run = tmp_path / "run"
    assert torch.load(run / "latest.previous.pt", weights_only=True)["step"] == 1
    for group in trainer.optimizer.param_groups:
        group["lr"] = float("inf")  # what a huge loss's update does: finite loss, non-finite weights
    trainer.loop.set_lr = lambda step=None: float("inf")
    with pytest.raises(TrainingDiverged, match=r"weights are no longer finite .* at step 3: .*latest.pt \(step 2\)"):
        trainer.run(until=3)
    state = torch.load(run / "latest.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for part in ("encoder", "predictor", "target_encoder")
               for v in state[part].values() if v.is_floating_point())
    trainer.close()


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint at .*latest.pt"):
        Trainer(small_config(tmp_path, resume=True))


def test_resume_rejects_a_different_batch_size(tmp_path):
    Trainer(small_config(tmp_path, steps=3, warmup_steps=1, cooldown_steps=1)).run()
    with pytest.raises(ValueError, match="batch.size"):
        Trainer(small_config(tmp_path, steps=3, warmup_steps=1, cooldown_steps=1, batch_size=2, resume=True))


@pytest.mark.parametrize("changed", [{"seed": 1}, {"lr": 2e-3}, {"ema": 0.9}, {"width": 64}])
def test_resume_refuses_other_settings_and_names_them(tmp_path, changed):
    Trainer(small_config(tmp_path, steps=3, warmup_steps=1, cooldown_steps=1)).run()
    name = next(iter(changed))
    with pytest.raises(ValueError, match=f"--resume: .*latest.pt was written with other settings "
                                         f"\\(--{name} .* -> {changed[name]}\\); only --steps"):
        Trainer(small_config(tmp_path, steps=3, warmup_steps=1, cooldown_steps=1, resume=True, **changed))
    # A longer run (the one setting meant to change) resumes.
    trainer = Trainer(small_config(tmp_path, steps=4, warmup_steps=1, cooldown_steps=1, resume=True))
    assert trainer.loop.step == 3
    trainer.close()


# ---- real videos -------------------------------------------------------------------------------

def test_corrupt_videos_are_skipped_counted_and_logged(tmp_path, caplog):
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(2):
        write_mp4(generate_clip(PhysicsConfig(frames=12, size=48), i)[0], folder / f"good_{i}.mp4")
    (folder / "corrupt.mp4").write_bytes(torch.randint(0, 256, (4000,), dtype=torch.uint8).numpy().tobytes())
    (folder / "empty.mp4").write_bytes(b"")
    files = list_videos(str(folder), "--data")
    assert len(files) == 4
    clips = VideoClips(files, frames=4, fps=4.0, augment=Augment(32), seed=0)
    with caplog.at_level(logging.WARNING):
        items = [clips[k] for k in range(8)]
    assert all(video.shape == (4, 3, 32, 32) and torch.isfinite(video).all() for video, _, _ in items)
    assert sum(skipped for _, _, skipped in items) >= 2
    assert "corrupt.mp4" in caplog.text and "empty.mp4" in caplog.text
    # And training on the folder goes on, counting the skips.
    trainer = Trainer(small_config(tmp_path, data=str(folder), steps=2, warmup_steps=0, cooldown_steps=0))
    trainer.run()
    assert trainer.skipped >= 1
    trainer.close()


def test_augmentation_is_seeded_and_in_range():
    aug = Augment(24, (0.3, 1.0), (0.75, 1.35))
    frames = torch.randint(0, 256, (3, 3, 40, 60), dtype=torch.uint8)
    boxes = [aug.crop_box(40, 60, torch.Generator().manual_seed(mix_seed(0, k))) for k in range(200)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.3 * 2400 * 0.8 <= h * w <= 2400
    assert len(set(boxes)) > 150
    a = aug(frames, torch.Generator().manual_seed(3))
    assert torch.equal(a, aug(frames, torch.Generator().manual_seed(3))) and a.shape == (3, 3, 24, 24)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        list_videos(str(tmp_path / "nowhere"), "--data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no videos"):
        list_videos(str(tmp_path / "empty"), "--data")


# ---- CLI ---------------------------------------------------------------------------------------

def test_cli_flags_map_one_to_one_onto_config_fields(capsys):
    parser = cli.build_parser(TrainConfig, "train", "")
    dests = {a.dest for a in parser._actions if a.dest not in ("help", "debug")}
    assert dests == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(a.help for a in parser._actions)
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0 and "--activation-checkpointing" in capsys.readouterr().out
    config = parse_args(["--steps", "30000", "--no-probe", "--preset", "vitl", "--data", "x.csv"])
    assert (config.steps, config.probe, config.lr, config.crop_size, config.data) == (30000, False, 5.25e-4, 256, "x.csv")
    assert parse_args([]) == TrainConfig()


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps must be an int >= 1"),
    (["--lr", "-1"], "--lr must be a finite number"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--dtype", "fp8"], "--dtype must be one of"),
    (["--preset", "vitz"], "--preset must be one of"),
    (["--model", "nope"], "--model must be one of"),
    (["--warmup-steps", "400"], "must not exceed --steps"),
    (["--crop-size", "40"], "multiple of --patch-size"),
    (["--ema", "1.0"], "--ema must be in"),
    (["--batch-size", "5", "--grad-accum", "2"], "divisible by --grad-accum"),
    (["--heads", "5"], "divisible by num_attention_heads"),
    (["--steps", "ten"], "invalid int value"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_cli_values_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_is_one_line_error(tmp_path):
    from vjepa_fast.jobs.train import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(tmp_path / "nowhere"), "--steps", "10", "--warmup-steps", "1", "--cooldown-steps", "1",
              "--no-probe", "--no-progress", "--out", str(tmp_path / "out")])
    assert "python -m vjepa_fast.train: error: --data:" in str(exit_info.value.code)
