// Compact training targets for recon_core.optim.TargetCache: an 8-bit RGB(A) image re-composited
// into View.image_on's float32 target in one pass, instead of about fifteen numpy/torch
// element-wise passes (recon_core.scene.CompactImage.image, ~1.2 ms at 200 x 200 on a loaded core).
//
// Per pixel and channel, the operations of CompactImage.image in its order, all in float32:
//   r = p / 255, a = alpha / 255                  (numpy: astype(float32) / 255.0)
//   x = r * a + loaded_on * (1 - a)              (the loaders' composite)
//   y = clamp(x + (background - current) * (1 - a), 0, 1)   (View.image_on's re-composite)
// Built with -ffp-contract=off (recon_core.cpp_extension.DEFAULT_CFLAGS), so no fused
// multiply-add changes a rounding. TargetCache keeps a compact target only after comparing its
// result with View.image_on's bit for bit (tests/test_optim.py).

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

namespace {

torch::Tensor composite8_target(const torch::Tensor& pixels, const torch::Tensor& loaded_on, const torch::Tensor& current,
                                const torch::Tensor& background) {
  TORCH_CHECK(pixels.device().is_cpu() && pixels.is_contiguous() && pixels.scalar_type() == torch::kUInt8 && pixels.dim() == 3 &&
                  (pixels.size(2) == 3 || pixels.size(2) == 4),
              "pixels must be a contiguous CPU uint8 (H, W, 3 | 4) tensor");
  const bool has_alpha = pixels.size(2) == 4;
  for (const auto* t : {&loaded_on, &current, &background}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == torch::kFloat32 && t->numel() == 3,
                "colours must be contiguous CPU float32 tensors of 3 values");
  }
  const int64_t h = pixels.size(0), w = pixels.size(1), c = pixels.size(2);
  auto out = torch::empty({h, w, 3}, pixels.options().dtype(torch::kFloat32));
  const uint8_t* p = pixels.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  const float* bg0 = loaded_on.data_ptr<float>();
  const float* cur = current.data_ptr<float>();
  const float* bg = background.data_ptr<float>();
  const float shift[3] = {bg[0] - cur[0], bg[1] - cur[1], bg[2] - cur[2]};
  for (int64_t i = 0; i < h * w; ++i, p += c, o += 3) {
    if (!has_alpha) {
      for (int k = 0; k < 3; ++k) o[k] = static_cast<float>(p[k]) / 255.0f;
      continue;
    }
    const float a = static_cast<float>(p[3]) / 255.0f;
    const float rest = 1.0f - a;
    for (int k = 0; k < 3; ++k) {
      const float r = static_cast<float>(p[k]) / 255.0f;
      const float x = r * a + bg0[k] * rest;
      const float y = x + shift[k] * rest;
      o[k] = std::min(std::max(y, 0.0f), 1.0f);
    }
  }
  return out;
}

}  // namespace

void register_targets(pybind11::module& m) {
  m.def("composite8_target", &composite8_target,
        "8-bit RGB(A) pixels re-composited into View.image_on's float32 target (pixels, loaded_on, current, background)");
}
