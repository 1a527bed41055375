"""transformers' Auto classes for V-JEPA 2: they read a checkpoint directory or hub id and build
vjepa_fast's class for it (the seed code `AutoModel.from_pretrained(repo)` runs unchanged)."""
from __future__ import annotations

from vjepa_fast.checkpoints import Source, read_config
from vjepa_fast.classifier import VJEPA2ForVideoClassification
from vjepa_fast.model import VJEPA2Model
from vjepa_fast.video import VideoProcessor


def _check_model_type(pretrained_model_name_or_path, revision, cache_dir, local_files_only, token, subfolder) -> None:
    directory = Source(str(pretrained_model_name_or_path), revision, cache_dir, local_files_only, token,
                       subfolder).resolve()
    model_type = read_config(directory).get("model_type")
    if model_type != "vjepa2":
        raise ValueError(f"{directory}: config.json has model_type {model_type!r}; vjepa_fast builds 'vjepa2' "
                         "(V-JEPA 2) models only")


class AutoModel:
    """AutoModel.from_pretrained(path_or_id, ...) -> VJEPA2Model (transformers' arguments)."""

    model_class = VJEPA2Model

    def __init__(self):
        raise TypeError(f"{type(self).__name__} is built with {type(self).__name__}.from_pretrained(path_or_hub_id)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *, revision: str | None = None,
                        cache_dir: str | None = None, local_files_only: bool = False,
                        token: str | bool | None = None, subfolder: str = "", **model_arguments):
        """Checks config.json's model_type, then VJEPA2Model.from_pretrained (or the classifier's)
        with every argument: those it does not take are a TypeError there."""
        _check_model_type(pretrained_model_name_or_path, revision, cache_dir, local_files_only, token, subfolder)
        return cls.model_class.from_pretrained(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                               local_files_only=local_files_only, token=token, subfolder=subfolder,
                                               **model_arguments)


class AutoModelForVideoClassification(AutoModel):
    """AutoModelForVideoClassification.from_pretrained(...) -> VJEPA2ForVideoClassification."""

    model_class = VJEPA2ForVideoClassification


class AutoVideoProcessor:
    """AutoVideoProcessor.from_pretrained(path_or_id) -> VJEPA2VideoProcessor."""

    def __init__(self):
        raise TypeError("AutoVideoProcessor is built with AutoVideoProcessor.from_pretrained(path_or_hub_id)")

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str, *, revision: str | None = None,
                        cache_dir: str | None = None, local_files_only: bool = False,
                        token: str | bool | None = None, subfolder: str = "") -> VideoProcessor:
        return VideoProcessor.from_pretrained(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                              local_files_only=local_files_only, token=token, subfolder=subfolder)
