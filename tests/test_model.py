"""The model's own behaviour: RoPE modes and grids, config round trips, strict loading, bad input."""
import json

import pytest
import torch

from vjepa_fast import VJEPA2Config, VJEPA2Model
from vjepa_fast.checkpoints import CheckpointError
from vjepa_fast.ops.rope import apply_rope_ref, make_rope, segment_width, token_positions
from vjepa_fast.testing import hf_model
from vjepa_fast.video import normalize

transformers = pytest.importorskip("transformers")


hf_vjepa2 = pytest.importorskip("transformers.models.vjepa2.modeling_vjepa2")


def tiny(**overrides):
    return VJEPA2Config(**{**VJEPA2Config.from_name("tiny").__dict__, **overrides})


@pytest.mark.parametrize("head_dim", [32, 64, 80])
def test_tile_rope_matches_transformers_rotation(head_dim):
    """Our single-table rotation equals transformers' per-segment rotation, tail included."""
    B, H, N, grid = 2, 3, 37, 5
    x = torch.randn(B, H, N, head_dim)
    ids = torch.stack([torch.randperm(4 * grid * grid)[:N] for _ in range(B)])
    t, h, w = token_positions(ids, grid, grid).unbind(-1)
    s = segment_width(head_dim)
    expected = torch.cat([
        hf_vjepa2.rotate_queries_or_keys(x[..., 0:s], t[:, None].expand(B, H, N)),
        hf_vjepa2.rotate_queries_or_keys(x[..., s:2 * s], h[:, None].expand(B, H, N)),
        hf_vjepa2.rotate_queries_or_keys(x[..., 2 * s:3 * s], w[:, None].expand(B, H, N)),
        x[..., 3 * s:]], dim=-1)
    rope = make_rope(token_positions(ids, grid, grid), head_dim, "tile")
    assert torch.equal(apply_rope_ref(x, rope.cos, rope.sin), expected)


@pytest.mark.parametrize("head_dim", [32, 64, 80])
def test_interleave_rope_is_a_true_rotation_of_pairs(head_dim):
    """V-JEPA 2.1 mode: each adjacent pair turns by one angle, as a complex multiplication."""
    N = 29
    x = torch.randn(1, 2, N, head_dim, dtype=torch.float64)
    positions = torch.randint(0, 9, (1, N, 3))
    rope = make_rope(positions, head_dim, "interleave")
    y = apply_rope_ref(x, rope.cos.double(), rope.sin.double())
    s = segment_width(head_dim)
    for axis in range(3):
        seg = slice(axis * s, (axis + 1) * s)
        freqs = 10000 ** (-torch.arange(s // 2, dtype=torch.float64) / (s / 2))
        angle = positions[0, :, axis, None].double() * freqs
        z = torch.view_as_complex(x[..., seg].unflatten(-1, (-1, 2)).contiguous()) * torch.polar(torch.ones_like(angle), angle)
        assert torch.allclose(y[..., seg], torch.view_as_real(z).flatten(-2), atol=1e-6)
    assert torch.equal(y[..., 3 * s:], x[..., 3 * s:])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))
    tile = make_rope(positions, head_dim, "tile")
    assert not torch.allclose(apply_rope_ref(x, tile.cos.double(), tile.sin.double()), y)


def test_use_rope_interleave_key_is_honoured(tmp_path):
    ref = hf_model("vitl", depth=1, pred_depth=1)
    ref.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["use_rope_interleave"] = True
    config["some_future_key"] = 3  # unknown keys are tolerated
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = VJEPA2Model.from_pretrained(str(tmp_path))
    assert model.config.rope_mode == "interleave"
    x = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(model.get_vision_features(x), ref.get_vision_features(x), atol=1e-3)
    model.save_pretrained(str(tmp_path / "again"))
    assert json.loads((tmp_path / "again" / "config.json").read_text())["use_rope_interleave"] is True


def test_input_grid_positions_match_transformers_at_that_crop(tmp_path):
    """rope_grid='input' decodes positions on the real grid: on a 96 px input it equals
    transformers configured for a 96 px crop, and differs from the default 64 px config grid."""
    ref96 = hf_model("vitl", depth=1, pred_depth=1, crop_size=96)
    ref96.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["crop_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours_input = VJEPA2Model.from_pretrained(str(tmp_path), rope_grid="input")
    ours_config = VJEPA2Model.from_pretrained(str(tmp_path))
    x = torch.randn(2, 4, 3, 96, 96)
    with torch.no_grad():
        expected = ref96.get_vision_features(x)
        assert (ours_input.get_vision_features(x) - expected).abs().max() <= 1e-4
        assert (ours_config.get_vision_features(x) - expected).abs().max() > 1e-3


def test_sharded_checkpoint_loads(tmp_path):
    ref = hf_model("vitl", depth=2, pred_depth=1)
    ref.save_pretrained(tmp_path, max_shard_size="20MB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = VJEPA2Model.from_pretrained(str(tmp_path))
    x = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        assert (ours.get_vision_features(x) - ref.get_vision_features(x)).abs().max() <= 1e-4


def test_wrong_keys_and_shapes_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file
    ref = hf_model("vitl", depth=1, pred_depth=1)
    ref.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["encoder.layer.0.extra.weight"] = torch.zeros(1)
    del state["predictor.proj.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \['predictor.proj.bias'\].*unexpected keys \['encoder.layer.0.extra.weight'\]"):
        VJEPA2Model.from_pretrained(str(tmp_path))
    del state["encoder.layer.0.extra.weight"]
    state["predictor.proj.bias"] = torch.zeros(7)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"predictor.proj.bias has shape \(7,\), the model expects \(1024,\)"):
        VJEPA2Model.from_pretrained(str(tmp_path))


def test_missing_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not a local directory and could not be downloaded"):
        VJEPA2Model.from_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        VJEPA2Model.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        VJEPA2Model.from_meta_checkpoint(str(tmp_path / "none.pt"))


@pytest.mark.parametrize("shape,message", [
    ((2, 3, 64, 64), "pixel_values_videos must have shape \\(batch, frames, channels, height, width\\)"),
    ((1, 2, 4, 64, 64), "pixel_values_videos must have 3 channels"),
    ((1, 2, 3, 64, 72), "pixel_values_videos height and width must be positive multiples of patch_size=16"),
    ((1, 0, 3, 64, 64), "pixel_values_videos must hold at least one clip of one frame"),
])
def test_bad_video_shapes_name_the_argument(shape, message):
    model = VJEPA2Model(tiny())
    with pytest.raises(ValueError, match=message):
        model(torch.randn(shape))


def test_nan_input_rejected_when_checked():
    model = VJEPA2Model(tiny())
    x = torch.randn(1, 2, 3, 64, 64)
    x[0, 1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="pixel_values_videos contains NaN or inf"):
        model.get_vision_features(x, check_finite=True)
    assert torch.isnan(model.get_vision_features(x)).any()  # unchecked: no cost, NaN flows through


def test_uint8_crops_are_normalised_inside_the_embedding():
    """uint8 crops give the features of the processor's normalised float pixels, and the uint8
    path reaches tubelet_embed with the ImageNet statistics in pixel units."""
    model = VJEPA2Model(tiny()).eval()
    crops = torch.randint(0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        ours = model.get_vision_features(crops)
        want = model.get_vision_features(normalize(crops))
    torch.testing.assert_close(ours, want, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(ours, model.get_vision_features(crops.float()), atol=1e-2)


def test_integer_pixels_other_than_uint8_rejected():
    with pytest.raises(TypeError, match=r"pixel_values_videos must be float \(normalised pixels\) or uint8"):
        VJEPA2Model(tiny())(torch.zeros(1, 2, 3, 64, 64, dtype=torch.int32))


def test_bad_masks_name_the_argument():
    model = VJEPA2Model(tiny())
    x = torch.randn(2, 2, 3, 64, 64)  # 16 tokens
    ok = torch.arange(8).expand(2, 8)
    with pytest.raises(ValueError, match=r"target_mask\[0\] holds token indices outside \[0, 16\)"):
        model(x, context_mask=[ok], target_mask=[ok + 9])
    with pytest.raises(ValueError, match=r"context_mask\[0\] must be an integer tensor of shape \(2, K\)"):
        model(x, context_mask=[ok[:1]], target_mask=[ok])
    with pytest.raises(ValueError, match="must be given together"):
        model(x, context_mask=[ok])
    with pytest.raises(ValueError, match="lists of the same length"):
        model(x, context_mask=[ok, ok], target_mask=[ok])


def test_unknown_preset_and_bad_config_values():
    with pytest.raises(ValueError, match="unknown preset 'vitz'"):
        VJEPA2Config.from_name("vitz")
    with pytest.raises(ValueError, match="rope_mode must be one of"):
        tiny(rope_mode="spiral")
    with pytest.raises(ValueError, match="hidden_size \\(100\\) must be divisible by num_attention_heads \\(3\\)"):
        tiny(hidden_size=100)


def test_presets_have_the_released_sizes():
    with torch.device("meta"):  # shapes only
        sizes = {name: sum(p.numel() for p in VJEPA2Model(VJEPA2Config.from_name(name)).encoder.parameters()) / 1e6
                 for name in ("vitl", "vith", "vitg")}
    assert 300 < sizes["vitl"] < 306 and 628 < sizes["vith"] < 636 and 1005 < sizes["vitg"] < 1015  # 304M, 632M, 1012M
    g = VJEPA2Config.from_name("vitg")
    assert (g.mlp_hidden_size, g.hidden_size // g.num_attention_heads) == (6144, 64)
    assert VJEPA2Config.from_name("vith").hidden_size // 16 == 80
    assert VJEPA2Config.from_name("vitg-384").grid_size == 24


def test_gather_before_embedding_equals_encoding_the_kept_tokens_alone():
    """Encoder(video, token_ids) embeds and encodes only the kept tokens with their own positions."""
    model = VJEPA2Model(tiny()).eval()
    x = torch.randn(2, 4, 3, 64, 64)
    ids = torch.stack([torch.randperm(32)[:11].sort().values for _ in range(2)])
    with torch.no_grad():
        got = model.encoder(x, token_ids=ids)
        full = model.encoder(x)
    assert got.shape == (2, 11, 192)
    assert not torch.allclose(got, torch.gather(full, 1, ids[..., None].expand(-1, -1, 192)), atol=1e-3)
    # Reference: embed everything, gather, then run the blocks with the kept positions.
    from vjepa_fast.model import run_blocks
    from vjepa_fast.ops.tubelet_embed import tubelet_embed_ref
    enc = model.encoder
    tokens = torch.gather(tubelet_embed_ref(x, enc.patch_embed.weight, enc.patch_embed.bias), 1, ids[..., None].expand(-1, -1, 192))
    rope = make_rope(token_positions(ids, 4, 4), 64, "tile")
    with torch.no_grad():
        expected = enc.norm(run_blocks(enc.blocks, tokens, rope, False))
    assert (got - expected).abs().max() <= 1e-5


def test_classifier_checkpoint_loads_its_backbone(tmp_path):
    """Like transformers, VJEPA2Model.from_pretrained of a classification checkpoint takes the
    backbone and leaves the head out."""
    config = hf_model("vitl", depth=1, pred_depth=1).config
    config.num_labels = 5
    ref = transformers.VJEPA2ForVideoClassification(config).eval()
    ref.save_pretrained(tmp_path)
    ours = VJEPA2Model.from_pretrained(str(tmp_path)).eval()
    x = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        assert (ours.get_vision_features(x) - ref.vjepa2.get_vision_features(x)).abs().max() <= 1e-4
