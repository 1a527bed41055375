"""3D rotary position embedding: token positions, cos/sin tables and the plain PyTorch rotation.

Per head of width hd, with s = 2 * ((hd // 3) // 2): channels [0, s) rotate with the time index,
[s, 2s) with the height index, [2s, 3s) with the width index; [3s, hd) pass through.
Within a segment, w_k = 10000 ** (-k / (s/2)) for k < s/2.

"tile" mode (V-JEPA 2 weights): the angle table is tiled, [a_0 .. a_(s/2-1), a_0 .. a_(s/2-1)],
while the rotation pairs adjacent channels (x[2i], x[2i+1]) -> (-x[2i+1], x[2i]). Channel j thus
uses angle p * w_(j mod s/2) and the two members of a pair use different angles: not a true
rotation, but what the released checkpoints were trained with.
"interleave" mode (V-JEPA 2.1): the table is [a_0, a_0, a_1, a_1, ...], a true rotation.

Angles are computed in fp32 whatever the activation dtype (both references compute them in the
activation dtype, which in bf16 loses the high frequencies); tables are cast to the activation
dtype only when applied.
"""
from __future__ import annotations

import torch
from torch import Tensor

from vjepa_fast.ops.dispatch import use_triton


class Rope:
    """What an attention layer needs to rotate q and k, computed once per forward pass.

    positions (B or 1, N, 3) fp32: (t, h, w) per token (integers, or scaled grid positions).
    cos, sin (B or 1, 1, N, hd) fp32 tables for the PyTorch path, built on first use: the fused
    kernel computes its angles from the positions and never needs them.
    mode "tile" | "interleave"; None when the Rope was made from tables alone, which then keeps
    it on the PyTorch path (the kernel needs the mode).
    """

    def __init__(self, positions: Tensor, cos: Tensor | None = None, sin: Tensor | None = None,
                 mode: str | None = None, head_dim: int | None = None):
        if (cos is None) != (sin is None):
            raise ValueError("Rope: give both cos and sin tables, or neither")
        if cos is None and (mode is None or head_dim is None):
            raise ValueError("Rope: without cos/sin tables, mode and head_dim are needed to build them")
        if mode not in (None, "tile", "interleave"):
            raise ValueError(f"Rope: mode must be 'tile' or 'interleave', got {mode!r}")
        self.positions = positions
        self.mode = mode
        self.head_dim = head_dim if cos is None else cos.shape[-1]
        self._cos, self._sin = cos, sin

    def _tables(self) -> tuple[Tensor, Tensor]:
        if self._cos is None:
            angles = rope_angles(self.positions, self.head_dim, self.mode).unsqueeze(1)  # (B|1, 1, N, hd)
            self._cos, self._sin = angles.cos(), angles.sin()
        return self._cos, self._sin

    @property
    def cos(self) -> Tensor:
        return self._tables()[0]

    @property
    def sin(self) -> Tensor:
        return self._tables()[1]

    def narrow(self, start: int, length: int) -> "Rope":
        """Tokens [start, start + length) (start may be negative, as in Tensor.narrow), e.g. the
        queries of the last step when the keys span the whole key/value cache."""
        cos = sin = None
        if self._cos is not None:
            cos, sin = self._cos.narrow(2, start, length), self._sin.narrow(2, start, length)
        return Rope(self.positions.narrow(1, start, length), cos, sin, self.mode, self.head_dim)


def segment_width(head_dim: int) -> int:
    return 2 * ((head_dim // 3) // 2)


def token_positions(token_ids: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """Decodes time-major token indices n = t*grid_h*grid_w + h*grid_w + w into (..., 3) = (t, h, w)."""
    per_frame = grid_h * grid_w
    t = token_ids // per_frame
    rest = token_ids - t * per_frame
    h = rest // grid_w
    w = rest - h * grid_w
    return torch.stack((t, h, w), dim=-1)


def axis_frequencies(width: int, device=None) -> Tensor:
    """w_k = 10000 ** (-k / (width/2)), k < width/2, in fp32 (the same operations as both references)."""
    omega = torch.arange(width // 2, dtype=torch.float32, device=device)
    omega /= width / 2.0
    return 1.0 / 10000**omega


def rope_angles(positions: Tensor, head_dim: int, mode: str) -> Tensor:
    """(..., N, 3) integer positions -> (..., N, head_dim) fp32 angles; the tail channels get 0."""
    s = segment_width(head_dim)
    omega = axis_frequencies(s, positions.device)
    parts = []
    for axis in range(3):
        angle = positions[..., axis, None] * omega  # (..., N, s/2)
        if mode == "tile":
            parts.append(torch.cat((angle, angle), dim=-1))
        elif mode == "interleave":
            parts.append(torch.repeat_interleave(angle, 2, dim=-1))
        else:
            raise ValueError(f"rope mode must be 'tile' or 'interleave', got {mode!r}")
    tail = head_dim - 3 * s
    if tail:
        parts.append(angle.new_zeros(*angle.shape[:-1], tail))
    return torch.cat(parts, dim=-1)


def make_rope(positions: Tensor, head_dim: int, mode: str) -> Rope:
    """Rope for (B or 1, N, 3) positions; tables shaped to broadcast over heads: (B or 1, 1, N, hd).
    A token whose h and w positions are 0 is rotated by time only (angle 0 is the identity): this
    is how the action-conditioned predictor's action and state tokens are expressed. The tables
    are built now unless the fused kernel will rotate in-kernel (then only if something asks)."""
    if head_dim % 2:
        raise ValueError(f"rope: head_dim must be even, got {head_dim}")
    if mode not in ("tile", "interleave"):
        raise ValueError(f"rope: mode must be 'tile' or 'interleave', got {mode!r}")
    rope = Rope(positions.to(torch.float32), mode=mode, head_dim=head_dim)
    if not use_triton(positions):
        rope._tables()
    return rope


def rotate_pairs(x: Tensor) -> Tensor:
    """(x[2i], x[2i+1]) -> (-x[2i+1], x[2i]) along the last dimension."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope_ref(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x * cos + rotate_pairs(x) * sin, cos/sin broadcast to x; reproduces the tile quirk when the
    tables were built in tile mode. Tail channels have cos = 1, sin = 0 and come out unchanged."""
    return x * cos.to(x.dtype) + rotate_pairs(x) * sin.to(x.dtype)
