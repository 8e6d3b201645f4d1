// CPU kernel of mcfast::ddpm_step: the DDPM posterior step with per-image coefficients.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/vec_math.h"
#include "guided_plan.h"

namespace mcfast::cpu {
namespace {

template <typename T>
__attribute__((always_inline)) inline void ddpm_rows(const T* __restrict__ x, const T* __restrict__ e,
                                                     const T* __restrict__ z, T* __restrict__ out, int64_t n,
                                                     float a, float bb, float p, float q, float s, float lo,
                                                     float hi) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xt = static_cast<float>(x[i]);
    const float x0 = std::min(hi, std::max(lo, a * xt - bb * static_cast<float>(e[i])));
    out[i] = static_cast<T>(p * x0 + q * xt + s * static_cast<float>(z[i]));
  }
}
MCFAST_CLONES void ddpm_rows_any(const float* x, const float* e, const float* z, float* out, int64_t n, float a,
                                 float bb, float p, float q, float s, float lo, float hi) {
  ddpm_rows(x, e, z, out, n, a, bb, p, q, s, lo, hi);
}
MCFAST_CLONES void ddpm_rows_any(const at::BFloat16* x, const at::BFloat16* e, const at::BFloat16* z,
                                 at::BFloat16* out, int64_t n, float a, float bb, float p, float q, float s,
                                 float lo, float hi) {
  ddpm_rows(x, e, z, out, n, a, bb, p, q, s, lo, hi);
}

template <typename T>
void ddpm_step_kernel(const T* x, const T* e, const T* z, T* out, int64_t B, int64_t N, const float* c1,
                      const float* c2, const float* m1, const float* m2, const float* sg, bool clip) {
  constexpr int64_t kChunk = 16384;
  const int64_t chunks_per_image = (N + kChunk - 1) / kChunk;
  at::parallel_for(0, B * chunks_per_image, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / chunks_per_image;
      const int64_t lo = (w % chunks_per_image) * kChunk, hi = std::min(N, lo + kChunk);
      const int64_t at = b * N + lo;
      ddpm_rows_any(x + at, e + at, z + at, out + at, hi - lo, c1[b], c2[b], m1[b], m2[b], sg[b],
                    clip ? -1.0f : -INFINITY, clip ? 1.0f : INFINITY);
    }
  });
}

at::Tensor ddpm_step_cpu(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& noise,
                         const at::Tensor& c1, const at::Tensor& c2, const at::Tensor& m1, const at::Tensor& m2,
                         const at::Tensor& sigma, bool clip) {
  check_ddpm_step(x_t, eps, noise,
                  {{&c1, "coef_x0_from_xt"}, {&c2, "coef_x0_from_eps"}, {&m1, "coef_mean_x0"},
                   {&m2, "coef_mean_xt"}, {&sigma, "sigma"}});
  at::Tensor out = at::empty_like(x_t);
  const int64_t B = x_t.size(0), N = B ? x_t.numel() / B : 0;
  if (x_t.scalar_type() == at::kFloat) {
    ddpm_step_kernel<float>(x_t.data_ptr<float>(), eps.data_ptr<float>(), noise.data_ptr<float>(),
                            out.data_ptr<float>(), B, N, c1.data_ptr<float>(), c2.data_ptr<float>(),
                            m1.data_ptr<float>(), m2.data_ptr<float>(), sigma.data_ptr<float>(), clip);
  } else {
    ddpm_step_kernel<at::BFloat16>(x_t.data_ptr<at::BFloat16>(), eps.data_ptr<at::BFloat16>(),
                                   noise.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), B, N,
                                   c1.data_ptr<float>(), c2.data_ptr<float>(), m1.data_ptr<float>(),
                                   m2.data_ptr<float>(), sigma.data_ptr<float>(), clip);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mcfast, CPU, m) { m.impl("ddpm_step", &ddpm_step_cpu); }

}  // namespace mcfast::cpu
