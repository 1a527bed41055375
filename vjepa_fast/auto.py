"""transformers' Auto classes for V-JEPA 2: `from_pretrained` of a checkpoint directory or hub id
builds vjepa_fast's class (the seed code `AutoModel.from_pretrained(repo)` runs unchanged). They
are the classes' own from_pretrained, so the arguments are theirs (an unknown one is a TypeError)
and a config.json of another model_type is refused where every config is read (VJEPA2Config.from_dict)."""
from __future__ import annotations

from vjepa_fast.classifier import VJEPA2ForVideoClassification
from vjepa_fast.model import VJEPA2Model
from vjepa_fast.video import VideoProcessor


class _Auto:
    def __init__(self):
        raise TypeError(f"{type(self).__name__} is built with {type(self).__name__}.from_pretrained(path_or_hub_id)")


class AutoModel(_Auto):
    """AutoModel.from_pretrained(path_or_id, ...) -> VJEPA2Model."""
    from_pretrained = VJEPA2Model.from_pretrained


class AutoModelForVideoClassification(_Auto):
    """AutoModelForVideoClassification.from_pretrained(path_or_id, ...) -> VJEPA2ForVideoClassification."""
    from_pretrained = VJEPA2ForVideoClassification.from_pretrained


class AutoVideoProcessor(_Auto):
    """AutoVideoProcessor.from_pretrained(path_or_id, ...) -> VJEPA2VideoProcessor."""
    from_pretrained = VideoProcessor.from_pretrained
