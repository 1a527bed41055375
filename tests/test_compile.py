"""torch.compile(fullgraph=True) captures the encoder and the predictor whole (no graph breaks)
on CPU with the reference ops, and the compiled model computes what the eager one does.

The "aot_eager" backend runs everything but code generation (Dynamo capture, AOTAutograd's
functionalisation and joint forward/backward graph): graph breaks and tracing failures show up
here in seconds, where Inductor's C++ build would take minutes of CI. Inductor itself is
exercised around the fused op by the GPU suite (tests/test_rope_attention.py::test_gpu_compiled_op)."""
from __future__ import annotations

import pytest
import torch

from vjepa_fast.config import VJEPA2Config
from vjepa_fast.model import VJEPA2Model


@pytest.fixture(scope="module")
def model() -> VJEPA2Model:
    torch.manual_seed(0)
    config = VJEPA2Config.from_name("tiny")
    config.num_hidden_layers = 2
    config.pred_num_hidden_layers = 1
    return VJEPA2Model(config).eval()


def _compile(module):
    torch._dynamo.reset()
    return torch.compile(module, fullgraph=True, backend="aot_eager")


def test_encoder_compiles_whole(model):
    video = torch.randn(2, 4, 3, 64, 64)  # (B, T, C, H, W): 2 x 4 x 4 tokens
    token_ids = torch.sort(torch.randperm(32)[:11]).values.expand(2, -1)  # context tokens only
    compiled = _compile(model.encoder)
    with torch.no_grad():
        torch.testing.assert_close(compiled(video), model.encoder(video), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(compiled(video, token_ids), model.encoder(video, token_ids), atol=1e-5, rtol=1e-4)


def test_predictor_compiles_whole_with_gradients(model):
    grid = (4, 4)
    context = torch.randn(3, 9, model.config.hidden_size)
    ids = torch.stack([torch.randperm(32) for _ in range(3)])
    context_ids, target_ids = ids[:, :9], ids[:, 9:20]
    compiled = _compile(model.predictor)
    eager_in, compiled_in = context.clone().requires_grad_(), context.clone().requires_grad_()
    out = compiled(compiled_in, context_ids, target_ids, grid)
    ref = model.predictor(eager_in, context_ids, target_ids, grid)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(compiled_in.grad, eager_in.grad, atol=1e-5, rtol=1e-4)
