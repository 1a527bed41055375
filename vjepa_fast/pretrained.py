"""What VJEPA2Model and VJEPA2ForVideoClassification share with transformers' PreTrainedModel:
loading (`from_pretrained` with transformers' arguments), saving (safetensors, sharded), the hub,
and the small interface code written for transformers reaches for (.device, .dtype,
num_parameters(), gradient checkpointing). Every argument is named: one that is not supported is
a TypeError, never silently ignored."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from vjepa_fast.config import DTYPES


def resolve_dtype(dtype, torch_dtype) -> torch.dtype | str | None:
    """dtype= (transformers' name since v5) or torch_dtype= (its older name): a torch.dtype, its
    name ("bfloat16") or "auto" (the checkpoint's dtype)."""
    if dtype is not None and torch_dtype is not None:
        raise ValueError("from_pretrained: give dtype= or torch_dtype= (its older name), not both")
    value = torch_dtype if dtype is None else dtype
    if value is None or value == "auto" or isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    raise ValueError(f"from_pretrained: dtype must be 'auto', a name in {sorted(DTYPES)} or one of those "
                     f"torch dtypes, got {value!r}")


def resolve_device(device_map) -> torch.device | None:
    """device_map= for a model that lives on one device: a device, its name or index, or "auto"
    (the one accelerator when there is one, else the CPU)."""
    if device_map is None:
        return None
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, dict):
        raise ValueError("from_pretrained: device_map as a dict (layers over several devices) is not supported; "
                         "give one device ('cpu', 'cuda', 'cuda:1', 'auto')")
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"from_pretrained: device_map must be a device ('cpu', 'cuda', 'cuda:1', an index) "
                         f"or 'auto', got {device_map!r}") from e


class PreTrainedMixin:
    main_input_name = "pixel_values_videos"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        skip = {id(p) for p in self.get_input_embeddings().parameters()} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable) and id(p) not in skip)

    def get_output_embeddings(self) -> None:
        return None  # no language-model head

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each block in the backward pass (non-reentrant checkpointing, always)."""
        if gradient_checkpointing_kwargs not in (None, {}) and \
                gradient_checkpointing_kwargs != {"use_reentrant": False}:
            raise ValueError("gradient_checkpointing_kwargs: only {'use_reentrant': False} is supported, "
                             f"got {gradient_checkpointing_kwargs!r}")
        self._set_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self._set_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def _set_checkpointing(self, on: bool) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = on

    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True,
                        max_shard_size: int | str = "5GB", push_to_hub: bool = False,
                        repo_id: str | None = None, token: str | bool | None = None) -> None:
        """config.json + safetensors weights (sharded above max_shard_size) that transformers reads."""
        from vjepa_fast.checkpoints import write_pretrained
        if not safe_serialization:
            raise ValueError("save_pretrained: vjepa_fast writes safetensors only (safe_serialization=True)")
        config = self.config.to_dict()
        config["architectures"] = [type(self).__name__]
        config["dtype"] = str(self.dtype).removeprefix("torch.")
        write_pretrained(save_directory, self.checkpoint_state(), config, max_shard_size)
        if push_to_hub:
            self._upload(Path(save_directory), repo_id or Path(save_directory).name, token, private=None)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | bool | None = None,
                    max_shard_size: int | str = "5GB") -> None:
        """save_pretrained into a temporary directory, then upload it to the hub repo `repo_id`."""
        with tempfile.TemporaryDirectory() as directory:
            self.save_pretrained(directory, max_shard_size=max_shard_size)
            self._upload(Path(directory), repo_id, token, private)

    @staticmethod
    def _upload(directory: Path, repo_id: str, token, private) -> None:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise ImportError("push_to_hub needs huggingface_hub: pip install huggingface_hub") from None
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message="Upload with vjepa_fast")


def finish_loading(model: nn.Module, dtype, device: torch.device | None, auto_dtype: torch.dtype):
    """The loaded model in eval mode (as transformers returns it), in the dtype asked for
    (None and "auto": the checkpoint's) and on the device asked for."""
    model.to(device=device, dtype=auto_dtype if dtype in (None, "auto") else dtype)
    return model.eval()
