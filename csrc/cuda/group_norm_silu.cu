// CUDA kernel of mcfast::group_norm_silu (contract in docs/kernels.md), on the current stream of x's device.
//   1) one block per (image, group): per-thread Welford moments in float32, merged across the block with
//      Chan's formula; the block then folds normalisation, affine and scale-shift into a_bc, c0_bc for the
//      group's channels (a (2, B, C) float32 table);
//   2) an elementwise pass in memory order: y = act(a_bc·x + c0_bc), rounded to x's dtype once.
// The channel of element i is (i / HW) % C for NCHW and i % C for channels_last, so both layouts read
// coalesced.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "group_norm_silu.h"

namespace mcfast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

struct Welford {
  float n, mean, m2;
};

__device__ __forceinline__ Welford merge(const Welford& a, const Welford& b) {
  const float n = a.n + b.n;
  if (n == 0.0f) return a;
  const float d = b.mean - a.mean, f = b.n / n;
  return {n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f};
}

__device__ __forceinline__ Welford warp_merge(Welford w) {
  for (int off = 16; off > 0; off /= 2) {
    const Welford o{__shfl_down_sync(kFullMask, w.n, off), __shfl_down_sync(kFullMask, w.mean, off),
                    __shfl_down_sync(kFullMask, w.m2, off)};
    w = merge(w, o);
  }
  return w;
}

// Block (b, g): moments of the group's Cg·HW values, then a, c0 of its Cg channels.
template <typename T, bool kChannelsLast>
__global__ void group_stats_kernel(const T* __restrict__ x, const float* __restrict__ weight,
                                   const float* __restrict__ bias, const float* __restrict__ scale,
                                   const float* __restrict__ shift, float* __restrict__ coef, int64_t B, int64_t C,
                                   int64_t HW, int64_t G, float eps) {
  const int64_t bg = blockIdx.x, b = bg / G, g = bg % G, Cg = C / G, n = Cg * HW;
  Welford w{0.0f, 0.0f, 0.0f};
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
    // NCHW: the group is one span; NHWC: value e is channel g·Cg + e % Cg of pixel e / Cg.
    const int64_t at = kChannelsLast ? (b * HW + e / Cg) * C + g * Cg + e % Cg : bg * n + e;
    const float v = static_cast<float>(x[at]);
    w.n += 1.0f;
    const float d = v - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (v - w.mean);
  }
  __shared__ Welford part[kThreads / 32];
  __shared__ float mean_rstd[2];
  w = warp_merge(w);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) part[warp] = w;
  __syncthreads();
  if (warp == 0) {
    w = lane < static_cast<int>(blockDim.x / 32) ? part[lane] : Welford{0.0f, 0.0f, 0.0f};
    w = warp_merge(w);
    if (lane == 0) {
      mean_rstd[0] = w.mean;
      mean_rstd[1] = rsqrtf(w.m2 / w.n + eps);
    }
  }
  __syncthreads();
  for (int64_t c = g * Cg + threadIdx.x; c < (g + 1) * Cg; c += blockDim.x) {
    const int64_t bc = b * C + c;
    const float k = 1.0f + (scale ? scale[bc] : 0.0f);
    const float wr = weight[c] * mean_rstd[1];
    coef[bc] = wr * k;
    coef[B * C + bc] = (bias[c] - mean_rstd[0] * wr) * k + (shift ? shift[bc] : 0.0f);
  }
}

template <typename T, bool kChannelsLast>
__global__ void apply_kernel(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ coef, int64_t total,
                             int64_t B, int64_t C, int64_t HW, bool act) {
  const float* c0 = coef + B * C;  // the second (B, C) plane
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / (C * HW), c = kChannelsLast ? i % C : (i / HW) % C, bc = b * C + c;
    float v = coef[bc] * static_cast<float>(x[i]) + c0[bc];
    if (act) v = v / (1.0f + __expf(-v));
    y[i] = static_cast<T>(v);
  }
}

template <typename T, bool kChannelsLast>
void launch(const at::Tensor& x, at::Tensor& y, const GroupNormShape& s, const at::Tensor& weight,
            const at::Tensor& bias, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& coef, double eps,
            bool act) {
  auto stream = c10::cuda::getCurrentCUDAStream();
  group_stats_kernel<T, kChannelsLast><<<static_cast<unsigned>(s.B * s.G), kThreads, 0, stream>>>(
      x.data_ptr<T>(), weight.data_ptr<float>(), bias.data_ptr<float>(),
      scale.defined() ? scale.data_ptr<float>() : nullptr, shift.defined() ? shift.data_ptr<float>() : nullptr,
      coef.data_ptr<float>(), s.B, s.C, s.HW, s.G, static_cast<float>(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t total = x.numel();
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8);
  apply_kernel<T, kChannelsLast><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      x.data_ptr<T>(), y.data_ptr<T>(), coef.data_ptr<float>(), total, s.B, s.C, s.HW, act);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_any_layout(const at::Tensor& x, at::Tensor& y, const GroupNormShape& s, const at::Tensor& weight,
                       const at::Tensor& bias, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& coef,
                       double eps, bool act) {
  if (s.channels_last) {
    launch<T, true>(x, y, s, weight, bias, scale, shift, coef, eps, act);
  } else {
    launch<T, false>(x, y, s, weight, bias, scale, shift, coef, eps, act);
  }
}

at::Tensor group_norm_silu_cuda(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
                                const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                int64_t groups, double eps, bool apply_silu) {
  const at::Tensor x = group_norm_input(x_in);
  const GroupNormShape s = check_group_norm_silu(x, weight, bias, scale, shift, groups, eps, /*allow_half=*/true);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);  // same strides as x: contiguous or channels_last
  if (y.numel() == 0) return y;
  const at::Tensor sc = group_norm_modulation(scale), sh = group_norm_modulation(shift);
  at::Tensor coef = at::empty({2, s.B, s.C}, x.options().dtype(at::kFloat));
  switch (x.scalar_type()) {
    case at::kFloat:
      launch_any_layout<float>(x, y, s, weight, bias, sc, sh, coef, eps, apply_silu);
      break;
    case at::kBFloat16:
      launch_any_layout<at::BFloat16>(x, y, s, weight, bias, sc, sh, coef, eps, apply_silu);
      break;
    default:
      launch_any_layout<at::Half>(x, y, s, weight, bias, sc, sh, coef, eps, apply_silu);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(mcfast, CUDA, m) { m.impl("group_norm_silu", &group_norm_silu_cuda); }

}  // namespace mcfast::cuda
