// Neural Fourier Filter Banks on the CPU: the forward without gradients (ffb_forward; IDR's sphere
// tracer evaluates the SDF network, FFB included, ~15 000 times a step) and the sine activation with
// its derivative for training (sine_train / sine_grad, at the end).
//
// ffb_forward: same computation as recon_plugins.encoders.ffb.FourierFilterBank.forward for style_modulation
// None, from the grid features g [N, L*F] (the hash grid's own kernel):
//   e_l = sin(2 pi g_l B_l),  h_0 = sin(w0 (W_0 x / bound + b_0)),
//   h_l = sin(w0 (W_l h_{l-1} + b_l)) + e_{l-1},  out = mean_l sin(w1 (U_l h_l + c_l)).
// Points go in blocks of kBlock rows (a block's activations stay in the cache); the matrix products
// are ATen's (MKL); the sines, the Fourier features and the sums are one vectorised pass per layer.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kBlock = 256;

// sin(x) in float, vectorisable: k = round(x / pi), r = x - k pi with pi split in three (Cody-Waite:
// k times each part is exact for |k| < 2^13, so |x| < 2.5e4 keeps |error| ~1e-7), then the Taylor
// series to r^13 on |r| <= pi/2 (truncation < 1e-9), sign (-1)^k. r^2 is floored at 1e-20 (no change
// in float) so the series never forms subnormal products (the CPU's slow path).
struct Reduced {
  float r, r2, sign;  // x = k pi + r; r^2 floored; (-1)^k
};

inline Reduced reduce_pi(float x) {
  const float k = std::floor(x * 0.318309886183790671538f + 0.5f);
  const float r = ((x - k * 3.140625f) - k * 9.67502593994140625e-4f) - k * 1.509957990978376432e-7f;
  const float parity = k - 2.f * std::floor(k * 0.5f);
  const float r2r = r * r;
  return {r, r2r > 1e-20f ? r2r : 1e-20f, 1.f - 2.f * parity};
}

inline float sin_series(const Reduced& q) {
  const float r2 = q.r2;
  return q.sign * (q.r * (1.f + r2 * (-1.f / 6 + r2 * (1.f / 120 + r2 * (-1.f / 5040 + r2 * (1.f / 362880 +
                  r2 * (-1.f / 39916800 + r2 * (1.f / 6227020800.f))))))));
}

// cos(r) to r^14 on |r| <= pi/2 (truncation < 1e-10)
inline float cos_series(const Reduced& q) {
  const float r2 = q.r2;
  return q.sign * (1.f + r2 * (-1.f / 2 + r2 * (1.f / 24 + r2 * (-1.f / 720 + r2 * (1.f / 40320 + r2 * (-1.f / 3628800 +
                   r2 * (1.f / 479001600 + r2 * (-1.f / 87178291200.f))))))));
}

inline float fast_sin(float x) { return sin_series(reduce_pi(x)); }

void check_float_cpu(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(!t.is_cuda() && t.scalar_type() == torch::kFloat32, what, " must be a float32 CPU tensor");
}

}  // namespace

// x [N, D]; g [N, L*F]; fourier_maps [L, F, H]; backbone: L + 1 weights ([H, D], then [H, H]) and
// biases; heads: L weights [O, H] and biases. Returns [N, O].
torch::Tensor ffb_forward(torch::Tensor x, torch::Tensor g, torch::Tensor fourier_maps, std::vector<torch::Tensor> backbone_w,
                          std::vector<torch::Tensor> backbone_b, std::vector<torch::Tensor> heads_w,
                          std::vector<torch::Tensor> heads_b, double w0, double w1, double bound) {
  check_float_cpu(x, "x");
  check_float_cpu(g, "g");
  check_float_cpu(fourier_maps, "fourier_maps");
  TORCH_CHECK(fourier_maps.dim() == 3, "fourier_maps must be [L, F, H]");
  const int64_t L = fourier_maps.size(0), F = fourier_maps.size(1), H = fourier_maps.size(2);
  TORCH_CHECK(x.dim() == 2 && g.dim() == 2 && g.size(0) == x.size(0) && g.size(1) == L * F, "x [N, D], g [N, L*F] expected");
  TORCH_CHECK(static_cast<int64_t>(backbone_w.size()) == L + 1 && backbone_b.size() == backbone_w.size(), "L + 1 backbone layers");
  TORCH_CHECK(static_cast<int64_t>(heads_w.size()) == L && heads_b.size() == heads_w.size(), "L output layers");
  x = x.contiguous();
  g = g.contiguous();
  fourier_maps = fourier_maps.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  std::vector<torch::Tensor> bw(L + 1), bb(L + 1), hw(L), hb(L);
  for (int64_t i = 0; i <= L; ++i) {
    check_float_cpu(backbone_w[i], "backbone weight");
    TORCH_CHECK(backbone_w[i].size(0) == H && backbone_w[i].size(1) == (i == 0 ? D : H), "backbone layer ", i, " shape");
    bw[i] = backbone_w[i].contiguous().t();  // transposed views: MKL reads them as they are (no copy per call)
    bb[i] = backbone_b[i].reshape({-1}).contiguous();
  }
  const int64_t O = heads_w[0].size(0);
  for (int64_t i = 0; i < L; ++i) {
    check_float_cpu(heads_w[i], "head weight");
    TORCH_CHECK(heads_w[i].size(0) == O && heads_w[i].size(1) == H, "output layer ", i, " shape");
    hw[i] = heads_w[i].contiguous().t();
    hb[i] = heads_b[i].reshape({-1}).contiguous();
  }
  auto out = torch::zeros({N, O}, x.options());
  auto xs = torch::empty({kBlock, D}, x.options());
  auto pre = torch::empty({kBlock, H}, x.options());
  auto h = torch::empty({kBlock, H}, x.options());
  auto y = torch::empty({kBlock, O}, x.options());
  const float fw0 = static_cast<float>(w0), fw1 = static_cast<float>(w1), fbound = static_cast<float>(bound);
  const float two_pi = static_cast<float>(2 * M_PI);
  const float levels = static_cast<float>(L);
  std::vector<float> acc_buf(H);
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const float* bm = fourier_maps.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t s = 0; s < N; s += kBlock) {
    const int64_t b = std::min(kBlock, N - s);
    float* xsp = xs.data_ptr<float>();
    for (int64_t i = 0; i < b * D; ++i) xsp[i] = xp[s * D + i] / fbound;
    auto pre_b = pre.narrow(0, 0, b), h_b = h.narrow(0, 0, b), y_b = y.narrow(0, 0, b);
    at::addmm_out(h_b, bb[0], xs.narrow(0, 0, b), bw[0]);
    float* hp = h.data_ptr<float>();
#pragma omp simd
    for (int64_t i = 0; i < b * H; ++i) hp[i] = fast_sin(fw0 * hp[i]);
    float* pp = pre.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    for (int64_t l = 0; l < L; ++l) {
      at::addmm_out(pre_b, bb[l + 1], h_b, bw[l + 1]);
      const float* bl = bm + l * F * H;
      for (int64_t r = 0; r < b; ++r) {
        const float* gr = gp + (s + r) * L * F + l * F;
        float* hr = hp + r * H;
        const float* prr = pp + r * H;
        float* acc = acc_buf.data();  // g_l B_l of this point, summed over f in order (as the bmm)
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) acc[k] = gr[0] * bl[k];
        for (int64_t f = 1; f < F; ++f) {
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) acc[k] += gr[f] * bl[f * H + k];
        }
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) hr[k] = fast_sin(fw0 * prr[k]) + fast_sin(two_pi * acc[k]);
      }
      at::addmm_out(y_b, hb[l], h_b, hw[l]);
      float* ob = op + s * O;
#pragma omp simd
      for (int64_t i = 0; i < b * O; ++i) ob[i] += fast_sin(fw1 * yp[i]);
    }
    float* ob = op + s * O;
    for (int64_t i = 0; i < b * O; ++i) ob[i] /= levels;
  }
  return out;
}

// sin(w z) and its derivative w cos(w z) for z[lo:hi]: the float series above (one range reduction
// for both; vectorised), std::sin / std::cos in float64 (gradcheck).
inline void sine_values(const float* z, float* y, float* d, double w, int64_t lo, int64_t hi) {
  const float fw = static_cast<float>(w);
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    const Reduced q = reduce_pi(fw * z[i]);
    y[i] = sin_series(q);
    d[i] = fw * cos_series(q);
  }
}

inline void sine_values(const double* z, double* y, double* d, double w, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    y[i] = std::sin(w * z[i]);
    d[i] = w * std::cos(w * z[i]);
  }
}

// sine_train: FFB's sine activations in training (ffb._SineKernels, through recon_core.activations).
// z -> (y, d): y = sin(w z), d = dy/dz = w cos(w z).
std::vector<torch::Tensor> sine_train(torch::Tensor z, double w) {
  TORCH_CHECK(!z.is_cuda() && (z.scalar_type() == torch::kFloat32 || z.scalar_type() == torch::kFloat64),
              "z must be a float32 or float64 CPU tensor");
  z = z.contiguous();
  auto y = torch::empty_like(z), d = torch::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "sine_train", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* dp = d.data_ptr<scalar_t>();
    at::parallel_for(0, z.numel(), 16384, [&](int64_t lo, int64_t hi) { sine_values(zp, yp, dp, w, lo, hi); });
  });
  return {y, d};
}

template <typename T>
void sine_grad_loop(const T* gy, const T* gd, const T* y, const T* d, T* o, double w, int64_t n) {
  const T w2 = static_cast<T>(w * w);
  at::parallel_for(0, n, 16384, [&](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) o[i] = gy[i] * d[i] - gd[i] * w2 * y[i];
  });
}

// gz = gy * d - gd * w^2 * y: the backward of sine_train's (y, d) when both outputs have gradients.
torch::Tensor sine_grad(torch::Tensor gy, torch::Tensor gd, torch::Tensor y, torch::Tensor d, double w) {
  TORCH_CHECK(gy.sizes() == d.sizes() && gd.sizes() == d.sizes() && y.sizes() == d.sizes() &&
                  gy.scalar_type() == d.scalar_type() && gd.scalar_type() == d.scalar_type() &&
                  y.scalar_type() == d.scalar_type() && !d.is_cuda(), "gy, gd, y, d: same shape and dtype, CPU");
  gy = gy.contiguous();
  gd = gd.contiguous();
  y = y.contiguous();
  d = d.contiguous();
  auto gz = torch::empty_like(d);
  TORCH_CHECK(d.scalar_type() == torch::kFloat32 || d.scalar_type() == torch::kFloat64, "sine_grad: float32 or float64");
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "sine_grad", [&] {
    sine_grad_loop(gy.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
                   gz.data_ptr<scalar_t>(), w, d.numel());
  });
  return gz;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sine_train", &sine_train, "sin(w z) and its derivative w cos(w z) in one pass (CPU)");
  m.def("sine_grad", &sine_grad, "gy * d - gd * w^2 * y (CPU)");
  m.def("ffb_forward", &ffb_forward, "Fourier filter bank forward without gradients (CPU), from the grid features");
}
