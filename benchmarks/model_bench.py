"""Shared pieces of the benchmarks: the machine a number comes from, peak memory of one call, and
the alternating-rounds comparison of a reference with vjepa_fast that every ratio comes from."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast(dev: str, dtype: torch.dtype | None):
    """Autocast to dtype on dev, or nothing for None (plain fp32)."""
    return torch.autocast(dev, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What a number depends on: the device (CPU model or GPU name), threads and versions."""
    info = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of every storage an op creates until its last tensor is freed."""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, int] = {}    # storage address -> live tensors seen on it
        self.nbytes: dict[int, int] = {}  # storage address -> bytes
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.nbytes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in self.refs:
                if key in inputs:
                    continue  # a view of something that existed before the call (weights, the input)
                self.refs[key] = 0
                self.nbytes[key] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self.refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out


def peak_memory_mib(fn, dev: str) -> float:
    """Peak memory of the tensors one call creates: the CUDA allocator's peak on GPU; on CPU, the
    peak of live tensor storage created during the call (tracked per op; kernels' internal
    scratch buffers are not seen, on either side of a comparison)."""
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    mode = _LiveTensorBytes()
    with mode:
        fn()
    return mode.peak / 2**20


# Every comparison of the session, printed at its end (conftest.py) and kept in the JSON.
RESULTS: list[dict] = []


def alternate(benchmark, row: str, reference: str, reference_fn, candidate_fn, rounds: int = 5,
              memory: bool = True, repeat: int = 1) -> dict:
    """Times the reference and vjepa_fast in alternating rounds within this one test (A B, B A,
    A B, ...: neither side always runs first), so a machine slowed by other work slows both alike.
    The speed-up is the median over rounds of reference time / vjepa_fast time, reported with its
    min and max; a round runs each side `repeat` times (for calls of a few milliseconds). Each side
    runs once first as a warm-up (and, with `memory`, to measure its peak)."""
    if rounds < 5:
        raise ValueError(f"rounds must be >= 5 for a median that one slow round cannot move, got {rounds}")
    dev = device()
    peaks = []
    for fn in (reference_fn, candidate_fn):
        fn()  # warm-up
        peaks.append(peak_memory_mib(fn, dev) if memory else None)
    times: tuple[list[float], list[float]] = ([], [])

    def one_round():
        for side in ((0, 1) if len(times[0]) % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            for _ in range(repeat):
                (reference_fn, candidate_fn)[side]()
            times[side].append((time.perf_counter() - start) / repeat)

    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    ratios = sorted(r / c for r, c in zip(*times))
    result = {"row": row, "reference": reference, "rounds": len(ratios),
              "reference_ms": statistics.median(times[0]) * 1e3, "vjepa_fast_ms": statistics.median(times[1]) * 1e3,
              "speedup_median": statistics.median(ratios), "speedup_min": ratios[0], "speedup_max": ratios[-1],
              "memory_reference_mib": peaks[0], "memory_vjepa_fast_mib": peaks[1]}
    benchmark.extra_info.update(machine(), **result)
    RESULTS.append(result)
    return result
