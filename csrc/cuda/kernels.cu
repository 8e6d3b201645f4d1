// CUDA kernels of the mcfast ops: guided_step (one CTA per tile), philox_normal_, philox_bits_.
// Everything runs on the current stream of the input's device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "guided_plan.h"
#include "philox.h"

namespace mcfast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxTile = 64;  // 3 R² floats of shared memory at most: 48 KB at R = 64

inline int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8); }

// ---- generator ops -------------------------------------------------------------------------------------------
__global__ void philox_normal_kernel(float* out, int64_t n, uint64_t seed, uint64_t offset, uint64_t stream,
                                     uint64_t start) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = philox_normal_at(seed, offset, stream, start + static_cast<uint64_t>(i));
  }
}

__global__ void philox_bits_kernel(uint32_t* out, int64_t groups, uint64_t seed, uint64_t offset, uint64_t stream,
                                   uint64_t start) {
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Philox4 w = philox_group(seed, offset, stream, start + static_cast<uint64_t>(g));
    for (int k = 0; k < 4; ++k) out[4 * g + k] = w.v[k];
  }
}

void philox_normal_cuda(at::Tensor out, int64_t seed, int64_t offset, int64_t stream, int64_t start) {
  TORCH_CHECK(out.scalar_type() == at::kFloat, "mcfast::philox_normal_: out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "mcfast::philox_normal_: out must be contiguous");
  TORCH_CHECK(start >= 0, "mcfast::philox_normal_: start must be >= 0, got ", start);
  const c10::cuda::CUDAGuard guard(out.device());
  if (out.numel() == 0) return;
  philox_normal_kernel<<<blocks_for(out.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      out.data_ptr<float>(), out.numel(), seed, offset, stream, start);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void philox_bits_cuda(at::Tensor out, int64_t seed, int64_t offset, int64_t stream, int64_t start) {
  TORCH_CHECK(out.scalar_type() == at::kInt && out.dim() == 2 && out.size(1) == 4,
              "mcfast::philox_bits_: out must be int32 of shape (G, 4), got ", out.scalar_type(), " ", out.sizes());
  TORCH_CHECK(out.is_contiguous(), "mcfast::philox_bits_: out must be contiguous");
  // start is the 64-bit group counter taken modulo 2^64 (a negative int64 reaches the upper half).
  const c10::cuda::CUDAGuard guard(out.device());
  if (out.numel() == 0) return;
  philox_bits_kernel<<<blocks_for(out.size(0)), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()), out.size(0), seed, offset, stream, start);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- guided_step ---------------------------------------------------------------------------------------------
struct DevCond {
  int64_t factor, ref_offset, weight_offset, kind, m;
  float patch[kNumPatch];
};

struct DevArgs {
  const float* coefs;
  const float* noise;
  const float* ref_noise;
  const float* refs;
  const float* weight_maps;
  const DevCond* conds;
  const int32_t* cond_start;  // (B + 1): conditions of image b are conds[cond_start[b] .. cond_start[b+1])
  int64_t H, W, K, R;
  uint64_t seed, offset;
  bool learned, clip;
};

__device__ __forceinline__ float cond_weight(const DevCond& c, const float* weight_maps, int64_t y, int64_t x,
                                             int64_t W) {
  if (c.kind == kWeightFull) return 1.0f;
  if (c.kind == kWeightMap) return weight_maps[c.weight_offset + y * W + x];
  const float bx = c.patch[kBoxX], by = c.patch[kBoxY];
  const float fx = static_cast<float>(x), fy = static_cast<float>(y);
  if (fx < bx || fx >= bx + c.patch[kBoxW] || fy < by || fy >= by + c.patch[kBoxH]) return 0.0f;
  const float dx = fx - c.patch[kCx], dy = fy - c.patch[kCy];
  const float inv2s2 = 1.0f / (2.0f * c.patch[kSigma] * c.patch[kSigma]);
  return expf(-dx * dx * inv2s2) * expf(-dy * dy * inv2s2);
}

// One CTA per R×R tile of one image; R is a multiple of every active factor, so all blocks are inside it.
template <typename T>
__global__ void guided_step_kernel(const T* __restrict__ x_t, const T* __restrict__ mo, T* __restrict__ out,
                                   DevArgs a) {
  extern __shared__ float smem[];
  const int64_t R = a.R, RR = R * R, H = a.H, W = a.W, HW = H * W;
  float* xs = smem;          // x'
  float* acc = smem + RR;    // x' + Σ W ⊙ r
  float* scratch = acc + RR; // row sums, then the per-block corrections
  const int64_t b = blockIdx.z, ty0 = blockIdx.y * R, tx0 = blockIdx.x * R;
  const float* cf = a.coefs + b * kNumCoefs;
  const float c_x = cf[kX0FromXt], c_e = cf[kX0FromEps], m_x0 = cf[kMeanX0], m_xt = cf[kMeanXt];
  const float lv_min = cf[kLogVarMin], lv_max = cf[kLogVarMax], ns = cf[kNoiseScale];
  const float sa = cf[kRefSignal], sn = cf[kRefNoise];

  for (int64_t p = threadIdx.x; p < RR; p += blockDim.x) {
    const int64_t y = ty0 + p / R, x = tx0 + p % R, gi = (b * H + y) * W + x;
    const int64_t mi = b * a.K * HW + y * W + x;
    const float xt = static_cast<float>(x_t[gi]);
    float x0 = c_x * xt - c_e * static_cast<float>(mo[mi]);
    if (a.clip) x0 = fminf(1.0f, fmaxf(-1.0f, x0));
    float xp = m_x0 * x0 + m_xt * xt;
    if (ns != 0.0f) {
      const float z = a.noise ? a.noise[gi] : philox_normal_at(a.seed, a.offset, 0, static_cast<uint64_t>(gi));
      float lv = lv_min;
      if (a.learned) {
        const float frac = (static_cast<float>(mo[mi + HW]) + 1.0f) / 2.0f;
        lv = frac * lv_max + (1.0f - frac) * lv_min;
      }
      xp += ns * expf(0.5f * lv) * z;
    }
    xs[p] = xp;
    acc[p] = xp;
  }
  __syncthreads();

  for (int32_t ci = a.cond_start[b]; ci < a.cond_start[b + 1]; ++ci) {
    const DevCond c = a.conds[ci];
    const int64_t n = c.factor, nb = R / n, wl = W / n;
    const float inv_n = 1.0f / static_cast<float>(n);
    if (n > 1) {
      for (int64_t t = threadIdx.x; t < R * nb; t += blockDim.x) {  // sums over n pixels of a row
        const float* row = xs + (t / nb) * R + (t % nb) * n;
        float s = 0.0f;
        for (int64_t k = 0; k < n; ++k) s += row[k];
        scratch[t] = s;
      }
      __syncthreads();
    }
    float* r_block = scratch + (n > 1 ? R * nb : 0);
    for (int64_t t = threadIdx.x; t < nb * nb; t += blockDim.x) {
      const int64_t by = t / nb, bx = t % nb;
      float s = 0.0f;
      if (n > 1) {
        for (int64_t k = 0; k < n; ++k) s += scratch[(by * n + k) * nb + bx];
      } else {
        s = xs[t];
      }
      const int64_t j = (ty0 / n + by) * wl + tx0 / n + bx;
      const float e = a.ref_noise ? a.ref_noise[c.ref_offset + j]
                                  : philox_normal_at(a.seed, a.offset, 1 + static_cast<uint64_t>(c.m),
                                                     static_cast<uint64_t>(b * HW + j)) * inv_n;
      r_block[t] = sa * a.refs[c.ref_offset + j] + sn * e - s * (inv_n * inv_n);
    }
    __syncthreads();
    for (int64_t p = threadIdx.x; p < RR; p += blockDim.x) {
      const int64_t ly = p / R, lx = p % R;
      acc[p] += cond_weight(c, a.weight_maps, ty0 + ly, tx0 + lx, W) * r_block[(ly / n) * nb + lx / n];
    }
    __syncthreads();
  }

  for (int64_t p = threadIdx.x; p < RR; p += blockDim.x) {
    const int64_t y = ty0 + p / R, x = tx0 + p % R;
    out[(b * H + y) * W + x] = static_cast<T>(acc[p]);
  }
}

at::Tensor guided_step_cuda(const at::Tensor& x_t, const at::Tensor& model_output, const at::Tensor& coefs,
                            const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& ref_noise,
                            const at::Tensor& refs, const at::Tensor& ref_offsets, const at::Tensor& factors,
                            const at::Tensor& active, const at::Tensor& weight_kind, const at::Tensor& patch,
                            const at::Tensor& weight_maps, const at::Tensor& weight_offsets, int64_t seed,
                            int64_t offset, bool learned_variance, bool clip) {
  const GuidedPlan plan = plan_guided_step(x_t, model_output, coefs, noise, ref_noise, refs, ref_offsets, factors,
                                           active, weight_kind, patch, weight_maps, weight_offsets, learned_variance);
  const c10::cuda::CUDAGuard guard(x_t.device());
  at::Tensor out = at::empty_like(x_t);
  if (x_t.numel() == 0) return out;
  TORCH_CHECK(plan.max_tile <= kMaxTile, "mcfast::guided_step: the CUDA kernel supports factors up to ", kMaxTile,
              ", got ", plan.max_tile, " (use the Triton op mcfast::guided_step_triton or the CPU)");
  // Tile: the largest active factor, grown to up to 32 pixels when the image size allows.
  int64_t R = plan.max_tile;
  while (R < 32 && plan.H % (2 * R) == 0 && plan.W % (2 * R) == 0) R *= 2;

  // Pack the active conditions (host) and copy them to the device on the current stream.
  std::vector<DevCond> conds;
  std::vector<int32_t> start(plan.B + 1, 0);
  for (int64_t b = 0; b < plan.B; ++b) {
    for (const CondPlan& c : plan.conds[b]) {
      DevCond d{c.factor, c.ref_offset, c.weight_offset, c.kind, c.m, {}};
      for (int k = 0; k < kNumPatch; ++k) d.patch[k] = c.patch[k];
      conds.push_back(d);
    }
    start[b + 1] = static_cast<int32_t>(conds.size());
  }
  // One pinned buffer → one asynchronous copy on the current stream: the conditions, the per-image start
  // indices and, when coefs came on the host, the coefficients (the caching host allocator keeps the buffer
  // alive until the copy has run).
  const int64_t cond_bytes = static_cast<int64_t>(conds.size() * sizeof(DevCond));
  const int64_t start_bytes = static_cast<int64_t>(start.size() * sizeof(int32_t));
  const int64_t coef_at = (cond_bytes + start_bytes + 15) / 16 * 16;
  const bool host_coefs = coefs.device().is_cpu();
  const int64_t coef_bytes = host_coefs ? coefs.numel() * static_cast<int64_t>(sizeof(float)) : 0;
  at::Tensor table = at::empty({coef_at + coef_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(table.data_ptr<uint8_t>(), conds.data(), cond_bytes);
  std::memcpy(table.data_ptr<uint8_t>() + cond_bytes, start.data(), start_bytes);
  if (host_coefs) std::memcpy(table.data_ptr<uint8_t>() + coef_at, coefs.data_ptr<float>(), coef_bytes);
  at::Tensor dev_table = table.to(x_t.device(), /*non_blocking=*/true);
  const float* dev_coefs = host_coefs ? reinterpret_cast<const float*>(dev_table.data_ptr<uint8_t>() + coef_at)
                                      : coefs.data_ptr<float>();

  DevArgs a{dev_coefs,
            noise ? noise->data_ptr<float>() : nullptr,
            ref_noise ? ref_noise->data_ptr<float>() : nullptr,
            refs.numel() ? refs.data_ptr<float>() : nullptr,
            weight_maps.numel() ? weight_maps.data_ptr<float>() : nullptr,
            reinterpret_cast<const DevCond*>(dev_table.data_ptr<uint8_t>()),
            reinterpret_cast<const int32_t*>(dev_table.data_ptr<uint8_t>() + cond_bytes),
            plan.H, plan.W, plan.K, R, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
            learned_variance, clip};
  const dim3 grid(static_cast<unsigned>(plan.W / R), static_cast<unsigned>(plan.H / R),
                  static_cast<unsigned>(plan.B));
  const size_t shmem = static_cast<size_t>(3 * R * R) * sizeof(float);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (x_t.scalar_type() == at::kFloat) {
    guided_step_kernel<float><<<grid, kThreads, shmem, stream>>>(x_t.data_ptr<float>(),
                                                                 model_output.data_ptr<float>(),
                                                                 out.data_ptr<float>(), a);
  } else {
    guided_step_kernel<at::BFloat16><<<grid, kThreads, shmem, stream>>>(
        x_t.data_ptr<at::BFloat16>(), model_output.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mcfast, CUDA, m) {
  m.impl("guided_step", &guided_step_cuda);
  m.impl("philox_normal_", &philox_normal_cuda);
  m.impl("philox_bits_", &philox_bits_cuda);
}

}  // namespace mcfast::cuda
