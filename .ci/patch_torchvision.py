"""torchvision 0.28 (the release for torch 2.13) is a CUDA build: next to the CPU torch its compiled
ops do not load, and two fake-kernel registrations for them then fail at import. Guarding those two
lets `import torchvision` work (transformers' VJEPA2VideoProcessor needs only its resize and crop),
so the tests can run transformers' processor as the reference. Idempotent."""
import importlib.util
import re
import sys
from pathlib import Path

spec = importlib.util.find_spec("torchvision")
if spec is None:
    sys.exit("torchvision is not installed")
path = Path(spec.origin).parent / "_meta_registrations.py"
text = path.read_text()
patched = re.sub(r'^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$',
                 r'@(torch.library.register_fake("torchvision::\1") if hasattr(torch.ops.torchvision, "\1") else (lambda f: f))',
                 text, flags=re.M)
path.write_text(patched)
