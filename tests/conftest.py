import os
import sys
from pathlib import Path

# The Triton interpreter must be chosen before any @triton.jit function is defined.
os.environ.setdefault("TRITON_INTERPRET", "1")
# MuJoCo (tests/test_fetch.py) renders headless, in software.
os.environ.setdefault("MUJOCO_GL", "osmesa")
# `python -m pytest` puts the repository root on sys.path, where kernels/ (installed as
# vjepa_fast.kernels) would shadow the PyPI package `kernels` that transformers imports.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

import pytest  # noqa: E402
import torch  # noqa: E402

from vjepa_fast.ops import dispatch  # noqa: E402

# Registers torch.ops.vjepa_fast's Triton ops (done lazily, on the first dispatch to a kernel).
assert dispatch.triton_available(), "the tests need Triton (its interpreter on CPU)"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """For tests of tiny tensors: one thread avoids OpenMP hand-offs that dominate on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
