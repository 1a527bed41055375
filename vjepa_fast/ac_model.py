"""V-JEPA 2-AC: the action-conditioned predictor (stage 2) with a key/value cache for planning.

Each time step t contributes 2 + P tokens, [action_t, state_t, P patch tokens of frame t], so a
clip of T frames is a sequence of T * (2 + P) tokens. Attention is block-causal over steps: every
token of step t sees every token of steps <= t and none after. The output at the patch tokens of
step t predicts the encoder features of frame t + 1.

RoPE positions: patch tokens (t, row * grid_h / H, col * grid_h / W) with the predictor's grid as
(H, W) (Meta scales both spatial axes by its grid height, so a non-square grid stretches the
column axis); action and state tokens (t, 0, 0), so only their time segment rotates (angle 0 is
the identity), which is exactly Meta's "rotate the first segment only" for those tokens.

Because attention is block-causal, the outputs of steps <= t never depend on later steps: a
planner can feed one step at a time and keep the keys and values of earlier steps (`ACCache`)
instead of re-running the whole prefix as Meta's notebook does. Both give the same numbers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vjepa_fast.model import Block, Encoder, init_weights, run_blocks
from vjepa_fast.ops.rope import make_rope
from vjepa_fast.video import normalize

COND_TOKENS = 2  # action and state tokens per step
AC_MODEL_TYPE = "vjepa2_ac"


@dataclass
class ACConfig:
    enc_dim: int = 1408          # width of the frozen encoder's features (input and output)
    hidden_size: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    action_dim: int = 7          # delta xyz, delta euler, delta gripper
    state_dim: int = 7           # xyz, euler, gripper
    grid_h: int = 16             # patch rows per frame (crop / patch size)
    grid_w: int = 16             # patch columns per frame
    layer_norm_eps: float = 1e-6
    rope_mode: str = "tile"      # "tile" for the released weights (see vjepa_fast.ops.rope)
    initializer_range: float = 0.02

    def __post_init__(self):
        for name in ("enc_dim", "hidden_size", "depth", "num_heads", "action_dim", "state_dim", "grid_h", "grid_w"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ACConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"ACConfig.hidden_size ({self.hidden_size}) / num_heads ({self.num_heads}) "
                             "must be an even integer head dim")
        if self.rope_mode not in ("tile", "interleave"):
            raise ValueError(f"ACConfig.rope_mode must be 'tile' or 'interleave', got {self.rope_mode!r}")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def tokens_per_step(self) -> int:
        return COND_TOKENS + self.tokens_per_frame

    @classmethod
    def from_name(cls, name: str) -> "ACConfig":
        if name not in AC_PRESETS:
            raise ValueError(f"unknown AC preset {name!r}; expected one of {sorted(AC_PRESETS)}")
        return cls(**AC_PRESETS[name])


AC_PRESETS: dict[str, dict] = {
    # The released vjepa2-ac-vitg predictor: 24 x 1024, on ViT-g features at 256 px.
    "ac-vitg": dict(),
    # CPU-sized predictors on the "tiny" encoder (192 wide, 64 px -> 4 x 4 patches).
    "ac-tiny": dict(enc_dim=192, hidden_size=128, depth=2, num_heads=2, grid_h=4, grid_w=4),
    "ac-small": dict(enc_dim=192, hidden_size=192, depth=4, num_heads=3, grid_h=4, grid_w=4),
}


def step_positions(steps: range, config: ACConfig, device=None) -> Tensor:
    """(1, len(steps) * tokens_per_step, 3) RoPE positions of the tokens of the given steps."""
    rows = torch.arange(config.grid_h, device=device, dtype=torch.float32)
    cols = torch.arange(config.grid_w, device=device, dtype=torch.float32)
    # Meta snaps both spatial axes with its grid height: scale 1 for rows, grid_h / grid_w for columns.
    r, c = torch.meshgrid(rows, cols * (config.grid_h / config.grid_w), indexing="ij")
    spatial = torch.stack((r.flatten(), c.flatten()), dim=-1)  # (P, 2)
    spatial = torch.cat((spatial.new_zeros(COND_TOKENS, 2), spatial))  # (2 + P, 2): action/state at (0, 0)
    t = torch.arange(steps.start, steps.stop, device=device, dtype=torch.float32)
    time = t[:, None, None].expand(-1, config.tokens_per_step, 1)  # (T, 2 + P, 1)
    pos = torch.cat((time, spatial.expand(len(t), -1, -1)), dim=-1)  # (T, 2 + P, 3)
    return pos.reshape(1, -1, 3)


@dataclass
class ACCache:
    """Unrotated keys and values of the steps fed so far, one (k, v) pair per block."""
    steps: int = 0
    kv: list[tuple[Tensor, Tensor]] = field(default_factory=list)


class ACPredictor(nn.Module):
    def __init__(self, config: ACConfig):
        super().__init__()
        c = config
        self.config = c
        # Attribute names follow Meta's checkpoint (module.predictor_embed, ...) so the mapping is short.
        self.predictor_embed = nn.Linear(c.enc_dim, c.hidden_size)
        self.action_encoder = nn.Linear(c.action_dim, c.hidden_size)
        self.state_encoder = nn.Linear(c.state_dim, c.hidden_size)
        self.predictor_blocks = nn.ModuleList(
            Block(c.hidden_size, c.num_heads, int(c.hidden_size * c.mlp_ratio), c.layer_norm_eps, True)
            for _ in range(c.depth))
        self.predictor_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.predictor_proj = nn.Linear(c.hidden_size, c.enc_dim)
        self.gradient_checkpointing = False
        init_weights(self, c.initializer_range, self.predictor_blocks)

    def _check(self, z: Tensor, actions: Tensor, states: Tensor, steps: int | None) -> int:
        """The number of steps (from z unless given); each error names the argument at fault."""
        c = self.config
        for name, t in (("features", z), ("actions", actions), ("states", states)):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise TypeError(f"ACPredictor: {name} must be a floating-point tensor, got "
                                f"{getattr(t, 'dtype', type(t).__name__)}")
        if z.dim() != 3 or z.shape[2] != c.enc_dim or z.shape[1] % c.tokens_per_frame or z.shape[1] == 0 \
                or (steps is not None and z.shape[1] != steps * c.tokens_per_frame):
            raise ValueError(f"ACPredictor: features must be (batch, steps * {c.tokens_per_frame}, {c.enc_dim}), "
                             f"got {tuple(z.shape)}")
        steps = z.shape[1] // c.tokens_per_frame
        B = z.shape[0]
        for name, t, dim in (("actions", actions, c.action_dim), ("states", states, c.state_dim)):
            if t.dim() != 3 or t.shape != (B, steps, dim):
                raise ValueError(f"ACPredictor: {name} must be (batch={B}, steps={steps}, {dim}) to match the "
                                 f"features, got {tuple(t.shape)}")
            if t.dtype != z.dtype:
                raise TypeError(f"ACPredictor: {name} must have the features' dtype {z.dtype}, got {t.dtype}")
        return steps

    def _tokens(self, z: Tensor, actions: Tensor, states: Tensor) -> Tensor:
        """(B, T*P, D_enc), (B, T, A), (B, T, S) -> (B, T*(2+P), D) in [action, state, patches] order per step."""
        B, T = actions.shape[:2]
        x = self.predictor_embed(z).view(B, T, self.config.tokens_per_frame, -1)  # (B, T, P, D)
        a = self.action_encoder(actions).unsqueeze(2)  # (B, T, 1, D)
        s = self.state_encoder(states).unsqueeze(2)
        return torch.cat((a, s, x), dim=2).flatten(1, 2)  # (B, T*(2+P), D)

    def _output(self, x: Tensor) -> Tensor:
        """Drops the action/state tokens: (B, T*(2+P), D) -> (B, T*P, D_enc)."""
        B = x.shape[0]
        x = x.view(B, -1, self.config.tokens_per_step, x.shape[-1])[:, :, COND_TOKENS:]  # (B, T, P, D)
        return self.predictor_proj(self.predictor_norm(x.flatten(1, 2)))

    def forward(self, z: Tensor, actions: Tensor, states: Tensor) -> Tensor:
        """Meta's forward(x, actions, states): z (B, T*P, D_enc) encoder features of T frames,
        actions (B, T, A), states (B, T, S) -> (B, T*P, D_enc); output frame t predicts frame t + 1."""
        T = self._check(z, actions, states, None)
        c = self.config
        x = self._tokens(z, actions, states)
        rope = make_rope(step_positions(range(T), c, z.device), c.hidden_size // c.num_heads, c.rope_mode)
        x = run_blocks(self.predictor_blocks, x, rope, self.gradient_checkpointing, c.tokens_per_step)
        return self._output(x)

    @torch.no_grad()
    def step(self, z: Tensor, action: Tensor, state: Tensor, cache: ACCache) -> Tensor:
        """Feeds one more step: z (B, P, D_enc) features of frame t = cache.steps, action (B, A),
        state (B, S) -> (B, P, D_enc) prediction of frame t + 1. Attends to the cached keys and
        values of steps < t and appends this step's to `cache`. Equal to forward() on the whole
        prefix, because no earlier step attends to a later one."""
        if action.dim() != 2 or state.dim() != 2:
            raise ValueError(f"ACPredictor.step: action and state must be (batch, dim), got "
                             f"{tuple(action.shape)} and {tuple(state.shape)}")
        actions, states = action[:, None], state[:, None]
        self._check(z, actions, states, 1)
        if cache.kv and cache.kv[0][0].shape[0] != z.shape[0]:
            raise ValueError(f"ACPredictor.step: batch {z.shape[0]} differs from the cache's {cache.kv[0][0].shape[0]}")
        c = self.config
        t = cache.steps
        hd = c.hidden_size // c.num_heads
        k_rope = make_rope(step_positions(range(t + 1), c, z.device), hd, c.rope_mode)
        n = c.tokens_per_step  # the queries are this step's tokens, the last n keys
        q_rope = k_rope.narrow(-n, n)
        x = self._tokens(z, actions, states)
        kv = []
        for i, block in enumerate(self.predictor_blocks):
            x = block(x, q_rope, c.tokens_per_step, k_rope, cache.kv[i] if cache.kv else None, keep=kv)
        cache.kv, cache.steps = kv, t + 1
        return self._output(x)

    @classmethod
    def from_meta_checkpoint(cls, path: str | Path, config: ACConfig | None = None) -> "ACPredictor":
        """Loads the `predictor` entry of Meta's vjepa2-ac checkpoint (see checkpoints.load_ac_meta_checkpoint)."""
        from vjepa_fast.checkpoints import load_ac_meta_checkpoint
        return load_ac_meta_checkpoint(cls, path, config)

    def save_pretrained(self, save_directory: str | Path) -> None:
        """config.json (ACConfig, model_type "vjepa2_ac") + model.safetensors under our key names:
        transformers has no V-JEPA 2-AC class, so this is the package's own directory format."""
        from vjepa_fast.checkpoints import write_pretrained
        config = {"model_type": AC_MODEL_TYPE, **dataclasses.asdict(self.config)}
        write_pretrained(save_directory, self.state_dict(), config)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ACPredictor":
        """A directory save_pretrained wrote, strictly."""
        from vjepa_fast.checkpoints import CheckpointError, load_state_strict, read_config, read_safetensors_dir
        saved = read_config(Path(directory))
        if saved.pop("model_type", None) != AC_MODEL_TYPE:
            raise CheckpointError(f"{directory}: config.json is not a V-JEPA 2-AC predictor "
                                  f"(model_type {AC_MODEL_TYPE!r})")
        model = cls(ACConfig(**saved))
        load_state_strict(model, read_safetensors_dir(Path(directory)), str(directory))
        return model.eval()

    def meta_state_dict(self) -> dict[str, Tensor]:
        """This model's weights under Meta's key names (with the `module.` prefix)."""
        from vjepa_fast.checkpoints import ac_to_meta
        return ac_to_meta(self.state_dict())


@torch.no_grad()
def encode_frames(encoder: Encoder, frames: Tensor, batch: int = 64) -> Tensor:
    """(T, H, W, 3) uint8 RGB -> (T, P, D_enc): every frame encoded alone as a 2-frame tubelet
    (the encoder repeats a single frame), ImageNet-normalised, outputs layer-normed without
    affine parameters: the features V-JEPA 2-AC is trained and planned on."""
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"encode_frames: frames must be (T, H, W, 3) uint8, got {frames.dtype} {tuple(frames.shape)}")
    out = []
    for chunk in frames.split(batch):
        x = normalize(chunk.permute(0, 3, 1, 2))[:, None]  # (t, 1, 3, H, W)
        h = encoder(x)  # (t, P, D)
        out.append(F.layer_norm(h, (h.shape[-1],)))
    return torch.cat(out)
