"""Model configuration: one dataclass, presets named after the released checkpoints.

Field names follow transformers' `VJEPA2Config` so that a `config.json` written by either
library reads in the other. Two fields are ours:
  rope_mode  "tile" (V-JEPA 2 weights; written to config.json as use_rope_interleave=False)
             or "interleave" (V-JEPA 2.1).
  rope_grid  "config": decode token positions on the crop grid `crop_size // patch_size`, as
             transformers does whatever the input size; "input": on the real input grid, as
             Meta's encoder does.
V-JEPA 2.1 models (`hierarchical_layers` set) carry the fields of transformers' 2.1 pull request:
  use_modality_embeddings   learned image/video vectors added to every token after tokenisation
                            (encoder) and after the tokens are assembled (predictor)
  use_image_patch_embedder  a second, tubelet-1 patch embedding for single-frame inputs
  interpolate_rope          spatial positions rescaled to the 16 x 16 grid of 256 px:
                            h * 15 / (Hp - 1), w * 15 / (Wp - 1) on the input's grid (fractional)
  hierarchical_layers       the four blocks whose outputs go through their own LayerNorm
                            (norms_block); the last one is the inference output
  num_distillation_outputs  how many of those levels the training output and the predictor use
                            (4, or 1: the last)
  teacher_embed_dim         the width the predictor's heads predict (a distillation teacher's,
                            levels x teacher_embed_dim // levels); None: hidden_size per level
  use_context_projection    the predictor also projects its context tokens (a second head)
and one of ours, pred_interpolate_rope (the predictor's interpolation, on its configured grid:
on in 2.1 pre-training, off in Meta's released predictors).
`attn_implementation` is transformers' option and stays out of config.json as there: "sdpa" runs
the fused RoPE-attention op only; "eager" also allows output_attentions, which then runs the
explicit softmax to return the probabilities.
The config reads and writes itself as transformers' does (to_dict, to_json_string,
save_pretrained, from_pretrained), and `coerce` takes a transformers VJEPA2Config or its dict.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

ROPE_MODES = ("tile", "interleave")
# The pixel statistics every released model was trained with (RGB, [0, 1] units).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The dtype names the jobs accept (--dtype, --feature-dtype).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROPE_GRIDS = ("config", "input")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
# Not in config.json: ours only (rope_mode is there, as use_rope_interleave), or derived (num_labels).
_NOT_SAVED = ("rope_mode", "rope_grid", "attn_implementation", "num_labels", "id2label", "problem_type")
V21_FIELDS = ("use_modality_embeddings", "use_image_patch_embedder", "interpolate_rope", "pred_interpolate_rope",
              "hierarchical_layers", "num_distillation_outputs", "teacher_embed_dim", "use_context_projection")


@dataclass
class VJEPA2Config:
    patch_size: int = 16
    crop_size: int = 256
    frames_per_clip: int = 64
    tubelet_size: int = 2
    in_chans: int = 3
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    pred_hidden_size: int = 384
    pred_num_hidden_layers: int = 12
    pred_num_attention_heads: int = 12
    pred_mlp_ratio: float = 4.0
    pred_num_mask_tokens: int = 10
    pred_zero_init_mask_tokens: bool = True
    num_pooler_layers: int = 3
    # V-JEPA 2.1 (see the module docstring); the defaults are V-JEPA 2.
    use_modality_embeddings: bool = False
    use_image_patch_embedder: bool = False
    interpolate_rope: bool = False
    pred_interpolate_rope: bool = False
    hierarchical_layers: list[int] | None = None
    num_distillation_outputs: int = 1
    teacher_embed_dim: int | None = None
    use_context_projection: bool = False
    rope_mode: str = "tile"
    rope_grid: str = "config"
    # transformers' defaults for what forward returns; each call can override them.
    output_hidden_states: bool = False
    output_attentions: bool = False
    return_dict: bool = True
    attn_implementation: str = "sdpa"
    # The classifier's labels, as transformers' config holds them for every model: id2label names
    # output i (None: LABEL_0 .. LABEL_{num_labels - 1}, two labels by default); problem_type None
    # is chosen by the first loss (VJEPA2ForVideoClassification).
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    model_type: ClassVar[str] = "vjepa2"

    def __setattr__(self, name: str, value) -> None:
        # As transformers: setting num_labels to another count renames the labels LABEL_0, LABEL_1, ...
        if name == "num_labels" and value is not None and self.__dict__.get("id2label") is not None \
                and len(self.__dict__["id2label"]) != value:
            super().__setattr__("id2label", {i: f"LABEL_{i}" for i in range(value)})
        super().__setattr__(name, value)

    def __post_init__(self):
        for name in ("patch_size", "crop_size", "frames_per_clip", "tubelet_size", "in_chans",
                     "hidden_size", "num_hidden_layers", "num_attention_heads", "pred_hidden_size",
                     "pred_num_hidden_layers", "pred_num_attention_heads", "pred_num_mask_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VJEPA2Config.{name} must be a positive int, got {value!r}")
        for name in ("qkv_bias", "pred_zero_init_mask_tokens", "output_hidden_states", "output_attentions",
                     "return_dict", "use_modality_embeddings", "use_image_patch_embedder", "interpolate_rope",
                     "pred_interpolate_rope", "use_context_projection"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"VJEPA2Config.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("mlp_ratio", "pred_mlp_ratio", "layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            zero_ok = name == "initializer_range"
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < 0 or (value == 0 and not zero_ok):
                raise ValueError(f"VJEPA2Config.{name} must be a finite number {'>=' if zero_ok else '>'} 0, "
                                 f"got {value!r}")
        if not isinstance(self.num_pooler_layers, int) or isinstance(self.num_pooler_layers, bool) \
                or self.num_pooler_layers < 0:
            raise ValueError(f"VJEPA2Config.num_pooler_layers must be an int >= 0, got {self.num_pooler_layers!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"VJEPA2Config.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.pred_hidden_size % self.pred_num_attention_heads:
            raise ValueError(f"VJEPA2Config.pred_hidden_size ({self.pred_hidden_size}) must be divisible "
                             f"by pred_num_attention_heads ({self.pred_num_attention_heads})")
        if self.crop_size % self.patch_size:
            raise ValueError(f"VJEPA2Config.crop_size ({self.crop_size}) must be a multiple of "
                             f"patch_size ({self.patch_size})")
        if self.hidden_act not in ("gelu",):
            raise ValueError(f"VJEPA2Config.hidden_act must be 'gelu' (exact erf GELU), got {self.hidden_act!r}")
        if self.rope_mode not in ROPE_MODES:
            raise ValueError(f"VJEPA2Config.rope_mode must be one of {ROPE_MODES}, got {self.rope_mode!r}")
        if self.rope_grid not in ROPE_GRIDS:
            raise ValueError(f"VJEPA2Config.rope_grid must be one of {ROPE_GRIDS}, got {self.rope_grid!r}")
        self._check_v21()
        self._check_labels()
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"VJEPA2Config.attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, "
                             f"got {self.attn_implementation!r}")

    def _check_v21(self) -> None:
        layers = self.hierarchical_layers
        if layers is not None:
            if not isinstance(layers, (list, tuple)) or not layers or \
                    not all(isinstance(i, int) and not isinstance(i, bool) for i in layers) or \
                    list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] != self.num_hidden_layers - 1:
                raise ValueError(f"VJEPA2Config.hierarchical_layers must be ascending block indices ending with the "
                                 f"last block ({self.num_hidden_layers - 1}), got {layers!r}")
            self.hierarchical_layers = list(layers)
        levels = len(layers) if layers is not None else 1
        if self.num_distillation_outputs not in (1, levels) or isinstance(self.num_distillation_outputs, bool):
            raise ValueError(f"VJEPA2Config.num_distillation_outputs must be 1 or {levels} (the hierarchical "
                             f"levels), got {self.num_distillation_outputs!r}")
        t = self.teacher_embed_dim
        if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 1
                              or t % self.num_distillation_outputs):
            raise ValueError(f"VJEPA2Config.teacher_embed_dim must be None or a positive multiple of "
                             f"num_distillation_outputs ({self.num_distillation_outputs}), got {t!r}")
        v21 = ("use_modality_embeddings", "use_image_patch_embedder", "interpolate_rope", "use_context_projection")
        if layers is None and (any(getattr(self, n) for n in v21) or t is not None):
            raise ValueError(f"VJEPA2Config: {', '.join(n for n in (*v21, 'teacher_embed_dim') if getattr(self, n))} "
                             "belong to V-JEPA 2.1 models, which also set hierarchical_layers")

    @property
    def is_v21(self) -> bool:
        return self.hierarchical_layers is not None

    @property
    def distillation_layers(self) -> list[int]:
        """The blocks whose normalised outputs make the training output (and the predictor's input)."""
        return self.hierarchical_layers[-self.num_distillation_outputs:]

    @property
    def pred_out_size(self) -> int:
        """Width of one predicted level."""
        if self.teacher_embed_dim is None:
            return self.hidden_size
        return self.teacher_embed_dim // self.num_distillation_outputs

    def _check_labels(self) -> None:
        if self.id2label is None:
            n = 2 if self.num_labels is None else self.num_labels
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"VJEPA2Config.num_labels must be a positive int, got {n!r}")
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        if not isinstance(self.id2label, dict) or not self.id2label:
            raise ValueError(f"VJEPA2Config.id2label must map 0..num_labels-1 to label names, got {self.id2label!r}")
        self.id2label = {int(i): name for i, name in self.id2label.items()}  # config.json keys are strings
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ValueError(f"VJEPA2Config.id2label must map 0..num_labels-1 to label names, got keys "
                             f"{sorted(self.id2label)}")
        if self.num_labels is None:
            self.num_labels = len(self.id2label)
        elif self.num_labels != len(self.id2label):
            raise ValueError(f"VJEPA2Config: num_labels={self.num_labels} but id2label names {len(self.id2label)} labels")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"VJEPA2Config.problem_type must be None or one of {PROBLEM_TYPES}, "
                             f"got {self.problem_type!r}")
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            raise ValueError("VJEPA2Config: problem_type='single_label_classification' needs num_labels > 1 "
                             "(use 'regression' for one output)")

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    def with_labels(self, labels: list[str], problem_type: str | None = None) -> "VJEPA2Config":
        """A copy with labels[i] as the name of output i."""
        return dataclasses.replace(self, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                   problem_type=problem_type)

    @property
    def _attn_implementation(self) -> str:
        """transformers' name for attn_implementation (its tests set `config._attn_implementation`)."""
        return self.attn_implementation

    @_attn_implementation.setter
    def _attn_implementation(self, value: str) -> None:
        self.attn_implementation = value
        self.__post_init__()

    @property
    def grid_size(self) -> int:
        return self.crop_size // self.patch_size

    @property
    def mlp_hidden_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def pred_mlp_hidden_size(self) -> int:
        return int(self.pred_hidden_size * self.pred_mlp_ratio)

    @classmethod
    def from_name(cls, name: str) -> "VJEPA2Config":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])

    def to_dict(self) -> dict:
        """The config.json that transformers' VJEPA2Model reads."""
        skip = _NOT_SAVED if self.is_v21 else _NOT_SAVED + V21_FIELDS  # V-JEPA 2's config.json as before
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        d["use_rope_interleave"] = self.rope_mode == "interleave"
        d["model_type"] = self.model_type
        d["id2label"] = {str(i): name for i, name in self.id2label.items()}
        d["label2id"] = self.label2id
        if self.problem_type is not None:
            d["problem_type"] = self.problem_type
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | Path) -> None:
        from vjepa_fast.files import atomic_write
        text = self.to_json_string()
        atomic_write(Path(directory) / "config.json", lambda p: Path(p).write_text(text))

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path) -> "VJEPA2Config":
        """config.json of a checkpoint directory or hub id (ours or transformers')."""
        from vjepa_fast.checkpoints import Source, read_config
        return cls.from_dict(read_config(Source(str(path_or_hub_id)).resolve()))

    @classmethod
    def from_dict(cls, d: dict) -> "VJEPA2Config":
        """Reads a transformers config.json; keys this model does not use are ignored."""
        if d.get("model_type", "vjepa2") != "vjepa2":
            raise ValueError(f"config: model_type {d['model_type']!r} is not 'vjepa2'; vjepa_fast builds "
                             "V-JEPA 2 models only")
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_mode"}
        kwargs = {k: v for k, v in d.items() if k in names}
        if isinstance(kwargs.get("patch_size"), (list, tuple)):
            sizes = set(kwargs["patch_size"])
            if len(sizes) != 1:
                raise ValueError(f"config: only square patches are supported, got {d['patch_size']}")
            kwargs["patch_size"] = sizes.pop()
        interleave = d.get("use_rope_interleave", False)
        if not isinstance(interleave, bool):
            raise ValueError(f"config: use_rope_interleave must be true or false, got {interleave!r}")
        kwargs["rope_mode"] = "interleave" if interleave else "tile"
        return cls(**kwargs)

    @classmethod
    def coerce(cls, config) -> "VJEPA2Config":
        """A VJEPA2Config from ours, a transformers VJEPA2Config, or either's dict."""
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        if getattr(config, "model_type", None) == "vjepa2" and callable(getattr(config, "to_dict", None)):
            d = config.to_dict()  # a transformers VJEPA2Config: its attention choice is not in to_dict
            if getattr(config, "_attn_implementation", None) == "eager":
                d["attn_implementation"] = "eager"
            return cls.from_dict(d)
        raise TypeError(f"config must be a VJEPA2Config (vjepa_fast's or transformers') or a dict, "
                        f"got {type(config).__name__}"
                        + (f" with model_type {config.model_type!r}" if hasattr(config, "model_type") else ""))


_VITG = dict(hidden_size=1408, num_hidden_layers=40, num_attention_heads=22, mlp_ratio=48 / 11)

# Meta's hierarchical taps of the released 2.1 depths.
RELEASED_TAPS = {12: [2, 5, 8, 11], 24: [5, 11, 17, 23], 40: [9, 19, 29, 39], 48: [11, 23, 37, 47]}


def hierarchical_taps(depth: int) -> list[int]:
    """The released taps for the released depths; else up to four evenly spaced, ending with the last block."""
    if depth in RELEASED_TAPS:
        return RELEASED_TAPS[depth]
    levels = min(4, depth)
    return [round((i + 1) * depth / levels) - 1 for i in range(levels)]


_V21 = dict(rope_mode="interleave", use_modality_embeddings=True, use_image_patch_embedder=True, interpolate_rope=True,
            use_context_projection=True)


def _v21(depth: int, width: int, heads: int, mlp: int, levels: int, teacher: int | None, pred_depth: int) -> dict:
    """A released V-JEPA 2.1 layout (384 px, head dim 64): the encoder's hierarchical taps by depth,
    the predictor 384 wide, 12 heads, 8 mask tokens, with its context head."""
    return dict(_V21, hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, mlp_ratio=mlp / width,
                crop_size=384, hierarchical_layers=RELEASED_TAPS[depth], num_distillation_outputs=levels,
                teacher_embed_dim=teacher, pred_hidden_size=384, pred_num_hidden_layers=pred_depth,
                pred_num_attention_heads=12, pred_num_mask_tokens=8)


PRESETS: dict[str, dict] = {
    "vitl": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "vith": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16),
    "vitg": dict(_VITG),
    "vitg-384": dict(_VITG, crop_size=384),
    # B and L were distilled from ViT-G: one 1664-wide level; g and G predict their own four levels.
    "vitb-2.1": _v21(12, 768, 12, 3072, 1, 1664, 12),
    "vitl-2.1": _v21(24, 1024, 16, 4096, 1, 1664, 12),
    "vitg-2.1": _v21(40, 1408, 22, 6144, 4, None, 24),
    "vitG-2.1": _v21(48, 1664, 26, 8192, 4, None, 24),
    # Small shapes for CPU work: the released layouts (head dim 64) at a fraction of the cost.
    "tiny": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, crop_size=64,
                 frames_per_clip=8, pred_hidden_size=96, pred_num_hidden_layers=2,
                 pred_num_attention_heads=3),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, crop_size=128,
                  frames_per_clip=16, pred_hidden_size=192, pred_num_hidden_layers=6,
                  pred_num_attention_heads=6),
    # The tiny layout with every 2.1 feature: four levels, image tokenizer, context head.
    "tiny-2.1": dict(_V21, hidden_size=192, num_hidden_layers=4, num_attention_heads=3, crop_size=64,
                     frames_per_clip=8, pred_hidden_size=96, pred_num_hidden_layers=2, pred_num_attention_heads=3,
                     hierarchical_layers=[0, 1, 2, 3], num_distillation_outputs=4),
}
