// Counter-based normal noise shared by the CPU, CUDA and Triton kernels.
//
// normal(seed, offset, stream, index):
//   group  = index >> 2, lane = index & 3
//   bits   = Philox4x32-10(counter = {lo32(group), hi32(group), lo32(offset), lo32(stream)},
//                          key     = {lo32(seed), hi32(seed)})
//   u_k    = ((bits[k] >> 8) + 0.5) * 2^-24                (in (0, 1), never 0)
//   lanes 0,1: r = sqrt(-2 log u0), n0 = r cos(2π u1), n1 = r sin(2π u1); lanes 2,3 likewise from (u2, u3).
// The same definition is written in mcfast/ops/triton_kernels.py; the raw 32-bit words agree bitwise,
// the normals up to the last bit of the platform's log/sin/cos.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MCFAST_HD __host__ __device__ __forceinline__
#else
#define MCFAST_HD inline
#endif

namespace mcfast {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4 {
  uint32_t v[4];
};

MCFAST_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

MCFAST_HD Philox4 philox_group(uint64_t seed, uint64_t offset, uint64_t stream, uint64_t group) {
  return philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(stream),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

MCFAST_HD float philox_uniform(uint32_t bits) {
  return (static_cast<float>(bits >> 8) + 0.5f) * 5.9604644775390625e-08f;  // 2^-24
}

}  // namespace mcfast

namespace mcfast {

// Two standard normals from two 32-bit words (Box–Muller).
MCFAST_HD void box_muller(uint32_t a, uint32_t b, float& n0, float& n1) {
  const float u0 = philox_uniform(a);
  const float u1 = philox_uniform(b);
  const float r = sqrtf(-2.0f * logf(u0));
  const float theta = 6.2831853071795864769f * u1;
  n0 = r * cosf(theta);
  n1 = r * sinf(theta);
}

// The standard normal number `index` of stream (seed, offset, stream).
MCFAST_HD float philox_normal_at(uint64_t seed, uint64_t offset, uint64_t stream, uint64_t index) {
  const Philox4 p = philox_group(seed, offset, stream, index >> 2);
  const uint32_t lane = static_cast<uint32_t>(index & 3u);
  float n0, n1;
  if (lane < 2) {
    box_muller(p.v[0], p.v[1], n0, n1);
  } else {
    box_muller(p.v[2], p.v[3], n0, n1);
  }
  return (lane & 1u) ? n1 : n0;
}

}  // namespace mcfast
