"""The one place that decides between a fused kernel and the plain PyTorch reference.

A kernel runs when every tensor is on a CUDA device, Triton imports, and the environment
variable VJEPA_FAST_REFERENCE is not "1" (set it to compare against, or fall back to, the
reference everywhere). Importing this module never imports Triton nor initialises CUDA.
"""
from __future__ import annotations

import functools
import os
import warnings

from torch import Tensor

REFERENCE_ENV = "VJEPA_FAST_REFERENCE"


def reference_forced() -> bool:
    return os.environ.get(REFERENCE_ENV) == "1"


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        warnings.warn(f"vjepa_fast: Triton not available ({e}); CUDA tensors use the PyTorch "
                      "reference implementations", stacklevel=2)
        return False
    return True


def use_triton(*tensors: Tensor) -> bool:
    """True when the Triton kernel should handle these tensors."""
    return all(t.is_cuda for t in tensors) and not reference_forced() and triton_available()
