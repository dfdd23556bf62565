// Multiresolution hash-grid encoding on the CPU: forward and first-order backward.
//
// Same definition as recon_plugins.encoders.hashgrid.hash_grid_encode (the PyTorch twin, which
// follows tiny-cuda-nn's HashGrid): per level l, p = u * scale_l + 0.5, trilinear (multilinear)
// blend of the 2^D cell corners v = floor(p) + corner, row index dense (sum v_d res_l^d) or
// hashed (xor of v_d * prime_d in uint32), both modulo the level size, plus the level offset.
// Only the first n_active levels are evaluated; the others output zeros (coarse-to-fine).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int kMaxDim = 7;
constexpr uint32_t kPrimes[kMaxDim] = {1u, 2654435761u, 805459861u, 3674653429u, 2097192037u, 1434869437u, 2165219737u};

struct Level {
  float scale;
  int64_t res, size, offset;
  bool dense;
  bool pow2;  // size is a power of two (< 2^32): h % size == h & (size - 1)
};

std::vector<Level> make_levels(const std::vector<double>& scales, const std::vector<int64_t>& res,
                               const std::vector<int64_t>& sizes, const std::vector<int64_t>& offsets,
                               const std::vector<bool>& dense) {
  TORCH_CHECK(scales.size() == res.size() && res.size() == sizes.size() && sizes.size() == offsets.size() &&
                  offsets.size() == dense.size(),
              "hash grid layout lists must have one entry per level");
  std::vector<Level> out(scales.size());
  for (size_t l = 0; l < scales.size(); ++l)
    out[l] = {static_cast<float>(scales[l]), res[l], sizes[l], offsets[l], dense[l],
              sizes[l] > 0 && sizes[l] <= (int64_t{1} << 32) && (sizes[l] & (sizes[l] - 1)) == 0};
  return out;
}

inline int64_t floor_mod(int64_t a, int64_t m) {
  int64_t r = a % m;
  return r < 0 ? r + m : r;
}

// Corner rows and weights of one point at one level (C = 2^D corners).
// dw[c * D + d] = d weight_c / d frac_d.
struct Cell {
  int64_t row[1 << kMaxDim];
  float w[1 << kMaxDim];
  float dw[(1 << kMaxDim) * kMaxDim];
};

inline void cell(const float* u, int D, const Level& lv, bool want_dw, Cell& out) {
  float frac[kMaxDim];
  int64_t base[kMaxDim];
  for (int d = 0; d < D; ++d) {
    const float p = u[d] * lv.scale + 0.5f;
    const float b = std::floor(p);
    base[d] = static_cast<int64_t>(b);
    frac[d] = p - b;
  }
  const int C = 1 << D;
  for (int c = 0; c < C; ++c) {
    int64_t dense_idx = 0, stride = 1;
    uint32_t h = 0;
    float w = 1.f;
    for (int d = 0; d < D; ++d) {
      const int bit = (c >> d) & 1;
      const int64_t v = base[d] + bit;
      dense_idx += v * stride;
      stride *= lv.res;
      h ^= static_cast<uint32_t>(v) * kPrimes[d];
      w *= bit ? frac[d] : 1.f - frac[d];
    }
    // (a 64-bit division per corner was a measurable part of the lookup: skip it where it is a no-op
    // or a mask; same rows)
    const int64_t idx = lv.dense ? (dense_idx >= 0 && dense_idx < lv.size ? dense_idx : floor_mod(dense_idx, lv.size))
                                 : (lv.pow2 ? static_cast<int64_t>(h & static_cast<uint32_t>(lv.size - 1))
                                            : static_cast<int64_t>(h) % lv.size);
    out.row[c] = idx + lv.offset;
    out.w[c] = w;
    if (want_dw) {
      for (int d = 0; d < D; ++d) {
        float g = ((c >> d) & 1) ? 1.f : -1.f;
        for (int e = 0; e < D; ++e)
          if (e != d) g *= ((c >> e) & 1) ? frac[e] : 1.f - frac[e];
        out.dw[c * D + d] = g;
      }
    }
  }
}

void check_inputs(const torch::Tensor& u, const torch::Tensor& table, size_t n_levels) {
  TORCH_CHECK(u.dim() == 2 && u.size(1) >= 1 && u.size(1) <= kMaxDim, "u must be [N, D] with 1 <= D <= 7");
  TORCH_CHECK(table.dim() == 2, "table must be [R, F]");
  TORCH_CHECK(u.scalar_type() == torch::kFloat32 && table.scalar_type() == torch::kFloat32, "float32 tensors expected");
  TORCH_CHECK(!u.is_cuda() && !table.is_cuda(), "CPU tensors expected");
  TORCH_CHECK(n_levels >= 1, "at least one level");
}

int n_threads() { return std::max(1, at::get_num_threads()); }

// Table-gradient accumulation: rows are shared between points, so atomic when several threads write.
inline void scatter_add(float* dst, float v, int threads) {
  if (threads > 1) {
#pragma omp atomic
    *dst += v;
  } else {
    *dst += v;
  }
}

}  // namespace

torch::Tensor hashgrid_forward(torch::Tensor u, torch::Tensor table, std::vector<double> scales, std::vector<int64_t> res,
                               std::vector<int64_t> sizes, std::vector<int64_t> offsets, std::vector<bool> dense,
                               int64_t n_active) {
  const auto levels = make_levels(scales, res, sizes, offsets, dense);
  check_inputs(u, table, levels.size());
  u = u.contiguous();
  table = table.contiguous();
  const int64_t N = u.size(0), L = static_cast<int64_t>(levels.size()), F = table.size(1);
  const int D = static_cast<int>(u.size(1));
  const int64_t A = std::max<int64_t>(0, std::min<int64_t>(n_active, L));
  auto out = torch::zeros({N, L * F}, u.options());
  const float* up = u.data_ptr<float>();
  const float* tp = table.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int C = 1 << D;
  // Level by level over blocks of points: one level's rows (2^T x F floats, 256 KB at the CPU
  // sizes) stay in the cache while a block is looked up, instead of all levels' per point.
  constexpr int64_t kPoints = 2048;
  const int64_t n_blocks = (N + kPoints - 1) / kPoints;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads())
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    Cell cl;
    const int64_t end = std::min(N, (blk + 1) * kPoints);
    for (int64_t l = 0; l < A; ++l) {
      for (int64_t i = blk * kPoints; i < end; ++i) {
        cell(up + i * D, D, levels[l], false, cl);
        float* o = op + i * L * F + l * F;
        for (int c = 0; c < C; ++c) {
          const float* t = tp + cl.row[c] * F;
          for (int64_t f = 0; f < F; ++f) o[f] += cl.w[c] * t[f];
        }
      }
    }
  }
  return out;
}

// grad_out [N, L*F] -> (grad_u [N, D] or empty, grad_table [R, F] or empty).
std::vector<torch::Tensor> hashgrid_backward(torch::Tensor grad_out, torch::Tensor u, torch::Tensor table,
                                             std::vector<double> scales, std::vector<int64_t> res,
                                             std::vector<int64_t> sizes, std::vector<int64_t> offsets,
                                             std::vector<bool> dense, int64_t n_active, bool need_u,
                                             bool need_table) {
  const auto levels = make_levels(scales, res, sizes, offsets, dense);
  check_inputs(u, table, levels.size());
  u = u.contiguous();
  table = table.contiguous();
  grad_out = grad_out.contiguous().to(torch::kFloat32);
  const int64_t N = u.size(0), L = static_cast<int64_t>(levels.size()), F = table.size(1);
  TORCH_CHECK(grad_out.size(0) == N && grad_out.size(1) == L * F, "grad_out must be [N, L*F]");
  const int D = static_cast<int>(u.size(1));
  const int64_t A = std::max<int64_t>(0, std::min<int64_t>(n_active, L));
  auto grad_u = need_u ? torch::zeros({N, D}, u.options()) : torch::Tensor();
  auto grad_table = need_table ? torch::zeros_like(table) : torch::Tensor();
  const float* up = u.data_ptr<float>();
  const float* tp = table.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  float* gu = need_u ? grad_u.data_ptr<float>() : nullptr;
  float* gt = need_table ? grad_table.data_ptr<float>() : nullptr;
  const int C = 1 << D;
  const int threads = n_threads();
#pragma omp parallel for schedule(dynamic, 256) num_threads(threads)
  for (int64_t i = 0; i < N; ++i) {
    Cell cl;
    for (int64_t l = 0; l < A; ++l) {
      const Level& lv = levels[l];
      cell(up + i * D, D, lv, need_u, cl);
      const float* g = gp + i * L * F + l * F;
      for (int c = 0; c < C; ++c) {
        if (need_table) {
          float* dst = gt + cl.row[c] * F;
          for (int64_t f = 0; f < F; ++f) scatter_add(dst + f, cl.w[c] * g[f], threads);
        }
        if (need_u) {
          const float* t = tp + cl.row[c] * F;
          float dot = 0.f;
          for (int64_t f = 0; f < F; ++f) dot += t[f] * g[f];
          for (int d = 0; d < D; ++d) gu[i * D + d] += lv.scale * cl.dw[c * D + d] * dot;
        }
      }
    }
  }
  return {grad_u, grad_table};
}

// Second derivatives (IDR's eikonal loss and normals differentiate grad_u). With g = grad_out and
// G = gg_u, the first-order grad_u[i, d] = sum_l s_l sum_c dw_c,d (T_c . g_l) is differentiated:
//   d grad_out[i, l, f] = s_l sum_c q_c T_c[f],   d table[row_c, f] += s_l q_c g_l[f],   q_c = sum_d dw_c,d G_d
//   d u[i, e] = s_l^2 sum_c (T_c . g_l) sum_{d != e} d2w_c,de G_d   (the blend is linear in each frac_d).
std::vector<torch::Tensor> hashgrid_double_backward(torch::Tensor gg_u, torch::Tensor grad_out, torch::Tensor u,
                                                    torch::Tensor table, std::vector<double> scales,
                                                    std::vector<int64_t> res, std::vector<int64_t> sizes,
                                                    std::vector<int64_t> offsets, std::vector<bool> dense,
                                                    int64_t n_active, bool need_grad_out, bool need_u, bool need_table) {
  const auto levels = make_levels(scales, res, sizes, offsets, dense);
  check_inputs(u, table, levels.size());
  u = u.contiguous();
  table = table.contiguous();
  grad_out = grad_out.contiguous().to(torch::kFloat32);
  gg_u = gg_u.contiguous().to(torch::kFloat32);
  const int64_t N = u.size(0), L = static_cast<int64_t>(levels.size()), F = table.size(1);
  const int D = static_cast<int>(u.size(1));
  TORCH_CHECK(grad_out.size(0) == N && grad_out.size(1) == L * F, "grad_out must be [N, L*F]");
  TORCH_CHECK(gg_u.size(0) == N && gg_u.size(1) == D, "gg_u must be [N, D]");
  const int64_t A = std::max<int64_t>(0, std::min<int64_t>(n_active, L));
  auto d_go = need_grad_out ? torch::zeros({N, L * F}, u.options()) : torch::Tensor();
  auto d_u = need_u ? torch::zeros({N, D}, u.options()) : torch::Tensor();
  auto d_t = need_table ? torch::zeros_like(table) : torch::Tensor();
  const float* up = u.data_ptr<float>();
  const float* tp = table.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  const float* Gp = gg_u.data_ptr<float>();
  float* dgo = need_grad_out ? d_go.data_ptr<float>() : nullptr;
  float* du = need_u ? d_u.data_ptr<float>() : nullptr;
  float* dt = need_table ? d_t.data_ptr<float>() : nullptr;
  const int C = 1 << D;
  const int threads = n_threads();
#pragma omp parallel for schedule(dynamic, 256) num_threads(threads)
  for (int64_t i = 0; i < N; ++i) {
    Cell cl;
    const float* G = Gp + i * D;
    float frac[kMaxDim];
    for (int64_t l = 0; l < A; ++l) {
      const Level& lv = levels[l];
      cell(up + i * D, D, lv, true, cl);
      const float* g = gp + i * L * F + l * F;
      if (need_u)
        for (int d = 0; d < D; ++d) {
          const float p = up[i * D + d] * lv.scale + 0.5f;
          frac[d] = p - std::floor(p);
        }
      for (int c = 0; c < C; ++c) {
        const float* t = tp + cl.row[c] * F;
        float q = 0.f;
        for (int d = 0; d < D; ++d) q += cl.dw[c * D + d] * G[d];
        q *= lv.scale;
        if (need_grad_out)
          for (int64_t f = 0; f < F; ++f) dgo[i * L * F + l * F + f] += q * t[f];
        if (need_table) {
          float* dst = dt + cl.row[c] * F;
          for (int64_t f = 0; f < F; ++f) scatter_add(dst + f, q * g[f], threads);
        }
        if (need_u && D > 1) {
          float dot = 0.f;
          for (int64_t f = 0; f < F; ++f) dot += t[f] * g[f];
          const float s2 = lv.scale * lv.scale * dot;
          for (int e = 0; e < D; ++e) {
            float acc = 0.f;
            for (int d = 0; d < D; ++d) {
              if (d == e) continue;
              float h = (((c >> d) & 1) ? 1.f : -1.f) * (((c >> e) & 1) ? 1.f : -1.f);
              for (int k = 0; k < D; ++k)
                if (k != d && k != e) h *= ((c >> k) & 1) ? frac[k] : 1.f - frac[k];
              acc += h * G[d];
            }
            du[i * D + e] += s2 * acc;
          }
        }
      }
    }
  }
  return {d_go, d_u, d_t};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("double_backward", &hashgrid_double_backward, "hash-grid second derivatives (CPU): d grad_out, d u, d table");
  m.def("forward", &hashgrid_forward, "hash-grid encoding forward (CPU)");
  m.def("backward", &hashgrid_backward, "hash-grid encoding backward (CPU): grad_u, grad_table");
}
