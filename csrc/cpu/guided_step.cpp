// CPU kernel of mcfast::guided_step: one fused pass per strip of rows.
//
// Each image's strips are a multiple of its largest active factor tall, so every box-filter block a
// condition needs lies inside one strip: x' = mean + σz, each condition's block means of x', its
// correction and the write of x_{t−1} happen while the strip is in cache. Strips run in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/philox_cpu.h"
#include "cpu/vec_math.h"
#include "guided_plan.h"
#include "philox.h"

namespace mcfast::cpu {
namespace {

struct StepArgs {
  const GuidedPlan* plan;
  const float* coefs;
  const float* noise;      // nullptr: in-kernel Philox
  const float* ref_noise;  // low-res φ(ε), nullptr with in-kernel noise
  const float* refs;
  const float* weight_maps;
  uint64_t seed, offset;
  bool learned, clip;
};

struct Scratch {
  std::vector<float> xp, acc, z, colsum, rexp, low, wx;
  void resize(int64_t rows, int64_t W) {
    const auto n = static_cast<size_t>(rows * W);
    if (xp.size() < n) xp.resize(n), acc.resize(n), z.resize(n);
    if (colsum.size() < static_cast<size_t>(W)) colsum.resize(W), rexp.resize(W), low.resize(W), wx.resize(W);
  }
};

template <typename T>
__attribute__((always_inline)) inline void run_strip(const StepArgs& a, const T* x_t, const T* mo, T* out, int64_t b, int64_t y0, int64_t rows,
               Scratch& s) {
  const GuidedPlan& plan = *a.plan;
  const int64_t H = plan.H, W = plan.W, HW = H * W, K = plan.K;
  const float* cf = a.coefs + b * kNumCoefs;
  const float c_x = cf[kX0FromXt], c_e = cf[kX0FromEps], m_x0 = cf[kMeanX0], m_xt = cf[kMeanXt];
  const float lv_min = cf[kLogVarMin], lv_max = cf[kLogVarMax], ns = cf[kNoiseScale];
  const float sa = cf[kRefSignal], sn = cf[kRefNoise];
  const int64_t n_px = rows * W, first = b * HW + y0 * W;
  s.resize(rows, W);
  float* xp = s.xp.data();
  float* acc = s.acc.data();

  // 1) x' = mean + σ·z over the strip.
  const float* z = nullptr;
  if (ns != 0.0f) {
    if (a.noise) {
      z = a.noise + first;
    } else {
      philox_normal_fill(s.z.data(), n_px, a.seed, a.offset, 0, static_cast<uint64_t>(first));
      z = s.z.data();
    }
  }
  const T* xs = x_t + first;
  const T* es = mo + b * K * HW + y0 * W;             // channel 0: ε
  const T* vs = a.learned ? es + HW : nullptr;         // channel 1: v
  const float sigma_fixed = ns * fast_exp(0.5f * lv_min);
  const float lo = a.clip ? -1.0f : -INFINITY, hi = a.clip ? 1.0f : INFINITY;  // branch-free clip
  // One fused loop per variance / noise case.
  if (!z) {
#pragma omp simd
    for (int64_t i = 0; i < n_px; ++i) {
      const float x = static_cast<float>(xs[i]);
      const float x0 = std::min(hi, std::max(lo, c_x * x - c_e * static_cast<float>(es[i])));
      xp[i] = m_x0 * x0 + m_xt * x;
    }
  } else if (vs) {
#pragma omp simd
    for (int64_t i = 0; i < n_px; ++i) {
      const float x = static_cast<float>(xs[i]);
      const float x0 = std::min(hi, std::max(lo, c_x * x - c_e * static_cast<float>(es[i])));
      const float frac = (static_cast<float>(vs[i]) + 1.0f) / 2.0f;
      const float lv = frac * lv_max + (1.0f - frac) * lv_min;
      xp[i] = (m_x0 * x0 + m_xt * x) + ns * fast_exp(0.5f * lv) * z[i];
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n_px; ++i) {
      const float x = static_cast<float>(xs[i]);
      const float x0 = std::min(hi, std::max(lo, c_x * x - c_e * static_cast<float>(es[i])));
      xp[i] = (m_x0 * x0 + m_xt * x) + sigma_fixed * z[i];
    }
  }
  T* os = out + first;
  if (plan.conds[b].empty()) {
#pragma omp simd
    for (int64_t i = 0; i < n_px; ++i) os[i] = static_cast<T>(xp[i]);
    return;
  }
  // The first condition reads x' and writes acc, later ones update acc, the last one writes x_{t−1}:
  // no separate copy or store pass.
  const size_t n_conds = plan.conds[b].size();
  size_t cond_index = 0;

  // 2) Every active condition: r = φ(y_{t−1}) − φ(x') per block, x_{t−1} += W ⊙ r (all r from the same x').
  for (const CondPlan& c : plan.conds[b]) {
    const bool first_cond = cond_index == 0, last_cond = ++cond_index == n_conds;
    const float* src = first_cond ? xp : acc;
    const int64_t n = c.factor, wl = W / n;
    const float inv_area = 1.0f / static_cast<float>(n * n);
    const float* ref = a.refs + c.ref_offset;
    const float* rnz = a.ref_noise ? a.ref_noise + c.ref_offset : nullptr;
    float* wx = s.wx.data();
    float inv2s2 = 0.0f;
    int64_t box_y0 = 0, box_y1 = 0;
    if (c.kind == kWeightPatch) {
      const float cx = c.patch[kCx], sig = c.patch[kSigma];
      inv2s2 = 1.0f / (2.0f * sig * sig);
      const int64_t bx0 = static_cast<int64_t>(c.patch[kBoxX]), bx1 = bx0 + static_cast<int64_t>(c.patch[kBoxW]);
      box_y0 = static_cast<int64_t>(c.patch[kBoxY]), box_y1 = box_y0 + static_cast<int64_t>(c.patch[kBoxH]);
      for (int64_t x = 0; x < W; ++x) {
        const float dx = static_cast<float>(x) - cx;
        wx[x] = (x >= bx0 && x < bx1) ? fast_exp(-dx * dx * inv2s2) : 0.0f;
      }
    }
    for (int64_t by = 0; by < rows / n; ++by) {
      const int64_t ly = (y0 / n) + by;  // low-res row
      float* colsum = s.colsum.data();
      const float* r0 = xp + by * n * W;
      std::copy(r0, r0 + W, colsum);
      for (int64_t r = 1; r < n; ++r) {
        const float* rr = r0 + r * W;
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) colsum[x] += rr[x];
      }
      float* low = s.low.data();
      if (rnz) {
        std::copy(rnz + ly * wl, rnz + (ly + 1) * wl, low);
      } else {
        // φ(ε) of a box block is N(0, 1/n²): one low-res normal per block, stream 1 + m.
        philox_normal_fill(low, wl, a.seed, a.offset, 1 + static_cast<uint64_t>(c.m),
                           static_cast<uint64_t>(b * HW + ly * wl));
        const float inv_n = 1.0f / static_cast<float>(n);
        for (int64_t j = 0; j < wl; ++j) low[j] *= inv_n;
      }
      float* rexp = s.rexp.data();
      for (int64_t bx = 0; bx < wl; ++bx) {
        float sum = 0.0f;
        for (int64_t k = 0; k < n; ++k) sum += colsum[bx * n + k];
        const float yl = sa * ref[ly * wl + bx] + sn * low[bx];
        const float r = yl - sum * inv_area;
        for (int64_t k = 0; k < n; ++k) rexp[bx * n + k] = r;
      }
      for (int64_t r = 0; r < n; ++r) {
        const int64_t row = by * n + r, y = y0 + row;
        // out = in + wscale·w[x]·r[x] (w = 1 when wrow is null); wscale·1 and 1·w are exact.
        const float* wrow = nullptr;
        float wscale = 1.0f;
        if (c.kind == kWeightMap) {
          wrow = a.weight_maps + c.weight_offset + y * W;
        } else if (c.kind == kWeightPatch) {
          wrow = wx;
          const float dy = static_cast<float>(y) - c.patch[kCy];
          wscale = (y < box_y0 || y >= box_y1) ? 0.0f : fast_exp(-dy * dy * inv2s2);
        }
        const float* in = src + row * W;
        if (last_cond) {
          T* o = os + row * W;
          if (wrow) {
#pragma omp simd
            for (int64_t x = 0; x < W; ++x) o[x] = static_cast<T>(in[x] + (wscale * wrow[x]) * rexp[x]);
          } else {
#pragma omp simd
            for (int64_t x = 0; x < W; ++x) o[x] = static_cast<T>(in[x] + rexp[x]);
          }
        } else {
          float* o = acc + row * W;
          if (wrow) {
#pragma omp simd
            for (int64_t x = 0; x < W; ++x) o[x] = in[x] + (wscale * wrow[x]) * rexp[x];
          } else {
#pragma omp simd
            for (int64_t x = 0; x < W; ++x) o[x] = in[x] + rexp[x];
          }
        }
      }
    }
  }
}

// The strip kernel compiled per instruction set (see MCFAST_CLONES).
MCFAST_CLONES void run_strip_f32(const StepArgs& a, const float* x_t, const float* mo, float* out, int64_t b,
                                 int64_t y0, int64_t rows, Scratch& s) {
  run_strip<float>(a, x_t, mo, out, b, y0, rows, s);
}
MCFAST_CLONES void run_strip_bf16(const StepArgs& a, const at::BFloat16* x_t, const at::BFloat16* mo,
                                  at::BFloat16* out, int64_t b, int64_t y0, int64_t rows, Scratch& s) {
  run_strip<at::BFloat16>(a, x_t, mo, out, b, y0, rows, s);
}
inline void run_strip_any(const StepArgs& a, const float* x, const float* m, float* o, int64_t b, int64_t y0,
                          int64_t rows, Scratch& s) {
  run_strip_f32(a, x, m, o, b, y0, rows, s);
}
inline void run_strip_any(const StepArgs& a, const at::BFloat16* x, const at::BFloat16* m, at::BFloat16* o,
                          int64_t b, int64_t y0, int64_t rows, Scratch& s) {
  run_strip_bf16(a, x, m, o, b, y0, rows, s);
}

template <typename T>
void guided_step_impl(const StepArgs& a, const at::Tensor& x_t, const at::Tensor& mo, at::Tensor& out) {
  const GuidedPlan& plan = *a.plan;
  // Work items (image, first row, rows): strips a multiple of the image's tile tall, ~16k pixels.
  struct Item { int64_t b, y0, rows; };
  std::vector<Item> items;
  for (int64_t b = 0; b < plan.B; ++b) {
    const int64_t t = plan.tile[b];
    const int64_t k = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, t * plan.W));
    const int64_t rows = std::min(plan.H, t * k);
    for (int64_t y0 = 0; y0 < plan.H; y0 += rows) items.push_back({b, y0, std::min(rows, plan.H - y0)});
  }
  const T* xp = x_t.data_ptr<T>();
  const T* mp = mo.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t i0, int64_t i1) {
    thread_local Scratch scratch;
    for (int64_t i = i0; i < i1; ++i) run_strip_any(a, xp, mp, op, items[i].b, items[i].y0, items[i].rows, scratch);
  });
}

at::Tensor guided_step_cpu(const at::Tensor& x_t, const at::Tensor& model_output, const at::Tensor& coefs,
                           const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& ref_noise,
                           const at::Tensor& refs, const at::Tensor& ref_offsets, const at::Tensor& factors,
                           const at::Tensor& active, const at::Tensor& weight_kind, const at::Tensor& patch,
                           const at::Tensor& weight_maps, const at::Tensor& weight_offsets, int64_t seed,
                           int64_t offset, bool learned_variance, bool clip) {
  const GuidedPlan plan = plan_guided_step(x_t, model_output, coefs, noise, ref_noise, refs, ref_offsets, factors,
                                           active, weight_kind, patch, weight_maps, weight_offsets, learned_variance);
  at::Tensor out = at::empty_like(x_t);
  if (x_t.numel() == 0) return out;
  StepArgs a{&plan,
             coefs.data_ptr<float>(),
             noise ? noise->data_ptr<float>() : nullptr,
             ref_noise ? ref_noise->data_ptr<float>() : nullptr,
             refs.data_ptr<float>(),
             weight_maps.data_ptr<float>(),
             static_cast<uint64_t>(seed),
             static_cast<uint64_t>(offset),
             learned_variance,
             clip};
  if (x_t.scalar_type() == at::kFloat) {
    guided_step_impl<float>(a, x_t, model_output, out);
  } else {
    guided_step_impl<at::BFloat16>(a, x_t, model_output, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mcfast, CPU, m) { m.impl("guided_step", &guided_step_cpu); }

}  // namespace mcfast::cpu
