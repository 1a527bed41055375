"""Meta's .pt files <-> transformers-format directories, checked on a random clip.

    python -m vjepa_fast.convert --src vitl.pt --out vjepa2-vitl                 # encoder + predictor
    python -m vjepa_fast.convert --src ssv2-vitl-16x2x3.pt --encoder vitl.pt --out vjepa2-vitl-ssv2
    python -m vjepa_fast.convert --src vjepa2-vitl --out vitl.pt                  # and back
    python -m vjepa_fast.convert --src vjepa2-vitl-ssv2 --out probe.pt            # a classifier's head
    python -m vjepa_fast.convert --src vjepa2-ac-vitg.pt --out vjepa2-ac-vitg     # the AC predictor

A Meta encoder file (entries `encoder`/`target_encoder` and `predictor`) becomes a VJEPA2Model
directory; an attentive probe (`classifiers`) on --encoder becomes a VJEPA2ForVideoClassification
directory; both get a video_preprocessor_config.json for the model's crop size. The V-JEPA 2-AC
predictor (a `predictor` with action and state encoders) becomes the package's own directory (transformers has no
such class). A directory goes back to Meta's layout: a model to {encoder, target_encoder,
predictor}, a classifier to its probe {classifiers: [head]}, an AC predictor to {predictor}. Both sides are then loaded and run on one random clip, and the largest
difference of their outputs is printed (0 when the conversion is exact).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vjepa_fast.ac_model import AC_MODEL_TYPE, ACPredictor
from vjepa_fast.checkpoints import (ENCODER_KEYS, CheckpointError, classifier_state, ours_to_meta, ours_to_meta_probe,
                                    read_config, split_classifier)
from vjepa_fast.classifier import VJEPA2ForVideoClassification
from vjepa_fast.files import atomic_write
from vjepa_fast.jobs import cli
from vjepa_fast.model import VJEPA2Model
from vjepa_fast.video import ProcessorConfig, VideoProcessor

PROG = "python -m vjepa_fast.convert"


@dataclass
class ConvertConfig:
    src: str = field(default="", metadata={"help": "a Meta .pt file, or a transformers-format directory"})
    out: str = field(default="", metadata={"help": "the directory (from a .pt) or .pt file (from a directory) to write"})
    encoder: str | None = field(default=None, metadata={"help": "for a probe .pt: the encoder it was trained on "
                                                                 "(Meta .pt, directory or hub id)"})
    encoder_key: str = field(default="auto", metadata={"help": "which encoder of a Meta file: encoder, ema_encoder "
                                                               "(2.1 ViT-B/L), target_encoder (2.1 ViT-g/G), or auto "
                                                               "(the first of these the file holds)"})
    frames: int = field(default=4, metadata={"help": "frames of the random clip both sides are run on"})

    def __post_init__(self):
        cli.check_fields(self, at_least_1=("frames",), choices={"encoder_key": ("auto", *ENCODER_KEYS)},
                         files=("out",))
        if not self.src or not self.out:
            raise ValueError("--src and --out are both needed")


def from_meta(config: ConvertConfig):
    """(source model, written directory's model) for a Meta .pt."""
    # mmap: only the entry names are looked at here; the loader below reads the weights.
    entries = torch.load(config.src, map_location="cpu", weights_only=True, mmap=True)
    if "classifiers" in entries:
        if config.encoder is None:
            raise ValueError(f"--encoder: {config.src} is an attentive probe; give the encoder it was trained on")
        model = VJEPA2ForVideoClassification.from_meta_probe(config.src, encoder=config.encoder)
    elif any("action_encoder" in k for k in entries.get("predictor", {})):  # V-JEPA 2-AC
        model = ACPredictor.from_meta_checkpoint(config.src).eval()
        model.save_pretrained(config.out)
        return model, ACPredictor.from_pretrained(config.out)
    elif "predictor" in entries and (config.encoder_key in entries or config.encoder_key == "auto"
                                     and any(k in entries for k in ENCODER_KEYS)):
        key = None if config.encoder_key == "auto" else config.encoder_key
        model = VJEPA2Model.from_meta_checkpoint(config.src, encoder_key=key).eval()
    else:
        wanted = " or ".join(ENCODER_KEYS) if config.encoder_key == "auto" else repr(config.encoder_key)
        raise CheckpointError(f"{config.src}: neither an encoder checkpoint ({wanted} and 'predictor'), "
                              f"an attentive probe ('classifiers') nor an AC predictor; "
                              f"it holds {sorted(entries)}")
    model.save_pretrained(config.out)
    VideoProcessor(ProcessorConfig(crop_size=model.config.crop_size)).save_pretrained(config.out)
    return model, type(model).from_pretrained(config.out)


def to_meta(config: ConvertConfig):
    """(source model, written .pt's model) for a transformers-format directory."""
    saved = read_config(Path(config.src))
    if saved.get("model_type") == AC_MODEL_TYPE:
        model = ACPredictor.from_pretrained(config.src)
        entries = {"predictor": model.meta_state_dict()}
        reloaded = lambda: ACPredictor.from_meta_checkpoint(config.out, model.config).eval()
    elif "VJEPA2ForVideoClassification" in (saved.get("architectures") or []):
        model = VJEPA2ForVideoClassification.from_pretrained(config.src)
        _, head = split_classifier(classifier_state(model))
        entries = {"classifiers": [ours_to_meta_probe(head)]}
        reloaded = lambda: VJEPA2ForVideoClassification.from_meta_probe(config.out, encoder=model.vjepa2)
    else:
        model = VJEPA2Model.from_pretrained(config.src)
        encoder, predictor = ours_to_meta(model.state_dict())
        entries = {"encoder": encoder, "target_encoder": encoder, "predictor": predictor}
        reloaded = lambda: VJEPA2Model.from_meta_checkpoint(config.out, config=model.config).eval()
    atomic_write(Path(config.out), lambda p: torch.save(entries, p))
    return model, reloaded()


def convert(config: ConvertConfig) -> float:
    """Writes config.out; returns (and prints) the largest output difference of the two sides."""
    src = Path(config.src)
    if not src.exists():
        raise FileNotFoundError(f"--src: no such file or directory: {src}")
    source, written = (to_meta if src.is_dir() else from_meta)(config)
    c = source.config
    if isinstance(source, ACPredictor):  # random encoder features, actions and states for the steps
        steps = max(1, config.frames // 2)
        inputs = (torch.randn(1, steps * c.tokens_per_frame, c.enc_dim), torch.randn(1, steps, c.action_dim),
                  torch.randn(1, steps, c.state_dim))
    else:
        inputs = (torch.randn(1, config.frames, 3, c.crop_size, c.crop_size),)
    with torch.no_grad():
        a, b = source(*inputs), written(*inputs)
    if not isinstance(source, ACPredictor):
        a, b = a[0], b[0]  # logits, or the encoder output
    diff = float((a - b).abs().max())
    print(f"wrote {config.out}: {type(source).__name__}, max |difference| of the outputs on a random "
          f"{config.frames}-frame clip: {diff:.3g}")
    return diff


def main(argv: list[str] | None = None) -> None:
    config = cli.parse(ConvertConfig, argv, PROG, __doc__)
    cli.run(convert, config, PROG)


if __name__ == "__main__":
    main()
