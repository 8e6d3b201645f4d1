// Block fills of the counter-based normal stream (see ../philox.h) for the CPU kernels.
#pragma once
#include <cstdint>

namespace mcfast::cpu {

// out[i] = normal(seed, offset, stream, start + i) for i < n.
void philox_normal_fill(float* out, int64_t n, uint64_t seed, uint64_t offset, uint64_t stream, uint64_t start);

}  // namespace mcfast::cpu
