"""The one place that decides between a fused kernel and the plain PyTorch reference.

A kernel runs when every tensor is on a CUDA device, Triton imports, and the environment
variable VJEPA_FAST_REFERENCE is not "1" (set it to compare against, or fall back to, the
reference everywhere). Importing this module never imports Triton nor initialises CUDA.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch  # noqa: F401  (loaded before vjepa_fast._C, which links against it)
from torch import Tensor

REFERENCE_ENV = "VJEPA_FAST_REFERENCE"


def reference_forced() -> bool:
    return os.environ.get(REFERENCE_ENV) == "1"


def _imports(module: str, instead: str) -> bool:
    """True when `module` imports; otherwise says once (per caller) what is used instead."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        warnings.warn(f"vjepa_fast: {module} not available ({e}); {instead}", stacklevel=3)
        return False
    return True


@functools.cache
def triton_available() -> bool:
    return _imports("triton", "CUDA tensors use the PyTorch reference implementations")


@functools.cache
def extension_available() -> bool:
    """True when the compiled extension vjepa_fast._C imported (its ops are then registered
    under torch.ops.vjepa_fast). Never fails, never touches CUDA."""
    return _imports("vjepa_fast._C", "using the Triton and PyTorch implementations instead")


def use_triton(*tensors: Tensor) -> bool:
    """True when the Triton kernel should handle these tensors."""
    return all(t.is_cuda for t in tensors) and not reference_forced() and triton_available()
