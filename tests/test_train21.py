"""V-JEPA 2.1 pre-training: one step of the trainer's objective against the loss written out here
from its definition (per-level normalised targets, L1 on the masked tokens, the context loss
weighted by 1/sqrt of each context token's distance to the nearest masked token, lambda's
warm-up-hold), on video steps, image steps and with a frozen teacher; the CLI's 2.1 preset."""
from __future__ import annotations

import math

import pytest
import torch

from vjepa_fast import VJEPA2Model
from vjepa_fast.config import VJEPA2Config
from vjepa_fast.jobs.objective21 import context_lambda
from vjepa_fast.jobs.train_config import TrainConfig, parse_args
from vjepa_fast.jobs.trainer import Trainer


def config_21(tmp_path, **overrides) -> TrainConfig:
    base = dict(model="tiny-2.1", width=64, depth=4, heads=2, pred_width=32, pred_depth=2, pred_heads=2, patch_size=8,
                crop_size=32, frames=4, batch_size=2, steps=8, warmup_steps=0, cooldown_steps=2, checkpoint_every=4,
                lambda_start=0, lambda_end=0, context_lambda=0.5, context_lambda_image=0.7, image_every=2,
                out=str(tmp_path / "run"), progress=False, probe=False, export=False, threads=0)
    return TrainConfig(**{**base, **overrides})


def plain_loss(trainer: Trainer, video: torch.Tensor, masks, lam: float) -> torch.Tensor:
    """The 2.1 loss from its definition, for the trainer's current weights."""
    model = trainer.model_config
    target_encoder = trainer.teacher if trainer.teacher is not None else trainer.target
    with torch.no_grad():
        levels = []
        target_encoder(video, None, None, None, levels)
        width = target_encoder.config.hidden_size
        parts = levels[0].split(width, dim=-1)
        target = torch.cat([(p - p.mean(-1, keepdim=True)) / torch.sqrt(p.var(-1, unbiased=False, keepdim=True) + 1e-5)
                            for p in parts], dim=-1)
    grid = model.grid_size
    position = lambda n: (n // (grid * grid), n % (grid * grid) // grid, n % grid)
    total = 0.0
    for context, target_ids in masks:
        levels = []
        trainer.jepa.encoder(video, context, None, None, levels)
        pred, pred_context = trainer.jepa.predictor(levels[0], context, target_ids, (grid, grid), mask_index=1,
                                                    image=video.shape[1] == 1, return_context=True)
        goal = torch.stack([target[b, target_ids[b]] for b in range(video.shape[0])])
        loss = (pred - goal).abs().mean()
        weights = torch.tensor([[1 / math.sqrt(min(math.dist(position(int(c)), position(int(t))) for t in target_ids[b]))
                                 for c in context[b]] for b in range(video.shape[0])])
        goal_context = torch.stack([target[b, context[b]] for b in range(video.shape[0])])
        total = total + loss + lam * ((pred_context - goal_context).abs() * weights[..., None]).mean()
    return total / len(masks)


def trainer_loss(trainer: Trainer, video, masks, lam: float) -> torch.Tensor:
    target = trainer.targets(video)
    return sum(trainer.model(video, c, t, target, lam) for c, t in masks) / len(masks)


@pytest.mark.parametrize("step_kind", ["video", "image", "teacher"])
def test_step_matches_the_objective_written_out(tmp_path, step_kind):
    overrides = {}
    if step_kind == "teacher":  # a frozen 2.1 teacher of another width predicting one level, as B/L's ViT-G
        teacher = VJEPA2Model(VJEPA2Config(**{**VJEPA2Config.from_name("tiny-2.1").__dict__, "hidden_size": 48,
                                              "num_attention_heads": 2, "num_distillation_outputs": 1,
                                              "patch_size": 8, "crop_size": 32, "id2label": None, "num_labels": None}))
        teacher.save_pretrained(tmp_path / "teacher")
        overrides["teacher"] = str(tmp_path / "teacher")
    trainer = Trainer(config_21(tmp_path, **overrides))
    with torch.no_grad():  # a target encoder apart from the online one, as after some training
        for p in trainer.target.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if step_kind == "teacher":
        assert trainer.model_config.teacher_embed_dim == 48 and trainer.model_config.num_distillation_outputs == 1
    batch = next(iter(trainer.loader()))
    if step_kind == "image":
        trainer.loop.step = 1  # image_every=2: step 1 is an image step
        assert trainer.image_step()
    video, masks = batch.video, batch.masks
    if trainer.image_step():
        from vjepa_fast.masks import mix_seed, sample_masks
        c = trainer.config
        video = video[:, :1]
        masks = sample_masks((1, 4, 4), video.shape[0], c.mask_configs(), mix_seed(c.seed, trainer.step, 0, 3))
    lam = 0.7 if step_kind == "image" else 0.5
    ours = trainer_loss(trainer, video, masks, lam)
    ours.backward()
    ours_grads = {n: p.grad.clone() for n, p in trainer.jepa.named_parameters() if p.grad is not None}
    trainer.jepa.zero_grad()
    plain = plain_loss(trainer, video, masks, lam)
    plain.backward()
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    for name, p in trainer.jepa.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours_grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert set(ours_grads) == {n for n, p in trainer.jepa.named_parameters() if p.grad is not None}
    trainer.jepa.zero_grad()
    step_loss = trainer.train_step([batch])  # the step itself: the same loss, before the update
    assert abs(step_loss - plain.item()) < 1e-5
    trainer.close()


def test_context_lambda_warms_up_then_holds():
    assert [context_lambda(s, 0.5, 10, 20) for s in (0, 9, 10, 15, 20, 99)] == [0.0, 0.0, 0.0, 0.25, 0.5, 0.5]
    assert context_lambda(5, 0.7, 5, 5) == 0.7


def test_preset_trains_from_the_cli_and_exports_a_21_checkpoint(tmp_path):
    from vjepa_fast.jobs.train import run
    config = parse_args(["--preset", "tiny-2.1", "--steps", "6", "--warmup-steps", "1", "--cooldown-steps", "1",
                         "--lambda-start", "1", "--lambda-end", "3", "--batch-size", "2", "--out", str(tmp_path / "t"),
                         "--no-probe", "--no-progress"])
    run(config)
    log = (tmp_path / "t" / "log.csv").read_text().splitlines()
    assert log[0].endswith("image_step,context_lambda") and len(log) == 7
    # --image-every 4: step 3 (0-based) trains on images, with the image lambda; the weight rises over steps 1-3.
    assert [line.split(",")[-2] for line in log[1:]] == ["0", "0", "0", "1", "0", "0"]
    assert [float(line.split(",")[-1]) for line in log[1:]] == [0.0, 0.0, 0.25, 0.7, 0.5, 0.5]
    model = VJEPA2Model.from_pretrained(str(tmp_path / "t" / "hf"))
    assert model.config.is_v21 and model.config.rope_mode == "interleave"
    assert (tmp_path / "t" / "loss.png").stat().st_size > 0


def test_bad_21_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--teacher belongs to the V-JEPA 2.1 objective"):
        config_21(tmp_path, model="tiny", teacher=str(tmp_path))
    with pytest.raises(ValueError, match="--lambda-end .* must not come before --lambda-start"):
        config_21(tmp_path, lambda_start=5, lambda_end=2)
    VJEPA2Model(VJEPA2Config.from_name("tiny")).save_pretrained(tmp_path / "v2")
    with pytest.raises(ValueError, match="a V-JEPA 2 checkpoint; the teacher must be a 2.1 encoder"):
        config_21(tmp_path, teacher=str(tmp_path / "v2"))
