"""One command line for every job: each field of the job's config dataclass is one flag.

A field `num_frames: int` is `--num-frames N`, its help text is the field's `help` metadata and
its default is shown; a bool is `--x` / `--no-x`; a `list[str]` field is the positional
arguments; `int | None` and the like default to unset. A value the dataclass's own checks reject
is a one-line usage error, and a job's bad input (a missing file, a wrong checkpoint) is a
one-line error, never a traceback; `--debug` (on every job) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

Config = TypeVar("Config")
_TYPES = {"int": int, "float": float, "str": str}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each help text; the job's docstring kept as written."""


def build_parser(cls: type, prog: str, description: str, defaults=None) -> argparse.ArgumentParser:
    """Flags for every field of `cls`, with defaults from the instance `defaults` (else the fields')."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_Formatter)
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback, not one line")
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name) if defaults is not None else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())
        help_text = f.metadata["help"]
        if f.type == "list[str]":
            parser.add_argument(f.name, nargs="*", metavar=f.name.upper().rstrip("S"), default=default, help=help_text)
        elif f.type == "bool":
            parser.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            parser.add_argument(flag(f.name), dest=f.name, type=_TYPES[f.type.replace(" | None", "")],
                                default=default, metavar=f.name.upper(), help=help_text)
    return parser


def parse(cls: type[Config], argv: list[str] | None, prog: str, description: str, defaults=None) -> Config:
    """The command line as an instance of `cls`; a value it rejects is a usage error (exit 2)."""
    global _debug
    parser = build_parser(cls, prog, description, defaults)
    values = vars(parser.parse_args(argv))
    _debug = values.pop("debug")
    try:
        return cls(**values)
    except ValueError as e:
        parser.error(str(e))


_debug = False  # --debug of the command line being run


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_fields(config, at_least_1=(), at_least_0=(), numbers=(), choices=None, folders=(), files=()) -> None:
    """The checks every job config makes: ints with a lower bound, finite numbers >= 0, names
    from a list, output paths that can be written (a folder, or a file, whose parents are not
    files). The error names the flag."""
    for low, names in ((1, at_least_1), (0, at_least_0)):
        for name in names:
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{flag(name)} must be an int >= {low}, got {value!r}")
    for name in numbers:
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{flag(name)} must be a finite number >= 0, got {value!r}")
    for name, allowed in (choices or {}).items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{flag(name)} must be one of {tuple(allowed)}, got {getattr(config, name)!r}")
    for name in (*folders, *files):
        path = Path(getattr(config, name))
        must_be_folders = [*reversed(path.parents), *([path] if name in folders else [])]
        blocked = next((p for p in must_be_folders if p.is_file()), None)
        if blocked is not None:
            raise ValueError(f"{flag(name)} {path}: {blocked} is a file, not a folder")


def run(job: Callable[[Config], object], config: Config, prog: str):
    """Runs the job; any error (bad data, a bad checkpoint, a diverged run, an unreadable file)
    ends with one line on stderr and exit status 1, Ctrl-C with one line and status 130, or
    either with its traceback under --debug."""
    try:
        return job(config)
    except KeyboardInterrupt:
        if _debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:
        if _debug:
            raise
        known = isinstance(e, (OSError, ValueError, FloatingPointError))  # their messages name the file or flag
        raise SystemExit(f"{prog}: error: {e if known else f'{type(e).__name__}: {e}'}"
                         + ("" if known else " (--debug shows the traceback)")) from None


def resolve_device(name: str) -> torch.device:
    """`--device`: auto (CUDA when there is one), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    return torch.device(name)


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """Under torchrun (WORLD_SIZE set): NCCL on GPUs, gloo on CPU. Returns (rank, world, device)."""
    use_cuda = resolve_device(device).type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)  # before NCCL starts, so each rank talks from its own GPU
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device
