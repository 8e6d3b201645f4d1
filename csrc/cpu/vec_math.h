// Branch-free float exp / log / sincos (Cephes polynomials, ~1 ulp) that gcc vectorises in plain loops,
// and the CPU Box–Muller built on them. libm's calls do not vectorise without -ffast-math.
// MCFAST_CLONES compiles a hot function for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and baseline x86-64,
// chosen at load time. Contraction is off (-ffp-contract=off): every fused multiply-add is an explicit
// std::fma, which the baseline clone computes in software with the same rounding, so all clones give the
// same bits.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MCFAST_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MCFAST_CLONES
#endif

// Inlined into each clone so the math is compiled for the clone's instruction set.
#define MCFAST_INLINE __attribute__((always_inline)) inline

namespace mcfast::cpu {

MCFAST_INLINE float bits_to_float(int32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
MCFAST_INLINE int32_t float_to_bits(float f) {
  int32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// Round to nearest integer for |x| < 2^22 without SSE4.1 (adding and removing 1.5·2^23).
MCFAST_INLINE float round_magic(float x) { return (x + 12582912.0f) - 12582912.0f; }

MCFAST_INLINE float fast_exp(float x) {
  x = std::min(88.0f, std::max(-87.0f, x));
  const float k = round_magic(x * 1.44269504088896341f);
  float r = std::fma(k, -0.693359375f, x);  // x − k·ln 2 in two parts (Cody–Waite)
  r = std::fma(k, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p * r, r, r) + 1.0f;
  return p * bits_to_float((static_cast<int32_t>(k) + 127) << 23);
}

// 2^t for t in [−125, 127] (clamped): 2^k·p(f) with k = round(t), f in [−½, ½] and a degree-5 polynomial
// fitted for relative error (1.9e−7 in float32, ~1.6 ulp); the 2^k is an integer add to p's exponent bits.
MCFAST_INLINE float fast_exp2(float t) {
  t = std::min(127.0f, std::max(-125.0f, t));
  const float k = std::nearbyint(t);  // one vrndscaleps; the baseline clone's libm call rounds the same way
  const float f = t - k;
  float p = 1.32647e-3f;
  p = std::fma(p, f, 9.67151e-3f);
  p = std::fma(p, f, 5.550734e-2f);
  p = std::fma(p, f, 2.4022242e-1f);
  p = std::fma(p, f, 6.9314698e-1f);
  p = std::fma(p, f, 1.0f);
  return bits_to_float(float_to_bits(p) + (static_cast<int32_t>(k) << 23));
}

// Natural log for normal positive x.
MCFAST_INLINE float fast_log(float x) {
  const int32_t bits = float_to_bits(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

// sin and cos of 2π·u for u in [0, 1].
MCFAST_INLINE void fast_sincos_2pi(float u, float& s, float& c) {
  const float q = round_magic(4.0f * u);         // quadrant 0..4
  const float a = 6.28318530717958647692f * (u - 0.25f * q);  // [-π/4, π/4]
  const float z = a * a;
  const float sp = a + a * z * (-1.6666654611e-1f + z * (8.3321608736e-3f + z * -1.9515295891e-4f));
  const float cp = 1.0f - 0.5f * z + z * z * (4.166664568298827e-2f + z * (-1.388731625493765e-3f +
                                                                           z * 2.443315711809948e-5f));
  const int32_t qi = static_cast<int32_t>(q) & 3;
  const float s0 = (qi & 1) ? cp : sp;           // sin(a + qπ/2): s, c, −s, −c
  const float c0 = (qi & 1) ? sp : cp;           // cos(a + qπ/2): c, −s, −c, s
  s = (qi & 2) ? -s0 : s0;
  c = ((qi + 1) & 2) ? -c0 : c0;
}

// Box–Muller on two Philox words, as in ../philox.h but with the vectorisable functions above.
MCFAST_INLINE void box_muller_fast(uint32_t a, uint32_t b, float& n0, float& n1) {
  const float u0 = (static_cast<float>(static_cast<int32_t>(a >> 8)) + 0.5f) * 5.9604644775390625e-08f;
  const float u1 = (static_cast<float>(static_cast<int32_t>(b >> 8)) + 0.5f) * 5.9604644775390625e-08f;
  const float r = std::sqrt(-2.0f * fast_log(u0));
  float s, c;
  fast_sincos_2pi(u1, s, c);
  n0 = r * c;
  n1 = r * s;
}

}  // namespace mcfast::cpu
