// CPU kernel of mcfast::guided_step: one fused pass per strip of rows.
//
// Each image's strips are a multiple of its largest active factor tall, so every box-filter block a
// condition needs lies inside one strip; strips run in parallel. Within a strip, rows go in groups of the
// smallest active factor (see StripRunner): x' of the group, its column sums into every condition's running
// block-row sums, and each condition whose block row is complete corrects those rows while they are in L1.
// A Gaussian patch touches only the blocks its box covers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/philox_cpu.h"
#include "cpu/vec_math.h"
#include "guided_plan.h"
#include "philox.h"

namespace mcfast::cpu {
namespace {

constexpr int64_t kStripPixels = 4096;  // a strip: at least one tile row, about 16 KB of float32

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

// What one condition touches in a strip: low-res columns [lx0, lx1) and pixel rows [py0, py1) (a Gaussian
// patch: its box's columns [px0, px1) and rows; otherwise the whole width and strip).
struct Region {
  int64_t lx0 = 0, lx1 = 0, px0 = 0, px1 = 0, py0 = 0, py1 = 0;
  bool empty() const { return px0 >= px1 || py0 >= py1; }
};

struct Scratch {
  std::vector<float> xp, z, part, sums, row, low, res, wx, ta, tb;
  std::vector<Region> regions;
  void resize(int64_t n_px, int64_t W, size_t n_conds) {
    const auto n = static_cast<size_t>(n_px);
    if (xp.size() < n) xp.resize(n), z.resize(n);
    if (part.size() < static_cast<size_t>(W)) {
      for (auto* v : {&part, &row, &low, &res, &ta, &tb}) v->resize(W);
    }
    // per condition: running block-row sums, and a patch's column weights
    if (sums.size() < n_conds * W) sums.resize(n_conds * W), wx.resize(n_conds * W);
    regions.resize(n_conds);
  }
};

// x' with a learned variance: σ = 2^(v·A + B) (see posterior_sample); kNegate flips z for a negative noise scale.
template <bool kNegate, typename T, typename D>
MCFAST_INLINE void learned_variance_loop(const T* xs, const T* es, const T* vs, const float* z, float c_x, float c_e_neg,
                                         float m_x0, float m_xt, float A, float B, float lo, float hi, D* dst,
                                         int64_t n_px) {
#pragma omp simd
  for (int64_t i = 0; i < n_px; ++i) {
    const float x = static_cast<float>(xs[i]);
    const float x0 = std::min(hi, std::max(lo, std::fma(c_x, x, c_e_neg * static_cast<float>(es[i]))));
    const float sigma = fast_exp2(std::fma(static_cast<float>(vs[i]), A, B));
    dst[i] = static_cast<D>(std::fma(sigma, kNegate ? -z[i] : z[i], std::fma(m_x0, x0, m_xt * x)));
  }
}

// 1) x' = mean + σ·z over n_px pixels, written to dst (the float scratch, or the output when no condition is active).
template <typename T, typename D>
MCFAST_INLINE void posterior_sample(const T* xs, const T* es, const T* vs, const float* z, const float* cf, bool clip,
                                    D* dst, int64_t n_px) {
  const float c_x = cf[kX0FromXt], c_e = cf[kX0FromEps], m_x0 = cf[kMeanX0], m_xt = cf[kMeanXt];
  const float lv_min = cf[kLogVarMin], lv_max = cf[kLogVarMax], ns = cf[kNoiseScale];
  const float lo = clip ? -1.0f : -INFINITY, hi = clip ? 1.0f : INFINITY;  // branch-free clip
  const float c_e_neg = -c_e;
  if (!z) {
#pragma omp simd
    for (int64_t i = 0; i < n_px; ++i) {
      const float x = static_cast<float>(xs[i]);
      const float x0 = std::min(hi, std::max(lo, std::fma(c_x, x, c_e_neg * static_cast<float>(es[i]))));
      dst[i] = static_cast<D>(std::fma(m_x0, x0, m_xt * x));
    }
  } else if (vs) {
    // ns·σ = ns·exp(½(f·lv_max + (1−f)·lv_min)) with f = (v+1)/2 is 2^(v·A + B): one multiply-add and an exp2
    // (ns, 1 in practice, folds into B as log2 ns; a negative one, meaningless but allowed, flips z's sign).
    constexpr float kLog2e = 1.44269504088896341f;
    const float quarter_range = 0.25f * (lv_max - lv_min);
    const float A = quarter_range * kLog2e;
    const float B = (0.5f * lv_min + quarter_range) * kLog2e + std::log2(std::fabs(ns));
    if (ns < 0.0f) {
      learned_variance_loop<true>(xs, es, vs, z, c_x, c_e_neg, m_x0, m_xt, A, B, lo, hi, dst, n_px);
    } else {
      learned_variance_loop<false>(xs, es, vs, z, c_x, c_e_neg, m_x0, m_xt, A, B, lo, hi, dst, n_px);
    }
  } else {
    const float sigma = ns * fast_exp(0.5f * lv_min);
#pragma omp simd
    for (int64_t i = 0; i < n_px; ++i) {
      const float x = static_cast<float>(xs[i]);
      const float x0 = std::min(hi, std::max(lo, std::fma(c_x, x, c_e_neg * static_cast<float>(es[i]))));
      dst[i] = static_cast<D>(std::fma(sigma, z[i], std::fma(m_x0, x0, m_xt * x)));
    }
  }
}

// colsum[x] = Σ_{r<n} rows[r·W + x] for x in [x0, x1): 64 columns at a time held in registers over the n rows.
MCFAST_INLINE void column_sums(const float* rows, int64_t W, int64_t n, int64_t x0, int64_t x1, float* colsum) {
  constexpr int64_t kChunk = 64;
  int64_t x = x0;
  for (; x + kChunk <= x1; x += kChunk) {
    float acc[kChunk];
#pragma omp simd
    for (int64_t l = 0; l < kChunk; ++l) acc[l] = rows[x + l];
    for (int64_t r = 1; r < n; ++r) {
      const float* rr = rows + r * W + x;
#pragma omp simd
      for (int64_t l = 0; l < kChunk; ++l) acc[l] += rr[l];
    }
#pragma omp simd
    for (int64_t l = 0; l < kChunk; ++l) colsum[x + l] = acc[l];
  }
  if (x < x1) {
    std::copy(rows + x, rows + x1, colsum + x);
    for (int64_t r = 1; r < n; ++r) {
      const float* rr = rows + r * W;
#pragma omp simd
      for (int64_t c = x; c < x1; ++c) colsum[c] += rr[c];
    }
  }
}

// Sums of n consecutive values (n a power of two) of src[0, len): log2 n pairwise passes, each of which
// vectorises (a loop over i with a fixed n does not). Returns the len / n sums, in ta or tb (or src when n = 1).
MCFAST_INLINE const float* block_sums(const float* src, int64_t len, int64_t n, float* ta, float* tb) {
  for (int64_t m = len; m > len / n; m /= 2) {
    float* dst = src == ta ? tb : ta;
    for (int64_t i = 0; i < m / 2; ++i) dst[i] = src[2 * i] + src[2 * i + 1];
    src = dst;
  }
  return src;
}

// dst[x] = src[x / n] for x in [0, len·n): log2 n doubling passes (vectorised permutes), the last into dst.
MCFAST_INLINE void repeat_each(const float* src, int64_t len, int64_t n, float* dst, float* ta, float* tb) {
  if (n == 1) {
    std::copy(src, src + len, dst);
    return;
  }
  for (int64_t m = len; m < len * n; m *= 2) {
    float* out = 2 * m == len * n ? dst : (src == ta ? tb : ta);
    for (int64_t i = 0; i < m; ++i) {
      const float v = src[i];
      out[2 * i] = v;
      out[2 * i + 1] = v;
    }
    src = out;
  }
}

// One strip in flight: which image and rows, its noise and where its x' lives.
struct Strip {
  int64_t b = 0, y0 = 0, rows = 0;
  const float* z = nullptr;  // nullptr: no noise at this step
  bool has_conds = false;
  float* xp = nullptr;       // x' of the strip: the output itself for float32 (corrected in place), else s.xp
  Scratch s;
};

// A strip is processed in groups of G rows (G = the smallest active factor): x' of the group; its column sums
// go into every condition's running block-row sums (all taken from x' before any correction); a condition
// whose block row is complete gets its low-res residual r = φ(y_{t−1}) − φ(x') and adds W ⊙ r to those n
// rows at once, while they are still in cache. The corrections are additive, so x_{t−1} = x' + Σ W ⊙ r.
template <typename T>
struct StripRunner {
  const StepArgs& a;
  const T* x_t;
  const T* mo;
  T* out;

  // Every method is inlined into the per-ISA clones below (a call out of a clone would run baseline code,
  // where std::fma is a library call).

  // Start strip (b, y0, rows): where its x' goes, and its noise (drawn now when in-kernel).
  MCFAST_INLINE void begin(Strip& st, int64_t b, int64_t y0, int64_t rows) const {
    const GuidedPlan& plan = *a.plan;
    const int64_t W = plan.W, first = b * plan.H * W + y0 * W;
    st.b = b, st.y0 = y0, st.rows = rows;
    st.has_conds = !plan.conds[b].empty();
    st.s.resize(rows * W, W, plan.conds[b].size());
    // float32: x' is written straight to the output and corrected in place while in cache; bfloat16 keeps
    // x' in float scratch (one rounding at the end).
    if constexpr (std::is_same_v<T, float>) {
      st.xp = out + first;
    } else {
      st.xp = st.s.xp.data();
    }
    st.z = nullptr;
    if (a.coefs[b * kNumCoefs + kNoiseScale] != 0.0f) {
      if (a.noise) {
        st.z = a.noise + first;
      } else {
        philox_normal_fill(st.s.z.data(), rows * W, a.seed, a.offset, 0, static_cast<uint64_t>(first));
        st.z = st.s.z.data();
      }
    }
  }

  // x' of strip rows [r0, r1): into st.xp, or straight to the output when no condition is active.
  MCFAST_INLINE void posterior(Strip& st, int64_t r0, int64_t r1) {
    const GuidedPlan& plan = *a.plan;
    const int64_t W = plan.W, HW = plan.H * W, y = st.y0 + r0, first = st.b * HW + y * W;
    const T* xs = x_t + first;
    const T* es = mo + st.b * plan.K * HW + y * W;  // channel 0: ε
    const T* vs = a.learned ? es + HW : nullptr;   // channel 1: v
    const float* z = st.z ? st.z + r0 * W : nullptr;
    const float* cf = a.coefs + st.b * kNumCoefs;
    if (st.has_conds) {
      posterior_sample(xs, es, vs, z, cf, a.clip, st.xp + r0 * W, (r1 - r0) * W);
    } else {
      posterior_sample(xs, es, vs, z, cf, a.clip, out + first, (r1 - r0) * W);
    }
  }

  // The region of condition c in this strip (patches: only the blocks their box touches).
  MCFAST_INLINE Region region_of(const CondPlan& c, int64_t y0, int64_t rows) const {
    const int64_t W = a.plan->W, n = c.factor;
    Region g{0, W / n, 0, W, y0, y0 + rows};
    if (c.kind == kWeightPatch) {
      // pixel x is inside when bx <= x < bx + bw (as in the reference), i.e. ceil(bx) <= x < ceil(bx + bw)
      const auto lo = [](float v) { return static_cast<int64_t>(std::ceil(static_cast<double>(v))); };
      const auto hi = [](float v, float w) { return static_cast<int64_t>(std::ceil(static_cast<double>(v) + w)); };
      g.px0 = std::max<int64_t>(0, lo(c.patch[kBoxX])), g.px1 = std::min(W, hi(c.patch[kBoxX], c.patch[kBoxW]));
      g.py0 = std::max(y0, lo(c.patch[kBoxY])), g.py1 = std::min(y0 + rows, hi(c.patch[kBoxY], c.patch[kBoxH]));
      g.lx0 = g.px0 / n, g.lx1 = std::max(g.lx0, (g.px1 + n - 1) / n);
    }
    return g;
  }

  // r of low-res row ly over the region's columns, from the block-row column sums cs[lx0·n, lx1·n).
  MCFAST_INLINE void residual_row(Strip& st, const CondPlan& c, const Region& g, const float* cs, int64_t ly,
                                  float* res) {
    Scratch& s = st.s;
    const int64_t W = a.plan->W, HW = a.plan->H * W, n = c.factor, wl = W / n, rw = g.lx1 - g.lx0;
    const float* cf = a.coefs + st.b * kNumCoefs;
    const float sa = cf[kRefSignal], sn = cf[kRefNoise];
    const float inv_area = 1.0f / static_cast<float>(n * n);
    const float* sums = block_sums(cs + g.lx0 * n, rw * n, n, s.ta.data(), s.tb.data());
    float* low = s.low.data();
    if (a.ref_noise) {
      std::copy(a.ref_noise + c.ref_offset + ly * wl + g.lx0, a.ref_noise + c.ref_offset + ly * wl + g.lx1, low);
    } else {
      // φ(ε) of a box block is N(0, 1/n²): one low-res normal per block, stream 1 + m.
      philox_normal_fill(low, rw, a.seed, a.offset, 1 + static_cast<uint64_t>(c.m),
                         static_cast<uint64_t>(st.b * HW + ly * wl + g.lx0));
      const float inv_n = 1.0f / static_cast<float>(n);
#pragma omp simd
      for (int64_t j = 0; j < rw; ++j) low[j] *= inv_n;
    }
    const float* rf = a.refs + c.ref_offset + ly * wl + g.lx0;
#pragma omp simd
    for (int64_t j = 0; j < rw; ++j) res[j] = sa * rf[j] + sn * low[j] - sums[j] * inv_area;
  }

  // x' rows [y1 − n, y1) of condition c += W ⊙ r (r of that block row, expanded to pixels in s.row).
  MCFAST_INLINE void apply(Strip& st, const CondPlan& c, const Region& g, const float* res, const float* wx,
                           int64_t y1) {
    Scratch& s = st.s;
    const int64_t W = a.plan->W, n = c.factor;
    float* row = s.row.data();
    repeat_each(res, g.lx1 - g.lx0, n, row + g.lx0 * n, s.ta.data(), s.tb.data());
    const int64_t ya = std::max(y1 - n, g.py0), yb = std::min(y1, g.py1);
    if (c.kind == kWeightFull) {
      for (int64_t y = ya; y < yb; ++y) {
        float* o = st.xp + (y - st.y0) * W;
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) o[x] += row[x];
      }
    } else if (c.kind == kWeightMap) {
      for (int64_t y = ya; y < yb; ++y) {
        const float* w = a.weight_maps + c.weight_offset + y * W;
        float* o = st.xp + (y - st.y0) * W;
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) o[x] += w[x] * row[x];
      }
    } else {  // Gaussian patch: W(x, y) = g(x)·g(y) inside the box, 0 outside; g(x) is wx (see process)
      const float inv2s2 = 1.0f / (2.0f * c.patch[kSigma] * c.patch[kSigma]);
      for (int64_t y = ya; y < yb; ++y) {
        const float dy = static_cast<float>(y) - c.patch[kCy];
        const float wy = fast_exp(-dy * dy * inv2s2);
        float* o = st.xp + (y - st.y0) * W;
#pragma omp simd
        for (int64_t x = g.px0; x < g.px1; ++x) o[x] += (wy * wx[x]) * row[x];
      }
    }
  }

  // The whole strip: x', the corrections, and for bfloat16 the one rounding to the output.
  MCFAST_INLINE void process(Strip& st) {
    const GuidedPlan& plan = *a.plan;
    const int64_t W = plan.W, y0 = st.y0, rows = st.rows;
    if (!st.has_conds) {
      posterior(st, 0, rows);
      return;
    }
    const std::vector<CondPlan>& conds = plan.conds[st.b];
    Scratch& s = st.s;
    int64_t G = rows;
    for (size_t j = 0; j < conds.size(); ++j) {
      const CondPlan& c = conds[j];
      const Region& g = s.regions[j] = region_of(c, y0, rows);
      G = std::min(G, c.factor);
      if (c.kind == kWeightPatch) {  // the patch's column weights g(x), once per strip
        const float inv2s2 = 1.0f / (2.0f * c.patch[kSigma] * c.patch[kSigma]);
        float* wx = s.wx.data() + j * W;
        for (int64_t x = g.px0; x < g.px1; ++x) {
          const float dx = static_cast<float>(x) - c.patch[kCx];
          wx[x] = fast_exp(-dx * dx * inv2s2);
        }
      }
    }
    float* part = s.part.data();
    float* res = s.res.data();
    for (int64_t r = 0; r < rows; r += G) {
      const int64_t y = y0 + r, y1 = y + G;
      posterior(st, r, r + G);
      column_sums(st.xp + r * W, W, G, 0, W, part);  // this group's column sums, before any correction
      for (size_t j = 0; j < conds.size(); ++j) {
        const CondPlan& c = conds[j];
        const Region& g = s.regions[j];
        const int64_t n = c.factor;
        // block rows that miss the region (a patch's box) need neither sums nor corrections
        const int64_t block_row = (y / n) * n;
        if (g.empty() || block_row + n <= g.py0 || block_row >= g.py1) continue;
        const int64_t x0 = g.lx0 * n, x1 = g.lx1 * n;
        const float* cs = part;
        if (n > G) {  // running sums over the block row
          float* acc = s.sums.data() + j * W;
          if (y % n == 0) {
            std::copy(part + x0, part + x1, acc + x0);
          } else {
#pragma omp simd
            for (int64_t x = x0; x < x1; ++x) acc[x] += part[x];
          }
          cs = acc;
        }
        if (y1 % n != 0) continue;  // block row not complete yet
        residual_row(st, c, g, cs, y1 / n - 1, res);
        apply(st, c, g, res, s.wx.data() + j * W, y1);
      }
    }
    if constexpr (!std::is_same_v<T, float>) {
      T* os = out + st.b * plan.H * W + y0 * W;
#pragma omp simd
      for (int64_t i = 0; i < rows * W; ++i) os[i] = static_cast<T>(st.xp[i]);
    }
  }
};

struct Item { int64_t b, y0, rows; };

template <typename T>
MCFAST_INLINE void run_items(const StepArgs& a, const T* x_t, const T* mo, T* out, const Item* items, int64_t i0,
                             int64_t i1, Strip& st) {
  StripRunner<T> runner{a, x_t, mo, out};
  for (int64_t i = i0; i < i1; ++i) {
    runner.begin(st, items[i].b, items[i].y0, items[i].rows);
    runner.process(st);
  }
}

// The chunk kernel compiled per instruction set (see MCFAST_CLONES).
MCFAST_CLONES void run_items_f32(const StepArgs& a, const float* x_t, const float* mo, float* out, const Item* items,
                                 int64_t i0, int64_t i1, Strip* work) {
  run_items<float>(a, x_t, mo, out, items, i0, i1, *work);
}
MCFAST_CLONES void run_items_bf16(const StepArgs& a, const at::BFloat16* x_t, const at::BFloat16* mo,
                                  at::BFloat16* out, const Item* items, int64_t i0, int64_t i1, Strip* work) {
  run_items<at::BFloat16>(a, x_t, mo, out, items, i0, i1, *work);
}
inline void run_items_any(const StepArgs& a, const float* x, const float* m, float* o, const Item* items, int64_t i0,
                          int64_t i1, Strip* work) {
  run_items_f32(a, x, m, o, items, i0, i1, work);
}
inline void run_items_any(const StepArgs& a, const at::BFloat16* x, const at::BFloat16* m, at::BFloat16* o,
                          const Item* items, int64_t i0, int64_t i1, Strip* work) {
  run_items_bf16(a, x, m, o, items, i0, i1, work);
}

template <typename T>
void guided_step_impl(const StepArgs& a, const at::Tensor& x_t, const at::Tensor& mo, at::Tensor& out) {
  const GuidedPlan& plan = *a.plan;
  // Work items (image, first row, rows): strips a multiple of the image's tile tall, about kStripPixels
  // pixels so a strip's float scratch stays in L1/L2 between the passes.
  std::vector<Item> items;
  for (int64_t b = 0; b < plan.B; ++b) {
    const int64_t t = plan.tile[b];
    const int64_t k = std::max<int64_t>(1, kStripPixels / std::max<int64_t>(1, t * plan.W));
    const int64_t rows = std::min(plan.H, t * k);
    for (int64_t y0 = 0; y0 < plan.H; y0 += rows) items.push_back({b, y0, std::min(rows, plan.H - y0)});
  }
  const T* xp = x_t.data_ptr<T>();
  const T* mp = mo.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t i0, int64_t i1) {
    thread_local Strip work;
    run_items_any(a, xp, mp, op, items.data(), i0, i1, &work);
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
