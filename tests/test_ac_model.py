"""The AC predictor against an unfused reference built the way Meta's ac_predictor.py is."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vjepa_fast.ac_model import ACCache, ACConfig, ACPredictor
from vjepa_fast.checkpoints import CheckpointError


# ---- a plain reference, written the way Meta's VisionTransformerPredictorAC computes ------------

def block_causal_mask(T: int, H: int, W: int, add_tokens: int) -> torch.Tensor:
    """Meta's build_action_block_causal_attention_mask: a dense (N, N) boolean mask, True = attend."""
    n = add_tokens + H * W
    mask = torch.zeros(T * n, T * n, dtype=torch.bool)
    for t1 in range(T):
        for t2 in range(t1 + 1):
            mask[t1 * n:(t1 + 1) * n, t2 * n:(t2 + 1) * n] = True
    return mask


def rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Meta's rotate_queries_or_keys on one segment: tiled tables, adjacent-pair rotation."""
    D = x.shape[-1]
    omega = torch.arange(D // 2, dtype=x.dtype) / (D / 2.0)
    omega = 1.0 / 10000**omega
    freq = pos[:, None].to(x.dtype) * omega  # (N, D/2)
    sin, cos = freq.sin().repeat(1, 2), freq.cos().repeat(1, 2)
    y1, y2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return x * cos + torch.stack((-y2, y1), dim=-1).flatten(-2) * sin


class RefAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.seg = 2 * ((self.hd // 3) // 2)

    def forward(self, x, mask, T, H, W, cond):
        B, N, C = x.shape
        ids = torch.arange(T * H * W)
        d = (ids // (H * W)).float()
        h = ((ids % (H * W)) // W).float() * (H / H)  # Meta snaps with grid_size = H
        w = ((ids % (H * W)) % W).float() * (H / W)
        x = x.view(B, T, cond + H * W, C)
        aq, ak, av = [], [], []
        for i in range(cond):  # action/state tokens: only the time segment rotates
            q, k, v = self.qkv(x[:, :, i]).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
            tpos = torch.arange(T)
            aq.append(torch.cat([rotate(q[..., :self.seg], tpos), q[..., self.seg:]], -1))
            ak.append(torch.cat([rotate(k[..., :self.seg], tpos), k[..., self.seg:]], -1))
            av.append(v)
        q, k, v = self.qkv(x[:, :, cond:].flatten(1, 2)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        s = self.seg

        def rot3(t):
            return torch.cat([rotate(t[..., :s], d), rotate(t[..., s:2 * s], h), rotate(t[..., 2 * s:3 * s], w),
                              t[..., 3 * s:]], -1)

        q, k = rot3(q), rot3(k)

        def merge(tx, ta):
            tx = tx.view(B, self.heads, T, H * W, -1)
            ta = torch.stack(ta, dim=3)  # (B, heads, T, cond, hd)
            return torch.cat([ta, tx], dim=3).flatten(2, 3)

        q, k, v = merge(q, aq), merge(k, ak), merge(v, av)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(a.transpose(1, 2).reshape(B, N, C))


class RefMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = RefAttention(dim, heads), RefMLP(dim, hidden)

    def forward(self, x, mask, T, H, W, cond):
        x = x + self.attn(self.norm1(x), mask, T, H, W, cond)
        return x + self.mlp(self.norm2(x))


class RefAC(nn.Module):
    def __init__(self, c: ACConfig):
        super().__init__()
        self.c = c
        D = c.hidden_size
        self.predictor_embed = nn.Linear(c.enc_dim, D)
        self.action_encoder = nn.Linear(c.action_dim, D)
        self.state_encoder = nn.Linear(c.state_dim, D)
        self.extrinsics_encoder = nn.Linear(c.action_dim - 1, D)
        self.predictor_blocks = nn.ModuleList(RefBlock(D, c.num_heads, int(D * c.mlp_ratio)) for _ in range(c.depth))
        self.predictor_norm = nn.LayerNorm(D, eps=1e-6)
        self.predictor_proj = nn.Linear(D, c.enc_dim)
        for p in self.parameters():  # fresh random weights, LayerNorms included
            nn.init.normal_(p, mean=1.0 if p.dim() == 1 and p.shape[0] == D else 0.0, std=0.3 / math.sqrt(p.shape[-1]))
        self.mask = block_causal_mask(8, c.grid_h, c.grid_w, 2)  # built once, cropped, as Meta does

    def forward(self, z, actions, states):
        c = self.c
        x = self.predictor_embed(z)
        B, N, D = x.shape
        T = N // (c.grid_h * c.grid_w)
        x = x.view(B, T, c.grid_h * c.grid_w, D)
        x = torch.cat([self.action_encoder(actions)[:, :, None], self.state_encoder(states)[:, :, None], x], 2).flatten(1, 2)
        mask = self.mask[:x.shape[1], :x.shape[1]]
        for blk in self.predictor_blocks:
            x = blk(x, mask, T, c.grid_h, c.grid_w, 2)
        x = x.view(B, T, 2 + c.grid_h * c.grid_w, D)[:, :, 2:].flatten(1, 2)
        return self.predictor_proj(self.predictor_norm(x))


SHAPES = [  # (config, batch, steps): head dims 64, 32 and 80, square and non-square grids, 1 step
    (ACConfig(enc_dim=48, hidden_size=128, depth=2, num_heads=2, grid_h=3, grid_w=3), 2, 3),
    (ACConfig(enc_dim=40, hidden_size=96, depth=2, num_heads=3, grid_h=2, grid_w=5, action_dim=4, state_dim=6), 3, 4),
    (ACConfig(enc_dim=32, hidden_size=160, depth=1, num_heads=2, grid_h=4, grid_w=2), 1, 1),
]


def inputs(c: ACConfig, B: int, T: int):
    return (torch.randn(B, T * c.tokens_per_frame, c.enc_dim), torch.randn(B, T, c.action_dim),
            torch.randn(B, T, c.state_dim))


def meta_pair(c: ACConfig, tmp_path):
    """A random reference and our model loaded from its weights saved in Meta's checkpoint format."""
    ref = RefAC(c)
    path = tmp_path / "ac.pt"
    torch.save({"encoder": {}, "predictor": {"module." + k: v for k, v in ref.state_dict().items()}}, path)
    return ref, ACPredictor.from_meta_checkpoint(path, c)


@pytest.mark.parametrize("c,B,T", SHAPES)
def test_forward_matches_meta_reference(c, B, T, tmp_path):
    ref, ours = meta_pair(c, tmp_path)
    z, a, s = inputs(c, B, T)
    with torch.no_grad():
        expected, got = ref(z, a, s), ours(z, a, s)
    assert got.shape == (B, T * c.tokens_per_frame, c.enc_dim)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("c,B,T", SHAPES[:2])
def test_block_causal(c, B, T):
    model = ACPredictor(c)
    z, a, s = inputs(c, B, T)
    P = c.tokens_per_frame
    with torch.no_grad():
        base = model(z, a, s)
        for t in range(T - 1):  # perturb everything of step t+1: features, action and state
            z2, a2, s2 = z.clone(), a.clone(), s.clone()
            z2[:, (t + 1) * P:(t + 2) * P] += 1.0
            a2[:, t + 1] += 1.0
            s2[:, t + 1] -= 1.0
            out = model(z2, a2, s2)
            torch.testing.assert_close(out[:, :(t + 1) * P], base[:, :(t + 1) * P], atol=1e-6, rtol=0)
            assert not torch.allclose(out[:, (t + 1) * P:(t + 2) * P], base[:, (t + 1) * P:(t + 2) * P], atol=1e-3)


@pytest.mark.parametrize("c,B,T", SHAPES[:2])
def test_kv_cached_steps_equal_full_forward(c, B, T):
    model = ACPredictor(c)
    z, a, s = inputs(c, B, T)
    P = c.tokens_per_frame
    with torch.no_grad():
        full = model(z, a, s)
    cache = ACCache()
    for t in range(T):
        out = model.step(z[:, t * P:(t + 1) * P], a[:, t], s[:, t], cache)
        torch.testing.assert_close(out, full[:, t * P:(t + 1) * P], atol=1e-5, rtol=1e-5)
    assert cache.steps == T


def test_meta_checkpoint_strict(tmp_path):
    c = SHAPES[0][0]
    ref = RefAC(c)
    state = {"module." + k: v for k, v in ref.state_dict().items()}
    path = tmp_path / "ac.pt"
    torch.save({"predictor": {k: v for k, v in state.items() if "blocks.1.mlp.fc2.bias" not in k}}, path)
    with pytest.raises(CheckpointError, match="missing keys.*predictor_blocks.1.mlp.fc2.bias"):
        ACPredictor.from_meta_checkpoint(path, c)
    torch.save({"predictor": dict(state, **{"module.mask_tokens.0": torch.zeros(3)})}, path)
    with pytest.raises(CheckpointError, match="unexpected keys.*mask_tokens.0"):
        ACPredictor.from_meta_checkpoint(path, c)
    torch.save({"predictor": state}, path)
    with pytest.raises(ValueError, match="predictor_embed.weight has shape"):
        ACPredictor.from_meta_checkpoint(path, ACConfig(**{**c.__dict__, "enc_dim": c.enc_dim + 1}))
    # Without a config, the shapes give it (heads from head dim 64, as released).
    model = ACPredictor.from_meta_checkpoint(path)
    assert (model.config.enc_dim, model.config.depth, model.config.num_heads) == (c.enc_dim, c.depth, c.num_heads)
    # Round trip through our Meta-format export (the grid is not in the weights: pass the config).
    model = ACPredictor.from_meta_checkpoint(path, c)
    torch.save({"predictor": model.meta_state_dict()}, path)
    again = ACPredictor.from_meta_checkpoint(path, c)
    z, a, s = inputs(c, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(again(z, a, s), model(z, a, s))


def test_bad_inputs():
    c = SHAPES[0][0]
    model = ACPredictor(c)
    z, a, s = inputs(c, 2, 2)
    with pytest.raises(ValueError, match="actions must be"):
        model(z, torch.randn(2, 2, c.action_dim + 1), s)
    with pytest.raises(ValueError, match="states must be"):
        model(z, a, torch.randn(2, 2, 3))
    with pytest.raises(ValueError, match="features must be"):
        model(z[:, :-1], a, s)
    with pytest.raises(ValueError, match="action and state must be"):
        model.step(z[:, :c.tokens_per_frame], a, s[:, 0], ACCache())
    with pytest.raises(ValueError, match="ACConfig.hidden_size"):
        ACConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="unknown AC preset"):
        ACConfig.from_name("ac-vitx")
    assert ACConfig.from_name("ac-vitg").tokens_per_step == 258


def test_gradient_checkpointing_gives_the_same_gradients():
    c = SHAPES[1][0]
    model = ACPredictor(c)
    z, a, s = inputs(c, 2, 3)
    grads = []
    for flag in (False, True):
        model.gradient_checkpointing = flag
        model.zero_grad()
        model(z, a, s).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)
