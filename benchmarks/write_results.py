"""Writes benchmarks/RESULTS.md from a pytest-benchmark JSON file (the GPU suite's last step).

Every row gives the median and, when its group has one, the speed-up against the reference
provider measured in the same run ("reference", or "transformers" for the model benchmarks).
Run: python benchmarks/write_results.py --json results.json --output benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path

BASELINES = ("reference", "transformers")


@dataclass
class ResultsArgs:
    json: str                 # pytest-benchmark --benchmark-json output
    output: str               # the Markdown file to write
    tests_log: str = ""       # optional: output of the CUDA test run, whose summary line is quoted


def _group_key(bench: dict) -> str:
    """The benchmark's name without its provider parameter: rows of one group differ only by provider."""
    provider = bench.get("params", {}).get("provider")
    name = bench["name"]
    if provider is not None:
        name = re.sub(rf"(?<=[\[-]){re.escape(str(provider))}(?=[\]-])", "*", name)
    return name


def _machine(benchmarks: list[dict]) -> dict:
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if "device" in info:
            return info
    return {}


def render(data: dict, tests_summary: str) -> str:
    benchmarks = data.get("benchmarks", [])
    info = _machine(benchmarks)
    lines = ["# Benchmark results", "",
             f"Written by `benchmarks/gpu_suite.sh` on {data.get('datetime', datetime.datetime.now().isoformat())}.", "",
             f"- device: {info.get('device', 'unknown')}",
             f"- torch {info.get('torch', '?')}, triton {info.get('triton', '?')}, CUDA {info.get('cuda', '?')}"]
    if tests_summary:
        lines.append(f"- CUDA tests (`pytest tests -m cuda`): {tests_summary}")
    lines += ["", "Speed-up = reference median / this median, both from this run.", "",
              "| benchmark | provider | median (ms) | speed-up | TFLOP/s |", "|---|---|---:|---:|---:|"]
    groups: dict[str, list[dict]] = {}
    for bench in benchmarks:
        groups.setdefault(_group_key(bench), []).append(bench)
    for key in sorted(groups):
        rows = groups[key]
        medians = {str(b.get("params", {}).get("provider")): b["stats"]["median"] for b in rows}
        base = next((medians[p] for p in BASELINES if p in medians), None)
        for bench in rows:
            median = bench["stats"]["median"]
            speedup = f"{base / median:.2f}x" if base is not None else ""
            tflops = bench.get("extra_info", {}).get("tflops", "")
            lines.append(f"| {key} | {bench.get('params', {}).get('provider', '')} | {median * 1e3:.3f} | "
                         f"{speedup} | {tflops} |")
    return "\n".join(lines) + "\n"


def _tests_summary(path: str) -> str:
    if not path:
        return ""
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    summaries = [line.strip("= ") for line in lines if re.search(r"\b(passed|failed|skipped|error)", line)]
    return summaries[-1] if summaries else "no summary line found"


def parse_args(argv: list[str] | None = None) -> ResultsArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="pytest-benchmark JSON file (--benchmark-json output)")
    p.add_argument("--output", required=True, help="Markdown file to write (e.g. benchmarks/RESULTS.md)")
    p.add_argument("--tests-log", default="", help="log of the CUDA test run; its summary line is quoted")
    return ResultsArgs(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = json.loads(Path(args.json).read_text())
    Path(args.output).write_text(render(data, _tests_summary(args.tests_log)))
    print(f"wrote {args.output} ({len(data.get('benchmarks', []))} benchmarks; {dataclasses.asdict(args)})")


if __name__ == "__main__":
    main()
