"""Checkpoint formats: transformers (HF) <-> Meta's .pt <-> ours, all loaded strictly.

Our encoder/predictor keep one fused qkv Linear per block and the tubelet embedding in the
Conv3d weight layout, so every format maps onto ours by renaming, splitting qkv into
query/key/value (HF) and stacking mask tokens.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vjepa_fast.config import VJEPA2Config
from vjepa_fast.files import atomic_write

# Block sub-module names: ours -> HF -> Meta.
_HF_BLOCK = {"norm1": "norm1", "proj": "attention.proj", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
_META_BLOCK = {"norm1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
_HF_TOP = {
    "encoder.patch_embed": "encoder.embeddings.patch_embeddings.proj",
    "encoder.norm": "encoder.layernorm",
    "predictor.embed": "predictor.embeddings.predictor_embeddings",
    "predictor.mask_tokens": "predictor.embeddings.mask_tokens",
    "predictor.norm": "predictor.layernorm",
    "predictor.proj": "predictor.proj",
    # V-JEPA 2.1
    "encoder.patch_embed_img": "encoder.embeddings.patch_embeddings_img.proj",
    "encoder.img_mod_embed": "encoder.embeddings.img_mod_embed",
    "encoder.video_mod_embed": "encoder.embeddings.video_mod_embed",
    "predictor.embed.0": "predictor.embeddings.predictor_embeddings.0",
    "predictor.embed.2": "predictor.embeddings.predictor_embeddings.2",
    "predictor.img_mod_embed": "predictor.embeddings.img_mod_embed",
    "predictor.video_mod_embed": "predictor.embeddings.video_mod_embed",
    "predictor.proj_context": "predictor.proj_context",
}
_META_TOP = {
    "encoder.patch_embed": "patch_embed.proj",
    "encoder.norm": "norm",
    "predictor.embed": "predictor_embed",
    "predictor.norm": "predictor_norm",
    "predictor.proj": "predictor_proj",
    "encoder.patch_embed_img": "patch_embed_img.proj",
    "encoder.img_mod_embed": "img_mod_embed",
    "encoder.video_mod_embed": "video_mod_embed",
    "predictor.embed.0": "predictor_embed.0",
    "predictor.embed.2": "predictor_embed.2",
    "predictor.img_mod_embed": "img_mod_embed",
    "predictor.video_mod_embed": "video_mod_embed",
    "predictor.proj_context": "predictor_proj_context",
}


log = logging.getLogger("vjepa_fast")


class CheckpointError(ValueError):
    pass


def _split(key: str) -> tuple[str, str]:
    """'encoder.blocks.3.qkv.weight' -> ('encoder.blocks.3.qkv', 'weight'); parameters without a
    suffix ('predictor.mask_tokens') come back with an empty suffix."""
    if key.endswith((".weight", ".bias")) and key.rsplit(".", 2)[-2] not in ("encoder", "predictor"):
        head, suffix = key.rsplit(".", 1)
        return head, suffix
    return key, ""


def hf_names(key: str) -> list[str]:
    """The HF state-dict keys that make up one of ours (three for a fused qkv)."""
    head, suffix = _split(key)
    end = f".{suffix}" if suffix else ""
    if head in _HF_TOP:
        return [_HF_TOP[head] + end]
    if head.startswith("encoder.norms_block."):  # 2.1's hierarchical LayerNorms keep their names
        return [head + end]
    part, _, i, name = head.split(".")  # e.g. encoder.blocks.3.qkv
    prefix = f"{part}.layer.{i}."
    if name == "qkv":
        return [f"{prefix}attention.{n}{end}" for n in ("query", "key", "value")]
    return [prefix + _HF_BLOCK[name] + end]


def meta_name(key: str) -> str:
    """The Meta key (without module./backbone. prefixes) of one of ours; mask tokens excepted."""
    head, suffix = _split(key)
    end = f".{suffix}" if suffix else ""
    if head in _META_TOP:
        return _META_TOP[head] + end
    if head.startswith("encoder.norms_block."):
        return head.removeprefix("encoder.") + end
    part, _, i, name = head.split(".")
    blocks = "blocks" if part == "encoder" else "predictor_blocks"
    return f"{blocks}.{i}.{_META_BLOCK[name]}{end}"


def _strict_collect(ours: dict[str, Tensor], names: dict[str, list[str]], source: dict[str, Tensor],
                    what: str) -> dict[str, list[Tensor]]:
    wanted = {n for ns in names.values() for n in ns}
    missing = sorted(wanted - source.keys())
    unexpected = sorted(source.keys() - wanted)
    if missing or unexpected:
        raise CheckpointError(f"{what} does not match the model: missing keys {missing[:20]}"
                              f"{' ...' if len(missing) > 20 else ''}; unexpected keys {unexpected[:20]}"
                              f"{' ...' if len(unexpected) > 20 else ''}")
    return {k: [source[n] for n in ns] for k, ns in names.items()}


def load_state_strict(model: torch.nn.Module, state: dict[str, Tensor], what: str) -> None:
    """load_state_dict(strict=True), with a wrong shape reported by key and `what` (the source)."""
    expected = model.state_dict()
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{what}: {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=True)


def hf_to_ours(model: torch.nn.Module, hf: dict[str, Tensor], what: str = "checkpoint") -> dict[str, Tensor]:
    names = {k: hf_names(k) for k in model.state_dict()}
    parts = _strict_collect(model.state_dict(), names, hf, what)
    out = {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in parts.items()}
    mask = out["predictor.mask_tokens"]
    out["predictor.mask_tokens"] = mask.reshape(mask.shape[0], mask.shape[-1])
    return out


def ours_to_hf(model: torch.nn.Module) -> dict[str, Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        names = hf_names(k)
        if k == "predictor.mask_tokens":
            v = v.reshape(v.shape[0], 1, 1, v.shape[1])  # HF stacks them as (n, 1, 1, D)
        for name, piece in zip(names, v.chunk(len(names))):
            out[name] = piece.contiguous()
    return out


def read_safetensors_dir(directory: Path) -> dict[str, Tensor]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index (a JSON object with a weight_map): {e}") from e
        state = {}
        for shard in shards:
            # Shards live in the checkpoint folder: a name with a path in it is refused, never followed.
            if not isinstance(shard, str) or Path(shard).name != shard or shard in (".", ".."):
                raise CheckpointError(f"{index}: shard {shard!r} is not a file name in {directory}")
            state.update(_load_safetensors(directory / shard))
        return state
    single = directory / "model.safetensors"
    if single.exists():
        return _load_safetensors(single)
    raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (named by the checkpoint's index)")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:  # truncated or not a safetensors file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


@dataclass
class Source:
    """Where a checkpoint comes from: a local directory or a Hugging Face hub id, with the hub
    options transformers' from_pretrained takes."""
    path_or_hub_id: str
    revision: str | None = None
    cache_dir: str | None = None
    local_files_only: bool = False
    token: str | bool | None = None
    subfolder: str = ""

    def resolve(self) -> Path:
        """The checkpoint directory (downloaded first for a hub id: its json and safetensors files)."""
        path = Path(self.path_or_hub_id) / self.subfolder
        if path.is_dir():
            return path
        if Path(self.path_or_hub_id).exists():
            raise CheckpointError(f"{path}: expected a checkpoint directory (config.json + model.safetensors); "
                                  "for Meta's .pt files use from_meta_checkpoint")
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise CheckpointError(f"{self.path_or_hub_id!r} is not a directory, and huggingface_hub is not "
                                  "installed to download it as a hub id") from None
        prefix = f"{self.subfolder.strip('/')}/" if self.subfolder else ""
        try:
            root = snapshot_download(self.path_or_hub_id, revision=self.revision, cache_dir=self.cache_dir,
                                     local_files_only=self.local_files_only, token=self.token,
                                     allow_patterns=[f"{prefix}*.json", f"{prefix}*.safetensors"])
        except Exception as e:  # offline, unknown repo, ...: say what was tried
            raise CheckpointError(f"{self.path_or_hub_id!r} is not a local directory and could not be "
                                  f"downloaded from the Hugging Face hub: {e}") from e
        return Path(root) / self.subfolder


CLASSIFIER_BACKBONE = "vjepa2."  # transformers' prefix of the encoder/predictor in classifier checkpoints


def read_config(directory: Path) -> dict:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: config.json is missing")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object of settings, got a {type(config).__name__}")
    return config


def checkpoint_dtype(config: dict, state: dict[str, Tensor]) -> torch.dtype:
    """dtype="auto": the dtype config.json names, else that of the first floating-point weight."""
    name = config.get("dtype") or config.get("torch_dtype")
    if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)


def prepare_loading(cls, source: Source, config, overrides: dict):
    """(model with uninitialised weights, directory, the checkpoint's dtype, HF state dict) of
    `source`. config: given (any form cls.config_class.coerce takes) or read from config.json;
    overrides: config fields to set where not None (num_labels renames the labels when their count
    changes, as in transformers)."""
    directory = source.resolve()
    saved = read_config(directory)
    config = cls.config_class.from_dict(saved) if config is None else cls.config_class.coerce(config)
    config = dataclasses.replace(config)  # a copy: the caller's config stays as it was
    for name, value in overrides.items():  # in order, as transformers sets from_pretrained's arguments
        if value is not None:
            setattr(config, name, value)
    config.__post_init__()
    state = read_safetensors_dir(directory)
    return empty_model(cls, config), directory, checkpoint_dtype(saved, state), state


def empty_model(cls, config):
    """cls(config) with uninitialised CPU weights (built on the meta device: no time spent on an
    initialisation that the checkpoint overwrites)."""
    with torch.device("meta"):
        model = cls(config)
    return model.to_empty(device="cpu")


def backbone_state(state: dict[str, Tensor], directory) -> dict[str, Tensor]:
    """A VJEPA2Model's HF state dict, from its own checkpoint or from a VJEPA2ForVideoClassification
    one (whose backbone is the model, as transformers' VJEPA2Model.from_pretrained takes it)."""
    if not any(k.startswith(CLASSIFIER_BACKBONE) for k in state):
        return state
    extra = sorted(k for k in state if not k.startswith((CLASSIFIER_BACKBONE, "pooler.", "classifier.")))
    if extra:
        raise CheckpointError(f"{directory}: unexpected keys beside a classifier's backbone {extra[:20]}")
    return {k[len(CLASSIFIER_BACKBONE):]: v for k, v in state.items() if k.startswith(CLASSIFIER_BACKBONE)}


def load_model_state(model, state: dict[str, Tensor], directory) -> dict:
    """A transformers VJEPA2Model checkpoint into `model`, strictly; returns transformers' loading info."""
    load_state_strict(model, hf_to_ours(model, backbone_state(state, directory), str(directory)), str(directory))
    return {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """max_shard_size as transformers takes it: bytes, or a string such as "5GB" or "500MiB"."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    if isinstance(size, str):
        text = size.strip().upper()
        for unit, factor in sorted(_SIZE_UNITS.items(), key=lambda u: -len(u[0])):
            if text.endswith(unit) and text[:-len(unit)].strip().replace(".", "", 1).isdigit():
                return int(float(text[:-len(unit)]) * factor)
    raise ValueError(f"max_shard_size must be a positive number of bytes or a size such as '5GB' or '500MB', "
                     f"got {size!r}")


def write_pretrained(directory: str | Path, hf_state: dict[str, Tensor], config: dict,
                     max_shard_size: int | str = "5GB") -> None:
    """config.json + model.safetensors, or shards of at most max_shard_size bytes each and
    model.safetensors.index.json, as transformers writes them. Every file is written atomically,
    the index and config last; weight files of an earlier save that this one does not use go."""
    from safetensors.torch import save_file
    directory = Path(directory)
    limit = parse_size(max_shard_size)
    state = {k: v.detach().cpu().contiguous() for k, v in hf_state.items()}
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
    for name, shard in zip(names, shards):
        atomic_write(directory / name, lambda p, shard=shard: save_file(shard, p, metadata={"format": "pt"}))
    index = directory / "model.safetensors.index.json"
    if len(shards) > 1:
        total = sum(v.numel() * v.element_size() for v in state.values())
        text = json.dumps({"metadata": {"total_size": total},
                           "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}, indent=2)
        atomic_write(index, lambda p: Path(p).write_text(text))
    keep = set(names) | ({index.name} if len(shards) > 1 else set())
    for stale in directory.glob("model*.safetensors*"):
        if stale.name not in keep:
            stale.unlink()
    text = json.dumps(config, indent=2)
    atomic_write(directory / "config.json", lambda p: Path(p).write_text(text))


def split_classifier(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A classifier's state dict -> (backbone without its prefix, head)."""
    backbone = {k[len(CLASSIFIER_BACKBONE):]: v for k, v in state.items() if k.startswith(CLASSIFIER_BACKBONE)}
    head = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_BACKBONE)}
    return backbone, head


def load_classifier_state(model, state: dict[str, Tensor], directory, ignore_mismatched_sizes: bool) -> dict:
    """A transformers VJEPA2ForVideoClassification checkpoint, or a VJEPA2Model one (then the head
    stays as initialised), into `model`: the backbone strictly through the HF key map, the head
    (pooler, classifier) under transformers' own names. A head weight of another shape (another
    num_labels) is an error unless ignore_mismatched_sizes. Returns transformers' loading info."""
    backbone, head = split_classifier(state)
    if not backbone:  # a VJEPA2Model checkpoint: it is the backbone
        backbone, head = state, {}
    _, expected = split_classifier(model.state_dict())
    unexpected = sorted(head.keys() - expected.keys())
    if unexpected:
        raise CheckpointError(f"{directory}: unexpected keys in the classification head {unexpected[:20]}")
    mismatched = sorted(k for k, v in head.items() if v.shape != expected[k].shape)
    if mismatched and not ignore_mismatched_sizes:
        k = mismatched[0]
        raise CheckpointError(f"{directory}: {k} has shape {tuple(head[k].shape)}, the model expects "
                              f"{tuple(expected[k].shape)} (num_labels={model.config.num_labels}); pass "
                              "ignore_mismatched_sizes=True to start a fresh head of the model's size")
    head = {k: v for k, v in head.items() if k not in mismatched}
    load_model_state(model.vjepa2, backbone, directory)
    # Strict over the whole model: what the checkpoint lacks keeps the model's initialised head.
    load_state_strict(model, {**model.state_dict(), **head}, str(directory))
    return {"missing_keys": sorted(expected.keys() - head.keys() - set(mismatched)), "unexpected_keys": [],
            "mismatched_keys": mismatched, "error_msgs": []}


def classifier_state(model) -> dict[str, Tensor]:
    """What transformers' VJEPA2ForVideoClassification.from_pretrained reads."""
    _, head = split_classifier(model.state_dict())
    return {**{CLASSIFIER_BACKBONE + k: v for k, v in ours_to_hf(model.vjepa2).items()}, **head}


# ---- Meta's .pt format ----------------------------------------------------------------------

_META_HEADS = {1024: 16, 1280: 16, 1408: 22}  # released widths -> heads (not recoverable from shapes)


def strip_meta_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys cleaned as Meta's loader cleans them: `module.` and `backbone.` go wherever they occur."""
    return {k.replace("module.", "").replace("backbone.", ""): v for k, v in state.items()}


# Entries the released RoPE encoders and predictors carry but never use (Meta's own loader skips
# them with strict=False; transformers' converter deletes them).
_UNUSED_META = {"encoder": "pos_embed", "predictor": "predictor_pos_embed"}


def drop_unused_positions(state: dict[str, Tensor], part: str, what) -> dict[str, Tensor]:
    name = _UNUSED_META[part]
    if name in state:
        log.warning(f"{what}: skipping the {part}'s {name} {tuple(state[name].shape)}: this model uses RoPE")
    return {k: v for k, v in state.items() if k != name}


_META_HEADS_21 = {768: 12, 1024: 16, 1408: 22, 1664: 26}  # the released 2.1 widths (head dim 64)
_TAPS_21 = {12: [2, 5, 8, 11], 24: [5, 11, 17, 23], 40: [9, 19, 29, 39], 48: [11, 23, 37, 47]}


def infer_meta_config(encoder: dict[str, Tensor], predictor: dict[str, Tensor]) -> VJEPA2Config:
    """A config from the shapes of a Meta checkpoint (head counts from the released widths; a
    2.1 checkpoint is told by its hierarchical LayerNorms)."""
    D, _, t, p, _ = encoder["patch_embed.proj.weight"].shape
    v21 = "norms_block.0.weight" in encoder
    heads = _META_HEADS_21 if v21 else _META_HEADS
    if D not in heads:
        raise CheckpointError(f"encoder width {D} is not a released {'2.1' if v21 else 'V-JEPA 2'} one "
                              f"({sorted(heads)}): pass config= to say how many heads it has")
    count = lambda sd, prefix: len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})
    embed = predictor.get("predictor_embed.weight", predictor.get("predictor_embed.2.weight"))
    Dp = embed.shape[0]
    fields = dict(
        patch_size=p, tubelet_size=t, hidden_size=D, num_attention_heads=heads[D],
        num_hidden_layers=count(encoder, "blocks"), mlp_ratio=encoder["blocks.0.mlp.fc1.weight"].shape[0] / D,
        pred_hidden_size=Dp, pred_num_attention_heads=Dp // 32, pred_num_hidden_layers=count(predictor, "predictor_blocks"),
        pred_mlp_ratio=predictor["predictor_blocks.0.mlp.fc1.weight"].shape[0] / Dp,
        pred_num_mask_tokens=count(predictor, "mask_tokens"))
    if v21:
        depth = fields["num_hidden_layers"]
        if depth not in _TAPS_21:
            raise CheckpointError(f"a 2.1 encoder of {depth} blocks is not a released one ({sorted(_TAPS_21)}): "
                                  "pass config= with its hierarchical_layers")
        levels = 4 if "predictor_embed.0.weight" in predictor else 1
        out = predictor["predictor_proj.weight"].shape[0]
        fields.update(rope_mode="interleave", hierarchical_layers=_TAPS_21[depth], num_distillation_outputs=levels,
                      teacher_embed_dim=None if out == levels * D else out, crop_size=384,
                      use_modality_embeddings="img_mod_embed" in encoder,
                      use_image_patch_embedder="patch_embed_img.proj.weight" in encoder, interpolate_rope=True,
                      use_context_projection="predictor_proj_context.weight" in predictor)
    return VJEPA2Config(**fields)


def meta_to_ours(expected: dict[str, Tensor], encoder: dict[str, Tensor], predictor: dict[str, Tensor],
                 what: str) -> dict[str, Tensor]:
    """Meta's (encoder, predictor) state dicts, prefixes stripped -> ours, strictly against
    `expected` (the model's state dict, which says how many mask tokens there are)."""
    source = {f"encoder.{k}": v for k, v in encoder.items()}
    source.update({f"predictor.{k}": v for k, v in predictor.items()})
    n_mask = expected["predictor.mask_tokens"].shape[0]
    names = {}
    for k in expected:
        if k == "predictor.mask_tokens":
            names[k] = [f"predictor.mask_tokens.{i}" for i in range(n_mask)]
        else:
            names[k] = [f"{k.split('.')[0]}.{meta_name(k)}"]
    parts = _strict_collect(expected, names, source, what)
    out = {k: v[0] for k, v in parts.items() if k != "predictor.mask_tokens"}
    out["predictor.mask_tokens"] = torch.stack([m.reshape(-1) for m in parts["predictor.mask_tokens"]])
    return out


def read_meta_entries(path, keys: tuple[str, ...]) -> dict:
    """torch.load(weights_only=True) of a Meta .pt file that must hold `keys`."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in keys:
        if key not in ckpt:
            raise CheckpointError(f"{path}: no {key!r} entry (found {sorted(ckpt)})")
    return ckpt


ENCODER_KEYS = ("encoder", "ema_encoder", "target_encoder")


def load_meta_checkpoint(cls, path: str, config: VJEPA2Config | None, encoder_key: str | None):
    """encoder_key None: "encoder" (V-JEPA 2), else "ema_encoder" (2.1 ViT-B/L), else
    "target_encoder" (2.1 ViT-g/G), the first the file holds."""
    if encoder_key is not None and encoder_key not in ENCODER_KEYS:
        raise ValueError(f"encoder_key must be one of {ENCODER_KEYS} (or None: the first present), got {encoder_key!r}")
    ckpt = read_meta_entries(path, ("predictor",) if encoder_key is None else (encoder_key, "predictor"))
    if encoder_key is None:
        present = [k for k in ENCODER_KEYS if k in ckpt]
        if not present:
            raise CheckpointError(f"{path}: no encoder entry (one of {ENCODER_KEYS}; found {sorted(ckpt)})")
        encoder_key = present[0]
    encoder = drop_unused_positions(strip_meta_prefix(ckpt[encoder_key]), "encoder", path)
    predictor = drop_unused_positions(strip_meta_prefix(ckpt["predictor"]), "predictor", path)
    if config is None:
        config = infer_meta_config(encoder, predictor)
    v21 = "norms_block.0.weight" in encoder
    if v21 != config.is_v21:
        raise CheckpointError(f"{path} holds a {'V-JEPA 2.1' if v21 else 'V-JEPA 2'} model, the config is "
                              f"{'V-JEPA 2.1' if config.is_v21 else 'V-JEPA 2'} (hierarchical_layers "
                              f"{config.hierarchical_layers})")
    model = empty_model(cls, config)
    load_state_strict(model, meta_to_ours(model.state_dict(), encoder, predictor, f"{path} [{encoder_key}]"), path)
    return model


def ours_to_meta(state: dict[str, Tensor], prefix: str = "module.backbone.") -> tuple[dict, dict]:
    """Our encoder/predictor state dict -> (encoder, predictor) state dicts in Meta's layout."""
    encoder, predictor = {}, {}
    for k, v in state.items():
        part = k.split(".")[0]
        if k == "predictor.mask_tokens":
            for i, m in enumerate(v):
                predictor[f"{prefix}mask_tokens.{i}"] = m.reshape(1, 1, -1).clone()
        else:
            (encoder if part == "encoder" else predictor)[prefix + meta_name(k)] = v.clone()
    return encoder, predictor


# ---- Meta's attentive probes (.pt, checkpoint["classifiers"][0]) ------------------------------
# Meta fuses q, k, v (self-attention blocks) and k, v (the cross-attention); we keep
# transformers' separate projections, so each fused tensor is split into its chunks.
_PROBE_LAYER = {"layer_norm1": "norm1", "layer_norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                "self_attn.out_proj": "attn.proj"}


def probe_source(key: str) -> tuple[str, int, int]:
    """(Meta probe key, chunk, chunks) of one of our head keys ('pooler.*', 'classifier.*')."""
    if key == "pooler.query_tokens":
        return key, 0, 1
    head, suffix = key.rsplit(".", 1)
    if head == "classifier":
        return f"linear.{suffix}", 0, 1
    if head.startswith("pooler.self_attention_layers."):
        _, _, i, rest = head.split(".", 3)
        block = f"pooler.blocks.{i}"
        if rest.startswith("self_attn.") and rest[-6:] in ("q_proj", "k_proj", "v_proj"):
            return f"{block}.attn.qkv.{suffix}", "qkv".index(rest[-6]), 3
    else:
        rest = head.removeprefix("pooler.cross_attention_layer.")
        block = "pooler.cross_attention_block"
        if rest == "cross_attn.q_proj":
            return f"{block}.xattn.q.{suffix}", 0, 1
        if rest in ("cross_attn.k_proj", "cross_attn.v_proj"):
            return f"{block}.xattn.kv.{suffix}", "kv".index(rest[-6]), 2
    return f"{block}.{_PROBE_LAYER[rest]}.{suffix}", 0, 1


def meta_probe_to_ours(expected: dict[str, Tensor], probe: dict[str, Tensor], what) -> dict[str, Tensor]:
    """A Meta attentive probe's state (checkpoint["classifiers"][0]) -> our head keys, strictly
    against `expected` (the model's head state dict)."""
    probe = strip_meta_prefix(probe)
    sources = {k: probe_source(k) for k in expected}
    wanted = {name for name, _, _ in sources.values()}
    missing, unexpected = sorted(wanted - probe.keys()), sorted(probe.keys() - wanted)
    if missing or unexpected:
        raise CheckpointError(f"{what}: the attentive probe does not match the model: missing keys {missing[:20]}; "
                              f"unexpected keys {unexpected[:20]}")
    return {k: probe[name].chunk(n)[i] for k, (name, i, n) in sources.items()}


def ours_to_meta_probe(head: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our head keys -> a Meta attentive probe's state (`module.` keys, q/k/v and k/v fused)."""
    chunks: dict[str, list] = {}
    for k, v in head.items():
        name, i, n = probe_source(k)
        chunks.setdefault(name, [None] * n)[i] = v.detach().clone()
    return {f"module.{name}": torch.cat(parts) if len(parts) > 1 else parts[0] for name, parts in chunks.items()}


def probe_shape(probe: dict[str, Tensor]) -> tuple[int, int]:
    """(num_labels, num_pooler_layers) of a Meta attentive probe."""
    probe = strip_meta_prefix(probe)
    if "linear.weight" not in probe:
        raise CheckpointError(f"not an attentive probe: no linear.weight among {sorted(probe)[:10]}")
    layers = {k.split(".")[2] for k in probe if k.startswith("pooler.blocks.")}
    return probe["linear.weight"].shape[0], len(layers)


# ---- Meta's V-JEPA 2-AC predictor (.pt) -----------------------------------------------------

def ac_meta_name(key: str) -> str:
    """ours -> Meta for the AC predictor: only block sub-modules differ
    ('predictor_blocks.3.qkv.weight' -> 'predictor_blocks.3.attn.qkv.weight')."""
    parts = key.split(".")
    if parts[0] == "predictor_blocks":
        parts[2] = _META_BLOCK[parts[2]]
    return ".".join(parts)


def ac_to_meta(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"module." + ac_meta_name(k): v.detach().clone() for k, v in state.items()}


def meta_to_ac(expected: dict[str, Tensor], state: dict[str, Tensor], what: str) -> dict[str, Tensor]:
    """Meta's AC predictor state (prefixes stripped) -> ours, strictly against `expected` (the
    model's state dict), except `extrinsics_encoder.*`: a layer Meta always builds but only uses
    with use_extrinsics=True (never in the released model)."""
    names = {ac_meta_name(k): [k] for k in expected}
    source = {k: v for k, v in state.items() if not k.startswith("extrinsics_encoder.")}
    parts = _strict_collect(expected, {ours[0]: [meta] for meta, ours in names.items()}, source,
                            f"{what}: the AC predictor checkpoint")
    out = {k: v[0] for k, v in parts.items()}
    for k, v in out.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{what}: {ac_meta_name(k)} has shape {tuple(v.shape)}, the model expects "
                                  f"{tuple(expected[k].shape)} (pass a matching ACConfig)")
    return out


def infer_ac_config(state: dict[str, Tensor]):
    """An ACConfig from the shapes of a Meta AC checkpoint. Heads are not recoverable from shapes:
    head dim 64, as in the released model; the grid is the released 16 x 16 (256 px / 16)."""
    from vjepa_fast.ac_model import ACConfig
    hidden, enc_dim = state["predictor_embed.weight"].shape
    depth = len({k.split(".")[1] for k in state if k.startswith("predictor_blocks.")})
    return ACConfig(enc_dim=enc_dim, hidden_size=hidden, depth=depth, num_heads=max(1, hidden // 64),
                    mlp_ratio=state["predictor_blocks.0.mlp.fc1.weight"].shape[0] / hidden,
                    action_dim=state["action_encoder.weight"].shape[1], state_dim=state["state_encoder.weight"].shape[1])


def load_ac_meta_checkpoint(cls, path, config):
    """The `predictor` entry of Meta's vjepa2-ac checkpoint (torch.load weights_only=True), strictly."""
    entry = read_meta_entries(path, ("predictor",))["predictor"]
    state = strip_meta_prefix(entry)
    model = cls(infer_ac_config(state) if config is None else config)
    model.load_state_dict(meta_to_ac(model.state_dict(), state, str(path)), strict=True)
    return model
