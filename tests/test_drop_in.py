"""transformers' V-JEPA 2 model tests (tests/models/vjepa2 and the common model and config tests
that apply), ported: each runs once against transformers and once against vjepa_fast (the `lib`
switch), so vjepa_fast passes what transformers passes. Tiny shapes: 32 px crops, 4 frames,
8 tokens, as transformers' own tester (which uses 1 token)."""
import inspect
import json

import numpy as np
import pytest
import torch
from torch import nn

import vjepa_fast

transformers = pytest.importorskip("transformers")

B = 2
TINY = dict(crop_size=32, frames_per_clip=4, hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
            mlp_ratio=1.0, pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=2,
            pred_num_mask_tokens=10)
SEQ = (32 // 16) ** 2 * (4 // 2)


@pytest.fixture(params=["transformers", "vjepa_fast"])
def lib(request):
    return transformers if request.param == "transformers" else vjepa_fast


def config(lib, **overrides):
    return lib.VJEPA2Config(**{**TINY, **overrides})


def eager(lib, config):
    config._attn_implementation = "eager"  # how transformers' tests ask for the explicit attention
    return config


def videos(batch=B):
    return torch.randn(batch, 4, 3, 32, 32)


@pytest.fixture(params=["VJEPA2Model", "VJEPA2ForVideoClassification"])
def model_class(request, lib):
    return getattr(lib, request.param)


def test_model_output_shapes(lib):
    model = lib.VJEPA2Model(config(lib)).eval()
    with torch.no_grad():
        out = model(videos())
    assert out.last_hidden_state.shape == (B, SEQ, 32)
    assert out.predictor_output.last_hidden_state.shape == (B, SEQ, 32)
    ids = torch.arange(SEQ)[None].expand(B, -1)
    with torch.no_grad():
        out = model(videos(), context_mask=[ids[:, :5]], target_mask=[ids[:, 5:]])
    assert out.masked_hidden_state.shape == (B, 5, 32) and out.predictor_output.last_hidden_state.shape == (B, 3, 32)


def test_config_round_trips(lib, tmp_path):
    cfg = config(lib)
    assert cfg.model_type == "vjepa2"
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers) == (32, 2, 2)
    written = json.loads(cfg.to_json_string())
    assert all(written[k] == v for k, v in TINY.items())
    cfg.save_pretrained(tmp_path)
    again = lib.VJEPA2Config.from_pretrained(tmp_path)
    assert {k: v for k, v in again.to_dict().items() if k != "transformers_version"} == \
           {k: v for k, v in cfg.to_dict().items() if k != "transformers_version"}


def test_embeddings_and_signature(model_class, lib):
    model = model_class(config(lib))
    assert isinstance(model.get_input_embeddings(), nn.Module)
    assert model.get_output_embeddings() is None
    assert model.main_input_name == "pixel_values_videos"
    assert list(inspect.signature(model.forward).parameters)[0] == "pixel_values_videos"


@pytest.mark.parametrize("via", ["argument", "config"])
def test_hidden_states_output(model_class, lib, via):
    cfg = config(lib)
    if via == "config":
        cfg.output_hidden_states = True
    model = model_class(cfg).eval()
    with torch.no_grad():
        out = model(videos(), output_hidden_states=True) if via == "argument" else model(videos())
    assert isinstance(out.hidden_states, tuple) and len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    assert all(h.shape == (B, SEQ, 32) for h in out.hidden_states)
    if model_class.__name__ == "VJEPA2Model":  # the last hidden state is the final LayerNorm of the last layer's
        ln = model.encoder.layernorm if lib is transformers else model.encoder.norm
        torch.testing.assert_close(ln(out.hidden_states[-1]), out.last_hidden_state)


@pytest.mark.parametrize("via", ["argument", "config"])
def test_attention_outputs(model_class, lib, via):
    cfg = eager(lib, config(lib))
    if via == "config":
        cfg.output_attentions = True
    model = model_class(cfg).eval()
    x = videos()
    with torch.no_grad():
        out = model(x, output_attentions=True) if via == "argument" else model(x)
        plain = model(x, output_attentions=False)
    assert isinstance(out.attentions, tuple) and len(out.attentions) == TINY["num_hidden_layers"]
    assert all(a.shape == (B, 2, SEQ, SEQ) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(B, 2, SEQ))
    assert plain.attentions is None or plain.attentions == ()


def test_attention_probabilities_match_transformers(tmp_path):
    ref = transformers.VJEPA2Model(eager(transformers, config(transformers))).eval()
    ref.save_pretrained(tmp_path)
    ours = vjepa_fast.VJEPA2Model.from_pretrained(tmp_path, attn_implementation="eager")
    x = videos()
    with torch.no_grad():
        theirs, mine = ref(x, output_attentions=True).attentions, ours(x, output_attentions=True).attentions
    for a, b in zip(theirs, mine, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_outputs_index_like_model_output(model_class, lib):
    model = model_class(config(lib)).eval()
    labels = torch.tensor([0, 1]) if "Classification" in model_class.__name__ else None
    kwargs = {} if labels is None else {"labels": labels}
    x = videos()
    with torch.no_grad():
        out = model(x, output_hidden_states=True, **kwargs)
        as_tuple = model(x, output_hidden_states=True, return_dict=False, **kwargs)
    first = "loss" if labels is not None else "last_hidden_state"
    assert list(out.keys())[0] == first and "attentions" not in out.keys()
    assert out[0] is getattr(out, first) and out[first] is getattr(out, first)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(out.to_tuple()) == len(out.keys())
    for a, b in zip(as_tuple, out.to_tuple()):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b)
        else:
            assert type(a) is type(b) and len(a) == len(b)


def test_save_load(model_class, lib, tmp_path):
    model = model_class(config(lib)).eval()
    x = videos()
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "shards", max_shard_size=20_000)
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    for directory in ("one", "shards"):
        loaded, info = model_class.from_pretrained(tmp_path / directory, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
        with torch.no_grad():
            torch.testing.assert_close(loaded(x)[0], model(x)[0], atol=1e-6, rtol=0)


def test_sharded_checkpoint_loads_in_the_other_library(lib, tmp_path):
    other = vjepa_fast if lib is transformers else transformers
    lib.VJEPA2Model(config(lib)).save_pretrained(tmp_path, max_shard_size="20KB")
    x = videos()
    with torch.no_grad():
        torch.testing.assert_close(other.VJEPA2Model.from_pretrained(tmp_path).eval()(x).last_hidden_state,
                                   lib.VJEPA2Model.from_pretrained(tmp_path).eval()(x).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)


def test_determinism(model_class, lib):
    model = model_class(config(lib)).eval()
    x = videos()
    with torch.no_grad():
        assert torch.equal(model(x)[0], model(x)[0])


def test_batching_equivalence(model_class, lib):
    model = model_class(config(lib)).eval()
    x = videos(3)
    with torch.no_grad():
        batched = model(x)[0]
        rows = torch.cat([model(x[i:i + 1])[0] for i in range(3)])
    torch.testing.assert_close(batched, rows, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_training(lib, checkpointing):
    torch.manual_seed(0)
    model = lib.VJEPA2ForVideoClassification(config(lib)).train()
    reference = lib.VJEPA2ForVideoClassification(config(lib)).train()
    reference.load_state_dict(model.state_dict())
    if checkpointing:
        model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing
    x, labels = videos(), torch.tensor([0, 1])
    model(x, labels=labels).loss.backward()
    reference(x, labels=labels).loss.backward()
    grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if ".predictor." in name:  # the classifier does not run the predictor
            assert p.grad is None, name
            continue
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-6, rtol=1e-4)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_model_properties(lib):
    model = lib.VJEPA2Model(config(lib))
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kwargs, dtype", [({}, torch.bfloat16), ({"dtype": "auto"}, torch.bfloat16),
                                           ({"dtype": torch.float32}, torch.float32),
                                           ({"torch_dtype": torch.float16}, torch.float16)])
def test_from_pretrained_dtype(lib, tmp_path, kwargs, dtype):
    lib.VJEPA2Model(config(lib)).to(torch.bfloat16).save_pretrained(tmp_path)
    assert lib.VJEPA2Model.from_pretrained(tmp_path, **kwargs).dtype == dtype


@pytest.mark.parametrize("device_map", ["cpu", "auto", torch.device("cpu")])
def test_from_pretrained_device_map_config_and_attention(lib, tmp_path, device_map):
    if lib is transformers:
        pytest.importorskip("accelerate", reason="transformers' device_map needs accelerate")
    lib.VJEPA2Model(config(lib)).save_pretrained(tmp_path)
    model = lib.VJEPA2Model.from_pretrained(tmp_path, device_map=device_map, attn_implementation="eager",
                                            config=config(lib), local_files_only=True, subfolder="")
    assert model.device.type == ("cuda" if device_map == "auto" and torch.cuda.is_available() else "cpu")
    assert not model.training
    with torch.no_grad():
        assert len(model(videos().to(model.device), output_attentions=True).attentions) == 2


def test_classifier_labels_from_a_base_checkpoint(lib, tmp_path):
    lib.VJEPA2Model(config(lib)).save_pretrained(tmp_path)
    model = lib.VJEPA2ForVideoClassification.from_pretrained(tmp_path, num_labels=5)
    assert model.config.num_labels == 5 and model.classifier.out_features == 5
    model.save_pretrained(tmp_path / "five")
    with pytest.raises((ValueError, RuntimeError)):
        lib.VJEPA2ForVideoClassification.from_pretrained(tmp_path / "five", num_labels=3)
    three = lib.VJEPA2ForVideoClassification.from_pretrained(tmp_path / "five", num_labels=3,
                                                             ignore_mismatched_sizes=True)
    assert three.classifier.out_features == 3


def test_problem_type_is_chosen_and_kept_as_transformers_does(lib):
    model = lib.VJEPA2ForVideoClassification(config(lib))
    assert model.config.problem_type is None
    model(videos(), labels=torch.tensor([0, 1]))
    assert model.config.problem_type == "single_label_classification"


def test_unknown_from_pretrained_argument_is_an_error(lib, tmp_path):
    lib.VJEPA2Model(config(lib)).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="not_an_option"):
        lib.VJEPA2Model.from_pretrained(tmp_path, not_an_option=True)


def test_constructors_take_transformers_configs_and_dicts():
    theirs = config(transformers, num_labels=4)
    assert vjepa_fast.VJEPA2Model(theirs).config.hidden_size == 32
    assert vjepa_fast.VJEPA2ForVideoClassification(theirs).classifier.out_features == 4
    assert vjepa_fast.VJEPA2Model(theirs.to_dict()).config.num_hidden_layers == 2
    assert vjepa_fast.VJEPA2Model(eager(transformers, config(transformers))).config.attn_implementation == "eager"


def test_auto_classes_build_vjepa_fast_models(tmp_path):
    transformers.VJEPA2ForVideoClassification(config(transformers, num_labels=3)).save_pretrained(tmp_path)
    assert type(vjepa_fast.AutoModel.from_pretrained(tmp_path)) is vjepa_fast.VJEPA2Model
    classifier = vjepa_fast.AutoModelForVideoClassification.from_pretrained(tmp_path)
    assert type(classifier) is vjepa_fast.VJEPA2ForVideoClassification and classifier.config.num_labels == 3


def test_auto_model_names_another_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "videomae"}))
    with pytest.raises(ValueError, match="model_type 'videomae'"):
        vjepa_fast.AutoModel.from_pretrained(tmp_path)
    vjepa_fast.VJEPA2Model(config(vjepa_fast)).save_pretrained(tmp_path / "vjepa2")
    with pytest.raises(TypeError, match="low_cpu_mem_usage"):
        vjepa_fast.AutoModel.from_pretrained(tmp_path / "vjepa2", low_cpu_mem_usage=True)


def test_output_attentions_on_the_fused_path_is_an_error():
    model = vjepa_fast.VJEPA2Model(config(vjepa_fast))
    with pytest.raises(ValueError, match="output_attentions=True needs the explicit attention path.*eager"):
        model(videos(), output_attentions=True)


# ---- The video processor ---------------------------------------------------------------------

@pytest.fixture
def processors(tmp_path):
    """transformers' processor and ours read from its files. It needs torchvision, which `make
    setup` installs (.ci/patch_torchvision.py): without it these tests fail rather than skip."""
    theirs = transformers.VJEPA2VideoProcessor(crop_size=32)
    theirs.save_pretrained(tmp_path)
    return theirs, vjepa_fast.AutoVideoProcessor.from_pretrained(tmp_path)


def frames(T=4, H=40, W=50):
    return torch.randint(0, 256, (T, 3, H, W), dtype=torch.uint8)


@pytest.mark.parametrize("make", [
    lambda: frames(),                                           # one video, (T, 3, H, W) uint8
    lambda: frames().permute(0, 2, 3, 1).numpy(),               # (T, H, W, 3) numpy
    lambda: [frames(), frames(H=60, W=45)],                     # a list of videos of other sizes
    lambda: frames().float(),                                   # float pixels in [0, 255]
    lambda: np.ones((4, 3, 40, 50)),                            # float64 numpy, as transformers' test
    lambda: torch.rand(40, 50, 3) * 255,                        # an image: a one-frame video
], ids=["tchw-uint8", "thwc-numpy", "list", "float", "float64-numpy", "image"])
def test_processor_matches_transformers(processors, make):
    theirs, ours = processors
    video = make()
    expected = theirs(video, return_tensors="pt").pixel_values_videos
    got = ours(video, return_tensors="pt").to("cpu").pixel_values_videos
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("options", [{"crop_size": {"height": 16, "width": 16}}, {"crop_size": 16},
                                     {"do_normalize": False}, {"do_rescale": False, "do_normalize": False},
                                     {"size": {"shortest_edge": 48}}, {"do_center_crop": False},
                                     {"do_resize": False}, {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}])
def test_processor_call_options_match_transformers(processors, options):
    theirs, ours = processors
    video = frames()
    expected = theirs(video, return_tensors="pt", **options)["pixel_values_videos"]
    got = ours(video, return_tensors="pt", **options)["pixel_values_videos"]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_processor_saves_what_transformers_reads(processors, tmp_path):
    theirs, ours = processors
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.VJEPA2VideoProcessor.from_pretrained(tmp_path / "ours")
    video = frames()
    torch.testing.assert_close(again(video, return_tensors="pt").pixel_values_videos,
                               theirs(video, return_tensors="pt").pixel_values_videos, atol=0, rtol=0)


def test_processor_return_tensors(lib):
    processor = vjepa_fast.VJEPA2VideoProcessor(vjepa_fast.ProcessorConfig(crop_size=32))
    assert isinstance(processor(frames(), return_tensors="np").pixel_values_videos, np.ndarray)
    assert isinstance(processor(frames()).pixel_values_videos, list)
    with pytest.raises(ValueError, match="return_tensors must be one of"):
        processor(frames(), return_tensors="tf")


def test_processor_reads_the_older_file_name(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"crop_size": 48}))
    assert vjepa_fast.AutoVideoProcessor.from_pretrained(tmp_path).config.crop_size == 48


def test_problem_type_from_pretrained_as_transformers(lib, tmp_path):
    """transformers' from_pretrained takes problem_type="single_label_classification" with one
    label (its config constructor does not), and the cross-entropy over one class is 0."""
    lib.VJEPA2Model(config(lib)).save_pretrained(tmp_path)
    model = lib.VJEPA2ForVideoClassification.from_pretrained(tmp_path, num_labels=1,
                                                             problem_type="single_label_classification")
    assert model(videos(), labels=torch.tensor([0, 0])).loss.item() == 0.0
    model = lib.VJEPA2ForVideoClassification.from_pretrained(tmp_path, num_labels=1)
    loss = model(videos(), labels=torch.tensor([0.5, -0.5])).loss
    assert model.config.problem_type == "regression" and loss.ndim == 0 and loss.item() > 0


def test_subfolder(lib, tmp_path):
    lib.VJEPA2Model(config(lib)).save_pretrained(tmp_path / "encoder")
    assert lib.VJEPA2Model.from_pretrained(tmp_path, subfolder="encoder").config.hidden_size == 32


def test_push_to_hub_uploads_what_save_pretrained_writes(tmp_path, monkeypatch):
    """The hub is out of reach here: HfApi is replaced by a recorder of what would be uploaded."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    class Recorder:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    vjepa_fast.VJEPA2Model(config(vjepa_fast)).push_to_hub("me/tiny-vjepa2", private=True, token="t")
    assert calls == [("token", "t"), ("create_repo", "me/tiny-vjepa2", True, True),
                     ("upload_folder", "me/tiny-vjepa2", ["config.json", "model.safetensors"])]


def test_config_labels(lib):
    """transformers' ConfigTester: num_labels sets id2label, and setting it again renames them."""
    cfg = config(lib, num_labels=5)
    assert len(cfg.id2label) == 5 and cfg.num_labels == 5
    cfg.num_labels = 3
    assert cfg.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert lib.VJEPA2ForVideoClassification(cfg).classifier.out_features == 3
    assert config(lib).num_labels == 2


def test_hub_id_from_the_cache(lib, tmp_path):
    """A hub id, offline: huggingface_hub's own cache layout (refs/main -> snapshots/<commit>),
    read with cache_dir=, revision= and local_files_only=True, through huggingface_hub itself."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--me--tiny-vjepa2"
    lib.VJEPA2Model(config(lib)).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for revision in (None, commit):
        model = lib.VJEPA2Model.from_pretrained("me/tiny-vjepa2", cache_dir=str(tmp_path / "cache"),
                                                revision=revision, local_files_only=True)
        assert model.config.hidden_size == 32
    with pytest.raises(OSError if lib is transformers else vjepa_fast.checkpoints.CheckpointError):
        lib.VJEPA2Model.from_pretrained("me/other", cache_dir=str(tmp_path / "cache"), local_files_only=True)
