"""Shared pieces of the end-to-end model benchmarks: same weights in both implementations, peak
memory of one call, and a ratio table printed at the end of the module."""
from __future__ import annotations

import contextlib
import os
import platform
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


def machine() -> dict:
    info = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
            "cpus": os.cpu_count(), "torch": torch.__version__}
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


class RatioTable:
    """Collects medians per (row, provider) and prints reference/ours ratios."""

    def __init__(self, title: str, reference: str, ours: str):
        self.title, self.reference, self.ours = title, reference, ours
        self.rows: dict[str, dict[str, tuple[float, float]]] = {}

    def add(self, row: str, provider: str, benchmark, memory_mib: float) -> None:
        benchmark.extra_info.update(machine())
        benchmark.extra_info["peak_memory_mib"] = round(memory_mib, 1)
        if benchmark.stats is not None:  # None with --benchmark-disable
            self.rows.setdefault(row, {})[provider] = (benchmark.stats.stats.median, memory_mib)

    def lines(self) -> list[str]:
        out = [f"{self.title}: speed-up = {self.reference} time / {self.ours} time (same run); memory = peak MiB"]
        for row, p in sorted(self.rows.items()):
            if self.reference in p and self.ours in p:
                (tr, mr), (to, mo) = p[self.reference], p[self.ours]
                out.append(f"  {row:<32} {self.reference} {tr * 1e3:9.1f} ms  {self.ours} {to * 1e3:9.1f} ms  "
                           f"speed-up {tr / to:5.2f}x  memory {mr:8.1f} -> {mo:8.1f} MiB")
        return out

    def report(self, config) -> None:
        """Prints the table even while pytest captures output (module fixtures tear down captured)."""
        capture = config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print("\n" + "\n".join(self.lines()))
