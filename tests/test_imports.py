"""What `import vjepa_fast` loads, and how the fused-op dispatch behaves under torch.compile,
each in a fresh interpreter (nothing imported or registered by other tests)."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_import_loads_neither_triton_nor_transformers():
    _run("""
        import sys
        import vjepa_fast
        loaded = {"triton", "transformers", "torch._dynamo", "torch._inductor"} & set(sys.modules)
        assert not loaded, f"import vjepa_fast loaded {sorted(loaded)}"
    """)


def test_triton_ops_register_when_first_asked_for_inside_compile():
    """The first dispatch decision may come while torch.compile traces: it is evaluated as a
    constant (importing Triton and registering the ops then), not traced (fullgraph holds)."""
    _run("""
        import torch
        from vjepa_fast.ops import dispatch
        assert not hasattr(torch.ops.vjepa_fast, "rope_attention_fwd")
        step = torch.compile(lambda x: x + 1 if dispatch.triton_available() else x - 1, fullgraph=True,
                             backend="aot_eager")
        assert step(torch.zeros(1)).item() == 1
        for name in ("rope_attention_fwd", "rope_attention_bwd", "tubelet_embed", "masked_gather"):
            assert hasattr(torch.ops.vjepa_fast, name), name
    """)
