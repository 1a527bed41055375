"""Loads the compiled extension vjepa_fast._C if it was built; never fails, never touches CUDA."""
from __future__ import annotations

import functools
import warnings


@functools.cache
def extension_available() -> bool:
    """True when vjepa_fast._C imported (its ops are then registered under torch.ops.vjepa_fast)."""
    import torch  # noqa: F401  (the extension links against torch's libraries)
    try:
        import vjepa_fast._C  # noqa: F401
    except ImportError as e:
        warnings.warn(f"vjepa_fast: compiled extension not available ({e}); using the Triton and "
                      "PyTorch implementations instead", stacklevel=2)
        return False
    return True
