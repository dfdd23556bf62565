// Fused CPU Adam step for recon_core.optim.Adam: one pass over a parameter tensor (in blocks of
// 1024 elements) updates the first and second moments and the parameter, instead of torch's
// single-tensor Adam's seven element-wise kernels and two full-size temporaries.
//
// Per element it performs torch's operations in torch's order with torch's roundings (its
// vectorised AVX2/AVX-512 CPU kernels), found by comparing the bits of each operation:
//   m = lerp(m, g, w)              ATen's lerp_vec: fma(w, g - m, m) for |w| < 0.5,
//                                  fma(w - 1, g - m, g) otherwise
//   v = fma((1 - beta2) * g, g, v * beta2)   mul_, then addcmul_ (its value * t1 * t2 + self
//                                  is contracted to a fused multiply-add in torch's build)
//   d = sqrt(v) / bc2_sqrt + eps   sqrt (MKL's, see vml_sqrt), div, add_
//   p = p + (step_size * m) / d    addcdiv_
// with every scalar rounded to the tensor's dtype first, as torch converts a Python scalar.
// Elements are independent, so the result does not depend on the thread count.
// tests/test_optim.py compares it with torch.optim.Adam in float32 and float64, bit for bit.
// Built with -ffp-contract=off (recon_core.cpp_extension.DEFAULT_CFLAGS): the only fused
// multiply-adds are the explicit std::fma calls.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

// torch's sqrt of a contiguous CPU tensor is MKL's vector sqrt (at::vml::vsqrt, in "high accuracy"
// mode, which is not always correctly rounded) where torch is built with MKL, as the x86-64 wheels
// are. Its libtorch_cpu exports vmsSqrt / vmdSqrt: the step calls them when present (weak symbols:
// null on a torch without MKL, then std::sqrt) so that the step is torch's bit for bit.
extern "C" {
void vmsSqrt(int n, const float* a, float* r, long long mode) __attribute__((weak));
void vmdSqrt(int n, const double* a, double* r, long long mode) __attribute__((weak));
}
constexpr long long kVmlMode = 0x2 | 0x140000 | 0x100;  // VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE, as ATen

bool vml_sqrt(const float* a, float* r, int n) {
  if (vmsSqrt == nullptr) return false;
  vmsSqrt(n, a, r, kVmlMode);
  return true;
}
bool vml_sqrt(const double* a, double* r, int n) {
  if (vmdSqrt == nullptr) return false;
  vmdSqrt(n, a, r, kVmlMode);
  return true;
}

constexpr int64_t kBlock = 1024;  // elements per pass: moments, sqrt, update stay in L1

template <typename T>
void adam_range(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, int64_t begin, int64_t end,
                T w, bool small, T beta2, T c2, T bc2_sqrt, T eps, T step_size, bool use_vml) {
  const T coeff = small ? w : w - T(1);
  alignas(64) T root[kBlock];
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t b1 = std::min(end, b0 + kBlock);
    if (small) {
#pragma omp simd
      for (int64_t i = b0; i < b1; ++i) m[i] = std::fma(coeff, g[i] - m[i], m[i]);
    } else {
#pragma omp simd
      for (int64_t i = b0; i < b1; ++i) m[i] = std::fma(coeff, g[i] - m[i], g[i]);
    }
#pragma omp simd
    for (int64_t i = b0; i < b1; ++i) v[i] = std::fma(c2 * g[i], g[i], v[i] * beta2);
    if (!(use_vml && vml_sqrt(v + b0, root, static_cast<int>(b1 - b0)))) {
#pragma omp simd
      for (int64_t i = b0; i < b1; ++i) root[i - b0] = std::sqrt(v[i]);
    }
#pragma omp simd
    for (int64_t i = b0; i < b1; ++i) p[i] = p[i] + (step_size * m[i]) / (root[i - b0] / bc2_sqrt + eps);
  }
}

void check(const at::Tensor& t, const at::Tensor& param, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == param.scalar_type() &&
                  t.numel() == param.numel(),
              "adam_step: ", what, " must be a contiguous CPU tensor of the parameter's dtype and size");
}

}  // namespace

// One Adam step in place on param, exp_avg, exp_avg_sq (contiguous CPU float32/float64 tensors
// of one size). weight = 1 - beta1, c2 = 1 - beta2, bc2_sqrt = sqrt(1 - beta2^step),
// step_size = -lr / (1 - beta1^step): the Python doubles torch's Adam computes. use_vml: take
// MKL's sqrt where libtorch has it (torch's own sqrt); false: the correctly rounded std::sqrt.
void adam_step(at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg, at::Tensor exp_avg_sq, double weight,
               double beta2, double c2, double bc2_sqrt, double eps, double step_size, bool use_vml) {
  TORCH_CHECK(param.device().is_cpu() && param.is_contiguous() &&
                  (param.scalar_type() == at::kFloat || param.scalar_type() == at::kDouble),
              "adam_step: the parameter must be a contiguous CPU float32 or float64 tensor");
  check(grad, param, "grad");
  check(exp_avg, param, "exp_avg");
  check(exp_avg_sq, param, "exp_avg_sq");
  const int64_t n = param.numel();
  const bool small = std::abs(weight) < 0.5;  // ATen's is_lerp_weight_small
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "adam_step", [&] {
    scalar_t* p = param.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
    // the scalars rounded to the dtype as torch does; lerp's weight - 1 in the dtype as lerp_vec
    const auto w = static_cast<scalar_t>(weight);
    const auto b2 = static_cast<scalar_t>(beta2), cc2 = static_cast<scalar_t>(c2);
    const auto bc = static_cast<scalar_t>(bc2_sqrt), e = static_cast<scalar_t>(eps);
    const auto s = static_cast<scalar_t>(step_size);
    at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
      adam_range<scalar_t>(p, g, m, v, begin, end, w, small, b2, cc2, bc, e, s, use_vml);
    });
  });
  // written in place like torch's in-place ops: autograd must see the new versions
  for (const at::Tensor* t : {&param, &exp_avg, &exp_avg_sq}) t->unsafeGetTensorImpl()->bump_version();
}

void register_targets(pybind11::module& m);  // targets_cpu.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon_core fused CPU optimiser steps and compact training targets";
  register_targets(m);
  m.def("adam_step", &adam_step, "one Adam step in place (param, grad, exp_avg, exp_avg_sq, 1 - beta1, beta2, "
        "1 - beta2, sqrt(1 - beta2^step), eps, -lr / (1 - beta1^step))");
}
