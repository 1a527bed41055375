"""Writes benchmark tables from a pytest-benchmark JSON file: benchmarks/RESULTS.md (the GPU
suite's last step) and, with --readme, the table between the README's bench markers (`make bench`).

RESULTS.md: every row gives the median and, when its group has one, the speed-up against the
reference provider measured in the same run. README: every comparison timed in alternating
rounds (model_bench.alternate), its speed-up the median of per-round ratios with min-max.
Run: python benchmarks/write_results.py --json results.json --output benchmarks/RESULTS.md
     python benchmarks/write_results.py --json results.json --readme README.md
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
    output: str = ""          # the Markdown file to write
    readme: str = ""          # the README whose table between the bench markers is rewritten
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


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def readme_table(data: dict) -> str:
    """The alternating-rounds comparisons of one run, with the machine they ran on."""
    rows = [b["extra_info"] for b in data.get("benchmarks", []) if "speedup_median" in b.get("extra_info", {})]
    if not rows:
        raise ValueError("no alternating-rounds comparisons in the JSON (run pytest benchmarks --benchmark-only)")
    info = rows[0]
    lines = [f"Measured by `make bench` on {data.get('datetime', '?')[:10]}: {info['device']}, {info['cpus']} cores, "
             f"{info['threads']} torch threads, torch {info['torch']}, triton {info.get('triton', 'none')}. Each row is "
             f"one test timing both sides in alternating rounds; speed-up = median of per-round ratios "
             f"(reference / vjepa_fast), [min-max] over {min(r['rounds'] for r in rows)}+ rounds.", "",
             "| path | reference | reference (ms) | vjepa_fast (ms) | speed-up [min-max] | peak memory (MiB) |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        memory = (f"{r['memory_reference_mib']:.1f} -> {r['memory_vjepa_fast_mib']:.1f}"
                  if r.get("memory_reference_mib") is not None else "")
        lines.append(f"| {r['row']} | {r['reference']} | {r['reference_ms']:.1f} | {r['vjepa_fast_ms']:.1f} | "
                     f"**{r['speedup_median']:.2f}x** [{r['speedup_min']:.2f}-{r['speedup_max']:.2f}] | {memory} |")
    return "\n".join(lines)


def replace_table(text: str, table: str) -> str:
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"the README needs one {START} ... {END} pair around the benchmark table")
    head, rest = text.split(START)
    return f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}"


def _tests_summary(path: str) -> str:
    if not path:
        return ""
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    summaries = [line.strip("= ") for line in lines if re.search(r"\b(passed|failed|skipped|error)", line)]
    return summaries[-1] if summaries else "no summary line found"


def parse_args(argv: list[str] | None = None) -> ResultsArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="pytest-benchmark JSON file (--benchmark-json output)")
    p.add_argument("--output", default="", help="Markdown file to write (e.g. benchmarks/RESULTS.md)")
    p.add_argument("--readme", default="", help="README.md whose table between the bench markers is rewritten")
    p.add_argument("--tests-log", default="", help="log of the CUDA test run; its summary line is quoted")
    args = p.parse_args(argv)
    if not (args.output or args.readme):
        p.error("give --output, --readme or both")
    return ResultsArgs(**vars(args))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = json.loads(Path(args.json).read_text())
    if args.output:
        Path(args.output).write_text(render(data, _tests_summary(args.tests_log)))
    if args.readme:
        readme = Path(args.readme)
        readme.write_text(replace_table(readme.read_text(), readme_table(data)))
    print(f"wrote {args.output or ''} {args.readme or ''} ({len(data.get('benchmarks', []))} benchmarks; "
          f"{dataclasses.asdict(args)})")


if __name__ == "__main__":
    main()
