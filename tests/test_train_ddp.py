"""Two-process data-parallel pre-training on CPU (gloo), as torchrun would run it."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vjepa_fast.jobs.train_config import TrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(out: str, fsdp: bool) -> TrainConfig:
    return TrainConfig(width=64, depth=2, heads=2, pred_width=32, pred_depth=1, pred_heads=1, patch_size=8,
                       crop_size=32, frames=4, batch_size=2, steps=3, warmup_steps=1, cooldown_steps=1,
                       checkpoint_every=3, out=out, progress=False, probe=False, export=False, threads=1, fsdp=fsdp)


def _worker(rank: int, port: int, out: str, fsdp: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    from vjepa_fast.jobs.trainer import Trainer
    trainer = Trainer(_config(out, fsdp))
    initial = [p.clone() for p in trainer._full_state()[0].values()]
    losses = trainer.run()
    state, target, _ = trainer._full_state()
    torch.save({"initial": initial, "final": list(state.values()), "target": list(target.values()), "losses": losses},
               os.path.join(out, f"rank{rank}.pt"))
    trainer.close()  # deletes the model and optimizer, barrier, destroy_process_group


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_process_training_keeps_ranks_in_sync(tmp_path, fsdp):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), fsdp), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["losses"]) == 3 and r0["losses"] == r1["losses"]  # the loss is averaged over ranks
    for a, b in zip(r0["final"] + r0["target"], r1["final"] + r1["target"]):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(r0["initial"], r0["final"]))
    # Rank 0 wrote one checkpoint for both, recording the world size and the data position.
    ckpt = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 3 and ckpt["data_position"] == 12
