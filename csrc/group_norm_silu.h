// Argument checks shared by the CPU and CUDA kernels of mcfast::group_norm_silu (contract in docs/kernels.md).
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace mcfast {

struct GroupNormShape {
  int64_t B = 0, C = 0, HW = 0, G = 0;
  bool channels_last = false;  // NHWC: the channel index is innermost
};

// x laid out as the kernels read it: kept when contiguous or channels_last, else copied to contiguous.
inline at::Tensor group_norm_input(const at::Tensor& x) {
  if (x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)) return x;
  return x.contiguous();
}

// scale / shift as the kernels read them: float32 (B, C) contiguous, or an undefined tensor when absent.
inline at::Tensor group_norm_modulation(const std::optional<at::Tensor>& t) {
  return t ? t->to(at::kFloat).contiguous() : at::Tensor();
}

// One clear message per problem; `x` must already be the tensor returned by group_norm_input.
inline GroupNormShape check_group_norm_silu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                            const std::optional<at::Tensor>& scale,
                                            const std::optional<at::Tensor>& shift, int64_t groups, double eps,
                                            bool allow_half) {
  const char* op = "mcfast::group_norm_silu: ";
  TORCH_CHECK(x.dim() == 4, op, "x must have shape (B, C, H, W), got ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || (allow_half && dt == at::kHalf), op, "x must be float32",
              allow_half ? ", bfloat16 or float16" : " or bfloat16", " on ", x.device().type(), ", got ", dt);
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(groups > 0, op, "groups must be positive, got ", groups);
  TORCH_CHECK(C % groups == 0, op, "channels C = ", C, " are not divisible by groups = ", groups);
  TORCH_CHECK(eps >= 0.0, op, "eps must be non-negative, got ", eps);
  auto check_affine = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == C, op, name, " must have shape (C,) = (", C, ",), got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, name, " must be float32, got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), op, name, " is on ", t.device(), " but x is on ", x.device());
    TORCH_CHECK(t.is_contiguous(), op, name, " must be contiguous");
  };
  check_affine(weight, "weight");
  check_affine(bias, "bias");
  auto check_modulation = [&](const std::optional<at::Tensor>& t, const char* name) {
    if (!t) return;
    TORCH_CHECK(t->dim() == 2 && t->size(0) == B && t->size(1) == C, op, name, " must have shape (B, C) = (", B,
                ", ", C, "), got ", t->sizes());
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, name, " must be a floating-point tensor, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), op, name, " is on ", t->device(), " but x is on ", x.device());
  };
  check_modulation(scale, "scale");
  check_modulation(shift, "shift");
  // A tensor that is both contiguous and channels_last (C == 1, or H·W == 1) reads the same either way.
  return {B, C, x.size(2) * x.size(3), groups, !x.is_contiguous()};
}

}  // namespace mcfast
