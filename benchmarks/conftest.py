"""Shared benchmark fixtures: the device to run on and the machine facts every result carries."""
from __future__ import annotations

import platform

import pytest
import torch


def machine_info() -> dict:
    """Device name and the versions a number depends on (recorded in every benchmark's extra_info)."""
    info = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "none"
    return info


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def extra_info(benchmark) -> dict:
    """benchmark.extra_info, pre-filled with machine_info(); add figures such as TFLOP/s to it."""
    benchmark.extra_info.update(machine_info())
    return benchmark.extra_info
