"""Model outputs that read like transformers' ModelOutput: a dataclass whose fields are also
reachable by key (`out["logits"]`) and position (`out[0]`), with `to_tuple()`. As in transformers,
fields that are None are left out of keys, positions and tuples, so `out[0]` is the loss when
labels were given and the logits otherwise."""
from __future__ import annotations

import dataclasses


class ModelOutput:
    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{type(self).__name__} has no (non-None) field {key!r}; it has {self.keys()}")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def to_tuple(self) -> tuple:
        return tuple(self.values())
