// Compiled CPU path of the torch-3dgs rasteriser: tile binning and front-to-back compositing,
// forward and backward, multi-threaded over tiles with OpenMP.
//
// Built just in time by recon_plugins/gaussians/_cpp.py (torch.utils.cpp_extension.load); the
// pure-PyTorch twin is recon_plugins.gaussians.rasterize._composite_gaussians, and
// tests/test_gaussians_cpu_kernel.py checks that both give the same images and gradients.
//
// Rules (gsplat's, as in rasterize.py): alpha = min(0.999, o exp(-sigma)) with
// sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, (dx, dy) = mean - pixel centre, pixel (i, j) centred
// at (j + 0.5, i + 0.5); a pair with alpha < 1/255 is skipped; a pixel stops before the Gaussian
// that would bring its transmittance to <= 1e-4.
//
// Parallelism: one tile is one work item (dynamic schedule: tiles over the scene are much
// heavier than empty ones); within a tile, pixels are independent. The backward writes each
// (tile, Gaussian) pair's gradient into its own slot, then sums the slots per Gaussian, so no
// atomics are needed and results do not depend on the number of threads.

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
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

constexpr double kAlphaThreshold = 1.0 / 255.0;
constexpr double kMaxAlpha = 0.999;
constexpr double kTransmittanceMin = 1e-4;
constexpr double kRadiusSigmas = 3.33;
// Quick rejection before exp(): sigma > log(255 o) + margin means alpha < 1/255 for sure; the
// margin keeps the exact alpha test in charge near the threshold (same decisions as torch).
constexpr double kRejectMargin = 1e-3;

int threads() { return std::max(1, at::get_num_threads()); }

// f(begin, end) over [0, n) in chunks of `grain`, handed out to the threads one at a time. Not
// at::parallel_for, which gives each thread one fixed 1/threads share: on a shared CPU a
// preempted thread would hold up everyone for its whole share, here only for one chunk.
template <typename F>
void parallel_chunks(int64_t n, int64_t grain, const F& f) {
  const int64_t chunks = (n + grain - 1) / grain;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads()) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) f(c * grain, std::min(n, (c + 1) * grain));
}

// ------------------------------------------------------------------------ depth sort (radix)

inline uint32_t sort_key(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // order-preserving for all floats
}

inline uint64_t sort_key(double v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof(u));
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Indices 0..n-1 ordered by key, ties by index (a stable LSD radix sort, 8 bits per pass).
template <typename Key>
std::vector<int32_t> stable_order(const std::vector<Key>& keys) {
  const int64_t n = static_cast<int64_t>(keys.size());
  std::vector<int32_t> order(n), tmp(n);
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  for (int shift = 0; shift < static_cast<int>(8 * sizeof(Key)); shift += 8) {
    int64_t count[257] = {0};
    for (int64_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & 0xFF) + 1];
    bool trivial = false;
    for (int d = 1; d <= 256; ++d) trivial |= count[d] == n;
    if (trivial) continue;  // every key has the same digit here (common for high bytes)
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (int64_t i = 0; i < n; ++i) {
      const int32_t idx = order[i];
      tmp[count[(keys[idx] >> shift) & 0xFF]++] = idx;
    }
    order.swap(tmp);
  }
  return order;
}

// -------------------------------------------------------------------------------- binning

struct Rect {
  int32_t x0, y0, x1, y1;  // inclusive tile ranges; x1 < x0 when empty
  int64_t row0;           // global row index (camera * tiles_y + y0)
};

// Tile lists: offsets [C * tiles_y * tiles_x + 1] (int64) and packed ids [P] (int32), each
// tile's run front to back (ties by packed index). Same cover as rasterize.bin_gaussians:
// tiles holding a pixel centre inside the opacity-aware box mean +- e sigma per axis,
// e = min(sqrt(2 ln(255 o)), 3.33). (Renumbering the Gaussians in a spatial order, so that a
// tile's records sit together in memory, was measured slower: the gather moves elsewhere.)
template <typename scalar_t>
std::vector<at::Tensor> bin_impl(const at::Tensor& means2d, const at::Tensor& cov2d, const at::Tensor& opacities,
                                 const at::Tensor& depths, const at::Tensor& camera_ids, int64_t n_cameras,
                                 int64_t width, int64_t height, int64_t tile_size) {
  const int64_t m = means2d.size(0);
  const int64_t tiles_x = (width + tile_size - 1) / tile_size;
  const int64_t tiles_y = (height + tile_size - 1) / tile_size;
  const int64_t n_tiles = n_cameras * tiles_x * tiles_y;
  const scalar_t* mean = means2d.data_ptr<scalar_t>();
  const scalar_t* cov = cov2d.data_ptr<scalar_t>();
  const scalar_t* opac = opacities.data_ptr<scalar_t>();
  const scalar_t* depth = depths.data_ptr<scalar_t>();
  const int64_t* cam = camera_ids.data_ptr<int64_t>();

  std::vector<Rect> rect(m);
  parallel_chunks(m, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const scalar_t extent = std::min<scalar_t>(
          std::sqrt(scalar_t(2) * std::log(std::max<scalar_t>(opac[g] * scalar_t(255), scalar_t(1)))),
          scalar_t(kRadiusSigmas));
      Rect r{0, 0, -1, -1, 0};
      int64_t lo[2], hi[2];
      bool empty = false;
      const int64_t limit[2] = {width - 1, height - 1};
      for (int k = 0; k < 2; ++k) {
        const scalar_t half = extent * std::sqrt(cov[3 * g + 2 * k]);  // xx (k = 0) or yy (k = 2)
        const scalar_t a = std::ceil(mean[2 * g + k] - half - scalar_t(0.5));
        const scalar_t b = std::floor(mean[2 * g + k] + half - scalar_t(0.5));
        // clamp in floating point first (means can be far off-screen), as the torch twin does
        lo[k] = static_cast<int64_t>(std::min<scalar_t>(std::max<scalar_t>(a, 0), scalar_t(limit[k] + 1)));
        hi[k] = static_cast<int64_t>(std::max<scalar_t>(std::min<scalar_t>(b, scalar_t(limit[k])), -1));
        empty |= !(a <= b) || lo[k] > hi[k];  // !(a <= b) also catches NaN
      }
      if (!empty) {
        r.x0 = static_cast<int32_t>(lo[0] / tile_size);
        r.x1 = static_cast<int32_t>(hi[0] / tile_size);
        r.y0 = static_cast<int32_t>(lo[1] / tile_size);
        r.y1 = static_cast<int32_t>(hi[1] / tile_size);
        r.row0 = cam[g] * tiles_y + r.y0;
      }
      rect[g] = r;
    }
  });

  using Key = decltype(sort_key(scalar_t(0)));
  std::vector<Key> keys(m);
  for (int64_t g = 0; g < m; ++g) keys[g] = sort_key(depth[g]);
  const std::vector<int32_t> order = stable_order(keys);

  at::Tensor offsets = at::zeros({n_tiles + 1}, means2d.options().dtype(at::kLong));
  int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t g = 0; g < m; ++g) {
    const Rect& r = rect[g];
    for (int64_t y = r.y0; y <= r.y1; ++y) {
      const int64_t row = (r.row0 + (y - r.y0)) * tiles_x;
      for (int64_t x = r.x0; x <= r.x1; ++x) ++off[row + x + 1];
    }
  }
  for (int64_t t = 0; t < n_tiles; ++t) off[t + 1] += off[t];
  const int64_t pairs = off[n_tiles];
  at::Tensor ids = at::empty({pairs}, means2d.options().dtype(at::kInt));
  int32_t* id = ids.data_ptr<int32_t>();

  // Fill in depth order, in bands of tile rows (a band only writes its own tiles' runs).
  const int64_t rows = n_cameras * tiles_y;
  const int64_t n_bands = std::min<int64_t>(rows, 4 * threads());
  std::vector<int64_t> cursor(off, off + n_tiles);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads())
  for (int64_t band = 0; band < n_bands; ++band) {
    const int64_t r0 = band * rows / n_bands, r1 = (band + 1) * rows / n_bands;
    for (int64_t k = 0; k < m; ++k) {
      const int32_t g = order[k];
      const Rect& r = rect[g];
      const int64_t a = std::max<int64_t>(r.row0, r0), b = std::min<int64_t>(r.row0 + (r.y1 - r.y0), r1 - 1);
      for (int64_t row = a; row <= b; ++row)
        for (int64_t x = r.x0; x <= r.x1; ++x) id[cursor[row * tiles_x + x]++] = g;
    }
  }
  return {offsets, ids};
}

// ----------------------------------------------------------------------------- SIMD helpers

// Pixels are processed in row segments of L lanes (GCC/Clang vector extensions: the compiler
// maps them to AVX2, AVX-512, NEON or plain SSE). Each lane is one pixel.
constexpr int kVectorBytes = 32;

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(kVectorBytes)));
  typedef int32_t M __attribute__((vector_size(kVectorBytes)));  // lane masks: -1 true, 0 false
  static constexpr int L = kVectorBytes / 4;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(kVectorBytes)));
  typedef int64_t M __attribute__((vector_size(kVectorBytes)));
  static constexpr int L = kVectorBytes / 8;
};

// Lane-mask tests: one movemask on AVX, a lane loop elsewhere.
template <typename M>
inline int lane_bits(M m) {
#if defined(__AVX__)
  if constexpr (sizeof(M) == 32 && sizeof(m[0]) == 4) return _mm256_movemask_ps(reinterpret_cast<__m256>(m));
  if constexpr (sizeof(M) == 32 && sizeof(m[0]) == 8) return _mm256_movemask_pd(reinterpret_cast<__m256d>(m));
#endif
  int bits = 0;
  for (size_t l = 0; l < sizeof(M) / sizeof(m[0]); ++l) bits |= (m[l] != 0) << l;
  return bits;
}

template <typename M>
inline bool any(M m) {
  return lane_bits(m) != 0;
}

template <typename M>
inline bool all(M m) {
  return lane_bits(m) == (1 << (sizeof(M) / sizeof(m[0]))) - 1;
}

template <typename V>
inline auto hsum(V v) {
  auto r = v[0];
  for (size_t l = 1; l < sizeof(V) / sizeof(v[0]); ++l) r += v[l];
  return r;
}

// exp of a float vector (Cody-Waite range reduction + degree-6 polynomial, as in Cephes expf;
// within 2 ulp of std::exp on [-87, 88]). Inputs below -87 give ~1e-38 (alpha far below 1/255).
inline Simd<float>::V vexp(Simd<float>::V x) {
  using V = Simd<float>::V;
  using M = Simd<float>::M;
  x = x < V{} - 87.0f ? V{} - 87.0f : x;
  x = x > V{} + 88.0f ? V{} + 88.0f : x;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const V n = (x * 1.44269504088896341f + magic) - magic;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const M bits = (__builtin_convertvector(n, M) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Doubles (the parity-test path) use the library exp lane by lane.
inline Simd<double>::V vexp(Simd<double>::V x) {
  for (int l = 0; l < Simd<double>::L; ++l) x[l] = std::exp(x[l]);
  return x;
}

// ----------------------------------------------------------------------------- compositing

// Per-Gaussian records, computed once per call: mean x, y, conic a, b, c, opacity, the quick
// rejection bound log(255 o) + margin, the opacity-aware box of rasterize.bin_gaussians
// (x lo, x hi, y lo, y hi; widened by a margin far above rounding error, so outside it
// alpha < 1/255 for sure and a pixel row or segment outside it skips the Gaussian), features.
enum Field { kMx, kMy, kA, kB, kC, kO, kReject, kXlo, kXhi, kYlo, kYhi, kFeatures };

// Record stride: a whole number of vectors, so that gathering a record is a few vector moves.
template <typename scalar_t>
int64_t record_width(int64_t dim) {
  constexpr int64_t lanes = kVectorBytes / sizeof(scalar_t);
  return (kFeatures + dim + lanes - 1) / lanes * lanes;
}

template <typename scalar_t>
std::vector<scalar_t> make_records(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
                                   const at::Tensor& cov2d, const at::Tensor& features) {
  const int64_t m = means2d.size(0), dim = features.size(1), width = record_width<scalar_t>(dim);
  const scalar_t* mean = means2d.data_ptr<scalar_t>();
  const scalar_t* conic = conics.data_ptr<scalar_t>();
  const scalar_t* opac = opacities.data_ptr<scalar_t>();
  const scalar_t* cov = cov2d.data_ptr<scalar_t>();
  const scalar_t* feat = features.data_ptr<scalar_t>();
  std::vector<scalar_t> rec(static_cast<size_t>(m * width), scalar_t(0));
  parallel_chunks(m, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      scalar_t* r = &rec[g * width];
      r[kMx] = mean[2 * g];
      r[kMy] = mean[2 * g + 1];
      r[kA] = conic[3 * g];
      r[kB] = conic[3 * g + 1];
      r[kC] = conic[3 * g + 2];
      r[kO] = opac[g];
      const scalar_t log_o = std::log(opac[g] * scalar_t(255));  // alpha >= 1/255 <=> sigma <= log_o
      r[kReject] = log_o + scalar_t(kRejectMargin);
      const scalar_t extent =
          std::min<scalar_t>(std::sqrt(scalar_t(2) * std::max<scalar_t>(log_o, 0)), scalar_t(kRadiusSigmas));
      const scalar_t hx = extent * std::sqrt(cov[3 * g]), hy = extent * std::sqrt(cov[3 * g + 2]);
      const scalar_t mgx = scalar_t(0.01) + scalar_t(1e-3) * hx, mgy = scalar_t(0.01) + scalar_t(1e-3) * hy;
      r[kXlo] = r[kMx] - hx - mgx;
      r[kXhi] = r[kMx] + hx + mgx;
      r[kYlo] = r[kMy] - hy - mgy;
      r[kYhi] = r[kMy] + hy + mgy;
      for (int64_t d = 0; d < dim; ++d) r[kFeatures + d] = feat[g * dim + d];
    }
  });
  return rec;
}

// One tile's records gathered contiguously, front to back, on demand: in dense scenes every
// pixel stops long before the end of its tile's list, so entries are gathered a chunk at a time
// as the pixel loops reach them. The gather is random access into a table of a few MB (list
// order is depth order): prefetching a few records ahead overlaps the cache misses.
template <typename scalar_t>
struct TileData {
  using S = Simd<scalar_t>;
  using V = typename S::V;
  static constexpr int64_t kChunk = 64;  // entries per candidate bit mask
  std::vector<V> rec;
  std::vector<V> box[4];  // x lo, x hi, y lo, y hi of each entry, as vectors of L entries
  int64_t width = 0;      // record width in scalars
  int64_t n = 0, loaded = 0;
  const int32_t* ids = nullptr;
  const std::vector<scalar_t>* records = nullptr;

  void start(const int32_t* ids_, int64_t n_, const std::vector<scalar_t>& records_, int64_t width_) {
    ids = ids_, n = n_, records = &records_, width = width_, loaded = 0;
    const int64_t padded = (n + kChunk - 1) / kChunk * kChunk;
    rec.resize(static_cast<size_t>(padded * (width / S::L)));
    for (auto& b : box) b.assign(static_cast<size_t>(padded / S::L), V{} + std::numeric_limits<scalar_t>::infinity());
  }

  // gather entries [loaded, min(upto, n))
  void ensure(int64_t upto) {
    upto = std::min(upto, n);
    const int64_t vecs = width / S::L;
    constexpr int64_t kAhead = 8;
    for (int64_t i = loaded; i < upto; ++i) {
      if (i + kAhead < n) __builtin_prefetch(&(*records)[static_cast<int64_t>(ids[i + kAhead]) * width]);
      const scalar_t* src = &(*records)[static_cast<int64_t>(ids[i]) * width];
      for (int64_t k = 0; k < vecs; ++k) std::memcpy(&rec[i * vecs + k], src + k * S::L, sizeof(V));
      for (int k = 0; k < 4; ++k) box[k][i / S::L][i % S::L] = src[kXlo + k];
    }
    loaded = std::max(loaded, upto);
  }
  const scalar_t* operator[](int64_t i) const { return reinterpret_cast<const scalar_t*>(rec.data()) + i * width; }

  // Bit k set: entry base + k (< limit) has a box that holds a pixel centre of row py with
  // x in [px0, px1]. Padding entries have an empty box (+inf, +inf).
  uint64_t candidates(int64_t base, int64_t limit, scalar_t py, scalar_t px0, scalar_t px1) const {
    uint64_t bits = 0;
    for (int64_t v = 0; v < kChunk / S::L; ++v) {
      const int64_t j = base / S::L + v;
      const auto hit = (box[0][j] <= px1) & (box[1][j] >= px0) & (box[2][j] <= py) & (box[3][j] >= py);
      bits |= static_cast<uint64_t>(lane_bits(hit)) << (v * S::L);
    }
    const int64_t left = limit - base;
    return left >= kChunk ? bits : bits & ((uint64_t(1) << left) - 1);
  }

  // Calls visit(i) for the candidate entries i < limit in order, until it returns true.
  template <typename F>
  void for_each_candidate(int64_t limit, scalar_t py, scalar_t px0, scalar_t px1, F&& visit) {
    for (int64_t base = 0; base < limit; base += kChunk) {
      if (base + kChunk > loaded) ensure(base + kChunk);
      for (uint64_t bits = candidates(base, limit, py, px0, px1); bits; bits &= bits - 1)
        if (visit(base + __builtin_ctzll(bits))) return;
    }
  }
};

struct TileGeometry {
  int64_t tiles_x, tiles_y, tile_size, width, height;
  TileGeometry(int64_t width_, int64_t height_, int64_t tile_size_)
      : tiles_x((width_ + tile_size_ - 1) / tile_size_),
        tiles_y((height_ + tile_size_ - 1) / tile_size_),
        tile_size(tile_size_),
        width(width_),
        height(height_) {}
  // camera, first pixel (x0, y0) and end (x1, y1) of tile t, clipped to the image
  void locate(int64_t t, int64_t& camera, int64_t& x0, int64_t& y0, int64_t& x1, int64_t& y1) const {
    const int64_t per_cam = tiles_x * tiles_y;
    camera = t / per_cam;
    const int64_t local = t % per_cam;
    x0 = (local % tiles_x) * tile_size;
    y0 = (local / tiles_x) * tile_size;
    x1 = std::min(x0 + tile_size, width);
    y1 = std::min(y0 + tile_size, height);
  }
};

struct Inputs {
  const at::Tensor &means2d, &conics, &opacities, &cov2d, &features, &offsets, &ids;
  int64_t n_cameras, width, height, tile_size;
};

// Forward. Outputs: image [C, H, W, D] = sum_i w_i f_i, alpha [C, H, W] = sum_i w_i, the
// transmittance T = prod_i (1 - alpha_i) [C, H, W] and, per pixel, the number of list entries up
// to and including its last composited Gaussian [C, H, W] int32. alpha equals 1 - T but is
// summed from the same weights as the image: where alpha is small, 1 - T would carry the
// rounding of T (~6e-8 absolute in float32) into depth = image / alpha.
template <typename scalar_t>
std::vector<at::Tensor> forward_impl(const Inputs& in) {
  using S = Simd<scalar_t>;
  using V = typename S::V;
  using M = typename S::M;
  using I = typename std::remove_reference<decltype(std::declval<M>()[0])>::type;
  constexpr int L = S::L;
  const int64_t dim = in.features.size(1);
  const int64_t width = in.width, height = in.height;
  const TileGeometry geo(width, height, in.tile_size);
  const int64_t n_tiles = in.n_cameras * geo.tiles_x * geo.tiles_y;
  const auto options = in.features.options();
  at::Tensor image = at::zeros({in.n_cameras, height, width, dim}, options);
  at::Tensor alpha_sum = at::zeros({in.n_cameras, height, width}, options);
  at::Tensor trans = at::ones({in.n_cameras, height, width}, options);
  at::Tensor last = at::zeros({in.n_cameras, height, width}, options.dtype(at::kInt));
  const int64_t* off = in.offsets.data_ptr<int64_t>();
  const int32_t* id = in.ids.data_ptr<int32_t>();
  scalar_t* out = image.data_ptr<scalar_t>();
  scalar_t* out_a = alpha_sum.data_ptr<scalar_t>();
  scalar_t* out_t = trans.data_ptr<scalar_t>();
  int32_t* out_last = last.data_ptr<int32_t>();
  const scalar_t thr = static_cast<scalar_t>(kAlphaThreshold), max_alpha = static_cast<scalar_t>(kMaxAlpha);
  const scalar_t t_min = static_cast<scalar_t>(kTransmittanceMin);
  const std::vector<scalar_t> records = make_records<scalar_t>(in.means2d, in.conics, in.opacities, in.cov2d, in.features);

#pragma omp parallel num_threads(threads())
  {
    TileData<scalar_t> tile;
    std::vector<V> acc(dim);
    V lane{};
    for (int l = 0; l < L; ++l) lane[l] = scalar_t(l);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t n = off[t + 1] - off[t];
      if (n == 0) continue;
      tile.start(id + off[t], n, records, record_width<scalar_t>(dim));
      int64_t camera, x0, y0, x1, y1;
      geo.locate(t, camera, x0, y0, x1, y1);
      for (int64_t y = y0; y < y1; ++y) {
        const scalar_t py = scalar_t(y) + scalar_t(0.5);
        for (int64_t xs = x0; xs < x1; xs += L) {
          const int64_t lanes = std::min<int64_t>(L, x1 - xs);
          const V px = lane + (scalar_t(xs) + scalar_t(0.5));
          const scalar_t px0 = scalar_t(xs) + scalar_t(0.5), px1 = px0 + scalar_t(lanes - 1);
          M done = (lane >= scalar_t(lanes));  // lanes past the tile or image edge
          V T = V{} + scalar_t(1), w_sum{};
          M used{};
          for (auto& v : acc) v = V{};
          tile.for_each_candidate(n, py, px0, px1, [&](int64_t i) {
            const scalar_t* r = tile[i];
            const V dx = r[kMx] - px;
            const scalar_t dy = r[kMy] - py;
            const V sigma = scalar_t(0.5) * (r[kA] * dx * dx + r[kC] * dy * dy) + r[kB] * dy * dx;
            const M pass = (sigma <= r[kReject]) & ~done;
            if (!any(pass)) return false;
            V alpha = r[kO] * vexp(-sigma);
            alpha = alpha < max_alpha ? alpha : V{} + max_alpha;
            M contrib = pass & (alpha >= thr);
            if (!any(contrib)) return false;
            const V next = T * (scalar_t(1) - alpha);
            const M stop = contrib & (next <= t_min);
            contrib &= ~stop;
            const V w = contrib ? alpha * T : V{};
            const scalar_t* f = r + kFeatures;
            for (int64_t d = 0; d < dim; ++d) acc[d] += w * f[d];
            w_sum += w;
            T = contrib ? next : T;
            used = contrib ? M{} + static_cast<I>(i + 1) : used;
            if (any(stop)) {
              done |= stop;
              return all(done);
            }
            return false;
          });
          const int64_t pix = (camera * height + y) * width + xs;
          for (int64_t l = 0; l < lanes; ++l) {
            for (int64_t d = 0; d < dim; ++d) out[(pix + l) * dim + d] = acc[d][l];
            out_a[pix + l] = w_sum[l];
            out_t[pix + l] = T[l];
            out_last[pix + l] = static_cast<int32_t>(used[l]);
          }
        }
      }
    }
  }
  return {image, alpha_sum, trans, last};
}

// Backward. Per pixel, the forward is replayed front to back (same alpha decisions, up to the
// pixel's last composited entry) to list the composited Gaussians with alpha_i and the
// transmittance T_i before them; then, back to front,
//   dL/dalpha_i = T_i <g, f_i> - S_i / (1 - alpha_i),  S_i = gT T_final + sum_{k>i} w_k <g, f_k>,
// with g = dL/dF, gT = dL/dT_final. S_i is a suffix sum, free of the cancellation of "total minus
// prefix" (which 1 - alpha_i ~ 1e-3 would amplify in float32). Clamped alphas (0.999) pass no
// gradient to o and sigma. Lanes accumulate per-Gaussian vectors over the whole tile, summed
// across lanes once per tile into that (tile, Gaussian) pair's slot.
// Returns gradients of means2d [M, 2], conics [M, 3], opacities [M] and features [M, D].
template <typename scalar_t>
std::vector<at::Tensor> backward_impl(const Inputs& in, const at::Tensor& trans, const at::Tensor& last,
                                      const at::Tensor& grad_image, const at::Tensor& grad_trans) {
  using S = Simd<scalar_t>;
  using V = typename S::V;
  using M = typename S::M;
  using I = typename std::remove_reference<decltype(std::declval<M>()[0])>::type;
  constexpr int L = S::L;
  const int64_t m = in.means2d.size(0);
  const int64_t dim = in.features.size(1);
  const int64_t stride = 6 + dim;  // per pair: mean x, y, conic a, b, c, opacity, features
  const int64_t width = in.width, height = in.height;
  const TileGeometry geo(width, height, in.tile_size);
  const int64_t n_tiles = in.n_cameras * geo.tiles_x * geo.tiles_y;
  const int64_t pairs = in.ids.size(0);
  const int64_t* off = in.offsets.data_ptr<int64_t>();
  const int32_t* id = in.ids.data_ptr<int32_t>();
  const scalar_t* tr = trans.data_ptr<scalar_t>();
  const int32_t* lst = last.data_ptr<int32_t>();
  const scalar_t* g_img = grad_image.data_ptr<scalar_t>();
  const scalar_t* g_tr = grad_trans.data_ptr<scalar_t>();
  const scalar_t thr = static_cast<scalar_t>(kAlphaThreshold), max_alpha = static_cast<scalar_t>(kMaxAlpha);

  std::vector<scalar_t> pair_grad(static_cast<size_t>(pairs * stride), scalar_t(0));
  scalar_t* pg_all = pair_grad.data();
  const std::vector<scalar_t> records = make_records<scalar_t>(in.means2d, in.conics, in.opacities, in.cov2d, in.features);

  struct Step {
    int64_t i;
    V alpha, T;  // alpha is 0 in lanes where Gaussian i is not composited
    M smooth;    // composited and not clamped to 0.999
  };

#pragma omp parallel num_threads(threads())
  {
    TileData<scalar_t> tile;
    std::vector<V> g(dim), accv;
    std::vector<Step> steps;
    V lane{};
    for (int l = 0; l < L; ++l) lane[l] = scalar_t(l);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t n = off[t + 1] - off[t];
      if (n == 0) continue;
      tile.start(id + off[t], n, records, record_width<scalar_t>(dim));
      int64_t camera, x0, y0, x1, y1;
      geo.locate(t, camera, x0, y0, x1, y1);
      int64_t touched = 0;  // accv holds entries [0, touched) of this tile's list
      for (int64_t y = y0; y < y1; ++y) {
        const scalar_t py = scalar_t(y) + scalar_t(0.5);
        for (int64_t xs = x0; xs < x1; xs += L) {
          const int64_t lanes = std::min<int64_t>(L, x1 - xs);
          const int64_t pix = (camera * height + y) * width + xs;
          M used{};
          V gT{}, t_final{};
          bool any_grad = false;
          int64_t max_used = 0;
          for (auto& v : g) v = V{};
          for (int64_t l = 0; l < lanes; ++l) {
            used[l] = lst[pix + l];
            max_used = std::max<int64_t>(max_used, used[l]);
            gT[l] = g_tr[pix + l];
            t_final[l] = tr[pix + l];
            any_grad |= gT[l] != scalar_t(0);
            for (int64_t d = 0; d < dim; ++d) {
              g[d][l] = g_img[(pix + l) * dim + d];
              any_grad |= g[d][l] != scalar_t(0);
            }
          }
          if (max_used == 0 || !any_grad) continue;
          if (max_used > touched) {
            accv.resize(std::max<size_t>(accv.size(), static_cast<size_t>(max_used * stride)));
            std::fill(accv.begin() + touched * stride, accv.begin() + max_used * stride, V{});
            touched = max_used;
          }
          const V px = lane + (scalar_t(xs) + scalar_t(0.5));
          const scalar_t px0 = scalar_t(xs) + scalar_t(0.5), px1 = px0 + scalar_t(lanes - 1);
          steps.clear();
          V T = V{} + scalar_t(1);
          tile.for_each_candidate(max_used, py, px0, px1, [&](int64_t i) {
            const scalar_t* r = tile[i];
            const V dx = r[kMx] - px;
            const scalar_t dy = r[kMy] - py;
            const V sigma = scalar_t(0.5) * (r[kA] * dx * dx + r[kC] * dy * dy) + r[kB] * dy * dx;
            const M pass = (sigma <= r[kReject]) & (used > static_cast<I>(i));
            if (!any(pass)) return false;
            const V raw = r[kO] * vexp(-sigma);
            const V alpha = raw < max_alpha ? raw : V{} + max_alpha;
            const M contrib = pass & (alpha >= thr);
            if (!any(contrib)) return false;
            const V a = contrib ? alpha : V{};
            steps.push_back(Step{i, a, T, contrib & (raw < max_alpha)});
            T = T * (scalar_t(1) - a);
            return false;
          });
          V suffix = gT * t_final;
          for (auto k = static_cast<int64_t>(steps.size()) - 1; k >= 0; --k) {
            const Step& st = steps[k];
            const int64_t i = st.i;
            const scalar_t* r = tile[i];
            const V w = st.alpha * st.T;
            const scalar_t* f = r + kFeatures;
            V* q = &accv[i * stride];
            V h{};
            for (int64_t d = 0; d < dim; ++d) {
              h += g[d] * f[d];
              q[6 + d] += w * g[d];
            }
            const V g_alpha = st.T * h - suffix / (scalar_t(1) - st.alpha);
            const V g_sigma = st.smooth ? -st.alpha * g_alpha : V{};  // alpha = o exp(-sigma)
            const V dx = r[kMx] - px;
            const scalar_t dy = r[kMy] - py;
            q[0] += g_sigma * (r[kA] * dx + r[kB] * dy);
            q[1] += g_sigma * (r[kB] * dx + r[kC] * dy);
            q[2] += g_sigma * scalar_t(0.5) * dx * dx;
            q[3] += g_sigma * dx * dy;
            q[4] += g_sigma * scalar_t(0.5) * dy * dy;
            q[5] += st.smooth ? g_alpha * st.alpha / r[kO] : V{};
            suffix += w * h;
          }
        }
      }
      scalar_t* pg = pg_all + off[t] * stride;
      for (int64_t k = 0; k < touched * stride; ++k) pg[k] = hsum(accv[k]);
    }
  }

  // Sum the pair slots per Gaussian, in pair order whatever the thread count: list each
  // Gaussian's pairs (a stable counting sort), then sum Gaussians in dynamically shared chunks.
  at::Tensor grad = at::zeros({m, stride}, in.means2d.options());
  scalar_t* gr = grad.data_ptr<scalar_t>();
  std::vector<int64_t> first(static_cast<size_t>(m + 1), 0);
  for (int64_t p = 0; p < pairs; ++p) ++first[id[p] + 1];
  for (int64_t g = 0; g < m; ++g) first[g + 1] += first[g];
  std::vector<int64_t> by_gaussian(static_cast<size_t>(pairs));
  {
    std::vector<int64_t> cursor(first.begin(), first.end() - 1);
    for (int64_t p = 0; p < pairs; ++p) by_gaussian[cursor[id[p]]++] = p;
  }
  parallel_chunks(m, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t gid = lo; gid < hi; ++gid) {
      scalar_t* dst = gr + gid * stride;
      for (int64_t k = first[gid]; k < first[gid + 1]; ++k) {
        const scalar_t* q = pg_all + by_gaussian[k] * stride;
        for (int64_t s = 0; s < stride; ++s) dst[s] += q[s];
      }
    }
  });
  using at::indexing::Slice;
  return {grad.index({Slice(), Slice(0, 2)}), grad.index({Slice(), Slice(2, 5)}), grad.index({Slice(), 5}),
          grad.index({Slice(), Slice(6, at::indexing::None)})};
}

// ------------------------------------------------------------------------------- bindings

void check_float(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

std::vector<at::Tensor> bin_gaussians(const at::Tensor& means2d, const at::Tensor& cov2d, const at::Tensor& opacities,
                                      const at::Tensor& depths, const at::Tensor& camera_ids, int64_t n_cameras,
                                      int64_t width, int64_t height, int64_t tile_size) {
  const auto dtype = means2d.scalar_type();
  check_float(means2d, "means2d", dtype);
  check_float(cov2d, "cov2d", dtype);
  check_float(opacities, "opacities", dtype);
  check_float(depths, "depths", dtype);
  TORCH_CHECK(camera_ids.scalar_type() == at::kLong && camera_ids.is_contiguous(), "camera_ids must be contiguous int64");
  TORCH_CHECK(tile_size > 0 && width > 0 && height > 0 && n_cameras > 0, "bad image or tile size");
  TORCH_CHECK(means2d.size(0) < std::numeric_limits<int32_t>::max(), "too many Gaussians");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(dtype, "bin_gaussians", [&] {
    out = bin_impl<scalar_t>(means2d, cov2d, opacities, depths, camera_ids, n_cameras, width, height, tile_size);
  });
  return out;
}

Inputs check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
                    const at::Tensor& cov2d, const at::Tensor& features, const at::Tensor& offsets,
                    const at::Tensor& ids, int64_t n_cameras, int64_t width, int64_t height, int64_t tile_size) {
  const auto dtype = means2d.scalar_type();
  check_float(means2d, "means2d", dtype);
  check_float(conics, "conics", dtype);
  check_float(opacities, "opacities", dtype);
  check_float(cov2d, "cov2d", dtype);
  check_float(features, "features", dtype);
  const int64_t m = means2d.size(0);
  TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2, "means2d must be [M, 2]");
  TORCH_CHECK(conics.sizes() == at::IntArrayRef({m, 3}) && cov2d.sizes() == at::IntArrayRef({m, 3}),
              "conics and cov2d must be [M, 3]");
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == m, "opacities must be [M]");
  TORCH_CHECK(features.dim() == 2 && features.size(0) == m, "features must be [M, D]");
  TORCH_CHECK(tile_size > 0 && width > 0 && height > 0 && n_cameras > 0, "bad image or tile size");
  const int64_t n_tiles = n_cameras * ((width + tile_size - 1) / tile_size) * ((height + tile_size - 1) / tile_size);
  TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.is_contiguous() && offsets.numel() == n_tiles + 1,
              "offsets must be contiguous int64 [tiles + 1] (from bin_gaussians with the same geometry)");
  TORCH_CHECK(ids.scalar_type() == at::kInt && ids.is_contiguous(), "ids must be contiguous int32");
  return Inputs{means2d, conics, opacities, cov2d, features, offsets, ids, n_cameras, width, height, tile_size};
}

std::vector<at::Tensor> composite_forward(const at::Tensor& means2d, const at::Tensor& conics,
                                          const at::Tensor& opacities, const at::Tensor& cov2d,
                                          const at::Tensor& features, const at::Tensor& offsets, const at::Tensor& ids,
                                          int64_t n_cameras, int64_t width, int64_t height, int64_t tile_size) {
  const Inputs in =
      check_inputs(means2d, conics, opacities, cov2d, features, offsets, ids, n_cameras, width, height, tile_size);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "composite_forward", [&] { out = forward_impl<scalar_t>(in); });
  return out;
}

std::vector<at::Tensor> composite_backward(const at::Tensor& means2d, const at::Tensor& conics,
                                           const at::Tensor& opacities, const at::Tensor& cov2d,
                                           const at::Tensor& features, const at::Tensor& offsets,
                                           const at::Tensor& ids, const at::Tensor& trans, const at::Tensor& last,
                                           const at::Tensor& grad_image, const at::Tensor& grad_trans,
                                           int64_t n_cameras, int64_t width, int64_t height, int64_t tile_size) {
  const Inputs in =
      check_inputs(means2d, conics, opacities, cov2d, features, offsets, ids, n_cameras, width, height, tile_size);
  const auto dtype = means2d.scalar_type();
  check_float(trans, "trans", dtype);
  check_float(grad_image, "grad_image", dtype);
  check_float(grad_trans, "grad_trans", dtype);
  TORCH_CHECK(last.scalar_type() == at::kInt && last.is_contiguous(), "last must be contiguous int32");
  TORCH_CHECK(grad_image.sizes() == at::IntArrayRef({n_cameras, height, width, features.size(1)}),
              "grad_image must be [C, H, W, D]");
  TORCH_CHECK(trans.numel() == n_cameras * height * width && last.numel() == trans.numel() &&
                  grad_trans.numel() == trans.numel(),
              "trans, last and grad_trans must be [C, H, W]");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(dtype, "composite_backward",
                             [&] { out = backward_impl<scalar_t>(in, trans, last, grad_image, grad_trans); });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon torch-3dgs compiled CPU rasteriser (binning and compositing, forward and backward)";
  m.def("bin_gaussians", &bin_gaussians, "tile lists (offsets int64 [tiles + 1], ids int32 [P]), front to back");
  m.def("composite_forward", &composite_forward, "image [C,H,W,D], alpha [C,H,W], transmittance [C,H,W], last [C,H,W] int32");
  m.def("composite_backward", &composite_backward, "gradients of means2d, conics, opacities, features");
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
