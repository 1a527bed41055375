"""V-JEPA 2.1 against Meta's own 2.1 code: tests/data/vjepa21/ holds inputs, weights and outputs
of Meta's modules on tiny random models (its README says what each case is; copied from the
project's shared fixtures). fp32, atol 1e-5 (the fixture's own re-implementation agrees to 2e-6)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vjepa_fast import VJEPA2Model
from vjepa_fast.checkpoints import CheckpointError, meta_to_ours, ours_to_meta
from vjepa_fast.config import VJEPA2Config
from vjepa_fast.ops.rope import apply_rope_ref, make_rope

BUNDLE = Path(__file__).parent / "data" / "vjepa21" / "vjepa21_bundle.pt"
ATOL = 1e-5


@pytest.fixture(scope="module")
def bundle() -> dict:
    return torch.load(BUNDLE, weights_only=True)


def our_config(enc: dict, pred: dict) -> VJEPA2Config:
    """Our config for Meta's encoder and predictor constructor arguments. crop_size is the
    predictor's grid (Meta's 2.1 predictor decodes positions on its configured grid; the
    encoder's interpolated positions come from the input, whatever its img_size)."""
    depth = enc["depth"]
    taps = {12: [2, 5, 8, 11]}[depth]
    return VJEPA2Config(
        patch_size=enc["patch_size"], crop_size=pred["img_size"][0], frames_per_clip=enc["num_frames"],
        tubelet_size=enc["tubelet_size"], hidden_size=enc["embed_dim"], num_hidden_layers=depth,
        num_attention_heads=enc["num_heads"], mlp_ratio=enc["mlp_ratio"], layer_norm_eps=enc["layer_norm_eps"],
        pred_hidden_size=pred["predictor_embed_dim"], pred_num_hidden_layers=pred["depth"],
        pred_num_attention_heads=pred["num_heads"], pred_mlp_ratio=pred["mlp_ratio"],
        pred_num_mask_tokens=pred["num_mask_tokens"], rope_mode="interleave",
        use_modality_embeddings=enc["modality_embedding"], use_image_patch_embedder=enc["img_temporal_dim_size"] == 1,
        interpolate_rope=enc["interpolate_rope"], pred_interpolate_rope=pred["interpolate_rope"],
        hierarchical_layers=taps, num_distillation_outputs=pred["n_output_distillation"],
        teacher_embed_dim=pred.get("teacher_embed_dim"), use_context_projection=pred["return_all_tokens"])


def load(bundle: dict, pred_case: str = "pred_4level") -> VJEPA2Model:
    enc, pred = bundle["enc_video"], bundle[pred_case]
    model = VJEPA2Model(our_config(enc["config"], pred["config"])).eval()
    model.load_state_dict(meta_to_ours(model.state_dict(), enc["state_dict"], pred["state_dict"], "fixture"))
    return model


def video(x: torch.Tensor) -> torch.Tensor:
    """Meta's (B, C, T, H, W) float16 input -> ours (B, T, C, H, W) fp32."""
    return x.float().permute(0, 2, 1, 3, 4)


def hierarchical(model: VJEPA2Model, x: torch.Tensor, token_ids=None) -> torch.Tensor:
    levels = []
    model.encoder(video(x), token_ids, None, None, levels)
    return levels[0]


@torch.no_grad()
@pytest.mark.parametrize("case", ["enc_video", "enc_image", "enc_nonsquare"])
def test_encoder_matches_meta(bundle, case):
    model, fixture = load(bundle), bundle[case]
    x, out = fixture["inputs"]["x"], fixture["outputs"]
    torch.testing.assert_close(model.encoder(video(x)), out["full"], atol=ATOL, rtol=0)
    if "full_training" in out:
        torch.testing.assert_close(hierarchical(model, x), out["full_training"], atol=ATOL, rtol=0)
    if "masks" in fixture["inputs"]:
        masks = fixture["inputs"]["masks"]
        if "masked" in out:
            torch.testing.assert_close(model.encoder(video(x), masks), out["masked"], atol=ATOL, rtol=0)
        torch.testing.assert_close(hierarchical(model, x, masks), out["masked_training"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_one_level_encoder_taps_the_last_norm(bundle):
    model = load(bundle, "pred_1level_teacher")
    fixture = bundle["enc_nout1"]
    x, out = fixture["inputs"]["x"], fixture["outputs"]
    torch.testing.assert_close(model.encoder(video(x)), out["full"], atol=ATOL, rtol=0)
    torch.testing.assert_close(hierarchical(model, x), out["full_training"], atol=ATOL, rtol=0)
    torch.testing.assert_close(hierarchical(model, x, fixture["inputs"]["masks"]), out["masked_training"],
                               atol=ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("case", ["pred_4level", "pred_1level_teacher"])
def test_predictor_matches_meta(bundle, case):
    model, fixture = load(bundle, case), bundle[case]
    i, out = fixture["inputs"], fixture["outputs"]
    grid = (model.config.grid_size,) * 2
    pred, context = model.predictor(i["x"], i["masks_x"], i["masks_y"], grid, return_context=True)
    torch.testing.assert_close(pred, out["video_pred"], atol=ATOL, rtol=0)
    torch.testing.assert_close(context, out["video_context"], atol=ATOL, rtol=0)
    if "x_image" in i:
        pred, context = model.predictor(i["x_image"], i["masks_x_image"], i["masks_y_image"], grid, mask_index=2,
                                        image=True, return_context=True)
        torch.testing.assert_close(pred, out["image_pred"], atol=ATOL, rtol=0)
        torch.testing.assert_close(context, out["image_context"], atol=ATOL, rtol=0)


def test_rope_rotation_and_positions_match_meta(bundle):
    """The 2.1 rotation on one axis segment at integer, interpolated (fractional) and per-sample
    positions; and the positions our encoder gives its tokens, against those Meta's attention used."""
    rope_case = bundle["rope"]
    x = rope_case["inputs"]["x"]  # (B, heads, N, 10): one axis segment of a head of 32
    for name, out in (("pos_int", "rot_int"), ("pos_interp", "rot_interp"), ("pos_batch", "rot_batch")):
        pos = rope_case["inputs"][name]
        pos = pos.expand(x.shape[:3]) if pos.dim() == 1 else pos
        positions = torch.zeros(x.shape[0] * x.shape[1], x.shape[2], 3)
        positions[..., 0] = pos.reshape(-1, x.shape[2])  # the time axis holds channels [0, 10) of head dim 32
        rope = make_rope(positions, 32, "interleave")
        padded = torch.cat((x.reshape(-1, 1, x.shape[2], 10), torch.zeros(positions.shape[0], 1, x.shape[2], 22)), -1)
        got = apply_rope_ref(padded, rope.cos, rope.sin)[..., :10].reshape(x.shape)
        torch.testing.assert_close(got, rope_case["outputs"][out], atol=ATOL, rtol=0)
    model = load(bundle)
    for case, key in (("enc_video", "enc_video_full"), ("enc_image", "enc_image_full"),
                      ("enc_nonsquare", "enc_nonsquare_full")):
        clip = model.encoder.frames(video(bundle[case]["inputs"]["x"]))
        n = torch.tensor(model.encoder.grid(clip)).prod()
        positions = model.encoder.rope(torch.arange(n)[None], clip).positions[0]  # (N, 3)
        meta = rope_case["positions"][key]
        for axis, name in enumerate("dhw"):
            torch.testing.assert_close(positions[:, axis], meta[name].float(), atol=1e-6, rtol=0)


@torch.no_grad()
def test_released_layout_loads_strictly_with_the_right_encoder(bundle, tmp_path):
    released = bundle["released_2_1"]
    path = tmp_path / "vjepa2_1.pt"
    torch.save(released["checkpoint"], path)
    config = our_config(released["config_encoder"], released["config_predictor"])
    x = video(released["inputs"]["x"])
    ema = VJEPA2Model.from_meta_checkpoint(str(path), config).eval()  # default: ema_encoder, the distilled B/L
    torch.testing.assert_close(ema.get_vision_features(x), released["outputs"]["ema_encoder_full"], atol=ATOL, rtol=0)
    target = VJEPA2Model.from_meta_checkpoint(str(path), config, encoder_key="target_encoder").eval()
    torch.testing.assert_close(target.get_vision_features(x), released["outputs"]["target_encoder_full"],
                               atol=ATOL, rtol=0)
    assert not torch.allclose(released["outputs"]["ema_encoder_full"], released["outputs"]["target_encoder_full"],
                              atol=1e-3)
    broken = copy.copy(released["checkpoint"])
    broken["ema_encoder"] = {k.replace("norms_block.3", "norms_block.9"): v for k, v in broken["ema_encoder"].items()}
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['encoder.norms_block.3.bias'.*unexpected keys "
                                              r"\['encoder.norms_block.9.bias'"):
        VJEPA2Model.from_meta_checkpoint(str(path), config)


@torch.no_grad()
def test_saved_and_reloaded_both_ways(bundle, tmp_path):
    """transformers-style folder (from_pretrained picks 2.1 from config.json alone) and Meta's
    layout back; the model's forward gives the fixture's numbers through either."""
    model = load(bundle)
    x = bundle["enc_video"]["inputs"]["x"]
    model.save_pretrained(tmp_path / "hf")
    again = VJEPA2Model.from_pretrained(str(tmp_path / "hf")).eval()
    assert again.config.is_v21 and again.config.to_dict() == model.config.to_dict()
    torch.testing.assert_close(again.get_vision_features(video(x)), bundle["enc_video"]["outputs"]["full"],
                               atol=ATOL, rtol=0)
    encoder, predictor = ours_to_meta(model.state_dict())
    torch.save({"ema_encoder": encoder, "predictor": predictor, "epoch": 0}, tmp_path / "meta.pt")
    meta = VJEPA2Model.from_meta_checkpoint(str(tmp_path / "meta.pt"), model.config).eval()
    assert all(torch.equal(a, b) for a, b in zip(meta.state_dict().values(), model.state_dict().values()))


@torch.no_grad()
def test_model_forward_feeds_the_predictor_the_levels(bundle):
    """VJEPA2Model.forward on a 2.1 model: the predictor reads the hierarchical context tokens
    and predicts levels; output_hierarchical returns the levels."""
    model = load(bundle)
    x = video(bundle["enc_video"]["inputs"]["x"])
    context, target = bundle["pred_4level"]["inputs"]["masks_x"], bundle["pred_4level"]["inputs"]["masks_y"]
    out = model(x, [context], [target], output_hierarchical=True)
    torch.testing.assert_close(out.hierarchical_hidden_state, bundle["enc_video"]["outputs"]["full_training"],
                               atol=ATOL, rtol=0)
    levels = out.hierarchical_hidden_state
    gathered = torch.gather(levels, 1, context[..., None].expand(-1, -1, levels.shape[-1]))
    pred, ctx = model.predictor(gathered, context, target, (4, 4), return_context=True)
    torch.testing.assert_close(out.predictor_output.last_hidden_state, pred)
    torch.testing.assert_close(out.predictor_output.context_hidden_state, ctx)
    assert out.predictor_output.target_hidden_state.shape == (2, target.shape[1], 4 * 64)


def test_the_other_version_is_refused_clearly(bundle, tmp_path):
    released = bundle["released_2_1"]
    path = tmp_path / "vjepa2_1.pt"
    torch.save(released["checkpoint"], path)
    with pytest.raises(CheckpointError, match="holds a V-JEPA 2.1 model, the config is V-JEPA 2"):
        VJEPA2Model.from_meta_checkpoint(str(path), VJEPA2Config(hidden_size=64, num_hidden_layers=12,
                                                                 num_attention_heads=2))
    v2 = VJEPA2Model(VJEPA2Config.from_name("tiny"))
    encoder, predictor = ours_to_meta(v2.state_dict())
    torch.save({"encoder": encoder, "predictor": predictor}, tmp_path / "v2.pt")
    with pytest.raises(CheckpointError, match="holds a V-JEPA 2 model, the config is V-JEPA 2.1"):
        VJEPA2Model.from_meta_checkpoint(str(tmp_path / "v2.pt"), load(bundle).config)
    with pytest.raises(ValueError, match="output_hierarchical=True needs a V-JEPA 2.1 model"):
        v2(torch.zeros(1, 2, 3, 64, 64), output_hierarchical=True)
    with pytest.raises(ValueError, match="hierarchical_layers must be ascending block indices ending with the last"):
        VJEPA2Config(hidden_size=64, num_hidden_layers=12, num_attention_heads=2, hierarchical_layers=[2, 5, 8])
    with pytest.raises(ValueError, match="belong to V-JEPA 2.1 models"):
        VJEPA2Config(use_modality_embeddings=True)
    import dataclasses
    no_images = VJEPA2Model(dataclasses.replace(load(bundle).config, use_image_patch_embedder=False))
    with pytest.raises(ValueError, match="has 1 frame.*no image tokenizer.*at least tubelet_size=2 frames"):
        no_images.get_vision_features(torch.zeros(1, 1, 3, 64, 64))


@torch.no_grad()
def test_classifier_extraction_and_ac_take_21_encoders(tmp_path):
    """The downstream paths read a 2.1 encoder's inference output (images through its image tokenizer)."""
    from vjepa_fast.ac_model import encode_frames
    from vjepa_fast.classifier import VJEPA2ForVideoClassification
    from vjepa_fast.jobs.extract import ExtractConfig, iter_features, write_demo_video
    config = VJEPA2Config.from_name("tiny-2.1")
    classifier = VJEPA2ForVideoClassification(config).eval()
    assert classifier(torch.randn(2, 4, 3, 64, 64)).logits.shape == (2, 2)
    assert classifier(torch.randn(2, 1, 3, 64, 64)).logits.shape == (2, 2)
    model = VJEPA2Model(config).eval()
    model.save_pretrained(tmp_path / "m")
    write_demo_video(tmp_path / "v.mp4", 16)
    (key, features), = iter_features(ExtractConfig(videos=[str(tmp_path / "v.mp4")], model=str(tmp_path / "m"),
                                                   out=str(tmp_path / "o"), num_frames=8, layers="2,4", progress=False))
    assert key == "v" and features.shape == (2, 64, 192)
    frames = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    z = encode_frames(model.encoder, frames)
    assert z.shape == (3, 16, 192)  # one image token grid per frame: the image tokenizer, not a repeated tubelet


def test_convert_cli_reads_a_21_file_by_its_shapes(tmp_path):
    """`python -m vjepa_fast.convert` on a 2.1 .pt of a released width (ViT-B's 768, 12 blocks;
    a narrow MLP keeps it small): the config comes from the shapes, the encoder from ema_encoder."""
    from vjepa_fast.jobs.convert import main
    config = VJEPA2Config(**{**VJEPA2Config.from_name("vitb-2.1").__dict__, "mlp_ratio": 0.25, "pred_hidden_size": 64,
                             "pred_num_attention_heads": 2, "pred_num_hidden_layers": 1, "id2label": None,
                             "num_labels": None})
    model = VJEPA2Model(config)
    encoder, predictor = ours_to_meta(model.state_dict())
    torch.save({"ema_encoder": encoder, "predictor": predictor, "epoch": 1}, tmp_path / "b.pt")
    main(["--src", str(tmp_path / "b.pt"), "--out", str(tmp_path / "b"), "--frames", "2"])
    again = VJEPA2Model.from_pretrained(str(tmp_path / "b"))
    assert again.config.is_v21 and again.config.hierarchical_layers == [2, 5, 8, 11]
    assert again.config.teacher_embed_dim == 1664 and again.config.num_distillation_outputs == 1
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
