// The Python module vjepa_fast._C. Every op in csrc/ registers itself with the dispatcher through
// TORCH_LIBRARY_FRAGMENT(vjepa_fast, m) in its own file; importing this module loads them all.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vjepa_fast compiled ops, registered as torch.ops.vjepa_fast.*";
}
