"""vjepa_fast.optimize against an un-optimised copy of the same transformers model: encoder and
predictor with context/target masks, the classifier, gradients, and what it refuses."""
from __future__ import annotations

import copy
import importlib

import pytest
import torch

from vjepa_fast import optimize
from vjepa_fast.optimize import _embeddings_forward, _rope_attention_forward
from vjepa_fast.testing import hf_model

transformers = pytest.importorskip("transformers")


def _masks(B, N, keep):
    perm = torch.stack([torch.randperm(N) for _ in range(B)])
    return [perm[:, :keep]], [perm[:, keep:]]


@pytest.mark.parametrize("shape,B,T,H,W", [("vith", 2, 8, 64, 64), ("vitg", 1, 5, 48, 80)])
def test_outputs_match_unoptimised_model(shape, B, T, H, W):
    model = hf_model(shape, depth=2, pred_depth=2)
    fast = optimize(copy.deepcopy(model))
    assert fast.encoder.layer[0].attention.forward.__func__ is _rope_attention_forward
    assert fast.predictor.layer[0].attention.forward.__func__ is _rope_attention_forward
    assert fast.encoder.embeddings.forward.__func__ is _embeddings_forward
    video = torch.randn(B, T, 3, H, W)
    N = (T // 2) * (H // 16) * (W // 16)
    context, target = _masks(B, N, N // 3)
    with torch.no_grad():
        want = model(video, context_mask=context, target_mask=target)
        got = fast(video, context_mask=context, target_mask=target)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.predictor_output.last_hidden_state, want.predictor_output.last_hidden_state,
                               atol=1e-4, rtol=1e-4)


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the calls optimize's forwards make to this package's ops: a model that is not
    optimised makes none, so the tests below fail if optimize() does nothing."""
    opt = importlib.import_module("vjepa_fast.optimize")  # the package's `optimize` name is the function
    calls = {"rope_attention": 0, "tubelet_embed": 0}

    def counting(name, op):
        def wrapper(*args, **kw):
            calls[name] += 1
            return op(*args, **kw)
        return wrapper

    for name in calls:
        monkeypatch.setattr(opt, name, counting(name, getattr(opt, name)))
    return calls


def test_gradients_match_and_state_dict_is_unchanged(op_calls):
    model = hf_model("vitl", depth=1, pred_depth=1)
    fast = optimize(copy.deepcopy(model))
    assert fast.state_dict().keys() == model.state_dict().keys()
    video = torch.randn(1, 4, 3, 64, 64)
    context, target = _masks(1, 32, 12)
    for m in (model, fast):
        m(video, context_mask=context, target_mask=target).predictor_output.last_hidden_state.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), fast.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert op_calls == {"rope_attention": 2, "tubelet_embed": 1}  # encoder + predictor layer, one embedding


def test_classifier_logits_match(op_calls):
    cfg = transformers.VJEPA2Config(num_hidden_layers=2, pred_num_hidden_layers=1, hidden_size=192,
                                    num_attention_heads=3, crop_size=32, frames_per_clip=4, num_labels=5)
    model = transformers.VJEPA2ForVideoClassification(cfg).eval()
    fast = optimize(copy.deepcopy(model))
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(video).logits, model(video).logits, atol=1e-4, rtol=1e-4)
    assert op_calls == {"rope_attention": 2, "tubelet_embed": 1}  # two encoder layers, one embedding


def test_refuses_other_models_and_attention_dropout():
    with pytest.raises(TypeError, match="transformers VJEPA2Model or VJEPA2ForVideoClassification"):
        optimize(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="attention_probs_dropout_prob"):
        optimize(hf_model("vitl", depth=1, pred_depth=1, attention_probs_dropout_prob=0.1))


def test_optimized_embedding_goes_through_the_op(monkeypatch):
    # Route CPU tensors to the registered op (as CUDA tensors would be) to check what optimize
    # feeds it: a clip with a trailing frame that fills no tubelet, sliced rather than copied.
    import vjepa_fast.ops.tubelet_embed as te

    monkeypatch.setattr(te, "use_triton", lambda *tensors: True)
    model = hf_model("vitg", depth=1, pred_depth=1)
    fast = optimize(copy.deepcopy(model))
    video = torch.randn(1, 5, 3, 48, 80)
    with torch.no_grad():
        want = model.encoder.embeddings(video)
        got = fast.encoder.embeddings(video)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_outputs_match_on_gpu_with_the_fused_kernels():
    model = hf_model("vitl", depth=2, pred_depth=2, attn="sdpa").cuda()
    fast = optimize(copy.deepcopy(model))
    video = torch.randn(2, 8, 3, 64, 64, device="cuda")
    context, target = (m[0].cuda() for m in _masks(2, 64, 20))
    with torch.no_grad():
        want = model(video, context_mask=[context], target_mask=[target])
        got = fast(video, context_mask=[context], target_mask=[target])
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got.predictor_output.last_hidden_state, want.predictor_output.last_hidden_state,
                               atol=1e-3, rtol=1e-3)
