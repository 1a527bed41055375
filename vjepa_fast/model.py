"""The V-JEPA 2 encoder (a pre-norm ViT with 3D RoPE) and the mask-token predictor."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vjepa_fast.config import IMAGENET_MEAN, IMAGENET_STD, VJEPA2Config
from vjepa_fast.ops.masked_gather import masked_gather
from vjepa_fast.ops.rope import Rope, make_rope, token_positions
from vjepa_fast.ops.rope_attention import rope_attention, rope_attention_weights
from vjepa_fast.ops.tubelet_embed import tubelet_embed
from vjepa_fast.outputs import ModelOutput
from vjepa_fast.pretrained import PreTrainedMixin, finish_loading, resolve_device, resolve_dtype


class Block(nn.Module):
    """x += proj(attn(rope(q), rope(k), v)) on LN1(x); x += fc2(gelu(fc1(LN2(x)))).

    The one block of the encoder, the predictor and the AC predictor. The AC predictor's
    variants are arguments: causal_block > 0 makes attention block-causal over steps of that
    many tokens; `past` (k, v) of earlier steps are put before this call's keys and values (then
    k_rope covers them all), and `keep`, a list, receives this call's (k, v) for a cache.
    `probs`, a list, asks for the explicit softmax (attn_implementation="eager") instead of the
    fused op, and receives the attention probabilities (B, heads, N, Nk)."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, eps: float, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, dim)

    def forward(self, x: Tensor, rope: Rope, causal_block: int = 0, k_rope: Rope | None = None,
                past: tuple[Tensor, Tensor] | None = None, keep: list | None = None,
                probs: list | None = None) -> Tensor:
        x = x + self.attention(self.norm1(x), rope, causal_block, k_rope, past, keep, probs)
        return x + self.mlp(self.norm2(x))

    # Attention and MLP are separate calls so that q, k, v (3x the activations) are freed before
    # the MLP's wide hidden layer is allocated: the block's peak memory is the MLP's, as in transformers.
    def attention(self, x: Tensor, rope: Rope, causal_block: int = 0, k_rope: Rope | None = None,
                  past: tuple[Tensor, Tensor] | None = None, keep: list | None = None,
                  probs: list | None = None) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, hd)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # (B, heads, Nk, hd)
        if keep is not None:
            keep.append((k, v))
        if probs is None:
            a = rope_attention(q, k, v, rope, k_rope, causal_block)  # (B, heads, N, hd)
        else:
            weights = rope_attention_weights(q, k, rope, k_rope, causal_block)  # (B, heads, N, Nk)
            probs.append(weights)
            a = weights @ v
        return self.proj(a.transpose(1, 2).reshape(B, N, D))

    def mlp(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if h.requires_grad:
            h = F.gelu(h)
        else:
            # Without autograd, GELU in place: the hidden layer is the block's largest activation,
            # and not holding it twice cuts the forward pass's peak memory by about a third.
            h = torch.ops.aten.gelu_(h)
        return self.fc2(h)


def run_blocks(blocks: nn.ModuleList, x: Tensor, rope: Rope, use_checkpointing: bool, causal_block: int = 0,
               hidden_states: list | None = None, attentions: list | None = None) -> Tensor:
    """The blocks in turn. hidden_states, a list, receives every block's input (the caller adds
    the last output); attentions, a list, selects the explicit attention and receives its
    probabilities (block checkpointing recomputes them in the backward pass; the recomputed
    copies are not kept)."""
    for block in blocks:
        if hidden_states is not None:
            hidden_states.append(x)
        if use_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, rope, causal_block, None, None, None, attentions, use_reentrant=False)
        else:
            x = block(x, rope, causal_block, probs=attentions)
    return x


def init_weights(module: nn.Module, std: float, blocks: nn.ModuleList) -> None:
    """Meta's initialisation: truncated normal linears, zero biases, unit LayerNorms, and each
    block's output projections scaled by 1/sqrt(2 * layer) so deep residual streams start tame."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer, block in enumerate(blocks, start=1):
            block.proj.weight.div_(math.sqrt(2.0 * layer))
            block.fc2.weight.div_(math.sqrt(2.0 * layer))


def check_video(video: Tensor, config: VJEPA2Config, check_finite: bool = False) -> None:
    if not isinstance(video, Tensor):
        raise TypeError(f"pixel_values_videos must be a torch.Tensor, got {type(video).__name__}")
    if video.dim() != 5:
        raise ValueError("pixel_values_videos must have shape (batch, frames, channels, height, width), "
                         f"got {video.dim()} dims {tuple(video.shape)}")
    B, T, C, H, W = video.shape
    if C != config.in_chans:
        raise ValueError(f"pixel_values_videos must have {config.in_chans} channels in dim 2 "
                         f"(batch, frames, channels, height, width), got shape {tuple(video.shape)}")
    if H % config.patch_size or W % config.patch_size or H == 0 or W == 0:
        raise ValueError(f"pixel_values_videos height and width must be positive multiples of "
                         f"patch_size={config.patch_size}, got {H}x{W}")
    if B == 0 or T == 0:
        raise ValueError(f"pixel_values_videos must hold at least one clip of one frame, got {tuple(video.shape)}")
    if not video.is_floating_point() and video.dtype != torch.uint8:
        raise TypeError(f"pixel_values_videos must be float (normalised pixels) or uint8 (crops as decoded), "
                        f"got {video.dtype}")
    if check_finite and not torch.isfinite(video).all():
        raise ValueError("pixel_values_videos contains NaN or inf")


class TubeletEmbedding(nn.Module):
    """The patch embedding: a stride-(t, p, p) Conv3d, kept in the Conv3d's weight layout."""

    def __init__(self, config: VJEPA2Config, tubelet: int):
        super().__init__()
        c = config
        self.weight = nn.Parameter(torch.empty(c.hidden_size, c.in_chans, tubelet, c.patch_size, c.patch_size))
        self.bias = nn.Parameter(torch.empty(c.hidden_size))

    def forward(self, video: Tensor, token_ids: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) -> (B, N or K, D). uint8 video holds crops as decoded: the ImageNet
        normalisation runs inside the embedding (fused into the kernel on CUDA), so float pixels
        never fill memory."""
        mean = std = None
        if video.dtype == torch.uint8:
            mean, std = (torch.tensor(s, device=video.device) * 255.0 for s in (IMAGENET_MEAN, IMAGENET_STD))
        return tubelet_embed(video, self.weight, self.bias, token_ids, mean, std)


class Encoder(nn.Module):
    """The ViT. V-JEPA 2.1 layouts (config.hierarchical_layers) add an image tokenizer (tubelet 1,
    for single-frame inputs), modality vectors added after tokenisation, interpolated RoPE
    positions, and four LayerNorms at the hierarchical taps in place of the final one."""

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        c = config
        self.config = c
        self.patch_embed = TubeletEmbedding(c, c.tubelet_size)
        if c.use_image_patch_embedder:
            self.patch_embed_img = TubeletEmbedding(c, 1)
        if c.use_modality_embeddings:
            self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
            self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.blocks = nn.ModuleList(
            Block(c.hidden_size, c.num_attention_heads, c.mlp_hidden_size, c.layer_norm_eps, c.qkv_bias)
            for _ in range(c.num_hidden_layers))
        if c.is_v21:
            self.norms_block = nn.ModuleList(nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
                                             for _ in c.hierarchical_layers)
        else:
            self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.gradient_checkpointing = False

    @property
    def output_norm(self) -> nn.LayerNorm:
        """The LayerNorm of the inference output (2.1: the last hierarchical one)."""
        return self.norms_block[-1] if self.config.is_v21 else self.norm

    def is_image(self, video: Tensor) -> bool:
        """A single frame goes to the image tokenizer when the model has one."""
        return video.shape[1] == 1 and self.config.use_image_patch_embedder

    def tubelet(self, video: Tensor) -> int:
        return 1 if self.is_image(video) else self.config.tubelet_size

    def frames(self, video: Tensor) -> Tensor:
        """V-JEPA 2: an image or a clip shorter than a tubelet is repeated to one tubelet (as
        transformers does); 2.1 models take single frames through their image tokenizer. A
        trailing partial tubelet is dropped (what the strided Conv3d does)."""
        t = self.tubelet(video)
        if video.shape[1] < t and self.config.is_v21:
            raise ValueError(f"pixel_values_videos has {video.shape[1]} frame(s): this V-JEPA 2.1 model has no image "
                             f"tokenizer (use_image_patch_embedder=False), give at least tubelet_size={t} frames")
        if video.shape[1] < t:
            video = video.repeat(1, t, 1, 1, 1)
        T = video.shape[1] - video.shape[1] % t
        return video[:, :T]

    def grid(self, video: Tensor) -> tuple[int, int, int]:
        """(Tp, Hp, Wp) tubelets of a video already through `frames`."""
        c = self.config
        return video.shape[1] // self.tubelet(video), video.shape[3] // c.patch_size, video.shape[4] // c.patch_size

    def position_grid(self, video: Tensor) -> tuple[int, int]:
        """The (rows, cols) grid token indices are decoded on (see VJEPA2Config.rope_grid;
        interpolated RoPE is defined on the input's grid)."""
        if self.config.rope_grid == "config" and not self.config.interpolate_rope:
            return self.config.grid_size, self.config.grid_size
        return self.grid(video)[1:]

    def rope(self, ids: Tensor, video: Tensor) -> Rope:
        grid = self.position_grid(video)
        positions = token_positions(ids, *grid).float()
        if self.config.interpolate_rope:
            positions = interpolate_positions(positions, grid, self.config.patch_size)
        return make_rope(positions, self.config.hidden_size // self.config.num_attention_heads, self.config.rope_mode)

    def forward(self, video: Tensor, token_ids: Tensor | None = None, hidden_states: list | None = None,
                attentions: list | None = None, hierarchical: list | None = None) -> Tensor:
        """(B, T, C, H, W) float or uint8 -> (B, N, D) after the output LayerNorm. With token_ids
        (B, K), only those tokens are embedded and encoded (they attend only to each other): Meta's
        context encoder. hidden_states and attentions: see run_blocks. hierarchical, a list (2.1),
        receives the normalised taps of config.distillation_layers concatenated, (B, N, levels * D):
        Meta's training output."""
        c = self.config
        if hierarchical is not None and not c.is_v21:
            raise ValueError("hierarchical outputs belong to V-JEPA 2.1 encoders (config.hierarchical_layers)")
        video = self.frames(video)
        image = self.is_image(video)
        Tp, Hp, Wp = self.grid(video)
        x = (self.patch_embed_img if image else self.patch_embed)(video, token_ids)  # (B, N or K, D)
        if c.use_modality_embeddings:
            x = x + (self.img_mod_embed if image else self.video_mod_embed)
        ids = torch.arange(Tp * Hp * Wp, device=x.device)[None] if token_ids is None else token_ids
        rope = self.rope(ids, video)
        if not c.is_v21:
            x = run_blocks(self.blocks, x, rope, self.gradient_checkpointing, 0, hidden_states, attentions)
            if hidden_states is not None:
                hidden_states.append(x)
            return self.norm(x)
        levels, start = [], 0
        for tap, layer in enumerate(c.hierarchical_layers):  # the blocks in segments ending at each tap
            x = run_blocks(self.blocks[start:layer + 1], x, rope, self.gradient_checkpointing, 0, hidden_states,
                           attentions)
            start = layer + 1
            if hierarchical is not None and layer in c.distillation_layers:
                levels.append(self.norms_block[tap](x))
        if hidden_states is not None:
            hidden_states.append(x)
        if hierarchical is not None:
            hierarchical.append(torch.cat(levels, dim=-1))
        return self.norms_block[-1](x)


def interpolate_positions(positions: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """V-JEPA 2.1's RoPE interpolation: h and w rescaled from a (rows, cols) grid to the grid of
    a 256 px input (16 x 16 at patch 16), so the last row and column sit at 15 whatever the input
    size (a one-row grid stays at 0); time is not rescaled."""
    top = 256 // patch_size - 1
    scale = positions.new_tensor([1.0, top, top])
    divisor = positions.new_tensor([1.0] + [max(n - 1, 1) for n in grid])
    return positions * scale / divisor  # Meta's order of operations: h * 15 / (Hp - 1)


class Predictor(nn.Module):
    """The mask-token predictor. V-JEPA 2.1 layouts take the encoder's concatenated levels (an MLP
    embedding when there are four), add modality vectors, and predict levels x pred_out_size per
    token, with a second head for the context tokens (use_context_projection)."""

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        c = config
        self.config = c
        levels = c.num_distillation_outputs
        if levels > 1:
            self.embed = nn.Sequential(nn.Linear(levels * c.hidden_size, c.hidden_size), nn.GELU(),
                                       nn.Linear(c.hidden_size, c.pred_hidden_size))
        else:
            self.embed = nn.Linear(c.hidden_size, c.pred_hidden_size)
        self.mask_tokens = nn.Parameter(torch.zeros(c.pred_num_mask_tokens, c.pred_hidden_size))
        if c.use_modality_embeddings:
            self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, c.pred_hidden_size))
            self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, c.pred_hidden_size))
        self.blocks = nn.ModuleList(
            Block(c.pred_hidden_size, c.pred_num_attention_heads, c.pred_mlp_hidden_size, c.layer_norm_eps, c.qkv_bias)
            for _ in range(c.pred_num_hidden_layers))
        self.norm = nn.LayerNorm(c.pred_hidden_size, eps=c.layer_norm_eps)
        self.proj = nn.Linear(c.pred_hidden_size, levels * c.pred_out_size)
        if c.use_context_projection:
            self.proj_context = nn.Linear(c.pred_hidden_size, levels * c.pred_out_size)
        self.gradient_checkpointing = False

    def forward(self, context: Tensor, context_ids: Tensor, target_ids: Tensor, grid: tuple[int, int],
                mask_index: int = 1, image: bool = False, return_context: bool = False):
        """context (B, Nc, D or levels * D) encoder tokens at context_ids (B, Nc); predicts
        (B, Nt, levels * out) at target_ids (B, Nt), and with return_context (use_context_projection)
        also (B, Nc, levels * out) at the context tokens. Attention has no mask, so token order
        does not matter and nothing is sorted. image picks the image modality vector (2.1)."""
        c = self.config
        Nc = context.shape[1]
        mask_token = self.mask_tokens[mask_index % c.pred_num_mask_tokens]
        # One fused op: embedded context, mask tokens at the target slots, and their (t, h, w) positions.
        x, positions = masked_gather(self.embed(context), mask_token, context_ids, target_ids, *grid)
        # x (B, Nc+Nt, Dp), positions (B, Nc+Nt, 3)
        if c.pred_interpolate_rope:
            positions = interpolate_positions(positions, grid, c.patch_size)
        if c.use_modality_embeddings:
            x = x + (self.img_mod_embed if image else self.video_mod_embed)
        rope = make_rope(positions, c.pred_hidden_size // c.pred_num_attention_heads, c.rope_mode)
        x = self.norm(run_blocks(self.blocks, x, rope, self.gradient_checkpointing))
        if not return_context:
            return self.proj(x[:, Nc:])
        if not c.use_context_projection:
            raise ValueError("return_context needs a predictor with a context head (config.use_context_projection)")
        return self.proj(x[:, Nc:]), self.proj_context(x[:, :Nc])


@dataclass
class PredictorOutput(ModelOutput):
    last_hidden_state: Tensor                  # (M*B, Nt, D) predictions at the target tokens
    target_hidden_state: Tensor | None = None  # (M*B, Nt, D) encoder output gathered at the target tokens
    # V-JEPA 2.1: predictions at the context tokens (use_context_projection), (M*B, Nc, levels * out).
    # Its encoder outputs are the hierarchical levels: target_hidden_state is then (M*B, Nt, levels * D).
    context_hidden_state: Tensor | None = None


@dataclass
class VJEPA2Output(ModelOutput):
    """transformers' fields in its order (which to_tuple follows)."""
    last_hidden_state: Tensor                       # (B, N, D) encoder output
    masked_hidden_state: Tensor                     # (M*B, Nc, D) encoder output at the context tokens
    predictor_output: PredictorOutput | None = None
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings and every block's output, (B, N, D) each
    attentions: tuple[Tensor, ...] | None = None     # every block's probabilities, (B, heads, N, N)
    hierarchical_hidden_state: Tensor | None = None  # 2.1, output_hierarchical: (B, N, levels * D)

    def to_tuple(self) -> tuple:
        out = super().to_tuple()
        # As transformers: the predictor output becomes a tuple too, but only when it comes last.
        if isinstance(out[-1], PredictorOutput):
            out = out[:-1] + (out[-1].to_tuple(),)
        return out


def gather_tokens(x: Tensor, masks: list[Tensor]) -> Tensor:
    """(B, N, D) gathered at each (B, K) index tensor, concatenated over the list: (M*B, K, D)."""
    return torch.cat([torch.gather(x, 1, m.unsqueeze(-1).expand(-1, -1, x.shape[-1])) for m in masks])


def check_masks(name: str, masks, batch: int, num_tokens: int, device) -> list[Tensor]:
    if isinstance(masks, Tensor):
        masks = [masks]
    if not isinstance(masks, (list, tuple)) or not masks:
        raise TypeError(f"{name} must be a non-empty list of (batch, K) int64 tensors, got {type(masks).__name__}")
    out = []
    for i, m in enumerate(masks):
        if not isinstance(m, Tensor) or m.dim() != 2 or m.shape[0] != batch or m.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name}[{i}] must be an integer tensor of shape ({batch}, K), got "
                             f"{getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}")
        if m.shape[1] != masks[0].shape[1]:
            raise ValueError(f"{name}: every mask in the list must keep the same number of tokens, "
                             f"got {masks[0].shape[1]} for {name}[0] and {m.shape[1]} for {name}[{i}]")
        if m.numel() and (int(m.min()) < 0 or int(m.max()) >= num_tokens):
            raise ValueError(f"{name}[{i}] holds token indices outside [0, {num_tokens})")
        ordered = m.sort(dim=1).values
        if m.shape[1] > 1 and bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise ValueError(f"{name}[{i}] repeats a token index within a row: each row must name distinct tokens")
        out.append(m.to(device=device, dtype=torch.int64))
    return out


class VJEPA2Model(PreTrainedMixin, nn.Module):
    """Drop-in for transformers' VJEPA2Model: same forward signature, outputs and checkpoints.
    config: ours, a transformers VJEPA2Config, or either's dict."""
    config_class = VJEPA2Config

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        config = VJEPA2Config.coerce(config)
        self.config = config
        self.encoder = Encoder(config)
        self.predictor = Predictor(config)
        self.init_weights()

    def init_weights(self) -> None:
        c = self.config
        init_weights(self.encoder, c.initializer_range, self.encoder.blocks)
        # The tubelet embedding is a Conv3d in every checkpoint: keep its initialisation too.
        nn.init.trunc_normal_(self.encoder.patch_embed.weight, std=c.initializer_range)
        nn.init.zeros_(self.encoder.patch_embed.bias)
        if c.use_image_patch_embedder:
            nn.init.trunc_normal_(self.encoder.patch_embed_img.weight, std=c.initializer_range)
            nn.init.zeros_(self.encoder.patch_embed_img.bias)
        init_weights(self.predictor, c.initializer_range, self.predictor.blocks)
        if c.use_modality_embeddings:  # Meta's: nearly invisible at the start
            for module in (self.encoder, self.predictor):
                nn.init.normal_(module.img_mod_embed, std=1e-6)
                nn.init.normal_(module.video_mod_embed, std=1e-6)
        if c.pred_zero_init_mask_tokens:
            nn.init.zeros_(self.predictor.mask_tokens)
        else:
            nn.init.trunc_normal_(self.predictor.mask_tokens, std=c.initializer_range)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.patch_embed

    def forward(self, pixel_values_videos: Tensor, context_mask: list[Tensor] | None = None,
                target_mask: list[Tensor] | None = None, skip_predictor: bool = False,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, check_finite: bool = False,
                output_hierarchical: bool = False) -> VJEPA2Output | tuple:
        """Encodes the whole clip, then (like transformers) gathers the context tokens from it.
        The i-th context mask is paired with the i-th target mask; outputs stack the pairs along
        the batch (M*B rows). output_attentions needs attn_implementation="eager" (the fused op
        never forms the probabilities); the three output flags default to the config's.
        check_finite=True rejects NaN/inf input. V-JEPA 2.1: the predictor reads (and its targets
        are) the hierarchical levels, output_hierarchical returns them, and a single frame goes
        through the image tokenizer."""
        c = self.config
        check_video(pixel_values_videos, c, check_finite)
        if output_hierarchical and not c.is_v21:
            raise ValueError("output_hierarchical=True needs a V-JEPA 2.1 model (config.hierarchical_layers)")
        hidden_states, attentions, return_dict = self.output_lists(output_attentions, output_hidden_states, return_dict)
        encoder = self.encoder
        video = encoder.frames(pixel_values_videos)
        levels = [] if c.is_v21 and (output_hierarchical or not skip_predictor) else None
        hidden = encoder(video, None, hidden_states, attentions, levels)  # (B, N, D)
        hierarchical = levels[0] if levels else None
        features = hidden if hierarchical is None else hierarchical  # what the predictor reads and predicts
        B, N, _ = hidden.shape
        if (context_mask is None) != (target_mask is None):
            raise ValueError("context_mask and target_mask must be given together (or neither)")
        if context_mask is None:
            # Every token is both context and target: nothing to gather.
            full = torch.arange(N, device=hidden.device).expand(B, N)
            context_ids, target_ids, masked, context, target = full, full, hidden, features, features
        else:
            context_mask = check_masks("context_mask", context_mask, B, N, hidden.device)
            target_mask = check_masks("target_mask", target_mask, B, N, hidden.device)
            if len(context_mask) != len(target_mask):
                raise ValueError(f"context_mask and target_mask must be lists of the same length, "
                                 f"got {len(context_mask)} and {len(target_mask)}")
            context_ids, target_ids = torch.cat(context_mask), torch.cat(target_mask)  # (M*B, K)
            masked = gather_tokens(hidden, context_mask)
            context = masked if hierarchical is None else gather_tokens(hierarchical, context_mask)
            target = None if skip_predictor else gather_tokens(features, target_mask)
        predictor_output = None
        if not skip_predictor:
            # Meta's 2.1 predictor decodes positions on its configured grid.
            grid = (c.grid_size, c.grid_size) if c.is_v21 else encoder.position_grid(video)
            image = encoder.is_image(video)
            if c.use_context_projection:
                pred, pred_context = self.predictor(context, context_ids, target_ids, grid, image=image,
                                                    return_context=True)
                predictor_output = PredictorOutput(pred, target, pred_context)
            else:
                predictor_output = PredictorOutput(self.predictor(context, context_ids, target_ids, grid, image=image),
                                                   target)
        out = VJEPA2Output(hidden, masked, predictor_output, tuple(hidden_states) if hidden_states else None,
                           tuple(attentions) if attentions else None, hierarchical if output_hierarchical else None)
        return out if return_dict else out.to_tuple()

    def output_lists(self, output_attentions, output_hidden_states, return_dict) -> tuple[list | None, list | None, bool]:
        """The forward flags, defaulted from the config, as the lists run_blocks fills (None: not
        recorded) and return_dict."""
        c = self.config
        output_attentions = c.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = c.output_hidden_states if output_hidden_states is None else output_hidden_states
        if output_attentions and c.attn_implementation != "eager":
            raise ValueError(f"output_attentions=True needs the explicit attention path, but this model runs the "
                             f"fused RoPE-attention op (attn_implementation={c.attn_implementation!r}): load it "
                             "with from_pretrained(..., attn_implementation='eager') or set "
                             "model.config.attn_implementation = 'eager'")
        # The explicit path runs only to return probabilities: otherwise eager and sdpa compute the same.
        attentions = [] if output_attentions else None
        return [] if output_hidden_states else None, attentions, c.return_dict if return_dict is None else return_dict

    def get_vision_features(self, pixel_values_videos: Tensor, check_finite: bool = False) -> Tensor:
        """(B, T, C, H, W) -> (B, N, D) encoder output."""
        check_video(pixel_values_videos, self.config, check_finite)
        return self.encoder(pixel_values_videos)

    def checkpoint_state(self) -> dict[str, Tensor]:
        from vjepa_fast.checkpoints import ours_to_hf
        return ours_to_hf(self)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *, config=None, dtype=None, torch_dtype=None,
                        device_map=None, attn_implementation: str | None = None, revision: str | None = None,
                        cache_dir: str | None = None, local_files_only: bool = False, token: str | bool | None = None,
                        subfolder: str = "", output_loading_info: bool = False, rope_grid: str | None = None):
        """A transformers VJEPA2Model (or VJEPA2ForVideoClassification: its backbone) checkpoint
        directory or hub id, with transformers' arguments; rope_grid (ours) overrides the config's."""
        from vjepa_fast.checkpoints import Source, load_model_state, prepare_loading
        dtype, device = resolve_dtype(dtype, torch_dtype), resolve_device(device_map)
        source = Source(str(pretrained_model_name_or_path), revision, cache_dir, local_files_only, token, subfolder)
        model, directory, auto_dtype, state = prepare_loading(
            cls, source, config, dict(attn_implementation=attn_implementation, rope_grid=rope_grid))
        info = load_model_state(model, state, directory)
        model = finish_loading(model, dtype, device, auto_dtype)
        return (model, info) if output_loading_info else model

    @classmethod
    def from_meta_checkpoint(cls, path: str, config: VJEPA2Config | None = None,
                             encoder_key: str | None = None) -> "VJEPA2Model":
        """Meta's .pt (V-JEPA 2 or 2.1; config inferred from the shapes when not given).
        encoder_key None takes "encoder", else "ema_encoder", else "target_encoder"."""
        from vjepa_fast.checkpoints import load_meta_checkpoint
        return load_meta_checkpoint(cls, path, config, encoder_key)

