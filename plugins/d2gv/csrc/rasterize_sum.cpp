// Summation rasteriser of image-space 2D Gaussians on the CPU: forward and backward.
//
// Same image model and contribution rule as the PyTorch twin (rasterize.py / _torch_impl.py):
//
//   out[b, y, x, :] = sum_n  w_n * alpha_n(p) * colour_n,   p = (x + 0.5, y + 0.5)
//   alpha = min(1, exp(-sigma)),  sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy,  (dx, dy) = p - mean
//
// where Gaussian n counts at p only if |dx| <= r_n, |dy| <= r_n (r_n > 0 its integer footprint
// radius) and sigma <= -ln(alpha_min). The output is *not* clamped here (the caller clamps, so
// autograd handles the clamp's gradient).
//
// Forward: Gaussians are binned into 16x16 pixel tiles (a counting sort, so each tile lists its
// Gaussians in index order and the sum is deterministic), then tiles are rendered in parallel,
// each into a small planar accumulator [C][16][16]. One tile row of one Gaussian is one 16-lane
// loop without branches, which the compiler turns into AVX-512/AVX2 code. Nothing is capped per
// tile.
//
// Backward: parallel over Gaussians. Each Gaussian gathers dL/dout over its own footprint and
// writes only its own gradients, so there are no atomics and no per-thread buffers to reduce,
// and the result does not depend on the thread count.
//
// Threads: OpenMP, with as many threads as torch uses (torch.set_num_threads).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int64_t kTile = 16;
constexpr int kLanes = 16;  // one tile row

// exp(-s) for s >= 0 (callers clamp s to [0, 80]), branch-free so that loops over it vectorise.
// Cody-Waite reduction -s = n ln2 + r, |r| <= ln2/2, and the Cephes expf polynomial for e^r;
// relative error below 2e-7 (checked against std::exp in the tests through rendered images).
// n is rounded with the 1.5 * 2^23 trick: std::floor does not vectorise without -ffast-math.
inline float exp_neg(float s) {
    const float x = -s;
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = std::fma(p, r, 1.3981999507e-3f);
    p = std::fma(p, r, 8.3334519073e-3f);
    p = std::fma(p, r, 4.1665795894e-2f);
    p = std::fma(p, r, 1.6666665459e-1f);
    p = std::fma(p, r, 5.0000001201e-1f);
    p = std::fma(p, r * r, r + 1.0f);
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-116, 0]
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

inline double exp_neg(double s) { return std::exp(-s); }

template <typename T>
inline T clamp_sigma(T sigma) {
    return std::min(std::max(sigma, T(0)), T(80));
}

// Inclusive pixel box that contains every pixel centre with |centre - mean| <= r (one extra
// row/column on each side is allowed: the exact test runs per pixel). False if it is empty.
template <typename T>
inline bool pixel_box(T mx, T my, int64_t r, int64_t H, int64_t W, int64_t box[4]) {
    if (r <= 0 || !std::isfinite(mx) || !std::isfinite(my)) return false;
    const double lo_x = std::floor(double(mx) - double(r) - 0.5), hi_x = std::ceil(double(mx) + double(r) - 0.5);
    const double lo_y = std::floor(double(my) - double(r) - 0.5), hi_y = std::ceil(double(my) + double(r) - 0.5);
    if (hi_x < 0 || hi_y < 0 || lo_x > double(W - 1) || lo_y > double(H - 1)) return false;
    box[0] = std::max<int64_t>(0, int64_t(std::max(lo_x, 0.0)));
    box[1] = std::min<int64_t>(W - 1, int64_t(std::min(hi_x, double(W - 1))));
    box[2] = std::max<int64_t>(0, int64_t(std::max(lo_y, 0.0)));
    box[3] = std::min<int64_t>(H - 1, int64_t(std::min(hi_y, double(H - 1))));
    return box[0] <= box[1] && box[2] <= box[3];
}

int num_threads() { return std::max(1, at::get_num_threads()); }

struct Bins {
    std::vector<int32_t> boxes;    // [B * N * 4] pixel box (x0, x1, y0, y1) per Gaussian; x0 > x1 when empty
    std::vector<int64_t> offsets;  // [B * tiles + 1]: Gaussians of tile t are ids[offsets[t]..offsets[t+1])
    std::vector<int32_t> ids;      // Gaussian index within its frame
};

// Pixel boxes, then a counting sort of (tile, Gaussian) pairs, frame by frame (frames in parallel).
template <typename T>
Bins bin_gaussians(const T* means, const int64_t* radii, int64_t B, int64_t N, int64_t H, int64_t W) {
    const int64_t tiles_x = (W + kTile - 1) / kTile, tiles_y = (H + kTile - 1) / kTile, tiles = tiles_x * tiles_y;
    Bins bins;
    bins.boxes.resize(B * N * 4);
    std::vector<int64_t> counts(B * tiles, 0);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads()) if (B > 1)
#endif
    for (int64_t b = 0; b < B; ++b) {
        int64_t* cnt = counts.data() + b * tiles;
        for (int64_t n = 0; n < N; ++n) {
            const int64_t g = b * N + n;
            int32_t* bx = bins.boxes.data() + 4 * g;
            int64_t box[4];
            if (!pixel_box(means[2 * g], means[2 * g + 1], radii[g], H, W, box)) {
                bx[0] = 1, bx[1] = 0, bx[2] = 1, bx[3] = 0;
                continue;
            }
            for (int k = 0; k < 4; ++k) bx[k] = int32_t(box[k]);
            for (int64_t ty = box[2] / kTile; ty <= box[3] / kTile; ++ty)
                for (int64_t tx = box[0] / kTile; tx <= box[1] / kTile; ++tx) ++cnt[ty * tiles_x + tx];
        }
    }
    bins.offsets.assign(B * tiles + 1, 0);
    for (int64_t t = 0; t < B * tiles; ++t) bins.offsets[t + 1] = bins.offsets[t] + counts[t];
    bins.ids.resize(bins.offsets.back());
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads()) if (B > 1)
#endif
    for (int64_t b = 0; b < B; ++b) {
        std::vector<int64_t> fill(bins.offsets.begin() + b * tiles, bins.offsets.begin() + (b + 1) * tiles);
        for (int64_t n = 0; n < N; ++n) {
            const int32_t* bx = bins.boxes.data() + 4 * (b * N + n);
            if (bx[0] > bx[1]) continue;
            for (int64_t ty = bx[2] / kTile; ty <= bx[3] / kTile; ++ty)
                for (int64_t tx = bx[0] / kTile; tx <= bx[1] / kTile; ++tx) bins.ids[fill[ty * tiles_x + tx]++] = int32_t(n);
        }
    }
    return bins;
}

template <typename T>
struct Scene {
    const T* means;    // [B, N, 2]
    const T* conics;   // [B, N, 3]
    const T* colors;   // [B, N, C]
    const T* weights;  // [B, N] or nullptr
    const int64_t* radii;
    int64_t B, N, C, H, W;
    T sigma_max;  // -ln(alpha_min)
};

template <typename T>
void render_tile(const Scene<T>& s, const Bins& bins, int64_t tile_global, T* acc, T* out) {
    const int64_t tiles_x = (s.W + kTile - 1) / kTile, tiles_y = (s.H + kTile - 1) / kTile;
    const int64_t b = tile_global / (tiles_x * tiles_y), tile = tile_global % (tiles_x * tiles_y);
    const int64_t px0 = (tile % tiles_x) * kTile, py0 = (tile / tiles_x) * kTile;
    const int64_t tw = std::min(kTile, s.W - px0), th = std::min(kTile, s.H - py0);
    const int64_t C = s.C;
    std::fill(acc, acc + C * kTile * kTile, T(0));
    // per-lane terms of sigma that do not change along a column: a dx dx, b dx, and the column test
    T adxx[kLanes], bdx[kLanes], dx_ok[kLanes], alpha[kLanes];
    const int64_t begin = bins.offsets[tile_global], end = bins.offsets[tile_global + 1];
    for (int64_t k = begin; k < end; ++k) {
        const int64_t g = b * s.N + bins.ids[k];
        const T mx = s.means[2 * g], my = s.means[2 * g + 1];
        const T ca = s.conics[3 * g], cb = s.conics[3 * g + 1], cc = s.conics[3 * g + 2];
        const T r = T(s.radii[g]);
        const T w = s.weights ? s.weights[g] : T(1);
        const T* col = s.colors + C * g;
        const int32_t* box = bins.boxes.data() + 4 * g;
        const int64_t y0 = std::max<int64_t>(box[2], py0), y1 = std::min<int64_t>(box[3], py0 + th - 1);
        const int64_t j0 = std::max<int64_t>(box[0], px0) - px0, j1 = std::min<int64_t>(box[1], px0 + tw - 1) - px0;
        // same operation order as the PyTorch twin, so the cut-off decisions agree exactly
#ifdef _OPENMP
#pragma omp simd
#endif
        for (int j = 0; j < kLanes; ++j) {
            const T dx = (T(px0 + j) + T(0.5)) - mx;
            adxx[j] = ca * dx * dx;
            bdx[j] = cb * dx;
            dx_ok[j] = ((j >= j0) & (j <= j1) & (std::abs(dx) <= r)) ? T(1) : T(0);
        }
        for (int64_t y = y0; y <= y1; ++y) {
            const T dy = (T(y) + T(0.5)) - my;
            if (!(std::abs(dy) <= r)) continue;
            const T cdyy = cc * dy * dy;
#ifdef _OPENMP
#pragma omp simd
#endif
            for (int j = 0; j < kLanes; ++j) {
                const T sigma = T(0.5) * (adxx[j] + cdyy) + bdx[j] * dy;
                const bool keep = (dx_ok[j] != T(0)) & (sigma <= s.sigma_max);
                alpha[j] = keep ? exp_neg(clamp_sigma(sigma)) * w : T(0);
            }
            T* row = acc + (y - py0) * kTile;
            for (int64_t ch = 0; ch < C; ++ch) {
                const T c = col[ch];
                T* dst = row + ch * kTile * kTile;
#ifdef _OPENMP
#pragma omp simd
#endif
                for (int j = 0; j < kLanes; ++j) dst[j] += alpha[j] * c;
            }
        }
    }
    for (int64_t y = 0; y < th; ++y) {
        T* dst = out + ((b * s.H + py0 + y) * s.W + px0) * C;
        for (int64_t x = 0; x < tw; ++x)
            for (int64_t ch = 0; ch < C; ++ch) dst[x * C + ch] = acc[ch * kTile * kTile + y * kTile + x];
    }
}

template <typename T>
void forward_impl(const Scene<T>& s, T* out) {
    const Bins bins = bin_gaussians(s.means, s.radii, s.B, s.N, s.H, s.W);
    const int64_t tiles = s.B * ((s.W + kTile - 1) / kTile) * ((s.H + kTile - 1) / kTile);
#ifdef _OPENMP
#pragma omp parallel num_threads(num_threads())
#endif
    {
        std::vector<T> acc(s.C * kTile * kTile);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t t = 0; t < tiles; ++t) render_tile(s, bins, t, acc.data(), out);
    }
}

// Gradients of one Gaussian g from dL/dout, given planar with padded rows: gp[b][ch][y][x] with
// row stride `stride` (>= W + 16, zero beyond W) so 16-lane loads never leave the row.
template <typename T>
void backward_gaussian(const Scene<T>& s, const T* gp, int64_t stride, int64_t g, T* d_mean, T* d_conic, T* d_color,
                       T* d_weight, T* lanes) {
    const int64_t C = s.C;
    const int64_t b = g / s.N;
    const T mx = s.means[2 * g], my = s.means[2 * g + 1];
    const T ca = s.conics[3 * g], cb = s.conics[3 * g + 1], cc = s.conics[3 * g + 2];
    const T r = T(s.radii[g]);
    const T w = s.weights ? s.weights[g] : T(1);
    const T* col = s.colors + C * g;
    // per-lane partial sums: mx, my, a, b, c, w, then C colour channels
    T* acc = lanes;
    std::fill(acc, acc + (6 + C) * kLanes, T(0));
    T dx[kLanes], adxx[kLanes], bdx[kLanes], dx_ok[kLanes], alpha[kLanes], gsum[kLanes], live[kLanes];
    int64_t box[4];
    if (pixel_box(mx, my, s.radii[g], s.H, s.W, box)) {
        for (int64_t x0 = box[0]; x0 <= box[1]; x0 += kLanes) {
            const int64_t valid = std::min<int64_t>(kLanes, box[1] - x0 + 1);
#ifdef _OPENMP
#pragma omp simd
#endif
            for (int j = 0; j < kLanes; ++j) {
                dx[j] = (T(x0 + j) + T(0.5)) - mx;
                adxx[j] = ca * dx[j] * dx[j];
                bdx[j] = cb * dx[j];
                dx_ok[j] = ((j < valid) & (std::abs(dx[j]) <= r)) ? T(1) : T(0);
            }
            for (int64_t y = box[2]; y <= box[3]; ++y) {
                const T dy = (T(y) + T(0.5)) - my;
                if (!(std::abs(dy) <= r)) continue;
                const T cdyy = cc * dy * dy;
#ifdef _OPENMP
#pragma omp simd
#endif
                for (int j = 0; j < kLanes; ++j) {
                    const T sigma = T(0.5) * (adxx[j] + cdyy) + bdx[j] * dy;  // as in the forward pass
                    const bool keep = (dx_ok[j] != T(0)) & (sigma <= s.sigma_max);
                    alpha[j] = keep ? exp_neg(clamp_sigma(sigma)) : T(0);
                    live[j] = (keep & (sigma >= T(0))) ? T(1) : T(0);  // min(1, .) passes no gradient
                    gsum[j] = T(0);
                }
                for (int64_t ch = 0; ch < C; ++ch) {
                    const T* grow = gp + ((b * C + ch) * s.H + y) * stride + x0;
                    const T c = col[ch];
                    T* acc_c = acc + (6 + ch) * kLanes;
#ifdef _OPENMP
#pragma omp simd
#endif
                    for (int j = 0; j < kLanes; ++j) {
                        gsum[j] += grow[j] * c;
                        acc_c[j] += alpha[j] * grow[j];
                    }
                }
#ifdef _OPENMP
#pragma omp simd
#endif
                for (int j = 0; j < kLanes; ++j) {
                    const T dsig = -live[j] * alpha[j] * w * gsum[j];  // dL/dsigma
                    acc[0 * kLanes + j] -= dsig * (ca * dx[j] + cb * dy);
                    acc[1 * kLanes + j] -= dsig * (cc * dy + cb * dx[j]);
                    acc[2 * kLanes + j] += dsig * T(0.5) * dx[j] * dx[j];
                    acc[3 * kLanes + j] += dsig * dx[j] * dy;
                    acc[4 * kLanes + j] += dsig * T(0.5) * dy * dy;
                    acc[5 * kLanes + j] += alpha[j] * gsum[j];
                }
            }
        }
    }
    T total[6];
    for (int k = 0; k < 6; ++k) {
        T sum = 0;
        for (int j = 0; j < kLanes; ++j) sum += acc[k * kLanes + j];
        total[k] = sum;
    }
    d_mean[0] = total[0], d_mean[1] = total[1];
    d_conic[0] = total[2], d_conic[1] = total[3], d_conic[2] = total[4];
    if (d_weight) *d_weight = total[5];
    for (int64_t ch = 0; ch < C; ++ch) {
        T sum = 0;
        for (int j = 0; j < kLanes; ++j) sum += acc[(6 + ch) * kLanes + j];
        d_color[ch] = sum * w;
    }
}

template <typename T>
void backward_impl(const Scene<T>& s, const T* grad_out, T* d_means, T* d_conics, T* d_colors, T* d_weights) {
    const int64_t B = s.B, C = s.C, H = s.H, W = s.W;
    const int64_t stride = ((W + kLanes - 1) / kLanes + 1) * kLanes;
    std::vector<T> gp(B * C * H * stride, T(0));
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 16) num_threads(num_threads())
#endif
    for (int64_t row = 0; row < B * H; ++row) {
        const int64_t b = row / H, y = row % H;
        const T* src = grad_out + row * W * C;
        for (int64_t ch = 0; ch < C; ++ch) {
            T* dst = gp.data() + ((b * C + ch) * H + y) * stride;
            for (int64_t x = 0; x < W; ++x) dst[x] = src[x * C + ch];
        }
    }
    const int64_t total = B * s.N;
#ifdef _OPENMP
#pragma omp parallel num_threads(num_threads())
#endif
    {
        std::vector<T> lanes((6 + C) * kLanes);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 64)
#endif
        for (int64_t g = 0; g < total; ++g)
            backward_gaussian(s, gp.data(), stride, g, d_means + 2 * g, d_conics + 3 * g, d_colors + C * g,
                              d_weights ? d_weights + g : nullptr, lanes.data());
    }
}

void check_inputs(const at::Tensor& means, const at::Tensor& conics, const at::Tensor& colors,
                  const c10::optional<at::Tensor>& weights, const at::Tensor& radii) {
    TORCH_CHECK(means.device().is_cpu(), "rasterize_sum_cpu: tensors must be on the CPU");
    TORCH_CHECK(means.dim() == 3 && means.size(2) == 2, "means must be [B, N, 2], got ", means.sizes());
    const int64_t B = means.size(0), N = means.size(1);
    TORCH_CHECK(conics.sizes() == at::IntArrayRef({B, N, 3}), "conics must be [B, N, 3], got ", conics.sizes());
    TORCH_CHECK(colors.dim() == 3 && colors.size(0) == B && colors.size(1) == N, "colors must be [B, N, C], got ",
                colors.sizes());
    TORCH_CHECK(radii.sizes() == at::IntArrayRef({B, N}) && radii.scalar_type() == at::kLong,
                "radii must be int64 [B, N], got ", radii.sizes(), " ", radii.scalar_type());
    TORCH_CHECK(conics.scalar_type() == means.scalar_type() && colors.scalar_type() == means.scalar_type(),
                "means, conics and colors must share one floating dtype");
    if (weights.has_value() && weights->defined()) {
        TORCH_CHECK(weights->sizes() == at::IntArrayRef({B, N}) && weights->scalar_type() == means.scalar_type(),
                    "weights must be [B, N] of the same dtype, got ", weights->sizes());
    }
    TORCH_CHECK(N < std::numeric_limits<int32_t>::max(), "too many Gaussians per frame");
}

template <typename T>
Scene<T> make_scene(const at::Tensor& means, const at::Tensor& conics, const at::Tensor& colors,
                    const at::Tensor& weights, const at::Tensor& radii, int64_t H, int64_t W, double alpha_min) {
    return Scene<T>{means.data_ptr<T>(),
                    conics.data_ptr<T>(),
                    colors.data_ptr<T>(),
                    weights.defined() ? weights.data_ptr<T>() : nullptr,
                    radii.data_ptr<int64_t>(),
                    means.size(0),
                    means.size(1),
                    colors.size(2),
                    H,
                    W,
                    T(-std::log(alpha_min))};
}

at::Tensor opt_contiguous(const c10::optional<at::Tensor>& t) {
    return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

at::Tensor forward(const at::Tensor& means_, const at::Tensor& conics_, const at::Tensor& colors_,
                   const c10::optional<at::Tensor>& weights_, const at::Tensor& radii_, int64_t height, int64_t width,
                   double alpha_min) {
    check_inputs(means_, conics_, colors_, weights_, radii_);
    TORCH_CHECK(height > 0 && width > 0 && height < 32768 * kTile && width < 32768 * kTile, "bad image size");
    TORCH_CHECK(alpha_min > 0 && alpha_min <= 1, "alpha_min must be in (0, 1]");
    const at::Tensor means = means_.contiguous(), conics = conics_.contiguous(), colors = colors_.contiguous();
    const at::Tensor weights = opt_contiguous(weights_), radii = radii_.contiguous();
    at::Tensor out = at::empty({means.size(0), height, width, colors.size(2)}, colors.options());
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "rasterize_sum_forward", [&] {
        forward_impl(make_scene<scalar_t>(means, conics, colors, weights, radii, height, width, alpha_min),
                     out.data_ptr<scalar_t>());
    });
    return out;
}

std::vector<at::Tensor> backward(const at::Tensor& grad_out_, const at::Tensor& means_, const at::Tensor& conics_,
                                 const at::Tensor& colors_, const c10::optional<at::Tensor>& weights_,
                                 const at::Tensor& radii_, int64_t height, int64_t width, double alpha_min) {
    check_inputs(means_, conics_, colors_, weights_, radii_);
    const at::Tensor means = means_.contiguous(), conics = conics_.contiguous(), colors = colors_.contiguous();
    const at::Tensor weights = opt_contiguous(weights_), radii = radii_.contiguous();
    const at::Tensor grad_out = grad_out_.to(means.scalar_type()).contiguous();
    TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({means.size(0), height, width, colors.size(2)}),
                "grad_out must be [B, H, W, C], got ", grad_out.sizes());
    at::Tensor d_means = at::empty_like(means), d_conics = at::empty_like(conics), d_colors = at::empty_like(colors);
    at::Tensor d_weights = weights.defined() ? at::empty_like(weights) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "rasterize_sum_backward", [&] {
        backward_impl(make_scene<scalar_t>(means, conics, colors, weights, radii, height, width, alpha_min),
                      grad_out.data_ptr<scalar_t>(), d_means.data_ptr<scalar_t>(), d_conics.data_ptr<scalar_t>(),
                      d_colors.data_ptr<scalar_t>(), d_weights.defined() ? d_weights.data_ptr<scalar_t>() : nullptr);
    });
    return {d_means, d_conics, d_colors, d_weights};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "CPU summation rasteriser of 2D Gaussians (recon d2gv)";
    m.def("forward", &forward, "unclamped [B, H, W, C] image", py::arg("means"), py::arg("conics"), py::arg("colors"),
          py::arg("weights"), py::arg("radii"), py::arg("height"), py::arg("width"), py::arg("alpha_min"));
    m.def("backward", &backward, "gradients (means, conics, colors, weights or None)", py::arg("grad_out"),
          py::arg("means"), py::arg("conics"), py::arg("colors"), py::arg("weights"), py::arg("radii"),
          py::arg("height"), py::arg("width"), py::arg("alpha_min"));
}
