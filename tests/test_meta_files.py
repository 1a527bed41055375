"""Meta's released files in their own layouts (random weights, the real key names and shapes):
encoder checkpoints with the position-embedding entries RoPE models carry and do not use, and
attentive-probe checkpoints, loaded directly and checked against transformers."""
import logging

import pytest
import torch

from vjepa_fast import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model
from vjepa_fast.checkpoints import CheckpointError, ours_to_meta

transformers = pytest.importorskip("transformers")

# ViT-L widths at depth 2; crop and clip length are the released defaults, which Meta's files
# do not record (inputs here are smaller).
TINY = dict(crop_size=256, frames_per_clip=64, hidden_size=1024, num_attention_heads=16, num_hidden_layers=2,
            pred_hidden_size=384, pred_num_attention_heads=12, pred_num_hidden_layers=1)


def released_encoder_file(path, model: VJEPA2Model, extra: dict | None = None) -> None:
    """As Meta's vitl.pt: `module.backbone.` keys, pos_embed (1, N, D), predictor_pos_embed."""
    encoder, predictor = ours_to_meta(model.state_dict(), prefix="module.backbone.")
    predictor = {k.replace("module.backbone.", "module."): v for k, v in predictor.items()}
    encoder["module.backbone.pos_embed"] = torch.randn(1, 8 * 16 * 16, 1024)
    predictor["module.predictor_pos_embed"] = torch.randn(1, 8 * 16 * 16, 384)
    encoder.update(extra or {})
    torch.save({"encoder": encoder, "predictor": predictor, "target_encoder": encoder, "epoch": 10}, path)


def test_released_encoder_file_loads_and_matches_transformers(tmp_path, caplog):
    ours = VJEPA2Model(VJEPA2Config(**TINY)).eval()
    released_encoder_file(tmp_path / "vitl.pt", ours)
    with caplog.at_level(logging.WARNING, logger="vjepa_fast"):
        loaded = VJEPA2Model.from_meta_checkpoint(str(tmp_path / "vitl.pt"), encoder_key="target_encoder").eval()
    assert sum("pos_embed" in r.message and "RoPE" in r.message for r in caplog.records) == 2
    loaded.save_pretrained(tmp_path / "hf")
    ref = transformers.VJEPA2Model.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_vision_features(x), ours.get_vision_features(x), atol=0, rtol=0)
        torch.testing.assert_close(loaded(x).predictor_output.last_hidden_state,
                                   ref(x).predictor_output.last_hidden_state, atol=1e-4, rtol=1e-4)


def test_an_unknown_extra_key_is_still_named(tmp_path):
    released_encoder_file(tmp_path / "vitl.pt", VJEPA2Model(VJEPA2Config(**TINY)),
                          extra={"module.backbone.register_tokens": torch.zeros(1, 4, 1024)})
    with pytest.raises(CheckpointError, match="register_tokens"):
        VJEPA2Model.from_meta_checkpoint(str(tmp_path / "vitl.pt"))


def meta_probe(head: dict) -> dict:
    """transformers' classifier head -> Meta's probe layout, inverting transformers' own converter
    (convert_vjepa2_classifier_to_hf.py: norm{i} <-> layer_norm{i}, q/k/v fused as qkv, k/v as kv)."""
    out = {"module.pooler.query_tokens": head["pooler.query_tokens"],
           "module.linear.weight": head["classifier.weight"], "module.linear.bias": head["classifier.bias"]}
    for k, v in head.items():
        if not k.startswith("pooler.self_attention_layers.") or any(f".{n}_proj." in k for n in "qkv"):
            continue
        _, _, i, rest = k.split(".", 3)
        rest = rest.replace("layer_norm", "norm").replace("self_attn.out_proj", "attn.proj")
        out[f"module.pooler.blocks.{i}.{rest}"] = v
    for k in [k for k in head if ".self_attn.q_proj." in k]:
        _, _, i, rest = k.split(".", 3)
        suffix = rest.rsplit(".", 1)[1]
        out[f"module.pooler.blocks.{i}.attn.qkv.{suffix}"] = torch.cat(
            [head[k.replace("q_proj", n)] for n in ("q_proj", "k_proj", "v_proj")])
    cross = "pooler.cross_attention_layer."
    for k, v in head.items():
        if k.startswith(cross) and "cross_attn." not in k:
            out["module.pooler.cross_attention_block." + k[len(cross):].replace("layer_norm", "norm")] = v
    for suffix in ("weight", "bias"):
        out[f"module.pooler.cross_attention_block.xattn.q.{suffix}"] = head[f"{cross}cross_attn.q_proj.{suffix}"]
        out[f"module.pooler.cross_attention_block.xattn.kv.{suffix}"] = torch.cat(
            [head[f"{cross}cross_attn.{n}_proj.{suffix}"] for n in ("k", "v")])
    return out


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    cfg = transformers.VJEPA2Config(**TINY, num_labels=5)
    ref = transformers.VJEPA2ForVideoClassification(cfg).eval()
    ref.save_pretrained(root / "backbone")  # its backbone is the encoder the probe was trained on
    head = {k: v for k, v in ref.state_dict().items() if not k.startswith("vjepa2.")}
    torch.save({"classifiers": [meta_probe(head)], "opt": [], "epoch": 20}, root / "ssv2-vitl-16x2x3.pt")
    return ref, root


def test_meta_probe_gives_transformers_logits(probe_files):
    ref, root = probe_files
    labels = {i: f"class {i}" for i in range(5)}
    ours = VJEPA2ForVideoClassification.from_meta_probe(str(root / "ssv2-vitl-16x2x3.pt"),
                                                        encoder=str(root / "backbone"), id2label=labels)
    assert ours.config.id2label == labels and ours.config.num_pooler_layers == 3
    x = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, ref(x).logits, atol=1e-4, rtol=1e-4)


def test_meta_probe_is_strict(probe_files, tmp_path):
    _, root = probe_files
    ckpt = torch.load(root / "ssv2-vitl-16x2x3.pt", weights_only=True)
    ckpt["classifiers"][0]["module.pooler.norm.weight"] = torch.ones(1024)
    torch.save(ckpt, tmp_path / "probe.pt")
    with pytest.raises(CheckpointError, match="pooler.norm.weight"):
        VJEPA2ForVideoClassification.from_meta_probe(str(tmp_path / "probe.pt"), encoder=str(root / "backbone"))
    with pytest.raises(ValueError, match="id2label names 2 labels, the probe has 5"):
        VJEPA2ForVideoClassification.from_meta_probe(str(root / "ssv2-vitl-16x2x3.pt"),
                                                     encoder=str(root / "backbone"), id2label={0: "a", 1: "b"})


# ---- python -m vjepa_fast.convert --------------------------------------------------------------

def test_convert_encoder_file_to_transformers_and_back(tmp_path, capsys):
    from vjepa_fast.jobs import convert
    ours = VJEPA2Model(VJEPA2Config(**TINY)).eval()
    released_encoder_file(tmp_path / "vitl.pt", ours)
    convert.main(["--src", str(tmp_path / "vitl.pt"), "--out", str(tmp_path / "hf")])
    assert "max |difference| of the outputs on a random 4-frame clip: 0" in capsys.readouterr().out
    assert (tmp_path / "hf" / "video_preprocessor_config.json").is_file()
    ref = transformers.VJEPA2Model.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ref.get_vision_features(x), ours.get_vision_features(x), atol=1e-4, rtol=1e-4)
    convert.main(["--src", str(tmp_path / "hf"), "--out", str(tmp_path / "back.pt")])
    back = VJEPA2Model.from_meta_checkpoint(str(tmp_path / "back.pt")).eval()
    with torch.no_grad():
        assert torch.equal(back.get_vision_features(x), ours.get_vision_features(x))


def test_convert_probe_to_transformers_and_back(probe_files, tmp_path):
    from vjepa_fast.jobs import convert
    ref, root = probe_files
    out = tmp_path / "classifier"
    assert convert.convert(convert.ConvertConfig(src=str(root / "ssv2-vitl-16x2x3.pt"), out=str(out),
                                                 encoder=str(root / "backbone"))) == 0
    theirs = transformers.VJEPA2ForVideoClassification.from_pretrained(out).eval()
    x = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ref(x).logits, atol=1e-4, rtol=1e-4)
    assert convert.convert(convert.ConvertConfig(src=str(out), out=str(tmp_path / "probe.pt"))) == 0
    again = torch.load(tmp_path / "probe.pt", weights_only=True)["classifiers"][0]
    original = torch.load(root / "ssv2-vitl-16x2x3.pt", weights_only=True)["classifiers"][0]
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)


@pytest.mark.parametrize("entries, args, match", [
    ({"model": {}}, [], "neither an encoder checkpoint"),
    ({"classifiers": [{}]}, [], "--encoder: .* is an attentive probe"),
])
def test_convert_names_what_is_wrong(tmp_path, entries, args, match):
    from vjepa_fast.jobs import convert
    torch.save(entries, tmp_path / "x.pt")
    with pytest.raises(SystemExit, match=match):
        convert.main(["--src", str(tmp_path / "x.pt"), "--out", str(tmp_path / "out"), *args])


def test_convert_ac_predictor_and_back(tmp_path):
    from vjepa_fast.ac_model import ACConfig, ACPredictor
    from vjepa_fast.jobs import convert
    ours = ACPredictor(ACConfig.from_name("ac-tiny")).eval()
    torch.save({"encoder": {}, "predictor": ours.meta_state_dict(), "epoch": 1}, tmp_path / "ac.pt")
    assert convert.convert(convert.ConvertConfig(src=str(tmp_path / "ac.pt"), out=str(tmp_path / "ac"))) == 0
    assert convert.convert(convert.ConvertConfig(src=str(tmp_path / "ac"), out=str(tmp_path / "back.pt"))) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)["predictor"]
    assert all(torch.equal(back[k], v) for k, v in ours.meta_state_dict().items()) and back.keys() == \
        ours.meta_state_dict().keys()
