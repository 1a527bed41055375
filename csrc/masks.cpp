// torch.ops.vjepa_fast.multiblock_context: the block-position half of V-JEPA's multi-block mask
// sampler, on the data-loading hot path (it runs once per clip and mask config in every worker).
//
//   batch, height, width   clips and the spatial token grid of one frame
//   num_blocks, block_h, block_w   blocks per clip, all of one size (drawn per batch in Python)
//   seed                   std::mt19937_64 seed: the same arguments give the same masks
//
// Per clip: num_blocks rectangles at top ~ U{0..H-h}, left ~ U{0..W-w}; a clip whose blocks
// cover the whole frame is redrawn. Returns (flat, counts): flat (sum counts,) int64 holds, clip
// after clip, the sorted spatial indices y*W + x covered by no block (the context of one frame);
// counts (batch,) int64. The plain PyTorch reference is vjepa_fast.ops.masks.multiblock_context_ref: it
// draws from the same distribution with torch's generator (not the same numbers).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

namespace vjepa_fast {

std::tuple<at::Tensor, at::Tensor> multiblock_context(int64_t batch, int64_t height, int64_t width,
                                                      int64_t num_blocks, int64_t block_h, int64_t block_w,
                                                      int64_t seed) {
  TORCH_CHECK(batch >= 1 && height >= 1 && width >= 1 && num_blocks >= 1,
              "multiblock_context: batch, height, width and num_blocks must be >= 1, got ", batch, ", ", height,
              ", ", width, ", ", num_blocks);
  TORCH_CHECK(block_h >= 1 && block_h <= height && block_w >= 1 && block_w <= width &&
                  block_h * block_w < height * width,
              "multiblock_context: the block (", block_h, "x", block_w, ") must fit in the ", height, "x", width,
              " grid and leave at least one token uncovered");
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  std::uniform_int_distribution<int64_t> top_dist(0, height - block_h), left_dist(0, width - block_w);
  const int64_t area = height * width;
  std::vector<uint8_t> masked(area);
  std::vector<int64_t> flat;
  flat.reserve(batch * area);
  at::Tensor counts = at::empty({batch}, at::kLong);
  int64_t* count = counts.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    int64_t covered;
    do {
      std::fill(masked.begin(), masked.end(), 0);
      for (int64_t k = 0; k < num_blocks; ++k) {
        const int64_t top = top_dist(rng), left = left_dist(rng);
        for (int64_t y = top; y < top + block_h; ++y) {
          std::fill_n(masked.begin() + y * width + left, block_w, 1);
        }
      }
      covered = 0;
      for (uint8_t m : masked) covered += m;
    } while (covered == area);
    for (int64_t i = 0; i < area; ++i) {
      if (!masked[i]) flat.push_back(i);
    }
    count[b] = area - covered;
  }
  at::Tensor out = at::empty({static_cast<int64_t>(flat.size())}, at::kLong);
  std::copy(flat.begin(), flat.end(), out.data_ptr<int64_t>());
  return {out, counts};
}

}  // namespace vjepa_fast

TORCH_LIBRARY_FRAGMENT(vjepa_fast, m) {
  m.def("multiblock_context(int batch, int height, int width, int num_blocks, int block_h, int block_w, int seed) "
        "-> (Tensor, Tensor)");
}

// No tensor inputs: CompositeExplicitAutograd serves every backend and leaves room for the fake
// (vjepa_fast/ops/masks.py) that torch.compile and opcheck trace through.
TORCH_LIBRARY_IMPL(vjepa_fast, CompositeExplicitAutograd, m) {
  m.impl("multiblock_context", &vjepa_fast::multiblock_context);
}
