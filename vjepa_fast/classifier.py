"""VJEPA2ForVideoClassification: encoder -> attentive pooler -> Linear (SPEC section 8).

A drop-in for transformers' class of the same name: same constructor (a config carrying the
labels, or one without: two labels), same forward(pixel_values_videos, labels) -> logits and loss,
same from_pretrained arguments (num_labels, id2label, ignore_mismatched_sizes, ...), and
checkpoints that load in either library. The backbone is our VJEPA2Model under `vjepa2.`; the pooler and the linear
head use transformers' module names, so their state-dict keys are transformers' keys verbatim.

The pooler, as transformers (and Meta's AttentiveClassifier) compute it:
  x <- 3 x [x + out_proj(attn(LN1(x))); x + mlp(LN2(x))]        plain attention, no RoPE
  q <- query_tokens (one learned token per clip)
  y <- q + attn(q, LN1(x), LN1(x)); y + mlp(LN2(y))              no LN on q, no output projection
The pooler's MLPs are 4x wide whatever the encoder's mlp_ratio (ViT-g's encoder uses 48/11).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vjepa_fast.checkpoints import (CLASSIFIER_BACKBONE, empty_model, load_state_strict, meta_probe_to_ours,
                                    probe_shape, read_meta_entries, split_classifier)
from vjepa_fast.config import PROBLEM_TYPES, VJEPA2Config
from vjepa_fast.model import VJEPA2Model, init_weights
from vjepa_fast.outputs import ModelOutput
from vjepa_fast.pretrained import PreTrainedMixin, finish_loading, resolve_device, resolve_dtype

log = logging.getLogger("vjepa_fast")

POOLER_MLP_RATIO = 4.0


class PoolerMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, int(dim * POOLER_MLP_RATIO))
        self.fc2 = nn.Linear(int(dim * POOLER_MLP_RATIO), dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PoolerAttention(nn.Module):
    """Softmax attention with separate q/k/v projections; the cross-attention has no out_proj."""

    def __init__(self, dim: int, heads: int, out_proj: bool):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim) if out_proj else None

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        B, Nq, D = queries.shape
        hd = D // self.heads
        q = self.q_proj(queries).view(B, Nq, self.heads, hd).transpose(1, 2)  # (B, heads, Nq, hd)
        k = self.k_proj(tokens).view(B, -1, self.heads, hd).transpose(1, 2)   # (B, heads, N, hd)
        v = self.v_proj(tokens).view(B, -1, self.heads, hd).transpose(1, 2)   # (B, heads, N, hd)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, Nq, D)
        return a if self.out_proj is None else self.out_proj(a)


class PoolerSelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = PoolerAttention(dim, heads, out_proj=True)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = PoolerMLP(dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer_norm1(x)
        x = x + self.self_attn(h, h)
        return x + self.mlp(self.layer_norm2(x))


class PoolerCrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = PoolerAttention(dim, heads, out_proj=False)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = PoolerMLP(dim)

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        # layer_norm1 normalises the clip's tokens, not the queries; the residual is the raw queries.
        y = queries + self.cross_attn(queries, self.layer_norm1(tokens))
        return y + self.mlp(self.layer_norm2(y))


class AttentivePooler(nn.Module):
    """(B, N, D) tokens -> (B, D): self-attention layers over the tokens, then one learned query
    cross-attends to them."""

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        D, heads, eps = config.hidden_size, config.num_attention_heads, config.layer_norm_eps
        self.query_tokens = nn.Parameter(torch.zeros(1, 1, D))
        self.cross_attention_layer = PoolerCrossAttentionLayer(D, heads, eps)
        self.self_attention_layers = nn.ModuleList(
            PoolerSelfAttentionLayer(D, heads, eps) for _ in range(config.num_pooler_layers))

    def forward(self, tokens: Tensor) -> Tensor:
        for layer in self.self_attention_layers:
            tokens = layer(tokens)
        queries = self.query_tokens.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        return self.cross_attention_layer(queries, tokens).squeeze(1)

    def init_weights(self, std: float) -> None:
        """transformers' initialisation: truncated normal everywhere, residual-branch outputs of
        self-attention layer i scaled by 1/sqrt(i), the cross-attention MLP by 1/sqrt(layers + 1)."""
        init_weights(self, std, nn.ModuleList())
        nn.init.trunc_normal_(self.query_tokens, std=std)
        for i, layer in enumerate(self.self_attention_layers, start=1):
            nn.init.trunc_normal_(layer.self_attn.out_proj.weight, std=std / i ** 0.5)
            nn.init.trunc_normal_(layer.mlp.fc2.weight, std=std / i ** 0.5)
        scale = (len(self.self_attention_layers) + 1) ** 0.5
        nn.init.trunc_normal_(self.cross_attention_layer.mlp.fc2.weight, std=std / scale)


def classification_loss(logits: Tensor, labels: Tensor, config: VJEPA2Config) -> Tensor:
    """transformers' loss for sequence/video classification. Without a problem_type: one label ->
    regression (MSE), integer labels -> cross entropy (label -100 ignored), otherwise
    multi-label (BCE with logits); as transformers, the choice is written into the config."""
    n = config.num_labels
    if config.problem_type is None:
        if n == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    problem = config.problem_type
    labels = labels.to(logits.device)
    if problem == "regression":
        if n == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, n), labels.view(-1), ignore_index=-100)
    return F.binary_cross_entropy_with_logits(logits, labels)


@dataclass
class VideoClassifierOutput(ModelOutput):
    """transformers' ImageClassifierOutput fields, in its order."""
    loss: Tensor | None = None
    logits: Tensor | None = None                      # (B, num_labels)
    hidden_states: tuple[Tensor, ...] | None = None   # the encoder's, as VJEPA2Output.hidden_states
    attentions: tuple[Tensor, ...] | None = None


class VJEPA2ForVideoClassification(PreTrainedMixin, nn.Module):
    """Drop-in for transformers' VJEPA2ForVideoClassification. config: any VJEPA2Config.coerce
    takes; its labels (num_labels, id2label: two by default, as in transformers) size the head."""
    config_class = VJEPA2Config

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        config = VJEPA2Config.coerce(config)
        self.config = config
        self.num_labels = config.num_labels
        # The backbone shares the config, so its output flags and attention choice are the classifier's.
        self.vjepa2 = VJEPA2Model(config)
        self.pooler = AttentivePooler(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_head()

    def init_head(self) -> None:
        std = self.config.initializer_range
        self.pooler.init_weights(std)
        nn.init.trunc_normal_(self.classifier.weight, std=std)
        nn.init.zeros_(self.classifier.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.vjepa2.get_input_embeddings()

    def classify(self, features: Tensor) -> Tensor:
        """Encoder output (B, N, D) -> logits (B, num_labels): the head alone, for cached features."""
        return self.classifier(self.pooler(features))

    def forward(self, pixel_values_videos: Tensor, labels: Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, check_finite: bool = False) -> VideoClassifierOutput | tuple:
        """pixel_values_videos (B, T, C, H, W) normalised -> logits (B, num_labels), and the loss
        when labels are given ((B,) class indices, or (B, num_labels) floats for regression or
        multi-label problems). The output flags are VJEPA2Model's."""
        encoded = self.vjepa2(pixel_values_videos, skip_predictor=True, output_attentions=output_attentions,
                              output_hidden_states=output_hidden_states, return_dict=True, check_finite=check_finite)
        logits = self.classify(encoded.last_hidden_state)
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        out = VideoClassifierOutput(loss, logits, encoded.hidden_states, encoded.attentions)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return out if return_dict else out.to_tuple()

    @classmethod
    def from_encoder(cls, encoder: VJEPA2Model, labels: list[str],
                     problem_type: str | None = None) -> "VJEPA2ForVideoClassification":
        """A classifier with a fresh head on top of a (pretrained) VJEPA2Model's weights."""
        model = cls(encoder.config.with_labels(labels, problem_type))
        model.vjepa2.load_state_dict(encoder.state_dict(), strict=True)
        return model

    @classmethod
    def from_meta_probe(cls, probe_path: str, encoder: "VJEPA2Model | str",
                        id2label: dict | None = None) -> "VJEPA2ForVideoClassification":
        """Meta's attentive-probe file (evals/*.pt: the head in checkpoint["classifiers"][0]) on
        `encoder`: a VJEPA2Model, a transformers-format directory or hub id, or Meta's encoder
        .pt. Strict; num_labels and the pooler depth come from the probe."""
        if isinstance(encoder, (str, Path)):
            is_meta = Path(encoder).is_file()
            encoder = VJEPA2Model.from_meta_checkpoint(str(encoder)) if is_meta else VJEPA2Model.from_pretrained(encoder)
        entry = read_meta_entries(probe_path, ("classifiers",))["classifiers"]
        state = entry[0] if isinstance(entry, (list, tuple)) else entry
        num_labels, layers = probe_shape(state)
        if id2label is not None and len(id2label) != num_labels:
            raise ValueError(f"from_meta_probe: id2label names {len(id2label)} labels, the probe has {num_labels}")
        labels = ([f"LABEL_{i}" for i in range(num_labels)] if id2label is None
                  else [id2label[k] for k in sorted(id2label, key=int)])
        config = dataclasses.replace(encoder.config.with_labels(labels), num_pooler_layers=layers)
        model = empty_model(cls, config)  # every weight comes from the encoder or the probe
        _, expected = split_classifier(model.state_dict())
        backbone = {CLASSIFIER_BACKBONE + k: v for k, v in encoder.state_dict().items()}
        load_state_strict(model, {**backbone, **meta_probe_to_ours(expected, state, probe_path)}, probe_path)
        return model.eval()

    def checkpoint_state(self) -> dict[str, Tensor]:
        from vjepa_fast.checkpoints import classifier_state
        return classifier_state(self)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *, config=None, num_labels: int | None = None,
                        id2label: dict | None = None, label2id: dict | None = None, problem_type: str | None = None,
                        ignore_mismatched_sizes: bool = False, dtype=None, torch_dtype=None, device_map=None,
                        attn_implementation: str | None = None, revision: str | None = None,
                        cache_dir: str | None = None, local_files_only: bool = False, token: str | bool | None = None,
                        subfolder: str = "", output_loading_info: bool = False, rope_grid: str | None = None):
        """A transformers VJEPA2ForVideoClassification checkpoint, or a VJEPA2Model one (the head
        then starts fresh, with a notice), with transformers' arguments. num_labels / id2label /
        label2id set the labels; a checkpoint head of another size needs ignore_mismatched_sizes=True."""
        from vjepa_fast.checkpoints import Source, load_classifier_state, prepare_loading
        dtype, device = resolve_dtype(dtype, torch_dtype), resolve_device(device_map)
        source = Source(str(pretrained_model_name_or_path), revision, cache_dir, local_files_only, token, subfolder)
        model, directory, auto_dtype, state = prepare_loading(cls, source, config, dict(
            attn_implementation=attn_implementation, rope_grid=rope_grid,
            **labels_from(num_labels, id2label, label2id)))
        if problem_type is not None:
            # Set after the config is built, as transformers does: its constructor refuses a
            # single-label problem with one label, from_pretrained does not (the loss is then 0).
            if problem_type not in PROBLEM_TYPES:
                raise ValueError(f"from_pretrained: problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
            model.config.problem_type = problem_type
        model.init_head()  # what the checkpoint does not hold stays initialised
        info = load_classifier_state(model, state, directory, ignore_mismatched_sizes)
        if info["missing_keys"]:
            log.warning(f"VJEPA2ForVideoClassification: {directory} has no weights for {len(info['missing_keys'])} "
                        f"head tensors ({', '.join(info['missing_keys'][:3])}, ...): they are newly initialised "
                        f"for {model.config.num_labels} labels; train the head before using its predictions")
        model = finish_loading(model, dtype, device, auto_dtype)
        return (model, info) if output_loading_info else model


def labels_from(num_labels: int | None, id2label: dict | None, label2id: dict | None) -> dict:
    """The config fields (num_labels, id2label) that from_pretrained's label arguments set."""
    if label2id is not None:
        inverse = {int(i): name for name, i in label2id.items()}
        if id2label is not None and {int(i): n for i, n in id2label.items()} != inverse:
            raise ValueError("from_pretrained: label2id must be the inverse of id2label")
        id2label = inverse
    if id2label is not None:
        id2label = {int(i): name for i, name in id2label.items()}
        if num_labels is not None and num_labels != len(id2label):
            raise ValueError(f"from_pretrained: num_labels={num_labels} but id2label names {len(id2label)} labels")
        return {"id2label": id2label, "num_labels": len(id2label)}
    if num_labels is not None:
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
            raise ValueError(f"from_pretrained: num_labels must be a positive int, got {num_labels!r}")
        return {"num_labels": num_labels}
    return {}
