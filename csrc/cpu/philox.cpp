// CPU side of the in-kernel generator: block fills and the philox_normal_ / philox_bits_ ops.
#include "cpu/philox_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "cpu/vec_math.h"
#include "philox.h"

namespace mcfast::cpu {

namespace {
constexpr int64_t kChunkGroups = 256;

#if defined(__x86_64__) && defined(__GNUC__)
#define MCFAST_HAVE_AVX512_PHILOX 1
// hi and lo 32 bits of the 16 lane products a·b (vpmuludq on even and odd lanes, blended).
__attribute__((target("avx512f"))) inline void mul_hi_lo(__m512i a, __m512i b, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, b);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

// Philox words of groups first .. first+ng−1 (ng a multiple of 16), 16 groups per vector: the same
// integer arithmetic as philox4x32_10, so the same bits.
__attribute__((target("avx512f"))) void philox_words_avx512(uint64_t first, int64_t ng, uint32_t off, uint32_t str,
                                                            uint32_t key0, uint32_t key1, uint32_t* w0,
                                                            uint32_t* w1, uint32_t* w2, uint32_t* w3) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t g = 0; g < ng; g += 16) {
    const uint64_t base = first + static_cast<uint64_t>(g);
    const __m512i base_lo = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base)));
    const __m512i base_hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32)));
    __m512i c0 = _mm512_add_epi32(base_lo, lane);
    // a lane whose low word wrapped carries into the high word
    __m512i c1 = _mm512_mask_add_epi32(base_hi, _mm512_cmplt_epu32_mask(c0, base_lo), base_hi, _mm512_set1_epi32(1));
    __m512i c2 = _mm512_set1_epi32(static_cast<int>(off));
    __m512i c3 = _mm512_set1_epi32(static_cast<int>(str));
    __m512i k0 = _mm512_set1_epi32(static_cast<int>(key0));
    __m512i k1 = _mm512_set1_epi32(static_cast<int>(key1));
    for (int r = 0; r < 10; ++r) {
      __m512i hi0, lo0, hi1, lo1;
      mul_hi_lo(m0, c0, hi0, lo0);
      mul_hi_lo(m1, c2, hi1, lo1);
      const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), k0);
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), k1);
      c1 = lo1;
      c3 = lo0;
      c0 = n0;
      k0 = _mm512_add_epi32(k0, _mm512_set1_epi32(static_cast<int>(kPhiloxW0)));
      k1 = _mm512_add_epi32(k1, _mm512_set1_epi32(static_cast<int>(kPhiloxW1)));
    }
    _mm512_storeu_si512(w0 + g, c0);
    _mm512_storeu_si512(w1 + g, c1);
    _mm512_storeu_si512(w2 + g, c2);
    _mm512_storeu_si512(w3 + g, c3);
  }
}

bool use_avx512_philox() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}
#endif  // groups per batch: words first, then Box–Muller (both loops vectorise)

MCFAST_CLONES void fill_groups(float* __restrict__ out, int64_t groups, uint64_t seed, uint64_t offset,
                               uint64_t stream, uint64_t first) {
  alignas(64) uint32_t w0[kChunkGroups], w1[kChunkGroups], w2[kChunkGroups], w3[kChunkGroups];
  const uint32_t off = static_cast<uint32_t>(offset), str = static_cast<uint32_t>(stream);
  const uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int64_t g0 = 0; g0 < groups; g0 += kChunkGroups) {
    const int64_t ng = std::min(kChunkGroups, groups - g0);
    int64_t done = 0;
#ifdef MCFAST_HAVE_AVX512_PHILOX
    if (use_avx512_philox()) {
      done = ng & ~int64_t{15};
      philox_words_avx512(first + static_cast<uint64_t>(g0), done, off, str, key0, key1, w0, w1, w2, w3);
    }
#endif
#pragma omp simd
    for (int64_t g = done; g < ng; ++g) {
      const uint64_t grp = first + static_cast<uint64_t>(g0 + g);
      uint32_t c0 = static_cast<uint32_t>(grp), c1 = static_cast<uint32_t>(grp >> 32), c2 = off, c3 = str;
      uint32_t k0 = key0, k1 = key1;
      for (int r = 0; r < 10; ++r) {
        const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
        const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
        c1 = static_cast<uint32_t>(p1);
        c2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
        c3 = static_cast<uint32_t>(p0);
        c0 = n0;
        k0 += kPhiloxW0;  // the bump after the last round is unused
        k1 += kPhiloxW1;
      }
      w0[g] = c0, w1[g] = c1, w2[g] = c2, w3[g] = c3;
    }
    float* o = out + 4 * g0;
#pragma omp simd
    for (int64_t g = 0; g < ng; ++g) {
      float a, b, c, d;
      box_muller_fast(w0[g], w1[g], a, b);
      box_muller_fast(w2[g], w3[g], c, d);
      o[4 * g] = a, o[4 * g + 1] = b, o[4 * g + 2] = c, o[4 * g + 3] = d;
    }
  }
}

float normal_at(uint64_t seed, uint64_t offset, uint64_t stream, uint64_t index) {
  const Philox4 p = philox_group(seed, offset, stream, index >> 2);
  float n[4];
  box_muller_fast(p.v[0], p.v[1], n[0], n[1]);
  box_muller_fast(p.v[2], p.v[3], n[2], n[3]);
  return n[index & 3u];
}
}  // namespace

void philox_normal_fill(float* out, int64_t n, uint64_t seed, uint64_t offset, uint64_t stream, uint64_t start) {
  int64_t i = 0;
  uint64_t idx = start;
  while (i < n && (idx & 3u)) out[i++] = normal_at(seed, offset, stream, idx++);
  const int64_t groups = (n - i) / 4;
  fill_groups(out + i, groups, seed, offset, stream, idx >> 2);
  i += 4 * groups, idx += 4 * static_cast<uint64_t>(groups);
  while (i < n) out[i++] = normal_at(seed, offset, stream, idx++);
}

namespace {
void philox_normal_cpu(at::Tensor out, int64_t seed, int64_t offset, int64_t stream, int64_t start) {
  TORCH_CHECK(out.scalar_type() == at::kFloat, "mcfast::philox_normal_: out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "mcfast::philox_normal_: out must be contiguous");
  TORCH_CHECK(start >= 0, "mcfast::philox_normal_: start must be >= 0, got ", start);
  float* p = out.data_ptr<float>();
  const int64_t n = out.numel();
  // Chunks aligned to 4 so each group is drawn once.
  at::parallel_for(0, (n + 4095) / 4096, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = c * 4096, len = std::min<int64_t>(4096, n - lo);
      philox_normal_fill(p + lo, len, seed, offset, stream, start + lo);
    }
  });
}

void philox_bits_cpu(at::Tensor out, int64_t seed, int64_t offset, int64_t stream, int64_t start) {
  TORCH_CHECK(out.scalar_type() == at::kInt && out.dim() == 2 && out.size(1) == 4,
              "mcfast::philox_bits_: out must be int32 of shape (G, 4), got ", out.scalar_type(), " ", out.sizes());
  TORCH_CHECK(out.is_contiguous(), "mcfast::philox_bits_: out must be contiguous");
  // start is the 64-bit group counter taken modulo 2^64 (a negative int64 reaches the upper half).
  auto* p = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  for (int64_t g = 0; g < out.size(0); ++g) {
    const Philox4 w = philox_group(seed, offset, stream, start + g);
    for (int k = 0; k < 4; ++k) p[4 * g + k] = w.v[k];
  }
}
}  // namespace

TORCH_LIBRARY_IMPL(mcfast, CPU, m) {
  m.impl("philox_normal_", &philox_normal_cpu);
  m.impl("philox_bits_", &philox_bits_cpu);
}

}  // namespace mcfast::cpu
