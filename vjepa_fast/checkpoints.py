"""Checkpoint formats: transformers (HF) <-> Meta's .pt <-> ours, all loaded strictly.

Our encoder/predictor keep one fused qkv Linear per block and the tubelet embedding in the
Conv3d weight layout, so every format maps onto ours by renaming, splitting qkv into
query/key/value (HF) and stacking mask tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from vjepa_fast.config import VJEPA2Config
from vjepa_fast.files import atomic_write

# Block sub-module names: ours -> HF -> Meta.
_HF_BLOCK = {"norm1": "norm1", "proj": "attention.proj", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
_META_BLOCK = {"norm1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
_HF_TOP = {
    "encoder.patch_weight": "encoder.embeddings.patch_embeddings.proj.weight",
    "encoder.patch_bias": "encoder.embeddings.patch_embeddings.proj.bias",
    "encoder.norm": "encoder.layernorm",
    "predictor.embed": "predictor.embeddings.predictor_embeddings",
    "predictor.mask_tokens": "predictor.embeddings.mask_tokens",
    "predictor.norm": "predictor.layernorm",
    "predictor.proj": "predictor.proj",
}
_META_TOP = {
    "encoder.patch_weight": "patch_embed.proj.weight",
    "encoder.patch_bias": "patch_embed.proj.bias",
    "encoder.norm": "norm",
    "predictor.embed": "predictor_embed",
    "predictor.norm": "predictor_norm",
    "predictor.proj": "predictor_proj",
}


class CheckpointError(ValueError):
    pass


def _split(key: str) -> tuple[str, str]:
    """'encoder.blocks.3.qkv.weight' -> ('encoder.blocks.3.qkv', 'weight'); parameters without a
    suffix ('encoder.patch_weight') come back with an empty suffix."""
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
    from safetensors.torch import load_file
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(directory / shard))
        return state
    single = directory / "model.safetensors"
    if single.exists():
        return load_file(single)
    raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def resolve(path_or_hub_id: str) -> Path:
    path = Path(path_or_hub_id)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint directory (config.json + model.safetensors); "
                              "for Meta's .pt files use from_meta_checkpoint")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{path_or_hub_id!r} is not a directory, and huggingface_hub is not installed "
                              "to download it as a hub id") from None
    try:
        return Path(snapshot_download(path_or_hub_id, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # offline, unknown repo, ...: say what was tried
        raise CheckpointError(f"{path_or_hub_id!r} is not a local directory and could not be downloaded "
                              f"from the Hugging Face hub: {e}") from e


CLASSIFIER_BACKBONE = "vjepa2."  # transformers' prefix of the encoder/predictor in classifier checkpoints


def read_pretrained(path_or_hub_id: str, config_cls, rope_grid: str | None):
    """(directory, config, state dict) of a transformers checkpoint directory or hub id; config_cls
    reads config.json (`from_hf_dict`); rope_grid, when given, overrides the config's."""
    directory = resolve(path_or_hub_id)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{directory}: config.json is missing")
    config = config_cls.from_hf_dict(json.loads(config_path.read_text()))
    if rope_grid is not None:
        config.rope_grid = rope_grid
        config.__post_init__()
    return directory, config, read_safetensors_dir(directory)


def empty_model(cls, config):
    """cls(config) with uninitialised CPU weights (built on the meta device: no time spent on an
    initialisation that the checkpoint overwrites)."""
    with torch.device("meta"):
        model = cls(config)
    return model.to_empty(device="cpu")


def load_pretrained(cls, path_or_hub_id: str, rope_grid: str | None = None):
    directory, config, state = read_pretrained(path_or_hub_id, VJEPA2Config, rope_grid)
    if any(k.startswith(CLASSIFIER_BACKBONE) for k in state):
        # A VJEPA2ForVideoClassification checkpoint: its backbone is the model, as transformers'
        # VJEPA2Model.from_pretrained takes it; only the classification head is left out.
        extra = sorted(k for k in state if not k.startswith((CLASSIFIER_BACKBONE, "pooler.", "classifier.")))
        if extra:
            raise CheckpointError(f"{directory}: unexpected keys beside a classifier's backbone {extra[:20]}")
        state = {k[len(CLASSIFIER_BACKBONE):]: v for k, v in state.items() if k.startswith(CLASSIFIER_BACKBONE)}
    model = empty_model(cls, config)
    load_state_strict(model, hf_to_ours(model, state, str(directory)), str(directory))
    return model


def write_pretrained(directory: str | Path, hf_state: dict[str, Tensor], config: dict) -> None:
    """config.json + model.safetensors (written atomically) of a transformers checkpoint."""
    from safetensors.torch import save_file
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in hf_state.items()}
    atomic_write(directory / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"}))
    text = json.dumps(config, indent=2)
    atomic_write(directory / "config.json", lambda p: Path(p).write_text(text))


def save_pretrained(model, directory: str) -> None:
    """What transformers' VJEPA2Model.from_pretrained reads."""
    write_pretrained(directory, ours_to_hf(model), model.config.to_hf_dict())


def split_classifier(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A classifier's state dict -> (backbone without its prefix, head)."""
    backbone = {k[len(CLASSIFIER_BACKBONE):]: v for k, v in state.items() if k.startswith(CLASSIFIER_BACKBONE)}
    head = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_BACKBONE)}
    return backbone, head


def load_classifier(cls, path_or_hub_id: str, config_cls, rope_grid: str | None):
    """A transformers VJEPA2ForVideoClassification checkpoint, strictly: the backbone through the
    HF key map, the head (pooler, classifier) under transformers' own names."""
    directory, config, state = read_pretrained(path_or_hub_id, config_cls, rope_grid)
    head_weight = state.get("classifier.weight")
    if head_weight is not None and head_weight.shape[0] != config.num_labels:
        raise CheckpointError(f"{directory}: config.json names {config.num_labels} labels (id2label) but "
                              f"classifier.weight has {head_weight.shape[0]} rows: num_labels does not "
                              "match the checkpoint")
    model = empty_model(cls, config)
    backbone, head = split_classifier(state)
    _, expected = split_classifier(model.state_dict())
    missing, unexpected = sorted(expected.keys() - head.keys()), sorted(head.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(f"{directory}: the classification head does not match the model: missing keys "
                              f"{missing[:20]}; unexpected keys {unexpected[:20]}")
    ours = {CLASSIFIER_BACKBONE + k: v for k, v in hf_to_ours(model.vjepa2, backbone, str(directory)).items()}
    load_state_strict(model, {**ours, **head}, str(directory))
    return model


def save_classifier(model, directory: str) -> None:
    """What transformers' VJEPA2ForVideoClassification.from_pretrained reads."""
    _, head = split_classifier(model.state_dict())
    state = {**{CLASSIFIER_BACKBONE + k: v for k, v in ours_to_hf(model.vjepa2).items()}, **head}
    write_pretrained(directory, state, model.config.to_hf_dict())


# ---- Meta's .pt format ----------------------------------------------------------------------

_META_HEADS = {1024: 16, 1280: 16, 1408: 22}  # released widths -> heads (not recoverable from shapes)


def strip_meta_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def infer_meta_config(encoder: dict[str, Tensor], predictor: dict[str, Tensor]) -> VJEPA2Config:
    """A config from the shapes of a Meta checkpoint (head counts from the released widths)."""
    D, _, t, p, _ = encoder["patch_embed.proj.weight"].shape
    if D not in _META_HEADS:
        raise CheckpointError(f"encoder width {D} is not a released one ({sorted(_META_HEADS)}): "
                              "pass config= to say how many heads it has")
    Dp = predictor["predictor_embed.weight"].shape[0]
    count = lambda sd, prefix: len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})
    return VJEPA2Config(
        patch_size=p, tubelet_size=t, hidden_size=D, num_attention_heads=_META_HEADS[D],
        num_hidden_layers=count(encoder, "blocks"), mlp_ratio=encoder["blocks.0.mlp.fc1.weight"].shape[0] / D,
        pred_hidden_size=Dp, pred_num_attention_heads=Dp // 32, pred_num_hidden_layers=count(predictor, "predictor_blocks"),
        pred_mlp_ratio=predictor["predictor_blocks.0.mlp.fc1.weight"].shape[0] / Dp,
        pred_num_mask_tokens=count(predictor, "mask_tokens"))


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


def load_meta_checkpoint(cls, path: str, config: VJEPA2Config | None, encoder_key: str):
    if encoder_key not in ("encoder", "target_encoder"):
        raise ValueError(f"encoder_key must be 'encoder' or 'target_encoder', got {encoder_key!r}")
    ckpt = read_meta_entries(path, (encoder_key, "predictor"))
    encoder, predictor = strip_meta_prefix(ckpt[encoder_key]), strip_meta_prefix(ckpt["predictor"])
    if config is None:
        config = infer_meta_config(encoder, predictor)
    model = empty_model(cls, config)
    load_state_strict(model, meta_to_ours(model.state_dict(), encoder, predictor, path), path)
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
