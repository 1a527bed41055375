"""The one place that decides between a fused kernel and the plain PyTorch reference.

A kernel runs when every tensor is on a CUDA device, Triton imports, and the environment
variable VJEPA_FAST_REFERENCE is not "1" (set it to compare against, or fall back to, the
reference everywhere). Importing this module never imports Triton nor initialises CUDA: the Triton
ops (torch.library.triton_op, which imports Triton) are registered when Triton is first asked for.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch  # (loaded before vjepa_fast._C, which links against it)
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


def constant_under_compile(fn):
    """torch.compiler.assume_constant_result(fn): torch.compile calls fn once while tracing and
    keeps its result instead of tracing it. That decorator only sets this attribute, but importing
    it imports torch._dynamo, and with it Triton (tests/test_compile.py checks the effect)."""
    fn._dynamo_marked_constant = True
    return fn


@functools.cache
def _load_triton() -> bool:
    if not _imports("triton", "CUDA tensors use the PyTorch reference implementations"):
        return False
    from vjepa_fast.ops import masked_gather, rope_attention, tubelet_embed
    for op in (masked_gather, rope_attention, tubelet_embed):
        op.register()
    return True


@constant_under_compile
def triton_available() -> bool:
    """True when Triton imports; torch.ops.vjepa_fast's Triton ops are registered from then on.
    A constant to torch.compile, which evaluates it once instead of tracing the import."""
    return _load_triton()


@functools.cache
def extension_available() -> bool:
    """True when the compiled extension vjepa_fast._C imported (its ops are then registered
    under torch.ops.vjepa_fast). Never fails, never touches CUDA."""
    return _imports("vjepa_fast._C", "using the Triton and PyTorch implementations instead")


def use_triton(*tensors: Tensor) -> bool:
    """True when the Triton kernel should handle these tensors."""
    return all(t.is_cuda for t in tensors) and not reference_forced() and triton_available()
