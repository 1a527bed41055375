"""Ahead-of-time compilation of @triton.jit kernels for real GPUs, on a machine without one.

`compile_kernels(requests)` compiles each request with `triton.compile(ASTSource(...))` for
`GPUTarget("cuda", arch, 32)`, writes the cubin, runs Triton's bundled
`cuobjdump --dump-resource-usage` on it and returns registers, spill stack, local memory, shared
memory and whether the PTX uses `wgmma` (Hopper's warpgroup tensor-core instructions).

The compilation runs in a subprocess with TRITON_INTERPRET unset: under the interpreter (which
tests/conftest.py switches on) `@triton.jit` yields interpreter objects, not compilable kernels.
One subprocess compiles every request, so a test pays the torch/triton import only once.

Usage from a test:

    req = AotRequest(module="vjepa_fast.kernels.my_op", kernel="_my_kernel",
                     signature={"x_ptr": "*bf16", "n": "i32", "BLOCK": "constexpr"},
                     constexprs={"BLOCK": 128}, arch=90)
    (res,) = compile_kernels([req])
    assert res.stack == 0 and res.local == 0, res
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AotRequest:
    module: str                     # importable module holding the kernel
    kernel: str                     # name of the @triton.jit function in that module
    signature: dict[str, str]       # every argument: "*fp16", "i32", "fp32", "constexpr", ...
    constexprs: dict[str, object]   # values of the constexpr arguments
    arch: int = 90                  # 90 = H100/H200, 80 = A100
    num_warps: int = 4
    num_stages: int = 3
    divisible: tuple[str, ...] = ()  # arguments Triton's runtime would find divisible by 16
    label: str = ""                 # free text to name the configuration in assertion messages


@dataclass(frozen=True)
class AotResult:
    request: AotRequest
    registers: int
    stack: int                      # bytes of spill stack per thread: must be 0
    local: int                      # bytes of local memory per thread: must be 0
    shared: int                     # bytes of (dynamic) shared memory Triton allocates
    wgmma: bool                     # the PTX contains wgmma instructions
    ptx: str = field(repr=False)
    sass: str = field(repr=False)   # `nvdisasm -c` of the cubin

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0


_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def parse_resource_usage(text: str) -> dict[str, int]:
    """Registers/stack/shared/local of the first function in `cuobjdump --dump-resource-usage` output."""
    match = _USAGE.search(text)
    if match is None:
        raise ValueError(f"aot_utils: no resource usage line in cuobjdump output:\n{text}")
    reg, stack, shared, local = (int(g) for g in match.groups())
    return {"registers": reg, "stack": stack, "static_shared": shared, "local": local}


def tool_path(name: str) -> str:
    """cuobjdump or nvdisasm, as Triton ships them."""
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


@dataclass(frozen=True)
class LoopProfile:
    """Per warp, one trip of a kernel's steady inner loop, read from its SASS."""
    instructions: int
    mufu: int                       # MUFU.* (ex2, sin, cos, ...): 16 per clock per SM on Hopper
    hgmma: int                      # HGMMA.* (warpgroup matrix multiply-accumulate)
    hgmma_flop: int                 # 2*m*n*k summed over those (one warpgroup's share each)
    scalar_loads: int               # LDG.*: global loads outside the async-copy pipeline

    def cta_flop(self, warps: int) -> int:
        """The CTA's matrix-product FLOP per trip: each warp of a warpgroup issues its HGMMAs."""
        return self.hgmma_flop * warps // 4

    def ceiling(self, warps: int) -> float:
        """The share of the tensor cores' peak the loop can reach: tensor clocks (4096 dense
        16-bit FLOP per clock per SM) over the largest of tensor, issue (4 warp-instructions per
        clock) and MUFU clocks (16 lanes per clock)."""
        tensor = self.cta_flop(warps) / 4096
        issue = warps * self.instructions / 4
        mufu = warps * 32 * self.mufu / 16
        return tensor / max(tensor, issue, mufu)


_LABEL = re.compile(r"^(\.L_x_\d+):")
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA\s+`?\(?(\.L_x_\d+)")


def steady_loop(sass: str) -> LoopProfile:
    """The shortest loop (a backward branch to an earlier label) that contains HGMMA: the body
    the kernel runs for the tiles that need no mask (the masked boundary loops are longer)."""
    labels, body = {}, []
    for line in sass.splitlines():
        if match := _LABEL.match(line):
            labels[match.group(1)] = len(body)
        elif match := _INSTRUCTION.match(line):
            body.append(match.group(1))
    loops = []
    for end, text in enumerate(body):
        branch = _BRANCH.search(text)
        if branch and labels.get(branch.group(1), end + 1) <= end:
            trip = body[labels[branch.group(1)]:end + 1]
            if any("HGMMA." in t for t in trip):
                loops.append(trip)
    if not loops:
        raise ValueError("aot_utils: no loop with HGMMA in this SASS")
    trip = min(loops, key=len)
    count = lambda pattern: sum(bool(re.search(pattern, t)) for t in trip)
    shapes = [re.search(r"\bHGMMA\.(\d+)x(\d+)x(\d+)", t) for t in trip]
    flop = sum(2 * int(m.group(1)) * int(m.group(2)) * int(m.group(3)) for m in shapes if m)
    return LoopProfile(instructions=len(trip), mufu=count(r"\bMUFU\."), hgmma=count(r"\bHGMMA\."),
                       hgmma_flop=flop, scalar_loads=count(r"\bLDG\."))


def _compile_one(req: AotRequest, workdir: str) -> dict:
    """Runs in the subprocess (interpreter off)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(req.module), req.kernel)
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in req.divisible}
    src = ASTSource(fn=fn, signature=req.signature, constexprs=req.constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", req.arch, 32),
                              options={"num_warps": req.num_warps, "num_stages": req.num_stages})
    cubin = os.path.join(workdir, f"{req.kernel}.cubin")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    dump = subprocess.run([tool_path("cuobjdump"), "--dump-resource-usage", cubin],
                          capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([tool_path("nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True).stdout
    usage = parse_resource_usage(dump)
    ptx = compiled.asm["ptx"]
    return {"registers": usage["registers"], "stack": usage["stack"], "local": usage["local"],
            "shared": max(int(compiled.metadata.shared), usage["static_shared"]),
            "wgmma": "wgmma" in ptx, "ptx": ptx, "sass": sass}


def compile_kernels(requests: list[AotRequest], timeout: float = 600.0) -> list[AotResult]:
    """Compiles every request in one subprocess (TRITON_INTERPRET unset) and returns their resources."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    payload = json.dumps([dataclasses.asdict(r) for r in requests])
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], input=payload, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"aot_utils: compilation failed:\n{proc.stderr[-8000:]}")
    results = json.loads(proc.stdout)
    return [AotResult(request=req, **res) for req, res in zip(requests, results)]


def _main() -> None:
    requests = [AotRequest(**r) for r in json.loads(sys.stdin.read())]
    with tempfile.TemporaryDirectory() as workdir:
        results = [_compile_one(r, workdir) for r in requests]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    _main()
