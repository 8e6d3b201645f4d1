// CPU kernel of mcfast::group_norm_silu:
//   y = act(((x − μ_bg)·rstd_bg·w_c + bias_c)·(1 + scale_bc) + shift_bc) = act(a_bc·x + c0_bc)
// with a = w·rstd·(1 + s) and c0 = (bias − μ·rstd·w)·(1 + s) + shift folded per (image, channel), so the
// apply pass is one multiply-add (and SiLU) per element, rounded to x's dtype once.
//
// Moments (μ, σ² per image and group, float32): the data goes in chunks of about kChunk elements; a chunk
// is summed, then re-read from L1/L2 for Σ(x − chunk mean)² (two-pass, so no cancellation), and the chunks
// are merged with Chan's formula — as stable as Welford, with one read of x from memory.
//   NCHW: a group is one contiguous span; one task per (b, g).
//   NHWC (channels_last): a group is a strided slice of every pixel, so tasks take chunks of an image's
//   pixels (channels innermost, vectorised), give every group's partial moments, merged per (b, g) after.
//
// The loops are plain `#pragma omp simd` inlined into MCFAST_CLONES functions (cpu/vec_math.h), as in the
// other kernels: at::vec::Vectorized takes its width from the compile flags, which here are baseline x86-64,
// while the clones give AVX-512 / AVX2 code picked at load time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/vec_math.h"
#include "group_norm_silu.h"

namespace mcfast::cpu {
namespace {

constexpr int64_t kChunk = 8192;       // elements per moment chunk: 32 KB of float32, re-read from cache
constexpr int64_t kTaskElems = 32768;  // parallel tasks get at least this many elements (less: overhead wins)

int64_t grain_for(int64_t elems_per_item) { return std::max<int64_t>(1, kTaskElems / std::max<int64_t>(1, elems_per_item)); }

// Count, mean and Σ(x − mean)² of a set of values; merging two parts is Chan et al.'s update (in double:
// it runs once per chunk, and keeps the merge exact enough for any image size).
struct Moments {
  double n = 0.0, mean = 0.0, m2 = 0.0;
  void add(double n_b, double mean_b, double m2_b) {
    const double n_ab = n + n_b, d = mean_b - mean;
    mean += d * (n_b / n_ab);
    m2 += m2_b + d * d * (n * n_b / n_ab);
    n = n_ab;
  }
};

// ---- conversions ---------------------------------------------------------------------------------------------
// T → float (bfloat16: the high half of a float).
MCFAST_INLINE float widen(float v) { return v; }
MCFAST_INLINE float widen(at::BFloat16 v) { return bits_to_float(static_cast<int32_t>(static_cast<uint32_t>(v.x) << 16)); }

// float → T with round-to-nearest-even for bfloat16, branch-free: c10::BFloat16's constructor branches on NaN,
// which keeps gcc from vectorising the loop (the op was ~5× slower). NaN stays a quiet NaN, as in c10.
template <typename T>
MCFAST_INLINE T narrow(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    const auto u = static_cast<uint32_t>(float_to_bits(v));
    const auto rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return at::BFloat16(v != v ? static_cast<uint16_t>(0x7FC0) : rounded, at::BFloat16::from_bits());
  }
}

// ---- moments ---------------------------------------------------------------------------------------------------
template <typename T>
MCFAST_INLINE void span_moments(const T* __restrict__ x, int64_t n, float& mean_out, float& m2_out) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += widen(x[i]);
  const float mean = s / static_cast<float>(n);
  float q = 0.0f;
#pragma omp simd reduction(+ : q)
  for (int64_t i = 0; i < n; ++i) {
    const float d = widen(x[i]) - mean;
    q += d * d;
  }
  mean_out = mean;
  m2_out = q;
}

// Moments of n contiguous values (one NCHW group), chunk by chunk.
template <typename T>
MCFAST_INLINE Moments contiguous_moments(const T* x, int64_t n) {
  Moments m;
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    float mean, m2;
    span_moments(x + i, len, mean, m2);
    m.add(static_cast<double>(len), mean, m2);
  }
  return m;
}

// NHWC loops run over rows of K pixels (K·C ≥ kRowElems values) against per-channel tables repeated K times:
// one long vector loop per row instead of a short one per pixel (C is 32–128 in the U-Net).
constexpr int64_t kRowElems = 256;
#define MCFAST_INLINE_LAMBDA __attribute__((always_inline))  // inlined into the clones, like MCFAST_INLINE
int64_t pixels_per_row(int64_t C) { return std::max<int64_t>(1, kRowElems / std::max<int64_t>(1, C)); }

// acc[c] += acc[k·C + c] for k in [1, K): the K-pixel row totals folded to per-channel totals.
MCFAST_INLINE void fold_row(float* acc, int64_t C, int64_t K) {
  for (int64_t k = 1; k < K; ++k) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) acc[c] += acc[k * C + c];
  }
}

// acc[j] += f(row[j], j) over n_pix pixels, K pixels (L = K·C values) at a time; acc has L entries, zeroed here.
template <typename T, typename F>
MCFAST_INLINE void accumulate_rows(const T* __restrict__ x, int64_t n_pix, int64_t C, int64_t K,
                                   float* __restrict__ acc, F f) {
  std::fill(acc, acc + K * C, 0.0f);
  for (int64_t p = 0; p < n_pix; p += K) {
    const T* row = x + p * C;
    const int64_t len = std::min(K, n_pix - p) * C;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) acc[j] += f(widen(row[j]), j);
  }
  fold_row(acc, C, K);
}

// Partial moments of every group over n_pix NHWC pixels: per-channel sums, the chunk's group means, then
// per-channel Σ(x − group mean)² folded into groups. out[2g] = mean, out[2g + 1] = Σ(x − mean)².
// acc and center are K·C floats of scratch each (K = pixels_per_row(C)).
template <typename T>
MCFAST_INLINE void pixel_moments(const T* __restrict__ x, int64_t n_pix, int64_t C, int64_t G, float* __restrict__ acc,
                                 float* __restrict__ center, float* out) {
  const int64_t Cg = C / G, K = pixels_per_row(C);
  accumulate_rows(x, n_pix, C, K, acc, [](float v, int64_t) MCFAST_INLINE_LAMBDA { return v; });
  const float inv_n = 1.0f / static_cast<float>(n_pix * Cg);
  for (int64_t g = 0; g < G; ++g) {
    float s = 0.0f;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) s += acc[c];
    out[2 * g] = s * inv_n;
    std::fill(center + g * Cg, center + (g + 1) * Cg, s * inv_n);
  }
  for (int64_t k = 1; k < K; ++k) std::copy(center, center + C, center + k * C);
  accumulate_rows(x, n_pix, C, K, acc, [center](float v, int64_t j) MCFAST_INLINE_LAMBDA {
    const float d = v - center[j];
    return d * d;
  });
  for (int64_t g = 0; g < G; ++g) {
    float q = 0.0f;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) q += acc[c];
    out[2 * g + 1] = q;
  }
}

// ---- apply -----------------------------------------------------------------------------------------------------
// v·sigmoid(v) with e^−v = 2^(−v·log2 e): fast_exp2 is the cheaper of vec_math.h's exps (~1.6 ulp).
MCFAST_INLINE float silu(float v) { return v / (1.0f + fast_exp2(v * -1.44269504088896341f)); }

// n contiguous values of one NCHW (image, channel) plane.
template <bool kSilu, typename T>
MCFAST_INLINE void apply_span(const T* __restrict__ x, T* __restrict__ y, int64_t n, float a, float c0) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = a * widen(x[i]) + c0;
    y[i] = narrow<T>(kSilu ? silu(v) : v);
  }
}

// n_pix NHWC pixels of one image, K pixels at a time, with that image's a and c0 repeated K times (K·C values).
template <bool kSilu, typename T>
MCFAST_INLINE void apply_pixels(const T* __restrict__ x, T* __restrict__ y, int64_t n_pix, int64_t C,
                                const float* __restrict__ a, const float* __restrict__ c0) {
  const int64_t K = pixels_per_row(C);
  for (int64_t p = 0; p < n_pix; p += K) {
    const T* xr = x + p * C;
    T* yr = y + p * C;
    const int64_t len = std::min(K, n_pix - p) * C;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const float v = a[j] * widen(xr[j]) + c0[j];
      yr[j] = narrow<T>(kSilu ? silu(v) : v);
    }
  }
}

// ---- per-ISA entry points (one per dtype: target_clones does not take templates) ------------------------------
MCFAST_CLONES Moments contiguous_moments_any(const float* x, int64_t n) { return contiguous_moments(x, n); }
MCFAST_CLONES Moments contiguous_moments_any(const at::BFloat16* x, int64_t n) { return contiguous_moments(x, n); }

MCFAST_CLONES void pixel_moments_any(const float* x, int64_t n_pix, int64_t C, int64_t G, float* acc, float* center,
                                     float* out) {
  pixel_moments(x, n_pix, C, G, acc, center, out);
}
MCFAST_CLONES void pixel_moments_any(const at::BFloat16* x, int64_t n_pix, int64_t C, int64_t G, float* acc,
                                     float* center, float* out) {
  pixel_moments(x, n_pix, C, G, acc, center, out);
}

MCFAST_CLONES void apply_span_any(const float* x, float* y, int64_t n, float a, float c0, bool act) {
  act ? apply_span<true>(x, y, n, a, c0) : apply_span<false>(x, y, n, a, c0);
}
MCFAST_CLONES void apply_span_any(const at::BFloat16* x, at::BFloat16* y, int64_t n, float a, float c0, bool act) {
  act ? apply_span<true>(x, y, n, a, c0) : apply_span<false>(x, y, n, a, c0);
}

MCFAST_CLONES void apply_pixels_any(const float* x, float* y, int64_t n_pix, int64_t C, const float* a,
                                    const float* c0, bool act) {
  act ? apply_pixels<true>(x, y, n_pix, C, a, c0) : apply_pixels<false>(x, y, n_pix, C, a, c0);
}
MCFAST_CLONES void apply_pixels_any(const at::BFloat16* x, at::BFloat16* y, int64_t n_pix, int64_t C, const float* a,
                                    const float* c0, bool act) {
  act ? apply_pixels<true>(x, y, n_pix, C, a, c0) : apply_pixels<false>(x, y, n_pix, C, a, c0);
}

// ---- driver ----------------------------------------------------------------------------------------------------
// Per (b, g): mean and 1/sqrt(σ² + eps) (σ² biased, as GroupNorm), B·G floats each.
struct GroupStats {
  std::vector<float> mean, rstd;
  void set(int64_t bg, const Moments& m, double eps) {
    mean[bg] = static_cast<float>(m.mean);
    rstd[bg] = static_cast<float>(1.0 / std::sqrt(m.m2 / m.n + eps));
  }
};

template <typename T>
void nchw_stats(const T* x, const GroupNormShape& s, double eps, GroupStats& st) {
  const int64_t n = s.C / s.G * s.HW;  // a group's values are one contiguous span
  at::parallel_for(0, s.B * s.G, grain_for(n), [&](int64_t i0, int64_t i1) {
    for (int64_t bg = i0; bg < i1; ++bg) st.set(bg, contiguous_moments_any(x + bg * n, n), eps);
  });
}

// Pixels per NHWC work item (moments and apply): about kChunk values, whole K-pixel rows.
int64_t nhwc_pixels_per_item(const GroupNormShape& s) {
  const int64_t K = pixels_per_row(s.C);
  return std::max<int64_t>(K, kChunk / std::max<int64_t>(1, s.C) / K * K);
}

template <typename T>
void nhwc_stats(const T* x, const GroupNormShape& s, double eps, GroupStats& st) {
  const int64_t C = s.C, G = s.G, HW = s.HW, Cg = C / G;
  const int64_t per = nhwc_pixels_per_item(s), items = (HW + per - 1) / per;
  std::vector<float> partial(static_cast<size_t>(s.B * items * G * 2));
  at::parallel_for(0, s.B * items, grain_for(per * C), [&](int64_t i0, int64_t i1) {
    const int64_t L = pixels_per_row(C) * C;
    std::vector<float> scratch(static_cast<size_t>(2 * L));
    for (int64_t w = i0; w < i1; ++w) {
      const int64_t b = w / items, p0 = (w % items) * per;
      pixel_moments_any(x + (b * HW + p0) * C, std::min(per, HW - p0), C, G, scratch.data(), scratch.data() + L,
                        partial.data() + w * G * 2);
    }
  });
  at::parallel_for(0, s.B * G, grain_for(HW * Cg), [&](int64_t i0, int64_t i1) {
    for (int64_t bg = i0; bg < i1; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      Moments m;
      for (int64_t k = 0; k < items; ++k) {
        const float* part = partial.data() + ((b * items + k) * G + g) * 2;
        m.add(static_cast<double>(std::min(per, HW - k * per) * Cg), part[0], part[1]);
      }
      st.set(bg, m, eps);
    }
  });
}

// Normalisation, affine and scale-shift folded per (b, c) into y = act(a·x + c0), B·C floats each.
struct Coefficients {
  std::vector<float> a, c0;
};

Coefficients fold_coefficients(const GroupNormShape& s, const GroupStats& st, const at::Tensor& weight,
                               const at::Tensor& bias, const at::Tensor& scale, const at::Tensor& shift) {
  const int64_t B = s.B, C = s.C, Cg = C / s.G;
  const float* w = weight.data_ptr<float>();
  const float* bi = bias.data_ptr<float>();
  const float* sc = scale.defined() ? scale.data_ptr<float>() : nullptr;
  const float* sh = shift.defined() ? shift.data_ptr<float>() : nullptr;
  Coefficients k{std::vector<float>(B * C), std::vector<float>(B * C)};
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t bc = b * C + c, bg = b * s.G + c / Cg;
      const float mod = 1.0f + (sc ? sc[bc] : 0.0f);
      const float wr = w[c] * st.rstd[bg];
      k.a[bc] = wr * mod;
      k.c0[bc] = (bi[c] - st.mean[bg] * wr) * mod + (sh ? sh[bc] : 0.0f);
    }
  }
  return k;
}

template <typename T>
void nchw_apply(const T* x, T* y, const GroupNormShape& s, const Coefficients& k, bool act) {
  const int64_t HW = s.HW;
  at::parallel_for(0, s.B * s.C, grain_for(HW), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) apply_span_any(x + r * HW, y + r * HW, HW, k.a[r], k.c0[r], act);
  });
}

template <typename T>
void nhwc_apply(const T* x, T* y, const GroupNormShape& s, const Coefficients& k, bool act) {
  const int64_t B = s.B, C = s.C, HW = s.HW, L = pixels_per_row(C) * C;
  // Each image's a and c0 repeated for the K pixels of an apply_pixels row.
  std::vector<float> a_row(B * L), c0_row(B * L);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < L; ++j) {
      a_row[b * L + j] = k.a[b * C + j % C];
      c0_row[b * L + j] = k.c0[b * C + j % C];
    }
  }
  const int64_t per = nhwc_pixels_per_item(s), items = (HW + per - 1) / per;
  at::parallel_for(0, B * items, grain_for(per * C), [&](int64_t i0, int64_t i1) {
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / items, p0 = (it % items) * per, at = (b * HW + p0) * C;
      apply_pixels_any(x + at, y + at, std::min(per, HW - p0), C, a_row.data() + b * L, c0_row.data() + b * L, act);
    }
  });
}

template <typename T>
void group_norm_silu_impl(const at::Tensor& x, at::Tensor& y, const GroupNormShape& s, const at::Tensor& weight,
                          const at::Tensor& bias, const at::Tensor& scale, const at::Tensor& shift, double eps,
                          bool act) {
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  GroupStats st{std::vector<float>(s.B * s.G), std::vector<float>(s.B * s.G)};
  s.channels_last ? nhwc_stats(xp, s, eps, st) : nchw_stats(xp, s, eps, st);
  const Coefficients k = fold_coefficients(s, st, weight, bias, scale, shift);
  s.channels_last ? nhwc_apply(xp, yp, s, k, act) : nchw_apply(xp, yp, s, k, act);
}

at::Tensor group_norm_silu_cpu(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
                               const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                               int64_t groups, double eps, bool apply_silu) {
  const at::Tensor x = group_norm_input(x_in);
  const GroupNormShape s = check_group_norm_silu(x, weight, bias, scale, shift, groups, eps, /*allow_half=*/false);
  at::Tensor y = at::empty_like(x);  // same strides as x: contiguous or channels_last
  if (y.numel() == 0) return y;
  const at::Tensor sc = group_norm_modulation(scale), sh = group_norm_modulation(shift);
  if (x.scalar_type() == at::kFloat) {
    group_norm_silu_impl<float>(x, y, s, weight, bias, sc, sh, eps, apply_silu);
  } else {
    group_norm_silu_impl<at::BFloat16>(x, y, s, weight, bias, sc, sh, eps, apply_silu);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(mcfast, CPU, m) { m.impl("group_norm_silu", &group_norm_silu_cpu); }

}  // namespace mcfast::cpu
