"""Post-training V-JEPA 2-AC: an action-conditioned predictor on top of a frozen encoder.

    python -m vjepa_fast.train_ac                  # sim trajectories, tiny encoder, CPU, a few minutes
    python -m vjepa_fast.train_ac --data-dir my_trajectories --encoder path/to/encoder --predictor ac-vitg

Meta's recipe (app/vjepa_droid/train.py): every frame encoded alone as a 2-frame tubelet by the
frozen encoder, features layer-normed; a clip of F frames gives h (B, F*P, D). The loss is
  teacher forcing: mean |LN(pred(h[:F-1], a, s[:F-1])) - h[1:]|
  + rollout:       the first prediction fed back as input, rollout_steps predictions in all,
                   mean |rollout - h[1 : rollout_steps + 1]|.
AdamW with linear warm-up, constant, then linear decay of the learning rate.

The frozen features are computed once (and cached on disk with --cache-features): the encoder
never sees a gradient, so re-encoding every epoch is wasted work. Checkpoints are written
atomically every --checkpoint-every steps and hold the optimizer and sampling RNG, so an
interrupted run continued with --resume and the same flags reproduces the uninterrupted one exactly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from vjepa_fast.ac_model import AC_PRESETS, ACConfig, ACPredictor, encode_frames
from vjepa_fast.files import FolderLock, atomic_write
from vjepa_fast.jobs import cli
from vjepa_fast.jobs.loop import Run, Schedule, param_groups, resume_help
from vjepa_fast.config import PRESETS, VJEPA2Config
from vjepa_fast.model import VJEPA2Model
from vjepa_fast.worlds.sim import SimConfig
from vjepa_fast.worlds.trajectories import generate_trajectories, list_trajectories, load_trajectory


# What --resume lets differ from the run it continues: nothing that changes what is computed, and the length.
RESUME_CHANGEABLE = ("steps", "checkpoint_every", "resume", "out", "device", "gradient_checkpointing",
                     "cache_features")


@dataclass
class TrainACConfig:
    out: str = field(default="outputs/ac", metadata={"help": "checkpoints, CSV log, encoder and feature cache go here"})
    data_dir: str = field(default="", metadata={"help": "trajectory directory (mp4 + npz pairs, see vjepa_fast.worlds.trajectories); "
                                                        "empty: generate sim trajectories into OUT/trajectories"})
    trajectories: int = field(default=300, metadata={"help": "number of sim trajectories to generate (without --data-dir)"})
    frames: int = field(default=8, metadata={"help": "frames per generated sim trajectory"})
    sim_task: str = field(default="reach", metadata={"help": "sim task the trajectories come from: reach or push"})
    encoder: str = field(default="", metadata={"help": "frozen encoder: a checkpoint directory (transformers format) or "
                                                       "hub id; empty: a random-init ENCODER_PRESET model saved to OUT/encoder"})
    encoder_preset: str = field(default="tiny", metadata={"help": f"encoder preset when --encoder is empty: {sorted(PRESETS)}"})
    predictor: str = field(default="ac-tiny", metadata={"help": f"AC predictor preset: {sorted(AC_PRESETS)}; enc_dim and "
                                                                 "grid are taken from the encoder"})
    cache_features: bool = field(default=True, metadata={"help": "cache the frozen features in OUT/features.pt"})
    clip_frames: int = field(default=4, metadata={"help": "frames per training clip (windows cut from longer trajectories)"})
    rollout_steps: int = field(default=2, metadata={"help": "predictions in the rollout loss (Meta's auto_steps)"})
    batch_size: int = field(default=16, metadata={"help": "clips per step"})
    steps: int = field(default=600, metadata={"help": "optimizer steps"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    start_lr: float = field(default=1e-4, metadata={"help": "learning rate at step 0 (linear warm-up to LR)"})
    final_lr: float = field(default=1e-5, metadata={"help": "learning rate at the last step (linear decay from LR)"})
    warmup_steps: int = field(default=50, metadata={"help": "warm-up steps"})
    cooldown_steps: int = field(default=200, metadata={"help": "final linear decay from lr to final_lr"})
    weight_decay: float = field(default=0.04, metadata={"help": "AdamW weight decay (biases and norms excluded)"})
    seed: int = field(default=0, metadata={"help": "seed for data, initialisation and batch sampling"})
    checkpoint_every: int = field(default=200, metadata={"help": "write OUT/checkpoint.pt every this many steps"})
    resume: bool = field(default=False, metadata={"help": resume_help("checkpoint.pt", RESUME_CHANGEABLE)})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute block activations in the "
                                                                          "backward pass (less memory, for ac-vitg)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu or cuda"})

    def __post_init__(self):
        cli.check_fields(self, at_least_1=("trajectories", "frames", "batch_size", "steps", "checkpoint_every",
                                           "rollout_steps"),
                         choices={"predictor": AC_PRESETS, "encoder_preset": PRESETS}, folders=("out",))
        if self.clip_frames < 2:
            raise ValueError(f"--clip-frames must be >= 2 (one action), got {self.clip_frames}")
        if not self.data_dir and self.clip_frames > self.frames:
            raise ValueError(f"--clip-frames ({self.clip_frames}) is longer than the generated trajectories "
                             f"(--frames {self.frames})")
        if self.rollout_steps > self.clip_frames - 1:
            raise ValueError(f"--rollout-steps ({self.rollout_steps}) must be <= --clip-frames - 1 "
                             f"({self.clip_frames - 1})")
        if not (self.lr > 0 and self.start_lr >= 0 and self.final_lr >= 0 and self.weight_decay >= 0):
            raise ValueError(f"--lr must be > 0 and --start-lr, --final-lr, --weight-decay >= 0, got "
                             f"{self.lr}, {self.start_lr}, {self.final_lr}, {self.weight_decay}")
        if self.warmup_steps < 0 or self.cooldown_steps < 0 or self.warmup_steps + self.cooldown_steps > self.steps:
            raise ValueError(f"--warmup-steps ({self.warmup_steps}) and --cooldown-steps ({self.cooldown_steps}) "
                             f"must be >= 0 and fit in --steps ({self.steps})")

    def schedule(self) -> Schedule:
        return Schedule(self.steps, self.lr, self.start_lr, self.final_lr, self.warmup_steps, self.cooldown_steps)


# ---- data -------------------------------------------------------------------------------------

def load_encoder(config: TrainACConfig) -> tuple[VJEPA2Model, str]:
    """The frozen encoder and the path it can be reloaded from (a random-init one is saved once)."""
    if config.encoder:
        try:
            return VJEPA2Model.from_pretrained(config.encoder).eval(), config.encoder
        except (OSError, ValueError) as e:
            raise ValueError(f"--encoder {config.encoder}: {e}") from e
    path = Path(config.out) / "encoder"
    wanted = VJEPA2Config.from_name(config.encoder_preset)
    if (path / "config.json").exists():
        model = VJEPA2Model.from_pretrained(str(path)).eval()
        if model.config.to_dict() != wanted.to_dict():
            raise ValueError(f"--encoder-preset {config.encoder_preset}: {path} holds an encoder of another "
                             f"configuration; give another --out or remove {path}")
        return model, str(path)
    torch.manual_seed(config.seed)
    model = VJEPA2Model(wanted).eval()
    model.save_pretrained(str(path))
    return model, str(path)


def content_key(stems: list[Path], encoder: VJEPA2Model) -> str:
    """A hash of what the features are computed from: every trajectory file's bytes, in order, and
    the encoder's config and weights. Paths play no part, so a changed file or set is seen."""
    h = hashlib.sha256(json.dumps(encoder.config.to_dict(), sort_keys=True).encode())
    for name, t in encoder.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    for stem in stems:
        for path in (stem.with_suffix(".mp4"), stem.with_suffix(".npz")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def generated_trajectories(data_dir: Path, config: TrainACConfig, image_size: int) -> list[Path]:
    """The sim trajectories this config asks for, in data_dir: reused when the set there was
    generated with the same settings (generated.json says so), otherwise generated afresh."""
    settings = {"trajectories": config.trajectories, "frames": config.frames, "seed": config.seed,
                "sim_task": config.sim_task, "image_size": image_size}
    manifest = data_dir / "generated.json"
    stems = list_trajectories(data_dir)
    if manifest.is_file() and json.loads(manifest.read_text()) == settings and len(stems) == config.trajectories:
        return stems
    for stem in stems:  # another set (or an interrupted one): replaced whole
        stem.with_suffix(".mp4").unlink()
        stem.with_suffix(".npz").unlink()
    sim = SimConfig(task=config.sim_task, image_size=image_size)
    stems = generate_trajectories(data_dir, config.trajectories, config.frames, config.seed, sim)
    text = json.dumps(settings)
    atomic_write(manifest, lambda p: Path(p).write_text(text))
    return stems


def load_features(config: TrainACConfig, encoder: VJEPA2Model) -> dict[str, Tensor]:
    """{"features": (M, T, P, D), "states": (M, T, 7), "actions": (M, T-1, 7)} for M trajectories of
    T frames (all trajectories must have the same length). Cached on disk when asked, keyed on
    the content of the trajectories and the encoder (content_key), so a stale cache is never used."""
    out = Path(config.out)
    if config.data_dir:
        data_dir = Path(config.data_dir)
        stems = list_trajectories(data_dir)
    else:
        data_dir = out / "trajectories"
        stems = generated_trajectories(data_dir, config, encoder.config.crop_size)
    if not stems:
        raise FileNotFoundError(f"--data-dir {data_dir}: no trajectories (pairs of .mp4 and .npz files)")
    cache = out / "features.pt"
    key = content_key(stems, encoder) if config.cache_features else None
    if config.cache_features and cache.exists():
        cached = torch.load(cache, map_location="cpu", weights_only=True)
        if cached.get("key") == key:
            return {k: v for k, v in cached.items() if k != "key"}
    feats, states, actions = [], [], []
    for stem in tqdm(stems, desc="encoding frames", leave=False):
        traj = load_trajectory(stem)
        feats.append(encode_frames(encoder.encoder, traj.frames))
        states.append(traj.states)
        actions.append(traj.actions)
    lengths = {len(s) for s in states}
    if len(lengths) != 1:
        raise ValueError(f"{data_dir}: trajectories must all have the same number of frames, got {sorted(lengths)}")
    data = {"features": torch.stack(feats), "states": torch.stack(states), "actions": torch.stack(actions)}
    if config.cache_features:
        atomic_write(cache, lambda p: torch.save({**data, "key": key}, p))
    return data


def sample_batch(data: dict[str, Tensor], config: TrainACConfig, generator: torch.Generator):
    """B random windows of clip_frames frames: features (B, F*P, D), actions (B, F-1, 7), states (B, F, 7)."""
    M, T = data["features"].shape[:2]
    Fc = config.clip_frames
    if Fc > T:
        raise ValueError(f"--clip-frames ({Fc}) is longer than the trajectories ({T} frames)")
    idx = torch.randint(M, (config.batch_size,), generator=generator)
    start = torch.randint(T - Fc + 1, (config.batch_size,), generator=generator)
    window = start[:, None] + torch.arange(Fc)  # (B, F)
    feats = data["features"][idx[:, None], window]  # (B, F, P, D)
    states = data["states"][idx[:, None], window]
    actions = data["actions"][idx[:, None], window[:, :-1]]
    return feats.flatten(1, 2), actions, states


# ---- loss and schedule --------------------------------------------------------------------------

def ac_losses(model: ACPredictor, h: Tensor, actions: Tensor, states: Tensor, rollout_steps: int) -> tuple[Tensor, Tensor]:
    """Meta's teacher-forcing and rollout L1 losses. h (B, F*P, D) layer-normed features of F
    frames, actions (B, F-1, A), states (B, F, S)."""
    P = model.config.tokens_per_frame

    def predict(z, a, s):
        out = model(z, a, s)
        return F.layer_norm(out, (out.shape[-1],))

    z_tf = predict(h[:, :-P], actions, states[:, :-1])  # (B, (F-1)*P, D): frames 1..F-1
    z = torch.cat((h[:, :P], z_tf[:, :P]), dim=1)  # context frame + first prediction
    for n in range(1, rollout_steps):
        nxt = predict(z, actions[:, :n + 1], states[:, :n + 1])[:, -P:]
        z = torch.cat((z, nxt), dim=1)
    z_ar = z[:, P:]
    tf_loss = (z_tf - h[:, P:]).abs().mean()
    rollout_loss = (z_ar - h[:, P:P + z_ar.shape[1]]).abs().mean()
    return tf_loss, rollout_loss


def predictor_config(c: TrainACConfig, encoder: VJEPA2Model) -> ACConfig:
    e = encoder.config
    return ACConfig(**{**AC_PRESETS[c.predictor], "enc_dim": e.hidden_size, "grid_h": e.grid_size, "grid_w": e.grid_size,
                       "rope_mode": e.rope_mode})


def save_final(path: Path, model: ACPredictor, encoder_path: str) -> None:
    """The trained predictor in Meta's key layout, with its config and the encoder it was trained on."""
    payload = {"predictor": model.meta_state_dict(), "ac_config": dataclasses.asdict(model.config),
               "encoder": encoder_path}
    atomic_write(path, lambda p: torch.save(payload, p))


# ---- training -----------------------------------------------------------------------------------

def train(config: TrainACConfig) -> Path:
    """Trains and returns the path of the final predictor file OUT/ac_predictor.pt."""
    c = config
    out = Path(c.out)
    device = cli.resolve_device(c.device)
    FolderLock(out).acquire()  # before the encoder, trajectories and feature cache are written
    encoder, encoder_path = load_encoder(c)
    data = load_features(c, encoder)
    data = {k: v.to(device) for k, v in data.items()}
    ac_config = predictor_config(c, encoder)
    del encoder
    torch.manual_seed(c.seed)
    model = ACPredictor(ac_config).to(device)
    model.gradient_checkpointing = c.gradient_checkpointing
    optimizer = torch.optim.AdamW(param_groups(model, c.weight_decay), lr=c.start_lr, betas=(0.9, 0.999))
    run = Run(out, "checkpoint.pt", c.schedule(), optimizer, config=c, changeable=RESUME_CHANGEABLE)
    generator = torch.Generator().manual_seed(c.seed)
    if c.resume:
        state = run.resume()
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    else:
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(c), indent=2))
    model.train()
    start = time.perf_counter()
    bar = run.progress(c.steps, "train_ac")
    while run.step < c.steps:
        lr = run.set_lr()
        h, actions, states = sample_batch(data, c, generator)
        tf_loss, rollout_loss = ac_losses(model, h, actions, states, c.rollout_steps)
        loss = tf_loss + rollout_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.check(loss.item())
        optimizer.step()
        run.check_weights()
        run.record(loss=loss.item(), teacher_forcing=tf_loss.item(), rollout=rollout_loss.item(), lr=lr,
                   seconds=time.perf_counter() - start)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if run.step % c.checkpoint_every == 0 or run.step == c.steps:
            run.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "generator": generator.get_state()})
    bar.close()
    final = out / "ac_predictor.pt"
    save_final(final, model.eval(), encoder_path)
    return final


def main(argv: list[str] | None = None) -> None:
    config = cli.parse(TrainACConfig, argv, PROG, __doc__)
    print(f"wrote {cli.run(train, config, PROG)}")


PROG = "python -m vjepa_fast.train_ac"

if __name__ == "__main__":
    main()
