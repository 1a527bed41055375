"""Attentive probe: train VJEPA2ForVideoClassification's head on frozen encoder features.

    python -m vjepa_fast.probe                       # embedded task on a random tiny encoder (CPU, minutes)
    python -m vjepa_fast.probe --data videos/ --model facebook/vjepa2-vitl-fpc16-256 --out runs/mine
    python -m vjepa_fast.probe --data train.csv --test-data val.csv --resume

Data: a folder with one sub-folder of videos per class, or a CSV of `path,label` rows (paths
relative to the CSV, optional `path,label` header). Without --data: labelled physics clips, the
label being the number of balls. Each video gives `clips` temporal windows x `views` spatial
crops; the encoder sees each once, and the features are cached in OUT/features_*.safetensors
(reused while the settings match). Training draws one window/view per video per epoch; testing
averages the logits over all of them.

Writes to OUT: state.pt (written atomically every epoch; --resume continues from it), log.csv,
metrics.json, confusion.png and classifier/ (a checkpoint transformers'
VJEPA2ForVideoClassification.from_pretrained reads).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from vjepa_fast.checkpoints import Source, read_config
from vjepa_fast.files import FolderLock, atomic_write
from vjepa_fast.jobs import cli
from vjepa_fast.jobs.loop import Run, Schedule, param_groups, resume_help
from vjepa_fast.classifier import VJEPA2ForVideoClassification, classification_loss
from vjepa_fast.config import DTYPES, PRESETS, VJEPA2Config
from vjepa_fast.model import VJEPA2Model
from vjepa_fast.worlds.physics import PhysicsClips, PhysicsConfig
from vjepa_fast.video import VIDEO_EXTENSIONS, ProcessorConfig, VideoProcessor



# What --resume lets differ from the run it continues: nothing that changes what is computed, and the length.
RESUME_CHANGEABLE = ("epochs", "resume", "out", "device", "save_classifier")


@dataclass
class ProbeConfig:
    data: str = field(default="", metadata={"help": "a folder of class sub-folders of videos, or a CSV of "
                                                    "path,label rows; empty: the embedded physics task"})
    test_data: str = field(default="", metadata={"help": "test videos, same formats; empty: hold out "
                                                         "--test-fraction of --data"})
    test_fraction: float = field(default=0.25, metadata={"help": "share of --data held out for testing "
                                                                 "when --test-data is empty"})
    model: str = field(default="", metadata={"help": "checkpoint directory or hub id: a VJEPA2Model (fresh head) "
                                                     "or a VJEPA2ForVideoClassification (its head is the start); "
                                                     "empty: a random encoder of --preset"})
    preset: str = field(default="tiny", metadata={"help": f"random encoder size when --model is empty: "
                                                          f"one of {sorted(PRESETS)}"})
    out: str = field(default="outputs/probe", metadata={"help": "where features, state and results go"})
    frames: int = field(default=0, metadata={"help": "frames per clip; 0: the model's frames_per_clip"})
    frame_step: int = field(default=1, metadata={"help": "take every N-th frame of the video"})
    clips: int = field(default=2, metadata={"help": "temporal clips per video, evenly spaced"})
    views: int = field(default=1, metadata={"help": "spatial views per clip: square crops along the long "
                                                    "edge (1: the processor's centre crop)"})
    epochs: int = field(default=10, metadata={"help": "training epochs (0: evaluate only)"})
    batch_size: int = field(default=16, metadata={"help": "videos per training step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate (linear warm-up, cosine decay)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay on matrices"})
    warmup_epochs: int = field(default=1, metadata={"help": "epochs of linear learning-rate warm-up"})
    feature_dtype: str = field(default="float16", metadata={"help": f"dtype of cached features: {sorted(DTYPES)}"})
    device: str = field(default="auto", metadata={"help": "torch device; auto: cuda when available, else cpu"})
    seed: int = field(default=0, metadata={"help": "seed of the random encoder, the split, the data order "
                                                   "and the physics clips"})
    resume: bool = field(default=False, metadata={"help": resume_help("state.pt", RESUME_CHANGEABLE)})
    save_classifier: bool = field(default=True, metadata={"help": "write OUT/classifier (encoder + head)"})
    physics_train: int = field(default=240, metadata={"help": "physics task: training clips"})
    physics_test: int = field(default=96, metadata={"help": "physics task: test clips"})
    physics_frames: int = field(default=16, metadata={"help": "physics task: frames per generated video"})

    def __post_init__(self):
        cli.check_fields(self, at_least_1=("frame_step", "clips", "views", "batch_size", "physics_train", "physics_test",
                                           "physics_frames"), at_least_0=("frames", "epochs", "warmup_epochs", "seed"),
                         numbers=("lr", "weight_decay"), choices={"feature_dtype": DTYPES}, folders=("out",))
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if not self.model and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.test_data and not self.data:
            raise ValueError("test_data needs data (the training videos) too")


# ---- Data -----------------------------------------------------------------------------------

@dataclass
class VideoFiles:
    """Video files and their label names."""
    paths: list[Path]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int, frames: int, step: int, clips: int) -> tuple[Tensor, str]:
        """The frames of `clips` windows (see window_indices) as (clips*frames, 3, H, W) uint8, and the label."""
        from torchcodec.decoders import VideoDecoder
        path = self.paths[i]
        try:
            decoder = VideoDecoder(str(path), seek_mode="exact")
            indices = window_indices(decoder.metadata.num_frames, frames, step, clips)
            return decoder.get_frames_at(indices.flatten().tolist()).data, self.labels[i]
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{path}: cannot decode the video: {e}") from e

    def key(self) -> str:
        return hashlib.sha1("\n".join(f"{p}\t{l}" for p, l in zip(self.paths, self.labels)).encode()).hexdigest()


@dataclass
class PhysicsTask:
    """Physics clips first .. first+count-1 of a seeded stream, labelled with their number of balls."""
    clips: PhysicsClips
    first: int
    count: int

    def __len__(self) -> int:
        return self.count

    def names(self) -> list[str]:
        c = self.clips.config
        return [ball_label(n) for n in range(c.min_balls, c.max_balls + 1)]

    def read(self, i: int, frames: int, step: int, clips: int) -> tuple[Tensor, str]:
        video, info = self.clips[self.first + i]  # (T, H, W, 3) uint8
        indices = window_indices(video.shape[0], frames, step, clips).flatten()
        return video.permute(0, 3, 1, 2)[indices], ball_label(info["num_balls"])  # (clips*frames, 3, H, W)

    def key(self) -> str:
        return json.dumps([dataclasses.asdict(self.clips.config), self.clips.seed, self.first, self.count])


def ball_label(n: int) -> str:
    return f"{n} ball" if n == 1 else f"{n} balls"


def read_folder(root: Path) -> VideoFiles:
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected {root}/<label>/<video>)")
    paths, labels = [], []
    for d in classes:
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
        if not files:
            raise ValueError(f"{d}: empty class folder (no {'/'.join(VIDEO_EXTENSIONS)} files)")
        paths += files
        labels += [d.name] * len(files)
    return VideoFiles(paths, labels)


def read_csv(path: Path) -> VideoFiles:
    with open(path, newline="") as f:
        rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    if rows and [c.strip().lower() for c in rows[0][1]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: no path,label rows")
    paths, labels = [], []
    for n, row in rows:
        if len(row) != 2 or not row[1].strip():
            raise ValueError(f"{path}: line {n}: expected 'path,label', got {','.join(row)!r}")
        video = path.parent / row[0].strip()
        if not video.is_file():
            raise FileNotFoundError(f"{path}: line {n}: no such video file: {video}")
        paths.append(video)
        labels.append(row[1].strip())
    return VideoFiles(paths, labels)


def read_videos(what: str, location: str, names: list[str] | None = None) -> VideoFiles:
    """A folder or CSV; with `names`, every label must be one of them."""
    path = Path(location)
    if path.is_dir():
        videos = read_folder(path)
    elif path.is_file() and path.suffix.lower() == ".csv":
        videos = read_csv(path)
    else:
        raise ValueError(f"{what}: expected a folder of class sub-folders or a .csv file, got {location!r}")
    if names is not None:
        unknown = sorted(set(videos.labels) - set(names))
        if unknown:
            raise ValueError(f"{what} ({location}): unknown label(s) {unknown}; the training labels are {names}")
    return videos


def load_data(config: ProbeConfig) -> tuple[VideoFiles | PhysicsTask, VideoFiles | PhysicsTask, list[str]]:
    """(train, test, label names)."""
    if not config.data:
        clips = PhysicsClips(PhysicsConfig(frames=config.physics_frames, size=probe_crop_size(config)), config.seed)
        train = PhysicsTask(clips, 0, config.physics_train)
        return train, PhysicsTask(clips, config.physics_train, config.physics_test), train.names()
    videos = read_videos("data", config.data)
    names = sorted(set(videos.labels))
    if config.test_data:
        return videos, read_videos("test_data", config.test_data, names), names
    n_test = round(len(videos) * config.test_fraction)
    if n_test < 1 or n_test >= len(videos):
        raise ValueError(f"data: {len(videos)} videos cannot be split with test_fraction={config.test_fraction}; "
                         "give --test-data or more videos")
    order = torch.randperm(len(videos), generator=torch.Generator().manual_seed(config.seed)).tolist()
    pick = lambda ids: VideoFiles([videos.paths[i] for i in ids], [videos.labels[i] for i in ids])
    return pick(sorted(order[n_test:])), pick(sorted(order[:n_test])), names


def probe_crop_size(config: ProbeConfig) -> int:
    """The physics clips are drawn at the encoder's crop size (read before any weights are loaded)."""
    if not config.model:
        return VJEPA2Config.from_name(config.preset).crop_size
    return VJEPA2Config.from_pretrained(config.model).crop_size


# ---- Model ----------------------------------------------------------------------------------

def load_model(config: ProbeConfig, names: list[str]) -> VJEPA2ForVideoClassification:
    """The classifier whose head the probe trains. A classifier checkpoint must name the same labels
    as the data; its label order is kept."""
    if not config.model:
        torch.manual_seed(config.seed)
        return VJEPA2ForVideoClassification.from_encoder(VJEPA2Model(VJEPA2Config.from_name(config.preset)), names)
    directory = Source(config.model).resolve()
    architectures = read_config(directory).get("architectures") or []
    if "VJEPA2ForVideoClassification" not in architectures:
        return VJEPA2ForVideoClassification.from_encoder(VJEPA2Model.from_pretrained(str(directory)), names)
    model = VJEPA2ForVideoClassification.from_pretrained(str(directory))
    theirs = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if len(theirs) != len(names):
        raise ValueError(f"model: {config.model} has num_labels={len(theirs)} but the data has {len(names)} "
                         f"classes {names}: num_labels mismatch")
    if set(theirs) != set(names):
        raise ValueError(f"model: {config.model} labels {sorted(set(theirs) - set(names))} are not in the data, "
                         f"and data labels {sorted(set(names) - set(theirs))} are not in the checkpoint")
    return model


def window_indices(total: int, frames: int, step: int, clips: int) -> Tensor:
    """(clips, frames) indices into a video of `total` frames: `clips` windows spread evenly over
    it (one: centred). A video shorter than a window repeats its last frame, as Meta's evaluation pads."""
    if total < 1:
        raise ValueError("the video has no frames")
    span = (frames - 1) * step + 1
    room = max(total - span, 0)
    if clips == 1:
        starts = torch.tensor([room // 2])
    else:
        starts = torch.linspace(0, room, clips).round().long()
    return (starts[:, None] + torch.arange(frames)[None] * step).clamp(max=total - 1)


def spatial_views(frames: Tensor, views: int) -> list[Tensor]:
    """(K, 3, H, W) -> `views` square windows spread along the long edge (one: the whole frame,
    which the processor resizes and centre-crops)."""
    if views == 1:
        return [frames]
    H, W = frames.shape[-2:]
    side = min(H, W)
    offsets = torch.linspace(0, max(H, W) - side, views).round().long().tolist()
    if H <= W:
        return [frames[..., :, o:o + side] for o in offsets]
    return [frames[..., o:o + side, :] for o in offsets]


def video_pixels(data, i: int, config: ProbeConfig, frames: int, processor: VideoProcessor) -> tuple[Tensor, str]:
    """Sample i as encoder input (clips*views, frames, 3, crop, crop), and its label."""
    raw, label = data.read(i, frames, config.frame_step, config.clips)
    raw = raw.view(config.clips, frames, *raw.shape[1:])  # (clips, frames, 3, H, W)
    pixels = [processor.process(view) for clip in raw for view in spatial_views(clip, config.views)]
    return torch.stack(pixels), label


def fingerprint(config: ProbeConfig, data, names: list[str], frames: int) -> str:
    """What the cached features depend on."""
    model = config.model or f"random {config.preset} seed {config.seed}"
    return json.dumps({"model": model, "frames": frames, "frame_step": config.frame_step, "clips": config.clips,
                       "views": config.views, "feature_dtype": config.feature_dtype, "data": data.key(),
                       "names": names})


def cached_features(model: VJEPA2ForVideoClassification, data, names: list[str], config: ProbeConfig,
                    path: Path, device: torch.device) -> tuple[Tensor, Tensor]:
    """(S, clips*views, N, D) encoder features and (S,) label indices, from `path` when it holds
    features made with the same settings, else extracted and written there."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    frames = config.frames or model.config.frames_per_clip
    key = fingerprint(config, data, names, frames)
    if path.exists():
        with safe_open(str(path), "pt") as f:
            same = (f.metadata() or {}).get("fingerprint") == key
        if same:
            cached = load_file(str(path))
            return cached["features"], cached["labels"]
        print(f"{path}: made with other settings; extracting again")
    processor = VideoProcessor(ProcessorConfig(crop_size=model.config.crop_size))
    dtype = DTYPES[config.feature_dtype]
    features, labels = None, torch.empty(len(data), dtype=torch.int64)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i in tqdm(range(len(data)), desc=f"features {path.stem}", unit="video"):
        pixels, label = video_pixels(data, i, config, frames, processor)
        with torch.inference_mode(), autocast:
            f = model.vjepa2.get_vision_features(pixels.to(device))  # (clips*views, N, D)
        if features is None:
            features = torch.empty(len(data), *f.shape, dtype=dtype)
        features[i] = f.to(dtype).cpu()
        labels[i] = names.index(label)
    atomic_write(path, lambda p: save_file({"features": features, "labels": labels}, p,
                                           metadata={"fingerprint": key}))
    return features, labels


# ---- Training and evaluation ----------------------------------------------------------------

@torch.no_grad()
def predict(model: VJEPA2ForVideoClassification, features: Tensor, device: torch.device,
            batch_size: int) -> Tensor:
    """(S, V, N, D) features -> (S, num_labels) logits averaged over the V clips/views."""
    out = []
    for chunk in features.split(batch_size):
        S, V = chunk.shape[:2]
        logits = model.classify(chunk.flatten(0, 1).to(device, torch.float32))  # (S*V, L)
        out.append(logits.view(S, V, -1).mean(1).cpu())
    return torch.cat(out)


def confusion_matrix(labels: Tensor, predictions: Tensor, num_labels: int) -> Tensor:
    """(L, L) counts: row = true label, column = predicted."""
    counts = torch.zeros(num_labels * num_labels, dtype=torch.int64)
    counts.index_add_(0, labels * num_labels + predictions, torch.ones_like(labels))
    return counts.view(num_labels, num_labels)


def plot_confusion(confusion: Tensor, names: list[str], top1: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = len(names)
    side = min(2 + 0.5 * L, 16)  # inches: hundreds of classes still make a readable picture
    fig, ax = plt.subplots(figsize=(side, side - 0.5))
    image = ax.imshow(confusion.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, label="videos")
    if L <= 40:
        ax.set_xticks(range(L), names, rotation=45, ha="right")
        ax.set_yticks(range(L), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"top-1 {100 * top1:.1f}%  ({int(confusion.sum())} test videos)")
    if L <= 30:
        peak = int(confusion.max())
        for (r, c), n in zip(torch.cartesian_prod(torch.arange(L), torch.arange(L)).tolist(), confusion.flatten().tolist()):
            ax.text(c, r, str(n), ha="center", va="center", color="white" if n > peak / 2 else "black")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def run(config: ProbeConfig) -> dict:
    """Extract (or reuse) features, train the head, evaluate; returns the metrics it writes."""
    device = cli.resolve_device(config.device)
    out = Path(config.out)
    FolderLock(out).acquire()  # before the feature caches are written
    train_set, test_set, names = load_data(config)
    model = load_model(config, names)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    model = model.to(device).eval().requires_grad_(False)
    train_x, train_y = cached_features(model, train_set, names, config, out / "features_train.safetensors", device)
    test_x, test_y = cached_features(model, test_set, names, config, out / "features_test.safetensors", device)

    head = torch.nn.ModuleList([model.pooler, model.classifier]).requires_grad_(True)
    optimizer = torch.optim.AdamW(param_groups(head, config.weight_decay), lr=config.lr)
    steps = math.ceil(len(train_y) / config.batch_size)
    schedule = Schedule(config.epochs * steps, config.lr, warmup_steps=config.warmup_epochs * steps, cosine=True)
    # run.step counts epochs, the schedule batches
    run = Run(out, "state.pt", schedule, optimizer, config=config, changeable=RESUME_CHANGEABLE)
    key = fingerprint(config, train_set, names, config.frames or model.config.frames_per_clip)
    if config.resume:
        state = run.resume()
        if state["names"] != names or state["fingerprint"] != key:
            raise ValueError(f"resume: {run.path} was trained on other labels or features "
                             f"(labels {state['names']} vs {names}); use another --out or drop --resume")
        model.pooler.load_state_dict(state["pooler"])
        model.classifier.load_state_dict(state["classifier"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"resumed from {run.path} after epoch {run.step}")

    V = train_x.shape[1]
    while run.step < config.epochs:
        epoch = run.step
        # One generator per epoch: a resumed run draws the same batches as an uninterrupted one.
        g = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(train_y), generator=g)
        view = torch.randint(V, (len(train_y),), generator=g)
        losses = []
        for i, batch in enumerate(tqdm(order.split(config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}",
                                       leave=False)):
            run.set_lr(epoch * steps + i)
            x = train_x[batch, view[batch]].to(device, torch.float32)  # (b, N, D)
            loss = classification_loss(model.classify(x), train_y[batch].to(device), model.config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            losses.append(run.check(loss.item()))
            optimizer.step()
            run.check_weights()
        top1 = (predict(model, test_x, device, config.batch_size).argmax(-1) == test_y).float().mean().item()
        run.record(train_loss=sum(losses) / len(losses), test_top1=top1)
        print(f"epoch {run.step}: train loss {run.history[-1]['train_loss']:.4f}, test top-1 {100 * top1:.1f}%")
        run.save({"epoch": run.step, "names": names, "fingerprint": key, "optimizer": optimizer.state_dict(),
                  "pooler": model.pooler.state_dict(), "classifier": model.classifier.state_dict()})
    history = run.history

    predictions = predict(model, test_x, device, config.batch_size).argmax(-1)
    confusion = confusion_matrix(test_y, predictions, len(names))
    top1 = (predictions == test_y).float().mean().item()
    metrics = {"top1": top1, "chance": torch.bincount(test_y, minlength=len(names)).max().item() / len(test_y),
               "num_test": len(test_y), "num_train": len(train_y), "labels": names,
               "confusion": confusion.tolist(), "history": history}
    text = json.dumps(metrics, indent=2)
    atomic_write(out / "metrics.json", lambda p: Path(p).write_text(text))
    plot_confusion(confusion, names, top1, out / "confusion.png")
    if config.save_classifier:
        model.save_pretrained(str(out / "classifier"))
    print(f"test top-1 {100 * top1:.1f}% over {len(test_y)} videos (majority class {100 * metrics['chance']:.1f}%); "
          f"results in {out}")
    return metrics


PROG = "python -m vjepa_fast.probe"


def parse_args(argv: list[str] | None = None) -> ProbeConfig:
    return cli.parse(ProbeConfig, argv, PROG, __doc__)


def main(argv: list[str] | None = None) -> None:
    cli.run(run, parse_args(argv), PROG)


if __name__ == "__main__":
    main()
