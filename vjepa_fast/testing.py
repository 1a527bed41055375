"""References for the tests and benchmarks, built on transformers (imported only when one is
built): random-weight VJEPA2 models shaped like each preset at reduced depth, and one V-JEPA
pre-training step written plainly on transformers' modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vjepa_fast.model import VJEPA2Model

# name -> transformers config kwargs (head dims 64 / 80 / 64 with 22 heads; predictor head dim 32)
SHAPES = {
    "vitl": dict(hidden_size=1024, num_attention_heads=16, crop_size=64),
    "vith": dict(hidden_size=1280, num_attention_heads=16, crop_size=64),
    "vitg": dict(hidden_size=1408, num_attention_heads=22, mlp_ratio=48 / 11, crop_size=64),
}


def hf_model(shape: str, depth: int = 2, pred_depth: int = 2, attn: str = "eager", **overrides):
    """A transformers VJEPA2Model of `shape` with random weights, in eval mode."""
    import transformers

    kwargs = {"frames_per_clip": 8, **SHAPES[shape], **overrides}
    cfg = transformers.VJEPA2Config(num_hidden_layers=depth, pred_num_hidden_layers=pred_depth, **kwargs)
    cfg._attn_implementation = attn
    model = transformers.VJEPA2Model(cfg).eval()
    # Non-zero mask tokens and non-trivial norms, so a wrong index or a dropped LN shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mask_tokens" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model


def hf_copy(trainer, tmp_path, attn: str = "eager"):
    """transformers' VJEPA2Model holding a Trainer's current online weights (through our export
    format), and a second one holding its target encoder."""
    import transformers

    trainer.jepa.encoder.gradient_checkpointing = False
    online = transformers.VJEPA2Model.from_pretrained(_save(trainer.jepa.encoder, trainer, tmp_path / "online"),
                                                      attn_implementation=attn)
    target = transformers.VJEPA2Model.from_pretrained(_save(trainer.target, trainer, tmp_path / "target"),
                                                      attn_implementation=attn)
    return online.float(), target.float()


def _save(encoder, trainer, path):
    model = VJEPA2Model(trainer.model_config)
    model.encoder.load_state_dict(encoder.state_dict())
    model.predictor.load_state_dict(trainer.jepa.predictor.state_dict())
    model.save_pretrained(str(path))
    return str(path)


def ref_encode(hf, video, token_ids=None):
    """Meta's encoder, layer by layer: Conv3d tubelets, keep the context tokens, RoPE at their positions."""
    enc = hf.encoder
    x = enc.embeddings.patch_embeddings(video.permute(0, 2, 1, 3, 4))  # (B, N, D)
    if token_ids is not None:
        x = torch.gather(x, 1, token_ids[..., None].expand(-1, -1, x.shape[-1]))
    for layer in enc.layer:
        x = layer(x, position_mask=token_ids)[0]
    return enc.layernorm(x)


def ref_predict(hf, z, context, target):
    """Meta's predictor: mask token 0 at the targets, tokens sorted by position, blocks, unsorted."""
    pred = hf.predictor
    x, positions = pred.embeddings(z, [context], [target], mask_index=0)
    order = torch.argsort(positions, dim=1)
    x, positions = pred.sort_tokens(x, positions, order)
    for layer in pred.layer:
        x = layer(x, position_mask=positions)[0]
    x = pred.unsort_tokens(pred.layernorm(x), order)
    return pred.proj(x[:, context.shape[1]:])


def reference_optimizer(online, lr, weight_decay):
    decay = [p for n, p in online.named_parameters() if not n.endswith("bias") and p.ndim > 1]
    no_decay = [p for n, p in online.named_parameters() if n.endswith("bias") or p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999), eps=1e-8)


def reference_step(online, target, optimizer, batch, momentum):
    """One V-JEPA step with Meta's semantics, written plainly on transformers' modules."""
    video = batch.video
    with torch.no_grad():
        h = ref_encode(target, video)
        h = F.layer_norm(h, (h.shape[-1],))
    losses = []
    for context, tgt in batch.masks:
        p = ref_predict(online, ref_encode(online, video, context), context, tgt)
        goal = torch.gather(h, 1, tgt[..., None].expand(-1, -1, h.shape[-1]))
        losses.append((p - goal).abs().mean())
    loss = sum(losses) / len(losses)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for t, o in zip(target.encoder.parameters(), online.encoder.parameters()):
            t.mul_(momentum).add_(o, alpha=1 - momentum)
    return loss.item()
