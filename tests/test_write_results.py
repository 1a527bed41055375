"""benchmarks/write_results.py, the GPU suite's last step, on a pytest-benchmark JSON shaped like
a real run (it cannot wait for a GPU to be checked)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import write_results  # noqa: E402


def _bench(shape: str, provider: str, mode: str, median: float, tflops: float | None = None) -> dict:
    extra = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "cuda": "12.8"}
    if tflops is not None:
        extra["tflops"] = tflops
    return {"name": f"test_rope_attention[{shape}-{provider}-{mode}]",
            "params": {"shape": shape, "provider": provider, "mode": mode},
            "stats": {"median": median}, "extra_info": extra}


def test_results_table_has_device_versions_and_same_run_speedups(tmp_path):
    medians = {"reference": 0.004, "compiled-reference": 0.003, "triton": 0.0011}
    data = {"datetime": "2026-01-01T00:00:00",
            "benchmarks": [_bench("vitl", p, "fwd", m, tflops=1.5) for p, m in medians.items()]
            + [_bench("other", "solo", "bwd", 0.002)]}
    (tmp_path / "b.json").write_text(json.dumps(data))
    (tmp_path / "tests.log").write_text("....\n===== 12 passed, 3 skipped in 40.0s =====\n")
    out = tmp_path / "RESULTS.md"
    write_results.main(["--json", str(tmp_path / "b.json"), "--output", str(out),
                        "--tests-log", str(tmp_path / "tests.log")])
    text = out.read_text()
    assert "NVIDIA H100 80GB HBM3" in text and "triton 3.6.0" in text and "CUDA 12.8" in text
    assert "12 passed, 3 skipped in 40.0s" in text
    for provider, median in medians.items():
        row = next(line for line in text.splitlines() if f"| {provider} |" in line)
        assert f"{medians['reference'] / median:.2f}x" in row and f"{median * 1e3:.3f}" in row
    solo = next(line for line in text.splitlines() if "| solo |" in line)
    assert "x |" not in solo  # no reference in its group: no speed-up claimed


def _comparison(row: str, ratio: float) -> dict:
    extra = {"device": "AMD EPYC 7B13", "cpus": 2, "threads": 2, "torch": "2.13.0+cpu", "triton": "3.7.1",
             "row": row, "reference": "transformers", "rounds": 5, "reference_ms": 100.0 * ratio,
             "vjepa_fast_ms": 100.0, "speedup_median": ratio, "speedup_min": ratio - 0.1, "speedup_max": ratio + 0.2,
             "memory_reference_mib": 96.0, "memory_vjepa_fast_mib": 81.0}
    return {"name": f"test_{row}", "params": {}, "stats": {"median": 0.2}, "extra_info": extra}


def test_readme_table_is_regenerated_between_the_markers_from_one_run(tmp_path):
    data = {"datetime": "2026-12-05T10:00:00", "benchmarks": [_comparison("encoder fp32", 1.06),
                                                              _comparison("encoder bf16", 1.26)]}
    (tmp_path / "b.json").write_text(json.dumps(data))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\n| old | 9.99x |\n<!-- bench:end -->\noutro\n")
    write_results.main(["--json", str(tmp_path / "b.json"), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench:start -->\n") and text.endswith("<!-- bench:end -->\noutro\n")
    assert "9.99x" not in text and "AMD EPYC 7B13" in text and "2 torch threads" in text
    row = next(line for line in text.splitlines() if "| encoder bf16 |" in line)
    assert "**1.26x** [1.16-1.46]" in row and "96.0 -> 81.0" in row
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="bench:start"):
        write_results.main(["--json", str(tmp_path / "b.json"), "--readme", str(readme)])
