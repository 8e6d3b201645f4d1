// Schemas of the mcfast custom ops. Kernels: cpu/*.cpp (CPU key), cuda/*.cu (CUDA key);
// fake (meta) kernels are registered from Python in mcfast/ops/fake.py.
#include <torch/library.h>

TORCH_LIBRARY(mcfast, m) {
  // The fake kernels live in this Python module; torch tells users to import it when missing.
  m.set_python_module("mcfast.ops.fake");
  // One reverse step with multi-condition weighted ILVR guidance (box filter); layout in docs/kernels.md.
  m.def("guided_step(Tensor x_t, Tensor model_output, Tensor coefs, Tensor? noise, Tensor? ref_noise, "
        "Tensor refs, Tensor ref_offsets, Tensor factors, Tensor active, Tensor weight_kind, Tensor patch, "
        "Tensor weight_maps, Tensor weight_offsets, int seed, int offset, bool learned_variance, bool clip) -> Tensor");
  // The in-kernel generator, exposed for tests and benchmarks: fills `out` (float32) with the normals
  // start, start+1, ... of stream (seed, offset, stream).
  m.def("philox_normal_(Tensor(a!) out, int seed, int offset, int stream, int start) -> ()");
  // Raw Philox4x32-10 words: `out` int32 of shape (G, 4) gets the words of groups start .. start+G−1.
  m.def("philox_bits_(Tensor(a!) out, int seed, int offset, int stream, int start) -> ()");
  // The U-Net's norm + scale-shift + activation in one pass (ResBlock, inference): per (image b, group g) the
  // float32 moments μ, σ² over C/groups channels × H × W, then
  //   y = act(((x − μ)/sqrt(σ² + eps)·weight_c + bias_c)·(1 + scale_bc) + shift_bc), act = SiLU or identity,
  // rounded to x's dtype once. x (B, C, H, W) float32 / bfloat16 (and float16 on CUDA), contiguous or
  // channels_last (y has x's dtype and memory format); weight, bias (C,) float32; scale, shift (B, C), any
  // float dtype, or None.
  m.def("group_norm_silu(Tensor x, Tensor weight, Tensor bias, Tensor? scale, Tensor? shift, int groups, "
        "float eps, bool apply_silu) -> Tensor");
}

#ifdef MCFAST_PYTHON_MODULE
// Only the setuptools build (mcfast._C) is a Python module; the CMake ops library is plain C++.
#include <Python.h>
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "mcfast custom ops (torch.ops.mcfast)", -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
