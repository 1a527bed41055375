"""Parity with transformers' VJEPA2Model on checkpoints it saved itself, in both directions."""
import dataclasses

import pytest
import torch

from vjepa_fast import VJEPA2Model
from vjepa_fast.checkpoints import ours_to_meta
from vjepa_fast.testing import SHAPES, hf_model

transformers = pytest.importorskip("transformers")


TOL = 1e-4


def max_diff(a, b):
    return (a - b).abs().max().item()


def random_masks(B, N, n_ctx, n_tgt):
    """Per-sample masks of different content: a random split of the tokens for each sample."""
    ctx, tgt = [], []
    for _ in range(B):
        perm = torch.randperm(N)
        ctx.append(perm[:n_ctx].sort().values)
        tgt.append(perm[n_ctx:n_ctx + n_tgt].sort().values)
    return torch.stack(ctx), torch.stack(tgt)


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pair(request, tmp_path_factory):
    ref = hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    return ref, VJEPA2Model.from_pretrained(str(path)).eval()


@pytest.mark.parametrize("B,T,H,W", [(1, 8, 64, 64), (3, 5, 64, 64), (2, 1, 64, 64), (2, 4, 48, 80)])
def test_encoder_matches_transformers(pair, B, T, H, W):
    ref, ours = pair
    x = torch.randn(B, T, 3, H, W)
    with torch.no_grad():
        expected = ref.get_vision_features(x)
        got = ours.get_vision_features(x)
    assert got.shape == expected.shape
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize("B,T,H,W", [(2, 4, 64, 64), (3, 3, 48, 80)])
def test_predictor_matches_transformers(pair, B, T, H, W):
    ref, ours = pair
    x = torch.randn(B, T, 3, H, W)
    N = (max(T, 2) // 2) * (H // 16) * (W // 16)
    ctx, tgt = random_masks(B, N, N // 3, N // 2)
    with torch.no_grad():
        e = ref(x, context_mask=[ctx], target_mask=[tgt])
        g = ours(x, context_mask=[ctx], target_mask=[tgt])
    assert max_diff(g.last_hidden_state, e.last_hidden_state) <= TOL
    assert torch.equal(g.masked_hidden_state, ours.encoder(x)[torch.arange(B)[:, None], ctx])
    assert max_diff(g.masked_hidden_state, e.masked_hidden_state) <= TOL
    assert max_diff(g.predictor_output.target_hidden_state, e.predictor_output.target_hidden_state) <= TOL
    assert max_diff(g.predictor_output.last_hidden_state, e.predictor_output.last_hidden_state) <= TOL


def test_default_masks_match_transformers(pair):
    ref, ours = pair
    x = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        e, g = ref(x), ours(x)
    assert max_diff(g.predictor_output.last_hidden_state, e.predictor_output.last_hidden_state) <= TOL
    assert max_diff(g.masked_hidden_state, e.masked_hidden_state) <= TOL


def test_several_masks_pair_context_with_target(pair):
    """transformers crashes on lists of two masks; ours pairs context i with target i."""
    _, ours = pair
    x = torch.randn(2, 4, 3, 64, 64)
    c1, t1 = random_masks(2, 32, 10, 12)
    c2, t2 = random_masks(2, 32, 10, 12)
    with torch.no_grad():
        both = ours(x, context_mask=[c1, c2], target_mask=[t1, t2])
        one = ours(x, context_mask=[c1], target_mask=[t1])
        two = ours(x, context_mask=[c2], target_mask=[t2])
    pred = both.predictor_output.last_hidden_state
    assert pred.shape[0] == 4
    assert max_diff(pred[:2], one.predictor_output.last_hidden_state) <= 1e-5
    assert max_diff(pred[2:], two.predictor_output.last_hidden_state) <= 1e-5


def test_save_pretrained_loads_in_transformers(tmp_path):
    ours = VJEPA2Model(hf_config_shaped("vith")).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours.save_pretrained(str(tmp_path))
    ref = transformers.VJEPA2Model.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    x = torch.randn(2, 4, 3, 64, 64)
    ctx, tgt = random_masks(2, 32, 11, 17)
    with torch.no_grad():
        e = ref(x, context_mask=[ctx], target_mask=[tgt])
        g = ours(x, context_mask=[ctx], target_mask=[tgt])
    assert max_diff(g.last_hidden_state, e.last_hidden_state) <= TOL
    assert max_diff(g.predictor_output.last_hidden_state, e.predictor_output.last_hidden_state) <= TOL


def hf_config_shaped(shape):
    from vjepa_fast import VJEPA2Config
    s = SHAPES[shape]
    return VJEPA2Config(num_hidden_layers=2, pred_num_hidden_layers=2, frames_per_clip=8, **s)


def test_meta_checkpoint_gives_identical_outputs(pair, tmp_path):
    _, ours = pair
    encoder, predictor = ours_to_meta(ours.state_dict())
    target_encoder = {k: v + 1.0 for k, v in encoder.items()}
    path = tmp_path / "meta.pt"
    torch.save({"encoder": encoder, "predictor": predictor, "target_encoder": target_encoder, "epoch": 3}, path)
    loaded = VJEPA2Model.from_meta_checkpoint(str(path), config=ours.config).eval()
    inferred = VJEPA2Model.from_meta_checkpoint(str(path)).eval()
    # Shapes carry everything but the crop size and clip length the weights were trained at.
    assert inferred.config == dataclasses.replace(ours.config, crop_size=256, frames_per_clip=64)
    x = torch.randn(2, 4, 3, 64, 64)
    ctx, tgt = random_masks(2, 32, 9, 20)
    with torch.no_grad():
        a = ours(x, context_mask=[ctx], target_mask=[tgt])
        b = loaded(x, context_mask=[ctx], target_mask=[tgt])
    assert torch.equal(b.last_hidden_state, a.last_hidden_state)
    assert torch.equal(b.predictor_output.last_hidden_state, a.predictor_output.last_hidden_state)
    target = VJEPA2Model.from_meta_checkpoint(str(path), config=ours.config, encoder_key="target_encoder")
    assert torch.equal(target.encoder.norm.bias, ours.encoder.norm.bias + 1.0)
