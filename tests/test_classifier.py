"""VJEPA2ForVideoClassification against transformers' class, on checkpoints each library saved."""
import json

import pytest
import torch

from vjepa_fast import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model
from vjepa_fast.checkpoints import CheckpointError

transformers = pytest.importorskip("transformers")


TOL = 1e-4
# Released head layouts at reduced width: head dim 64, and head dim 80 with ViT-g's encoder MLP
# ratio 48/11 (the pooler's MLPs stay 4x wide).
SHAPES = {
    "hd64": dict(hidden_size=192, num_attention_heads=3, crop_size=64),
    "hd80-ratio48/11": dict(hidden_size=160, num_attention_heads=2, mlp_ratio=48 / 11, crop_size=64),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def hf_classifier(shape: str, num_labels: int, problem_type=None):
    cfg = transformers.VJEPA2Config(num_hidden_layers=2, pred_num_hidden_layers=1, frames_per_clip=8,
                                    num_labels=num_labels, problem_type=problem_type, **SHAPES[shape])
    cfg._attn_implementation = "eager"
    model = transformers.VJEPA2ForVideoClassification(cfg).eval()
    # Non-trivial norms and query token, so a LayerNorm applied to the wrong tensor shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "query_tokens" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pair(request, tmp_path_factory):
    ref = hf_classifier(request.param, num_labels=5)
    path = tmp_path_factory.mktemp("cls")
    ref.save_pretrained(path)
    return ref, VJEPA2ForVideoClassification.from_pretrained(str(path)).eval()


@pytest.mark.parametrize("B,T,H,W", [(1, 8, 64, 64), (3, 5, 48, 80), (2, 1, 64, 64)])
def test_logits_and_loss_match_transformers(pair, B, T, H, W):
    ref, ours = pair
    x = torch.randn(B, T, 3, H, W)
    labels = torch.randint(0, 5, (B,))
    with torch.no_grad():
        expected = ref(x, labels=labels)
        got = ours(x, labels=labels)
    assert got.logits.shape == expected.logits.shape == (B, 5)
    assert (got.logits - expected.logits).abs().max().item() <= TOL
    assert torch.allclose(got.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_head_gradients_match_transformers(pair):
    ref, ours = pair
    x = torch.randn(2, 4, 3, 64, 64)
    labels = torch.tensor([4, -100])  # -100 is ignored by both
    ref.zero_grad()
    ours.zero_grad()
    ref(x, labels=labels).loss.backward()
    ours(x, labels=labels).loss.backward()
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if not name.startswith("vjepa2."):
            g = theirs[name].grad
            assert (p.grad - g).abs().max().item() <= TOL * max(1.0, g.abs().max().item()), name


@pytest.mark.parametrize("num_labels,problem_type", [
    (1, None),                                      # regression, MSE
    (4, None),                                      # float labels: multi-label, BCE with logits
    (3, "regression"),                              # MSE over 3 outputs
])
def test_other_problem_types_match_transformers(tmp_path, num_labels, problem_type):
    ref = hf_classifier("hd64", num_labels, problem_type)
    ref.save_pretrained(tmp_path)
    ours = VJEPA2ForVideoClassification.from_pretrained(str(tmp_path)).eval()
    assert ours.config.problem_type == problem_type
    x = torch.randn(3, 4, 3, 64, 64)
    labels = torch.rand(3, num_labels) if num_labels > 1 else torch.randn(3)
    with torch.no_grad():
        expected = ref(x, labels=labels)
        got = ours(x, labels=labels)
    assert (got.logits - expected.logits).abs().max().item() <= TOL
    assert torch.allclose(got.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_ours_saved_loads_in_transformers(tmp_path):
    config = VJEPA2Config.from_name("tiny").with_labels(["pour", "stir", "cut"])
    ours = VJEPA2ForVideoClassification(config).eval()
    ours.save_pretrained(str(tmp_path))
    ref, info = transformers.VJEPA2ForVideoClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert ref.config.id2label == {0: "pour", 1: "stir", 2: "cut"}
    assert ref.config.label2id == {"pour": 0, "stir": 1, "cut": 2}
    x = torch.randn(2, 3, 3, 64, 48)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        expected = ref.eval()(x, labels=labels)
        got = ours(x, labels=labels)
    assert (got.logits - expected.logits).abs().max().item() <= TOL
    assert torch.allclose(got.loss, expected.loss, atol=1e-5, rtol=1e-5)
    # ... and back: our loader reads what it wrote, labels included.
    again = VJEPA2ForVideoClassification.from_pretrained(str(tmp_path))
    assert again.config.id2label == config.id2label
    with torch.no_grad():
        assert torch.equal(again(x).logits, got.logits)


def test_pooler_mlp_is_4x_whatever_the_encoder_ratio(pair):
    _, ours = pair
    D = ours.config.hidden_size
    assert ours.pooler.cross_attention_layer.mlp.fc1.out_features == 4 * D
    assert ours.pooler.self_attention_layers[0].mlp.fc1.out_features == 4 * D
    assert ours.pooler.cross_attention_layer.cross_attn.out_proj is None


def test_classify_cached_features_equals_forward(pair):
    _, ours = pair
    x = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        features = ours.vjepa2.get_vision_features(x)
        assert torch.equal(ours.classify(features), ours(x).logits)


def test_from_encoder_keeps_the_backbone():
    encoder = VJEPA2Model(VJEPA2Config.from_name("tiny")).eval()
    model = VJEPA2ForVideoClassification.from_encoder(encoder, ["a", "b"]).eval()
    x = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.vjepa2.get_vision_features(x), encoder.get_vision_features(x))
    assert model.config.num_labels == 2 and model.classifier.out_features == 2


def test_num_labels_mismatch_names_it(tmp_path):
    config = VJEPA2Config.from_name("tiny").with_labels(["a", "b", "c"])
    VJEPA2ForVideoClassification(config).save_pretrained(str(tmp_path))
    d = json.loads((tmp_path / "config.json").read_text())
    d["id2label"] = {"0": "a", "1": "b"}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"classifier\.\w+ has shape \(3.*num_labels=2.*ignore_mismatched_sizes"):
        VJEPA2ForVideoClassification.from_pretrained(str(tmp_path))
    model, info = VJEPA2ForVideoClassification.from_pretrained(str(tmp_path), ignore_mismatched_sizes=True,
                                                               output_loading_info=True)
    assert model.classifier.out_features == 2 and info["mismatched_keys"] == ["classifier.bias", "classifier.weight"]


@pytest.mark.parametrize("saved_by", ["transformers", "vjepa_fast"])
def test_base_checkpoint_starts_a_fresh_head_as_transformers_does(tmp_path, caplog, saved_by):
    """from_pretrained(base checkpoint, num_labels=...) keeps the backbone, initialises the head
    (one notice) and reports the same missing keys as transformers."""
    cfg = transformers.VJEPA2Config(num_hidden_layers=2, pred_num_hidden_layers=1, frames_per_clip=8,
                                    crop_size=64, hidden_size=192, num_attention_heads=3, pred_hidden_size=96,
                                    pred_num_attention_heads=3)
    base = transformers.VJEPA2Model(cfg).eval()
    if saved_by == "transformers":
        base.save_pretrained(tmp_path)
    else:
        VJEPA2Model(cfg).save_pretrained(tmp_path)
        base = transformers.VJEPA2Model.from_pretrained(tmp_path).eval()
    labels = {0: "push", 1: "pull", 2: "lift"}
    ours, info = VJEPA2ForVideoClassification.from_pretrained(tmp_path, id2label=labels, output_loading_info=True)
    theirs, their_info = transformers.VJEPA2ForVideoClassification.from_pretrained(
        tmp_path, id2label=labels, output_loading_info=True)
    assert sorted(info["missing_keys"]) == sorted(their_info["missing_keys"])
    assert sum("newly initialised for 3 labels" in r.message for r in caplog.records) == 1
    x = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.vjepa2.get_vision_features(x), base.get_vision_features(x), atol=1e-4, rtol=1e-4)
        assert ours(x).logits.shape == theirs(x).logits.shape == (1, 3)
    assert ours.config.id2label == theirs.config.id2label == labels


def test_bad_configs_are_named():
    with pytest.raises(TypeError, match="VJEPA2Config"):
        VJEPA2ForVideoClassification("tiny")
    with pytest.raises(ValueError, match="id2label"):
        VJEPA2Config(id2label={0: "a", 2: "b"})
    with pytest.raises(ValueError, match="problem_type"):
        VJEPA2Config(problem_type="ranking")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_is_as_close_to_fp32_as_transformers(pair):
    """Under bf16 autocast on a GPU, ours strays from the fp32 logits no more than about twice
    as far as transformers does in the same precision."""
    import copy
    ref, ours = (copy.deepcopy(m).cuda() for m in pair)
    x = torch.randn(2, 8, 3, 64, 64, device="cuda")
    with torch.no_grad():
        exact = ref(x).logits
        with torch.autocast("cuda", dtype=torch.bfloat16):
            theirs, got = ref(x).logits.float(), ours(x).logits.float()
    err_theirs, err_ours = (theirs - exact).abs().max().item(), (got - exact).abs().max().item()
    assert err_ours <= 2 * err_theirs + 1e-3, (err_ours, err_theirs)
