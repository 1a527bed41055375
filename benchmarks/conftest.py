"""Shared benchmark fixtures: the device to run on and the machine facts every result carries."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# `python -m pytest` puts the repository root on sys.path, where kernels/ (installed as
# vjepa_fast.kernels) would shadow the PyPI package `kernels` that transformers imports.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def extra_info(benchmark) -> dict:
    """benchmark.extra_info, pre-filled with machine(); add figures such as TFLOP/s to it."""
    from model_bench import machine
    benchmark.extra_info.update(machine())
    return benchmark.extra_info


def pytest_terminal_summary(terminalreporter):
    """The speed-ups of the session, each from alternating rounds of one test."""
    from model_bench import RESULTS, machine
    if not RESULTS:
        return
    info = machine()
    terminalreporter.write_line(f"\nspeed-up = reference time / vjepa_fast time, median [min-max] over alternating "
                                f"rounds; {info['device']}, {info['threads']} threads, torch {info['torch']}")
    for r in RESULTS:
        terminalreporter.write_line(f"  {r['row']:<60} {r['reference']:<24} {r['reference_ms']:9.1f} ms  "
                                    f"vjepa_fast {r['vjepa_fast_ms']:9.1f} ms  {r['speedup_median']:5.2f}x "
                                    f"[{r['speedup_min']:.2f}-{r['speedup_max']:.2f}]")
