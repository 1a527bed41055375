"""Bad files and bad arguments get one clear error that names the field or argument (the
reliability issue's API cases), where they once loaded silently or failed deep inside."""
import json

import pytest
import torch

from vjepa_fast import VJEPA2Config, VJEPA2Model
from vjepa_fast.ac_model import ACConfig, ACPredictor
from vjepa_fast.checkpoints import CheckpointError

TINY = dict(crop_size=32, frames_per_clip=4, hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
            pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=1)


@pytest.fixture
def saved(tmp_path):
    VJEPA2Model(VJEPA2Config(**TINY)).save_pretrained(tmp_path)
    return tmp_path


def edit_config(directory, **changes):
    d = json.loads((directory / "config.json").read_text())
    d.update(changes)
    (directory / "config.json").write_text(json.dumps(d))


@pytest.mark.parametrize("changes, match", [
    ({"use_rope_interleave": "no"}, "use_rope_interleave must be true or false"),
    ({"layer_norm_eps": -1}, "layer_norm_eps must be a finite number > 0"),
    ({"mlp_ratio": "x"}, "mlp_ratio must be a finite number"),
    ({"mlp_ratio": None}, "mlp_ratio must be a finite number"),
    ({"qkv_bias": 1}, "qkv_bias must be true or false"),
    ({"num_pooler_layers": -2}, "num_pooler_layers must be an int >= 0"),
])
def test_config_json_fields_are_checked_by_name(saved, changes, match):
    edit_config(saved, **changes)
    with pytest.raises(ValueError, match=match):
        VJEPA2Model.from_pretrained(saved)


def test_config_json_that_is_not_an_object(saved):
    (saved / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        VJEPA2Model.from_pretrained(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        VJEPA2Model.from_pretrained(saved)


def test_shard_index_cannot_leave_the_checkpoint_folder(tmp_path):
    inner = tmp_path / "ckpt"
    VJEPA2Model(VJEPA2Config(**TINY)).save_pretrained(inner, max_shard_size=20_000)
    first = sorted(inner.glob("model-00001-of-*.safetensors"))[0]
    (tmp_path / "outside.safetensors").write_bytes(first.read_bytes())
    index = json.loads((inner / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "../outside.safetensors" if v == first.name else v
                           for k, v in index["weight_map"].items()}
    (inner / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="'../outside.safetensors' is not a file name"):
        VJEPA2Model.from_pretrained(inner)


def test_truncated_safetensors_is_one_clear_error(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        VJEPA2Model.from_pretrained(saved)


def test_masks_with_repeated_indices_are_refused():
    model = VJEPA2Model(VJEPA2Config(**TINY))
    x = torch.randn(1, 4, 3, 32, 32)
    ids = torch.tensor([[0, 1, 1]])
    with pytest.raises(ValueError, match=r"context_mask\[0\] repeats a token index"):
        model(x, context_mask=[ids], target_mask=[torch.tensor([[2, 3, 4]])])


def test_ac_inputs_name_the_argument_at_fault():
    c = ACConfig.from_name("ac-tiny")
    model = ACPredictor(c)
    z = torch.randn(1, 2 * c.tokens_per_frame, c.enc_dim)
    actions, states = torch.randn(1, 2, c.action_dim), torch.randn(1, 2, c.state_dim)
    with pytest.raises(ValueError, match=r"actions must be \(batch=1, steps=2, 7\)"):
        model(z, actions[:, :1], states)
    with pytest.raises(TypeError, match="actions must have the features' dtype torch.float32, got torch.float64"):
        model(z, actions.double(), states)
    with pytest.raises(ValueError, match="features must be"):
        model(z[:, 1:], actions, states)
