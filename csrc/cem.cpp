// torch.ops.vjepa_fast.cem_update: one Cross-Entropy-Method step of the planner, as one op so a
// planning loop makes one dispatcher call per iteration instead of a dozen Python-level ops.
//
//   preds (N, P, D) float   predicted final states of the N sampled trajectories
//   goal (P, D)             goal state, already layer-normed
//   noise, actions (N, H, A), mean, std (H, A), momentum_mean, momentum_std, low, high (A,):
//                           all one floating dtype
//   energies (N,) fp32 = mean_{P,D} |layer_norm(preds) - goal|   (eps 1e-5, no affine)
//   elites = actions[top_k lowest energies]                        (top_k, H, A)
//   new_mean = (1 - momentum_mean) * elites.mean(0) + momentum_mean * mean
//   new_std  = (1 - momentum_std)  * elites.std(0, unbiased) + momentum_std * std
//   next_actions = clamp(new_mean + new_std * noise, low, high)
//
// This file defines the schema, the argument checks shared with the CUDA implementation
// (csrc/cem_cuda.cu) and the CPU implementation, written with ATen ops. The plain PyTorch
// reference is vjepa_fast.ops.cem.cem_update_ref.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <utility>
#include <vector>

namespace vjepa_fast {

void cem_check(const at::Tensor& preds, const at::Tensor& goal, const at::Tensor& noise,
               const at::Tensor& actions, const at::Tensor& mean, const at::Tensor& std, int64_t top_k,
               const at::Tensor& momentum_mean, const at::Tensor& momentum_std, const at::Tensor& low,
               const at::Tensor& high) {
  TORCH_CHECK_VALUE(preds.dim() == 3, "cem_update: preds must be (N, P, D), got ", preds.sizes());
  const int64_t N = preds.size(0), P = preds.size(1), D = preds.size(2);
  TORCH_CHECK_VALUE(actions.dim() == 3 && actions.size(0) == N, "cem_update: actions must be (N=", N,
              ", H, A), got ", actions.sizes());
  const int64_t H = actions.size(1), A = actions.size(2);
  const std::vector<std::pair<const char*, std::pair<const at::Tensor*, std::vector<int64_t>>>> expected = {
      {"goal", {&goal, {P, D}}},       {"noise", {&noise, {N, H, A}}},
      {"mean", {&mean, {H, A}}},       {"std", {&std, {H, A}}},
      {"momentum_mean", {&momentum_mean, {A}}}, {"momentum_std", {&momentum_std, {A}}},
      {"low", {&low, {A}}},            {"high", {&high, {A}}}};
  TORCH_CHECK_TYPE(at::isFloatingType(preds.scalar_type()), "cem_update: preds must be floating point, got ",
              preds.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(actions.scalar_type()), "cem_update: actions must be floating point, got ",
              actions.scalar_type());
  for (const auto& [name, entry] : expected) {
    const at::Tensor& t = *entry.first;
    TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(entry.second), "cem_update: ", name, " must have shape ",
                at::IntArrayRef(entry.second), ", got ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == preds.device(), "cem_update: ", name, " is on ", t.device(),
                " but preds is on ", preds.device());
    const bool action_side = std::string(name) != "goal";
    TORCH_CHECK_TYPE(!action_side || t.scalar_type() == actions.scalar_type(), "cem_update: ", name,
                " must have the dtype of actions (", actions.scalar_type(), "), got ", t.scalar_type());
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "cem_update: ", name, " must be floating point, got ",
                t.scalar_type());
  }
  TORCH_CHECK_VALUE(actions.device() == preds.device(), "cem_update: actions is on ", actions.device(),
              " but preds is on ", preds.device());
  // The elite std is unbiased (as in Meta's planner): it needs at least two elites.
  TORCH_CHECK_VALUE(top_k >= 2 && top_k <= N, "cem_update: top_k must be an int in [2, N=", N, "], got ", top_k);
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cem_update_cpu(
    const at::Tensor& preds, const at::Tensor& goal, const at::Tensor& noise, const at::Tensor& actions,
    const at::Tensor& mean, const at::Tensor& std, int64_t top_k, const at::Tensor& momentum_mean,
    const at::Tensor& momentum_std, const at::Tensor& low, const at::Tensor& high) {
  cem_check(preds, goal, noise, actions, mean, std, top_k, momentum_mean, momentum_std, low, high);
  const at::Tensor normed = at::layer_norm(preds.to(at::kFloat), {preds.size(2)}, {}, {}, 1e-5);
  const at::Tensor energies = (normed - goal.to(at::kFloat)).abs().mean({1, 2});  // (N,)
  const at::Tensor idx = std::get<1>(energies.topk(top_k, 0, /*largest=*/false, /*sorted=*/true));
  const at::Tensor elites = actions.index_select(0, idx);  // (top_k, H, A)
  const at::Tensor new_mean = (1 - momentum_mean) * elites.mean(0) + momentum_mean * mean;
  const at::Tensor new_std = (1 - momentum_std) * elites.std(0, /*unbiased=*/true) + momentum_std * std;
  const at::Tensor next_actions = at::clamp(new_mean + new_std * noise, low, high);
  return {energies, new_mean, new_std, next_actions};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vjepa_fast, m) {
  m.def("cem_update(Tensor preds, Tensor goal, Tensor noise, Tensor actions, Tensor mean, Tensor std, "
        "int top_k, Tensor momentum_mean, Tensor momentum_std, Tensor low, Tensor high) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vjepa_fast, CPU, m) { m.impl("cem_update", &cem_update_cpu); }

}  // namespace vjepa_fast
