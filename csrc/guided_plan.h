// Argument checks and the host-side plan shared by the CPU and CUDA guided_step kernels.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace mcfast {

// Columns of the per-image coefficient table `coefs` (B, kNumCoefs), float32.
enum Coef : int {
  kX0FromXt = 0,     // x0 = c·x_t − c'·ε
  kX0FromEps = 1,
  kMeanX0 = 2,       // mean = m·x0 + m'·x_t
  kMeanXt = 3,
  kLogVarMin = 4,    // log σ² (fixed variance), or the min end of the learned range
  kLogVarMax = 5,    // max end of the learned range (ignored unless learned_variance)
  kNoiseScale = 6,   // multiplies σ: 0 at the last step, else 1
  kRefSignal = 7,    // √ᾱ_{t−1}: y_{t−1} = √ᾱ_{t−1}·y + √(1−ᾱ_{t−1})·ε
  kRefNoise = 8,     // √(1−ᾱ_{t−1})
  kNumCoefs = 9
};

enum WeightKind : int64_t { kWeightFull = 0, kWeightPatch = 1, kWeightMap = 2 };

// Columns of `patch` (B, M, 7): Gaussian centre (x, y) and σ in pixels, box (x0, y0, w, h).
enum PatchCol : int { kCx = 0, kCy = 1, kSigma = 2, kBoxX = 3, kBoxY = 4, kBoxW = 5, kBoxH = 6, kNumPatch = 7 };

struct CondPlan {
  int64_t m;        // slot in the (B, M) table: the in-kernel noise stream is 1 + m
  int64_t factor;   // power of two dividing H and W
  int64_t ref_offset;
  int64_t kind;
  int64_t weight_offset;
  float patch[kNumPatch];
};

struct GuidedPlan {
  int64_t B = 0, H = 0, W = 0, M = 0, K = 0;
  std::vector<std::vector<CondPlan>> conds;  // active conditions of each image
  std::vector<int64_t> tile;                 // largest active factor of each image (1 when none)
  int64_t max_tile = 1;
};

inline bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// Checks every argument (one clear message per problem) and reads the small tables on the host.
inline GuidedPlan plan_guided_step(const at::Tensor& x_t, const at::Tensor& model_output, const at::Tensor& coefs,
                                   const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& ref_noise,
                                   const at::Tensor& refs, const at::Tensor& ref_offsets, const at::Tensor& factors,
                                   const at::Tensor& active, const at::Tensor& weight_kind, const at::Tensor& patch,
                                   const at::Tensor& weight_maps, const at::Tensor& weight_offsets,
                                   bool learned_variance) {
  const char* op = "mcfast::guided_step: ";
  TORCH_CHECK(x_t.dim() == 4 && x_t.size(1) == 1, op, "x_t must have shape (B, 1, H, W), got ", x_t.sizes());
  TORCH_CHECK(x_t.scalar_type() == at::kFloat || x_t.scalar_type() == at::kBFloat16, op,
              "x_t must be float32 or bfloat16, got ", x_t.scalar_type());
  TORCH_CHECK(x_t.is_contiguous(), op, "x_t must be contiguous");
  const auto dev = x_t.device();
  const int64_t B = x_t.size(0), H = x_t.size(2), W = x_t.size(3);
  TORCH_CHECK(model_output.dim() == 4 && model_output.size(0) == B && model_output.size(2) == H &&
                  model_output.size(3) == W,
              op, "model_output must have shape (B, K, H, W) = (", B, ", K, ", H, ", ", W, "), got ",
              model_output.sizes());
  TORCH_CHECK(model_output.size(1) >= (learned_variance ? 2 : 1), op, "model_output needs ",
              (learned_variance ? "2 channels (eps, v) for a learned variance" : "at least 1 channel (eps)"), ", got ",
              model_output.size(1));
  TORCH_CHECK(model_output.scalar_type() == x_t.scalar_type(), op, "model_output dtype ", model_output.scalar_type(),
              " differs from x_t dtype ", x_t.scalar_type());
  TORCH_CHECK(model_output.is_contiguous(), op, "model_output must be contiguous");
  TORCH_CHECK(coefs.dim() == 2 && coefs.size(0) == B && coefs.size(1) == kNumCoefs, op,
              "coefs must have shape (B, 9) = (", B, ", 9), got ", coefs.sizes());
  // The small tables (coefs and the (B, M) ones) may stay on the host when x_t is on a GPU: the CUDA kernel
  // then ships them with one asynchronous copy instead of reading device tables back (a sync per step).
  auto check_host_or_same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == dev || t.device().is_cpu(), op, name, " is on ", t.device(), " but x_t is on ", dev,
                " (the small tables may also be on the CPU)");
  };
  TORCH_CHECK(noise.has_value() == ref_noise.has_value(), op,
              "pass both noise and ref_noise, or neither (then noise is drawn in-kernel from seed and offset)");
  auto check_float = [&](const at::Tensor& t, const char* name, bool table) {
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, name, " must be float32, got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), op, name, " must be contiguous");
    if (table) {
      check_host_or_same(t, name);
    } else {
      TORCH_CHECK(t.device() == dev, op, name, " is on ", t.device(), " but x_t is on ", dev);
    }
  };
  check_float(coefs, "coefs", true);
  check_float(refs, "refs", false);
  check_float(weight_maps, "weight_maps", false);
  check_float(patch, "patch", true);
  TORCH_CHECK(refs.dim() == 1, op, "refs must be 1-D (the low-passed references, flattened), got ", refs.sizes());
  TORCH_CHECK(weight_maps.dim() == 1, op, "weight_maps must be 1-D, got ", weight_maps.sizes());
  if (noise.has_value()) {
    check_float(*noise, "noise", false);
    check_float(*ref_noise, "ref_noise", false);
    TORCH_CHECK(noise->sizes() == x_t.sizes(), op, "noise must have the shape of x_t ", x_t.sizes(), ", got ",
                noise->sizes());
    TORCH_CHECK(ref_noise->sizes() == refs.sizes(), op, "ref_noise must have the shape of refs ", refs.sizes(),
                ", got ", ref_noise->sizes());
  }
  TORCH_CHECK(model_output.device() == dev, op, "model_output is on ", model_output.device(), " but x_t is on ", dev);
  const int64_t M = factors.dim() == 2 ? factors.size(1) : -1;
  auto check_table = [&](const at::Tensor& t, const char* name, at::ScalarType st) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == M, op, name, " must have shape (B, M) = (", B, ", ",
                M, "), got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == st, op, name, " must be ", st, ", got ", t.scalar_type());
    check_host_or_same(t, name);
  };
  TORCH_CHECK(factors.dim() == 2 && factors.size(0) == B, op, "factors must have shape (B, M), got ",
              factors.sizes());
  check_table(factors, "factors", at::kLong);
  check_table(ref_offsets, "ref_offsets", at::kLong);
  check_table(active, "active", at::kBool);
  check_table(weight_kind, "weight_kind", at::kLong);
  check_table(weight_offsets, "weight_offsets", at::kLong);
  TORCH_CHECK(patch.dim() == 3 && patch.size(0) == B && patch.size(1) == M && patch.size(2) == kNumPatch, op,
              "patch must have shape (B, M, 7), got ", patch.sizes());

  // The tables are tiny: read them on the host (device tables cost one small synchronous copy).
  // (host tables are used as they are: a .to() per table costs a dispatcher round trip per step)
  auto host = [](const at::Tensor& t) { return t.is_cpu() && t.is_contiguous() ? t : t.to(at::kCPU).contiguous(); };
  const at::Tensor f = host(factors), ro = host(ref_offsets), ac = host(active), wk = host(weight_kind),
                   wo = host(weight_offsets), pa = host(patch);
  const int64_t* fp = f.data_ptr<int64_t>();
  const int64_t* rop = ro.data_ptr<int64_t>();
  const bool* acp = ac.data_ptr<bool>();
  const int64_t* wkp = wk.data_ptr<int64_t>();
  const int64_t* wop = wo.data_ptr<int64_t>();
  const float* pap = pa.data_ptr<float>();

  GuidedPlan plan;
  plan.B = B, plan.H = H, plan.W = W, plan.M = M, plan.K = model_output.size(1);
  plan.conds.resize(B);
  plan.tile.assign(B, 1);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t m = 0; m < M; ++m) {
      const int64_t i = b * M + m;
      if (!acp[i]) continue;
      const int64_t n = fp[i];
      TORCH_CHECK(is_power_of_two(n), op, "factor ", n, " of image ", b, " condition ", m,
                  " is not a power of two (the fused op needs the box filter with power-of-two factors)");
      TORCH_CHECK(H % n == 0 && W % n == 0, op, "factor ", n, " of image ", b, " condition ", m,
                  " does not divide the image size ", H, "x", W);
      const int64_t low = (H / n) * (W / n);
      TORCH_CHECK(rop[i] >= 0 && rop[i] + low <= refs.numel(), op, "ref_offsets[", b, ", ", m, "] = ", rop[i],
                  " with a ", H / n, "x", W / n, " reference runs past refs (", refs.numel(), " elements)");
      CondPlan c;
      c.m = m, c.factor = n, c.ref_offset = rop[i], c.kind = wkp[i], c.weight_offset = wop[i];
      for (int k = 0; k < kNumPatch; ++k) c.patch[k] = pap[i * kNumPatch + k];
      TORCH_CHECK(c.kind == kWeightFull || c.kind == kWeightPatch || c.kind == kWeightMap, op, "weight_kind[", b,
                  ", ", m, "] = ", c.kind, " must be 0 (full image), 1 (Gaussian patch) or 2 (weight map)");
      if (c.kind == kWeightMap) {
        TORCH_CHECK(c.weight_offset >= 0 && c.weight_offset + H * W <= weight_maps.numel(), op, "weight_offsets[",
                    b, ", ", m, "] = ", c.weight_offset, " with an ", H, "x", W,
                    " weight map runs past weight_maps (", weight_maps.numel(), " elements)");
      }
      if (c.kind == kWeightPatch) {
        TORCH_CHECK(c.patch[kSigma] > 0.0f, op, "patch sigma of image ", b, " condition ", m, " must be > 0, got ",
                    c.patch[kSigma]);
      }
      plan.conds[b].push_back(c);
      plan.tile[b] = std::max(plan.tile[b], n);
    }
    plan.max_tile = std::max(plan.max_tile, plan.tile[b]);
  }
  return plan;
}

}  // namespace mcfast
