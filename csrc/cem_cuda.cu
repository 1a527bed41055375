// CUDA implementation of torch.ops.vjepa_fast.cem_update (schema, maths and checks: csrc/cem.cpp).
//
// Two kernels around an ATen topk:
//   cem_energies_kernel   one block per sample n: each warp layer-norms rows p of preds[n] (P, D)
//                         (two passes over a row that stays in L1) and accumulates
//                         |normed - goal|; the block reduces to energies[n] = sum / (P * D).
//   cem_elite_kernel      one block per action coordinate j = h * A + a: reduces the top_k elites'
//                         actions[idx[k], j] to their mean and unbiased std, blends them with the
//                         momenta, writes new_mean[j], new_std[j], then resamples column j of
//                         next_actions for all N samples.
// All inputs are made contiguous; preds may be fp32/fp16/bf16/fp64 (energies are fp32, as the
// reference's layer norm runs in fp32); action-side tensors share one dtype, computed in its
// opmath type (fp32 for half types).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace vjepa_fast {

// Defined in csrc/cem.cpp: the op's argument checks, shared by both devices.
void cem_check(const at::Tensor& preds, const at::Tensor& goal, const at::Tensor& noise,
               const at::Tensor& actions, const at::Tensor& mean, const at::Tensor& std, int64_t top_k,
               const at::Tensor& momentum_mean, const at::Tensor& momentum_std, const at::Tensor& low,
               const at::Tensor& high);

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr float kEps = 1e-5f;

template <typename T>
__device__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffff, v, offset);
  return v;
}

// Sum over the block, returned to every thread. `shared` holds kWarps partial sums.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // an earlier call may still be reading `shared`
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  return warp_sum(lane < kWarps ? shared[lane] : T(0));
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) cem_energies_kernel(
    const scalar_t* __restrict__ preds, const float* __restrict__ goal, float* __restrict__ energies,
    int64_t P, int64_t D) {
  __shared__ float partial[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const scalar_t* sample = preds + blockIdx.x * P * D;
  float acc = 0.f;
  for (int64_t p = warp; p < P; p += kWarps) {
    const scalar_t* row = sample + p * D;
    float s = 0.f;
    for (int64_t d = lane; d < D; d += 32) s += static_cast<float>(row[d]);
    const float mu = warp_sum(s) / D;
    float ss = 0.f;
    for (int64_t d = lane; d < D; d += 32) {
      const float c = static_cast<float>(row[d]) - mu;
      ss += c * c;
    }
    const float rstd = rsqrtf(warp_sum(ss) / D + kEps);  // biased variance, as layer_norm
    for (int64_t d = lane; d < D; d += 32)
      acc += fabsf((static_cast<float>(row[d]) - mu) * rstd - goal[p * D + d]);
  }
  const float total = block_sum(acc, partial);
  if (threadIdx.x == 0) energies[blockIdx.x] = total / static_cast<float>(P * D);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) cem_elite_kernel(
    const scalar_t* __restrict__ actions, const int64_t* __restrict__ elite_idx, const scalar_t* __restrict__ noise,
    const scalar_t* __restrict__ mean, const scalar_t* __restrict__ std, const scalar_t* __restrict__ momentum_mean,
    const scalar_t* __restrict__ momentum_std, const scalar_t* __restrict__ low, const scalar_t* __restrict__ high,
    scalar_t* __restrict__ new_mean, scalar_t* __restrict__ new_std, scalar_t* __restrict__ next_actions,
    int64_t N, int64_t HA, int64_t A, int64_t top_k) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kWarps];
  const int64_t j = blockIdx.x, a = j % A;
  acc_t s = 0;
  for (int64_t k = threadIdx.x; k < top_k; k += kThreads) s += static_cast<acc_t>(actions[elite_idx[k] * HA + j]);
  const acc_t elite_mean = block_sum(s, partial) / top_k;
  acc_t ss = 0;
  for (int64_t k = threadIdx.x; k < top_k; k += kThreads) {
    const acc_t c = static_cast<acc_t>(actions[elite_idx[k] * HA + j]) - elite_mean;
    ss += c * c;
  }
  const acc_t elite_std = sqrt(block_sum(ss, partial) / (top_k - 1));  // unbiased, as torch.std
  const acc_t mm = momentum_mean[a], ms = momentum_std[a];
  const acc_t m = (1 - mm) * elite_mean + mm * static_cast<acc_t>(mean[j]);
  const acc_t sd = (1 - ms) * elite_std + ms * static_cast<acc_t>(std[j]);
  if (threadIdx.x == 0) {
    new_mean[j] = static_cast<scalar_t>(m);
    new_std[j] = static_cast<scalar_t>(sd);
  }
  const acc_t lo = low[a], hi = high[a];
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {
    acc_t x = m + sd * static_cast<acc_t>(noise[n * HA + j]);
    x = x < lo ? lo : x;  // clamp(x, low, high) = min(max(x, low), high), as at::clamp
    x = x > hi ? hi : x;
    next_actions[n * HA + j] = static_cast<scalar_t>(x);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cem_update_cuda(
    const at::Tensor& preds, const at::Tensor& goal, const at::Tensor& noise, const at::Tensor& actions,
    const at::Tensor& mean, const at::Tensor& std, int64_t top_k, const at::Tensor& momentum_mean,
    const at::Tensor& momentum_std, const at::Tensor& low, const at::Tensor& high) {
  cem_check(preds, goal, noise, actions, mean, std, top_k, momentum_mean, momentum_std, low, high);
  const c10::cuda::CUDAGuard guard(preds.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = preds.size(0), P = preds.size(1), D = preds.size(2);
  const int64_t H = actions.size(1), A = actions.size(2);

  const at::Tensor preds_c = preds.contiguous();
  const at::Tensor goal_f = goal.to(at::kFloat).contiguous();
  at::Tensor energies = at::empty({N}, preds.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, preds_c.scalar_type(), "cem_energies", [&] {
    cem_energies_kernel<scalar_t><<<N, kThreads, 0, stream>>>(
        preds_c.data_ptr<scalar_t>(), goal_f.data_ptr<float>(), energies.data_ptr<float>(), P, D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor elite_idx = std::get<1>(energies.topk(top_k, 0, /*largest=*/false, /*sorted=*/true));
  const at::Tensor actions_c = actions.contiguous(), noise_c = noise.contiguous();
  const at::Tensor mean_c = mean.contiguous(), std_c = std.contiguous();
  at::Tensor new_mean = at::empty({H, A}, actions.options());
  at::Tensor new_std = at::empty({H, A}, actions.options());
  at::Tensor next_actions = at::empty({N, H, A}, actions.options());
  if (H * A > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, actions_c.scalar_type(), "cem_elite", [&] {
      cem_elite_kernel<scalar_t><<<H * A, kThreads, 0, stream>>>(
          actions_c.data_ptr<scalar_t>(), elite_idx.data_ptr<int64_t>(), noise_c.data_ptr<scalar_t>(),
          mean_c.data_ptr<scalar_t>(), std_c.data_ptr<scalar_t>(), momentum_mean.contiguous().data_ptr<scalar_t>(),
          momentum_std.contiguous().data_ptr<scalar_t>(), low.contiguous().data_ptr<scalar_t>(),
          high.contiguous().data_ptr<scalar_t>(), new_mean.data_ptr<scalar_t>(), new_std.data_ptr<scalar_t>(),
          next_actions.data_ptr<scalar_t>(), N, H * A, A, top_k);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {energies, new_mean, new_std, next_actions};
}

}  // namespace

TORCH_LIBRARY_IMPL(vjepa_fast, CUDA, m) { m.impl("cem_update", &cem_update_cuda); }

}  // namespace vjepa_fast
