// Compiled CPU photometric loss of 3DGS, (1 - w) L1 + w (1 - SSIM), forward and hand-written
// backward, for recon_core.imageops.photometric_loss (kernel="cpp").
//
// SSIM is recon_core.imageops.ssim's: Wang et al. 2004 with a separable Gaussian window (the
// caller passes the 1-D window, gaussian_window(11, 1.5)), C1 = 0.01^2, C2 = 0.03^2, 'valid'
// filtering (no padding: the map covers the (H - K + 1) x (W - K + 1) window positions that lie
// inside the image), averaged over those positions, every channel and image.
//
// Images are (N, H, W, C) contiguous, channels interleaved, so one image row is W*C contiguous
// values and both filter passes run along contiguous memory:
//   horizontal  h[r][x*C + c] = sum_k g[k] img[r][(x + k)*C + c]      (N*H rows of Wo*C)
//   vertical    m[y][j]       = sum_k g[k] h[y + k][j]                (Ho rows)
// for the five maps mu_x, mu_y, E[x^2], E[y^2], E[xy]. Per window position, with
// a1 = 2 mx my + C1, a2 = mx^2 + my^2 + C1, b1 = 2 sxy + C2, b2 = sxx + syy + C2,
// S = a1/a2 * b1/b2 and its partial derivatives (the maps the backward spreads back):
//   dS/dmx = 2 my (b1 - a1) / (a2 b2) + 2 mx S (1/b2 - 1/a2),
//   dS/dE[x^2] = -S / b2,   dS/dE[xy] = 2 a1 / (a2 b2)
// (target y is a constant). The backward applies the transposed filters (a 'full' correlation
// with the flipped window, vertical then horizontal) to these maps and adds
//   dL/dx = gL1 sign(x - y) + gS (T(dS/dmx) + 2 x T(dS/dE[x^2]) + y T(dS/dE[xy])).
//
// Deterministic for any thread count: every output row is computed by one thread with a fixed
// order of operations, and the sums (L1, SSIM) are kept per row in double precision and added in
// row order at the end. Arithmetic is in the images' dtype (float32 or float64), as the PyTorch
// reference; built with -ffp-contract=off (no fused multiply-adds). tests/test_loss_cpu.py holds
// the parity tests against the PyTorch loss.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

int threads() { return std::max(1, at::get_num_threads()); }

template <typename T>
T sign(T v) {
  return static_cast<T>((v > T(0)) - (v < T(0)));
}

struct Dims {
  int64_t n, h, w, c, k, ho, wo;
  int64_t row() const { return w * c; }   // values in an image row
  int64_t orow() const { return wo * c; } // values in a row of the SSIM map
};

Dims dims_of(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& window) {
  TORCH_CHECK(pred.dim() == 4, "l1_dssim: images must be (N, H, W, C)");
  TORCH_CHECK(pred.sizes() == target.sizes(), "l1_dssim: pred and target differ in shape");
  TORCH_CHECK(pred.device().is_cpu() && target.device().is_cpu() && window.device().is_cpu(),
              "l1_dssim: CPU tensors only");
  TORCH_CHECK(pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble,
              "l1_dssim: float32 or float64 images only");
  TORCH_CHECK(target.scalar_type() == pred.scalar_type() && window.scalar_type() == pred.scalar_type(),
              "l1_dssim: pred, target and window must share one dtype");
  TORCH_CHECK(pred.is_contiguous() && target.is_contiguous() && window.is_contiguous() && window.dim() == 1,
              "l1_dssim: contiguous images and a 1-D window");
  Dims d{pred.size(0), pred.size(1), pred.size(2), pred.size(3), window.size(0), 0, 0};
  TORCH_CHECK(d.k >= 1 && d.h >= d.k && d.w >= d.k, "l1_dssim: the image is smaller than the window");
  d.ho = d.h - d.k + 1;
  d.wo = d.w - d.k + 1;
  return d;
}

// S of one row of window positions from its five blurred maps and, with kGrad, the derivative
// maps dS/dmx, dS/dE[x^2], dS/dE[xy].
template <typename T, bool kGrad>
void ssim_row(const T* mx, const T* my, const T* exx, const T* eyy, const T* exy, int64_t n, T c1, T c2, T* sv,
              T* dm, T* dxx, T* dxy) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T ux = mx[j], uy = my[j];
    const T sxx = exx[j] - ux * ux, syy = eyy[j] - uy * uy, sxy = exy[j] - ux * uy;
    const T a1 = T(2) * ux * uy + c1, a2 = ux * ux + uy * uy + c1;
    const T b1 = T(2) * sxy + c2, b2 = sxx + syy + c2;
    const T s = a1 / a2 * (b1 / b2);
    sv[j] = s;
    if constexpr (kGrad) {
      const T inv = T(1) / (a2 * b2);
      dm[j] = T(2) * uy * (b1 - a1) * inv + T(2) * ux * s * (T(1) / b2 - T(1) / a2);
      dxx[j] = -s / b2;
      dxy[j] = T(2) * a1 * inv;
    }
  }
}

// Forward. Writes per-row sums of |x - y| (N*H rows) and of S (N*Ho rows) and, when coef is not
// null, the three derivative maps [3][N*Ho][Wo*C].
template <typename T>
void forward_impl(const T* x, const T* y, const T* g, const Dims& d, T c1, T c2, double* l1_rows, double* s_rows,
                  T* coef) {
  const int64_t K = d.k, C = d.c, row = d.row(), orow = d.orow(), rows = d.n * d.h, orows = d.n * d.ho;
  // horizontal pass: five maps, N*H rows each
  std::vector<T> hbuf(static_cast<size_t>(5 * rows * orow));
  T* hb = hbuf.data();
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads())
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * row;
    const T* yr = y + r * row;
    T* hx = hb + (0 * rows + r) * orow;
    T* hy = hb + (1 * rows + r) * orow;
    T* hxx = hb + (2 * rows + r) * orow;
    T* hyy = hb + (3 * rows + r) * orow;
    T* hxy = hb + (4 * rows + r) * orow;
    double l1 = 0.0;
    for (int64_t j = 0; j < row; ++j) l1 += static_cast<double>(std::abs(xr[j] - yr[j]));
    l1_rows[r] = l1;
    // tap by tap over the whole row (k = 0..K-1 in order), vectorised along the row
    for (int64_t k = 0; k < K; ++k) {
      const T gk = g[k];
      const T* xa = xr + k * C;
      const T* ya = yr + k * C;
      if (k == 0) {
#pragma omp simd
        for (int64_t j = 0; j < orow; ++j) {
          const T a = xa[j], b = ya[j];
          hx[j] = gk * a;
          hy[j] = gk * b;
          hxx[j] = gk * (a * a);
          hyy[j] = gk * (b * b);
          hxy[j] = gk * (a * b);
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < orow; ++j) {
          const T a = xa[j], b = ya[j];
          hx[j] += gk * a;
          hy[j] += gk * b;
          hxx[j] += gk * (a * a);
          hyy[j] += gk * (b * b);
          hxy[j] += gk * (a * b);
        }
      }
    }
  }
  // vertical pass and the SSIM map, one output row at a time
#pragma omp parallel num_threads(threads())
  {
    std::vector<T> acc(static_cast<size_t>(6 * orow));
    T* mx = acc.data();
    T* my = mx + orow;
    T* exx = my + orow;
    T* eyy = exx + orow;
    T* exy = eyy + orow;
    T* sv = exy + orow;
#pragma omp for schedule(dynamic, 4)
    for (int64_t o = 0; o < orows; ++o) {
      const int64_t img = o / d.ho, yo = o % d.ho;
      const int64_t r0 = img * d.h + yo;  // first input row of the window
      for (int64_t k = 0; k < K; ++k) {
        const T gk = g[k];
        const T* hx = hb + (0 * rows + r0 + k) * orow;
        const T* hy = hb + (1 * rows + r0 + k) * orow;
        const T* hxx = hb + (2 * rows + r0 + k) * orow;
        const T* hyy = hb + (3 * rows + r0 + k) * orow;
        const T* hxy = hb + (4 * rows + r0 + k) * orow;
        if (k == 0) {
#pragma omp simd
          for (int64_t j = 0; j < orow; ++j) {
            mx[j] = gk * hx[j];
            my[j] = gk * hy[j];
            exx[j] = gk * hxx[j];
            eyy[j] = gk * hyy[j];
            exy[j] = gk * hxy[j];
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < orow; ++j) {
            mx[j] += gk * hx[j];
            my[j] += gk * hy[j];
            exx[j] += gk * hxx[j];
            eyy[j] += gk * hyy[j];
            exy[j] += gk * hxy[j];
          }
        }
      }
      if (coef != nullptr) {
        ssim_row<T, true>(mx, my, exx, eyy, exy, orow, c1, c2, sv, coef + (0 * orows + o) * orow,
                          coef + (1 * orows + o) * orow, coef + (2 * orows + o) * orow);
      } else {
        ssim_row<T, false>(mx, my, exx, eyy, exy, orow, c1, c2, sv, nullptr, nullptr, nullptr);
      }
      double ssum = 0.0;
      for (int64_t j = 0; j < orow; ++j) ssum += static_cast<double>(sv[j]);
      s_rows[o] = ssum;
    }
  }
}

// Backward: dx = gl1 sign(x - y) + gs (T(dm) + 2 x T(dxx) + y T(dxy)), T the transposed filter.
template <typename T>
void backward_impl(const T* x, const T* y, const T* coef, const T* g, const Dims& d, T gl1, T gs, T* dx) {
  const int64_t K = d.k, C = d.c, row = d.row(), orow = d.orow(), rows = d.n * d.h, orows = d.n * d.ho;
  const int64_t pad = (K - 1) * C;  // zeros either side of a transposed-vertical row
#pragma omp parallel num_threads(threads())
  {
    std::vector<T> buf(static_cast<size_t>(3 * (orow + 2 * pad)), T(0));
    T* u[3] = {buf.data() + pad, buf.data() + (orow + 2 * pad) + pad, buf.data() + 2 * (orow + 2 * pad) + pad};
    std::vector<T> vbuf(static_cast<size_t>(3 * row));
    T* v[3] = {vbuf.data(), vbuf.data() + row, vbuf.data() + 2 * row};
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t img = r / d.h, yi = r % d.h;
      // transposed vertical pass: u[y][j] = sum over k with 0 <= y - k < Ho of g[k] map[y - k][j]
      const int64_t k0 = std::max<int64_t>(0, yi - d.ho + 1), k1 = std::min<int64_t>(K - 1, yi);
      const T* src[3];
      for (int m = 0; m < 3; ++m) src[m] = coef + (static_cast<int64_t>(m) * orows + img * d.ho) * orow;  // image's map
      for (int m = 0; m < 3; ++m) {
        T* um = u[m];
        for (int64_t k = k0; k <= k1; ++k) {
          const T gk = g[k];
          const T* sr = src[m] + (yi - k) * orow;
          if (k == k0) {
#pragma omp simd
            for (int64_t j = 0; j < orow; ++j) um[j] = gk * sr[j];
          } else {
#pragma omp simd
            for (int64_t j = 0; j < orow; ++j) um[j] += gk * sr[j];
          }
        }
      }
      // transposed horizontal pass: v[i] = sum_k g[k] u[i - k*C] (zeros outside the map)
      for (int m = 0; m < 3; ++m) {
        const T* um = u[m];
        T* vm = v[m];
        for (int64_t k = 0; k < K; ++k) {
          const T gk = g[k];
          const T* sr = um - k * C;
          if (k == 0) {
#pragma omp simd
            for (int64_t i = 0; i < row; ++i) vm[i] = gk * sr[i];
          } else {
#pragma omp simd
            for (int64_t i = 0; i < row; ++i) vm[i] += gk * sr[i];
          }
        }
      }
      const T* xr = x + r * row;
      const T* yr = y + r * row;
      T* out = dx + r * row;
#pragma omp simd
      for (int64_t i = 0; i < row; ++i) {
        const T a = xr[i], b = yr[i];
        out[i] = gl1 * sign(a - b) + gs * (v[0][i] + T(2) * a * v[1][i] + b * v[2][i]);
      }
    }
  }
}

}  // namespace

// Loss (a 0-dim tensor of the images' dtype: (1 - w) mean|x - y| + w (1 - mean SSIM)), its two
// means (float64 [2]: L1, SSIM), and the derivative maps [3, N*Ho, Wo*C] for the backward
// (empty unless with_grad).
std::vector<at::Tensor> l1_dssim_forward(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& window,
                                         double ssim_weight, double c1, double c2, bool with_grad) {
  const Dims d = dims_of(pred, target, window);
  at::Tensor l1_rows = at::empty({d.n * d.h}, pred.options().dtype(at::kDouble));
  at::Tensor s_rows = at::empty({d.n * d.ho}, pred.options().dtype(at::kDouble));
  at::Tensor coef = with_grad ? at::empty({3, d.n * d.ho, d.orow()}, pred.options()) : at::empty({0}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "l1_dssim_forward", [&] {
    forward_impl<scalar_t>(pred.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), window.data_ptr<scalar_t>(), d,
                           static_cast<scalar_t>(c1), static_cast<scalar_t>(c2), l1_rows.data_ptr<double>(),
                           s_rows.data_ptr<double>(), with_grad ? coef.data_ptr<scalar_t>() : nullptr);
  });
  // the row sums added in row order: the same for any thread count
  const double* lr = l1_rows.data_ptr<double>();
  const double* sr = s_rows.data_ptr<double>();
  double l1 = 0.0, s = 0.0;
  for (int64_t i = 0; i < d.n * d.h; ++i) l1 += lr[i];
  for (int64_t i = 0; i < d.n * d.ho; ++i) s += sr[i];
  l1 /= static_cast<double>(pred.numel());
  s /= static_cast<double>(d.n * d.ho * d.orow());
  at::Tensor means = at::empty({2}, pred.options().dtype(at::kDouble));
  means.data_ptr<double>()[0] = l1;
  means.data_ptr<double>()[1] = s;
  at::Tensor loss = at::scalar_tensor((1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - s), pred.options());
  return {loss, means, coef};
}

// Gradient of the loss wrt pred, times grad_loss (the upstream gradient of the 0-dim loss).
at::Tensor l1_dssim_backward(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& window,
                             const at::Tensor& coef, double ssim_weight, double grad_loss) {
  const Dims d = dims_of(pred, target, window);
  TORCH_CHECK(coef.scalar_type() == pred.scalar_type() && coef.is_contiguous() &&
                  coef.numel() == 3 * d.n * d.ho * d.orow(),
              "l1_dssim_backward: coef must be the forward's derivative maps");
  at::Tensor dx = at::empty_like(pred);
  const double gl1 = grad_loss * (1.0 - ssim_weight) / static_cast<double>(pred.numel());
  const double gs = -grad_loss * ssim_weight / static_cast<double>(d.n * d.ho * d.orow());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "l1_dssim_backward", [&] {
    backward_impl<scalar_t>(pred.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(),
                            window.data_ptr<scalar_t>(), d, static_cast<scalar_t>(gl1), static_cast<scalar_t>(gs),
                            dx.data_ptr<scalar_t>());
  });
  return dx;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon_core compiled CPU photometric loss: (1 - w) L1 + w (1 - SSIM), forward and backward";
  m.def("l1_dssim_forward", &l1_dssim_forward,
        "(pred, target, window, ssim_weight, c1, c2, with_grad) -> [loss, means (L1, SSIM) float64, derivative maps]");
  m.def("l1_dssim_backward", &l1_dssim_backward,
        "(pred, target, window, derivative maps, ssim_weight, grad_loss) -> grad wrt pred");
}
