"""One pre-training step (target encoder, context encoder on the context tokens, predictor, L1 over
both mask configs, backward, AdamW, EMA): vjepa_fast's Trainer vs the plain reference step built
from transformers' modules (SDPA attention), same weights, masks and precision, timed in
alternating rounds of one test.

CPU: width 384 / 6 heads / depth 4 encoder, width 192 / 6 heads / depth 2 predictor,
8 frames x 128 px (256 tokens), batch 2, fp32. CUDA: ViT-L (24 blocks) with the 12-block
predictor, 16 frames x 256 px, batch 4, bf16 autocast."""
import copy

import pytest
import torch

from model_bench import alternate, device, sync

DEV = device()
SHAPE = (dict(model="vitl", frames=16, crop_size=256, batch_size=4, dtype="bfloat16", pred_depth=12) if DEV == "cuda"
         else dict(width=384, depth=4, heads=6, pred_width=192, pred_depth=2, pred_heads=6, frames=8, crop_size=128,
                   batch_size=2, dtype="float32", threads=1))  # one thread: steadier on a shared CPU


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vjepa_fast.testing import hf_copy
    from vjepa_fast.jobs.train_config import TrainConfig
    from vjepa_fast.jobs.trainer import Trainer
    out = tmp_path_factory.mktemp("bench_train")
    threads = torch.get_num_threads()
    trainer = Trainer(TrainConfig(**SHAPE, steps=1000, warmup_steps=0, cooldown_steps=0, out=str(out),
                                  progress=False, probe=False, export=False, device=DEV))
    online, target = hf_copy(trainer, out, attn="sdpa")
    batch = next(iter(trainer.loader()))
    yield {"trainer": trainer, "online": online.to(DEV), "target": target.to(DEV), "batch": batch}
    trainer.close()
    torch.set_num_threads(threads)


def test_train_step(benchmark, setup):
    from vjepa_fast.testing import reference_optimizer, reference_step
    trainer, batch = setup["trainer"], setup["batch"]
    online, target = setup["online"], setup["target"]
    optimizer = reference_optimizer(online, trainer.config.lr, trainer.config.weight_decay)
    moved = copy.copy(batch)
    moved.video = batch.video.to(DEV)
    moved.masks = [(c.to(DEV), t.to(DEV)) for c, t in batch.masks]

    def ours():
        assert trainer.train_step([batch]) > 0
        sync(DEV)

    def reference():
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=trainer.config.dtype == "bfloat16"):
            assert reference_step(online, target, optimizer, moved, trainer.config.ema) > 0
        sync(DEV)

    benchmark.group = "train-step"
    width = SHAPE.get("width", "ViT-L")
    alternate(benchmark, f"pre-training step, width {width}, {SHAPE['frames']} f x {SHAPE['crop_size']} px, "
              f"batch {SHAPE['batch_size']}, {SHAPE['dtype']}", "plain reference step", reference, ours)
