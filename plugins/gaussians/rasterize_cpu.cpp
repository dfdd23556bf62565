// Compiled CPU path of the torch-3dgs rasteriser: EWA projection + SH colours + packing, tile
// binning and front-to-back compositing, forward and backward, multi-threaded with OpenMP.
//
// Built just in time by recon_plugins/gaussians/_cpp.py (torch.utils.cpp_extension.load); the
// pure-PyTorch twins are recon_plugins.gaussians.rasterize._pack_gaussians (projection) and
// _composite_gaussians (binning, compositing); tests/test_gaussians_cpu_projection.py and
// tests/test_gaussians_cpu_kernel.py check that both give the same images and gradients.
//
// Rules (gsplat's, as in rasterize.py): alpha = min(0.999, o exp(-sigma)) with
// sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, (dx, dy) = mean - pixel centre, pixel (i, j) centred
// at (j + 0.5, i + 0.5); a pair with alpha < 1/255 is skipped; a pixel stops before the Gaussian
// that would bring its transmittance to <= 1e-4.
//
// Parallelism: one tile is one work item (dynamic schedule: tiles over the scene are much
// heavier than empty ones); within a tile, pixels are independent. On several threads the
// backward writes each (tile, Gaussian) pair's gradient into its own slot, then sums the slots
// per Gaussian in tile order; one thread adds them in that same order as it goes. No atomics
// are needed and results do not depend on the number of threads.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <utility>
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

// Indices 0..n-1 ordered by key, ties by index (a stable LSD radix sort, 8 bits per pass). The
// items moved are (key, index) pairs, so each pass streams through memory instead of reading
// the keys in the order of the previous pass.
template <typename Key>
std::vector<int32_t> stable_order(const std::vector<Key>& keys) {
  struct Item {
    Key key;
    int32_t idx;
  };
  const int64_t n = static_cast<int64_t>(keys.size());
  std::vector<Item> items(n), tmp(n);
  for (int64_t i = 0; i < n; ++i) items[i] = Item{keys[i], static_cast<int32_t>(i)};
  for (int shift = 0; shift < static_cast<int>(8 * sizeof(Key)); shift += 8) {
    int64_t count[257] = {0};
    for (int64_t i = 0; i < n; ++i) ++count[((items[i].key >> shift) & 0xFF) + 1];
    bool trivial = false;
    for (int d = 1; d <= 256; ++d) trivial |= count[d] == n;
    if (trivial) continue;  // every key has the same digit here (common for high bytes)
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (int64_t i = 0; i < n; ++i) tmp[count[(items[i].key >> shift) & 0xFF]++] = items[i];
    items.swap(tmp);
  }
  std::vector<int32_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = items[i].idx;
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

  // Fill in depth order, in bands of tile rows (a band only writes its own tiles' runs; one
  // band on one thread). The boxes are first copied into depth order, so that each band reads
  // them sequentially.
  std::vector<Rect> sorted(m);
  for (int64_t k = 0; k < m; ++k) sorted[k] = rect[order[k]];
  const int64_t rows = n_cameras * tiles_y;
  const int64_t n_bands = threads() == 1 ? 1 : std::min<int64_t>(rows, 4 * threads());
  std::vector<int64_t> cursor(off, off + n_tiles);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads())
  for (int64_t band = 0; band < n_bands; ++band) {
    const int64_t r0 = band * rows / n_bands, r1 = (band + 1) * rows / n_bands;
    for (int64_t k = 0; k < m; ++k) {
      const int32_t g = order[k];
      const Rect& r = sorted[k];
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

// a * b + c, fused where the CPU has FMA (the build passes -ffp-contract=off, so the compiler
// does not contract on its own; vexp uses it explicitly: half the latency of its polynomial).
inline Simd<float>::V fmadd(Simd<float>::V a, Simd<float>::V b, Simd<float>::V c) {
#if defined(__FMA__)
  if constexpr (sizeof(Simd<float>::V) == 32)
    return reinterpret_cast<Simd<float>::V>(
        _mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(c)));
#endif
  return a * b + c;
}

// exp of a float vector (Cody-Waite range reduction + degree-6 polynomial, as in Cephes expf;
// within 2 ulp of std::exp on [-87, 88]). Inputs below -87 give ~1e-38 (alpha far below 1/255).
inline Simd<float>::V vexp(Simd<float>::V x) {
  using V = Simd<float>::V;
  using M = Simd<float>::M;
  x = x < V{} - 87.0f ? V{} - 87.0f : x;
  x = x > V{} + 88.0f ? V{} + 88.0f : x;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const V n = fmadd(x, V{} + 1.44269504088896341f, magic) - magic;
  V r = fmadd(n, V{} - 0.693359375f, x);
  r = fmadd(n, V{} + 2.12194440e-4f, r);
  V p = V{} + 1.9875691500e-4f;
  p = fmadd(p, r, V{} + 1.3981999507e-3f);
  p = fmadd(p, r, V{} + 8.3334519073e-3f);
  p = fmadd(p, r, V{} + 4.1665795894e-2f);
  p = fmadd(p, r, V{} + 1.6666665459e-1f);
  p = fmadd(p, r, V{} + 5.0000001201e-1f);
  p = fmadd(p, r * r, r) + 1.0f;
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
// kDim > 0: the feature width as a compile-time constant (4: rgb + depth, the renderer's case),
// so that the per-pixel feature sums stay in registers; 0: read from the features' shape.
template <typename scalar_t, int kDim>
std::vector<at::Tensor> forward_impl(const Inputs& in) {
  using S = Simd<scalar_t>;
  using V = typename S::V;
  using M = typename S::M;
  using I = typename std::remove_reference<decltype(std::declval<M>()[0])>::type;
  constexpr int L = S::L;
  const int64_t dim = kDim > 0 ? kDim : in.features.size(1);
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
    std::vector<V> acc_dynamic(kDim > 0 ? 0 : dim);
    V acc_fixed[kDim > 0 ? kDim : 1];
    V* const acc = kDim > 0 ? acc_fixed : acc_dynamic.data();
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
          for (int64_t d = 0; d < dim; ++d) acc[d] = V{};
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
template <typename scalar_t, int kDim>
std::vector<at::Tensor> backward_impl(const Inputs& in, const at::Tensor& trans, const at::Tensor& last,
                                      const at::Tensor& grad_image, const at::Tensor& grad_trans) {
  using S = Simd<scalar_t>;
  using V = typename S::V;
  using M = typename S::M;
  using I = typename std::remove_reference<decltype(std::declval<M>()[0])>::type;
  constexpr int L = S::L;
  const int64_t m = in.means2d.size(0);
  const int64_t dim = kDim > 0 ? kDim : in.features.size(1);
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

  // One thread visits the tiles in order, so it adds each tile's sums straight into the
  // Gaussians' rows, in the same order as the slot sums below: the same floats. Several threads
  // write the (tile, entry) slots of the entries a pixel reached (`touched`, often a small part
  // of the list; the other slots are neither written nor summed) and sum them afterwards.
  const bool serial = threads() == 1;
  at::Tensor grad = at::zeros({m, stride}, in.means2d.options());
  scalar_t* gr = grad.data_ptr<scalar_t>();
  std::unique_ptr<scalar_t[]> pair_grad(serial ? nullptr : new scalar_t[static_cast<size_t>(pairs * stride)]);
  scalar_t* pg_all = pair_grad.get();
  std::vector<int64_t> touched_of(static_cast<size_t>(n_tiles), 0);
  const std::vector<scalar_t> records = make_records<scalar_t>(in.means2d, in.conics, in.opacities, in.cov2d, in.features);

  struct Step {
    int64_t i;
    V alpha, T;  // alpha is 0 in lanes where Gaussian i is not composited
    M smooth;    // composited and not clamped to 0.999
  };

#pragma omp parallel num_threads(threads())
  {
    TileData<scalar_t> tile;
    std::vector<V> g_dynamic(kDim > 0 ? 0 : dim), accv;
    V g_fixed[kDim > 0 ? kDim : 1];
    V* const g = kDim > 0 ? g_fixed : g_dynamic.data();
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
          for (int64_t d = 0; d < dim; ++d) g[d] = V{};
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
      touched_of[t] = touched;
      if (serial) {
        for (int64_t k = 0; k < touched; ++k) {
          if (k + 4 < touched) __builtin_prefetch(gr + static_cast<int64_t>(id[off[t] + k + 4]) * stride, 1);
          scalar_t* dst = gr + static_cast<int64_t>(id[off[t] + k]) * stride;
          for (int64_t e = 0; e < stride; ++e) dst[e] += hsum(accv[k * stride + e]);
        }
      } else {
        scalar_t* pg = pg_all + off[t] * stride;
        for (int64_t k = 0; k < touched * stride; ++k) pg[k] = hsum(accv[k]);
      }
    }
  }
  using at::indexing::Slice;
  auto split = [&] {
    return std::vector<at::Tensor>{grad.index({Slice(), Slice(0, 2)}), grad.index({Slice(), Slice(2, 5)}),
                                   grad.index({Slice(), 5}), grad.index({Slice(), Slice(6, at::indexing::None)})};
  };
  if (serial) return split();

  // Sum the written slots per Gaussian, in pair order whatever the thread count: list each
  // Gaussian's slots (a stable counting sort), then sum Gaussians in dynamically shared chunks.
  std::vector<int64_t> first(static_cast<size_t>(m + 1), 0);
  for (int64_t t = 0; t < n_tiles; ++t)
    for (int64_t p = off[t]; p < off[t] + touched_of[t]; ++p) ++first[id[p] + 1];
  for (int64_t g = 0; g < m; ++g) first[g + 1] += first[g];
  std::vector<int64_t> by_gaussian(static_cast<size_t>(first[m]));
  {
    std::vector<int64_t> cursor(first.begin(), first.end() - 1);
    for (int64_t t = 0; t < n_tiles; ++t)
      for (int64_t p = off[t]; p < off[t] + touched_of[t]; ++p) by_gaussian[cursor[id[p]]++] = p;
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
  return split();
}

// ------------------------------------------------------------------------------- bindings

void check_float(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// check_float for several (tensor, name) pairs, all of one dtype
void check_floats(at::ScalarType dtype, std::initializer_list<std::pair<const at::Tensor&, const char*>> tensors) {
  for (const auto& [t, name] : tensors) check_float(t, name, dtype);
}

std::vector<at::Tensor> bin_gaussians(const at::Tensor& means2d, const at::Tensor& cov2d, const at::Tensor& opacities,
                                      const at::Tensor& depths, const at::Tensor& camera_ids, int64_t n_cameras,
                                      int64_t width, int64_t height, int64_t tile_size) {
  const auto dtype = means2d.scalar_type();
  check_floats(dtype, {{means2d, "means2d"}, {cov2d, "cov2d"}, {opacities, "opacities"}, {depths, "depths"}});
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
  check_floats(means2d.scalar_type(), {{means2d, "means2d"}, {conics, "conics"}, {opacities, "opacities"},
                                       {cov2d, "cov2d"}, {features, "features"}});
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
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "composite_forward", [&] {
    out = in.features.size(1) == 4 ? forward_impl<scalar_t, 4>(in) : forward_impl<scalar_t, 0>(in);
  });
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
  check_floats(dtype, {{trans, "trans"}, {grad_image, "grad_image"}, {grad_trans, "grad_trans"}});
  TORCH_CHECK(last.scalar_type() == at::kInt && last.is_contiguous(), "last must be contiguous int32");
  TORCH_CHECK(grad_image.sizes() == at::IntArrayRef({n_cameras, height, width, features.size(1)}),
              "grad_image must be [C, H, W, D]");
  TORCH_CHECK(trans.numel() == n_cameras * height * width && last.numel() == trans.numel() &&
                  grad_trans.numel() == trans.numel(),
              "trans, last and grad_trans must be [C, H, W]");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(dtype, "composite_backward",
                             [&] {
    out = features.size(1) == 4 ? backward_impl<scalar_t, 4>(in, trans, last, grad_image, grad_trans)
                                : backward_impl<scalar_t, 0>(in, trans, last, grad_image, grad_trans);
  });
  return out;
}

// ------------------------------------------------------- projection + SH colours + packing
//
// Fused twin of rasterize.project_gaussians + sh_to_colors + the packing in
// rasterize.rasterize_gaussians (same formulas, same order of the packed pairs: camera-major,
// then Gaussian index, as torch.nonzero gives them), forward and hand-written backward.
// The forward works per Gaussian (all cameras at once), parallel over chunks of Gaussians; a
// pair (c, n) is kept when its radii are both positive and opacity >= 1/255. The backward also
// runs per Gaussian, so each Gaussian's gradient is written by one thread (no atomics); the
// camera gradients (viewmats and camera centres) are summed per fixed chunk of Gaussians in
// double precision and the chunks are added in order, so results do not depend on the thread
// count.

constexpr int64_t kProjectGrain = 512;  // Gaussians per work item (and per camera-gradient partial)

// Real SH basis values (the 3DGS sign convention of rasterize.eval_sh_bases), degree 0..3, of
// the unit direction (x, y, z).
template <typename T>
inline void sh_bases(int degree, T x, T y, T z, T* b) {
  b[0] = T(0.28209479177387814);
  if (degree < 1) return;
  const T c1 = T(0.4886025119029199);
  b[1] = -c1 * y;
  b[2] = c1 * z;
  b[3] = -c1 * x;
  if (degree < 2) return;
  const T xx = x * x, yy = y * y, zz = z * z;
  b[4] = T(1.0925484305920792) * x * y;
  b[5] = T(-1.0925484305920792) * y * z;
  b[6] = T(0.31539156525252005) * (T(2) * zz - xx - yy);
  b[7] = T(-1.0925484305920792) * x * z;
  b[8] = T(0.5462742152960396) * (xx - yy);
  if (degree < 3) return;
  b[9] = T(-0.5900435899266435) * y * (T(3) * xx - yy);
  b[10] = T(2.890611442640554) * x * y * z;
  b[11] = T(-0.4570457994644658) * y * (T(4) * zz - xx - yy);
  b[12] = T(0.3731763325901154) * z * (T(2) * zz - T(3) * xx - T(3) * yy);
  b[13] = T(-0.4570457994644658) * x * (T(4) * zz - xx - yy);
  b[14] = T(1.445305721320277) * z * (xx - yy);
  b[15] = T(-0.5900435899266435) * x * (xx - T(3) * yy);
}

// Gradient of sum_b g[b] * basis_b(x, y, z) with respect to the unit direction (degree >= 1).
template <typename T>
inline void sh_bases_backward(int degree, T x, T y, T z, const T* g, T* gd) {
  const T c1 = T(0.4886025119029199);
  T gx = -c1 * g[3], gy = -c1 * g[1], gz = c1 * g[2];
  if (degree >= 2) {
    const T c20 = T(1.0925484305920792), c22 = T(0.31539156525252005), c24 = T(0.5462742152960396);
    gx += c20 * y * g[4] - T(2) * c22 * x * g[6] - c20 * z * g[7] + T(2) * c24 * x * g[8];
    gy += c20 * x * g[4] - c20 * z * g[5] - T(2) * c22 * y * g[6] - T(2) * c24 * y * g[8];
    gz += -c20 * y * g[5] + T(4) * c22 * z * g[6] - c20 * x * g[7];
  }
  if (degree >= 3) {
    const T c30 = T(0.5900435899266435), c31 = T(2.890611442640554), c32 = T(0.4570457994644658);
    const T c33 = T(0.3731763325901154), c34 = T(1.445305721320277);
    const T xx = x * x, yy = y * y, zz = z * z;
    gx += -c30 * T(6) * x * y * g[9] + c31 * y * z * g[10] + T(2) * c32 * x * y * g[11] -
          T(6) * c33 * x * z * g[12] - c32 * (T(4) * zz - T(3) * xx - yy) * g[13] + T(2) * c34 * x * z * g[14] -
          c30 * T(3) * (xx - yy) * g[15];
    gy += -c30 * T(3) * (xx - yy) * g[9] + c31 * x * z * g[10] - c32 * (T(4) * zz - xx - T(3) * yy) * g[11] -
          T(6) * c33 * y * z * g[12] + T(2) * c32 * x * y * g[13] - T(2) * c34 * y * z * g[14] +
          T(6) * c30 * x * y * g[15];
    gz += c31 * x * y * g[10] - T(8) * c32 * y * z * g[11] + c33 * (T(6) * zz - T(3) * xx - T(3) * yy) * g[12] -
          T(8) * c32 * x * z * g[13] + c34 * (xx - yy) * g[14];
  }
  gd[0] = gx;
  gd[1] = gy;
  gd[2] = gz;
}

// Unit quaternion (F.normalize with eps 1e-12) and its rotation matrix (recon_core.geometry).
template <typename T>
inline void quat_rotation(const T* q, T* qn, T* R) {
  const T norm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const T d = std::max(norm, T(1e-12));
  for (int k = 0; k < 4; ++k) qn[k] = q[k] / d;
  const T w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  R[0] = T(1) - T(2) * (y * y + z * z);
  R[1] = T(2) * (x * y - w * z);
  R[2] = T(2) * (x * z + w * y);
  R[3] = T(2) * (x * y + w * z);
  R[4] = T(1) - T(2) * (x * x + z * z);
  R[5] = T(2) * (y * z - w * x);
  R[6] = T(2) * (x * z - w * y);
  R[7] = T(2) * (y * z + w * x);
  R[8] = T(1) - T(2) * (x * x + y * y);
}

// Gradient of the raw quaternion q from the gradient G of its rotation matrix.
template <typename T>
inline void quat_rotation_backward(const T* q, const T* qn, const T* G, T* gq) {
  const T w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  T g[4];
  g[0] = T(2) * (-z * G[1] + y * G[2] + z * G[3] - x * G[5] - y * G[6] + x * G[7]);
  g[1] = T(2) * (y * G[1] + z * G[2] + y * G[3] - T(2) * x * G[4] - w * G[5] + z * G[6] + w * G[7] - T(2) * x * G[8]);
  g[2] = T(2) * (-T(2) * y * G[0] + x * G[1] + w * G[2] + x * G[3] + z * G[5] - w * G[6] + z * G[7] - T(2) * y * G[8]);
  g[3] = T(2) * (-T(2) * z * G[0] - w * G[1] + x * G[2] + w * G[3] - T(2) * z * G[4] + y * G[5] + x * G[6] + y * G[7]);
  const T norm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  if (norm > T(1e-12)) {
    const T dot = qn[0] * g[0] + qn[1] * g[1] + qn[2] * g[2] + qn[3] * g[3];
    for (int k = 0; k < 4; ++k) gq[k] = (g[k] - qn[k] * dot) / norm;
  } else {
    for (int k = 0; k < 4; ++k) gq[k] = g[k] / T(1e-12);
  }
}

// d max(a, b) / d a as torch gives it: 1 where a > b, 1/2 at a tie, 0 below.
template <typename T>
inline T pass_max(T a, T b) { return a > b ? T(1) : (a == b ? T(0.5) : T(0)); }

template <typename T>
struct CameraParams {
  T R[9], t[3], K[6], centre[3];
  T x_lim_pos, x_lim_neg, y_lim_pos, y_lim_neg;
};

template <typename T>
std::vector<CameraParams<T>> camera_params(const at::Tensor& viewmats, const at::Tensor& centres, const at::Tensor& Ks,
                                           int64_t width, int64_t height) {
  const int64_t n_cams = viewmats.size(0);
  const T* v = viewmats.data_ptr<T>();
  const T* c = centres.data_ptr<T>();
  const T* k = Ks.data_ptr<T>();
  std::vector<CameraParams<T>> cams(n_cams);
  for (int64_t i = 0; i < n_cams; ++i) {
    CameraParams<T>& p = cams[i];
    for (int r = 0; r < 3; ++r) {
      for (int col = 0; col < 3; ++col) p.R[3 * r + col] = v[16 * i + 4 * r + col];
      p.t[r] = v[16 * i + 4 * r + 3];
      p.centre[r] = c[3 * i + r];
    }
    for (int e = 0; e < 6; ++e) p.K[e] = k[9 * i + e];  // the first two rows of K
    const T fx = p.K[0], fy = p.K[4], cx = p.K[2], cy = p.K[5];
    // 1.3 x the field of view, as rasterize.project_gaussians
    const T half_x = T(0.5) * T(width) / fx, half_y = T(0.5) * T(height) / fy;
    p.x_lim_pos = (T(width) - cx) / fx + T(0.3) * half_x;
    p.x_lim_neg = cx / fx + T(0.3) * half_x;
    p.y_lim_pos = (T(height) - cy) / fy + T(0.3) * half_y;
    p.y_lim_neg = cy / fy + T(0.3) * half_y;
  }
  return cams;
}

// Everything the projection of one (camera, Gaussian) pair computes; the backward recomputes it.
template <typename T>
struct PairProjection {
  T p[3], zs, tx, ty, W[9], rx[3], ry[3], cxx, cyy, cxy, det_raw, det, u, v;
  bool in_depth;
};

template <typename T>
inline void project_pair(const CameraParams<T>& cam, const T* mean, const T* QS, T eps2d, T near_plane,
                         T far_plane, PairProjection<T>& o) {
  const T* R = cam.R;
  for (int i = 0; i < 3; ++i) o.p[i] = R[3 * i] * mean[0] + R[3 * i + 1] * mean[1] + R[3 * i + 2] * mean[2] + cam.t[i];
  const T z = o.p[2];
  o.in_depth = z > near_plane && z < far_plane;
  o.zs = o.in_depth ? z : T(1);
  const T fx = cam.K[0], fy = cam.K[4];
  o.tx = std::min(std::max(o.p[0] / o.zs, -cam.x_lim_neg), cam.x_lim_pos);
  o.ty = std::min(std::max(o.p[1] / o.zs, -cam.y_lim_neg), cam.y_lim_pos);
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) o.W[3 * i + k] = R[3 * i] * QS[k] + R[3 * i + 1] * QS[3 + k] + R[3 * i + 2] * QS[6 + k];
  const T inv_z = T(1) / o.zs;
  const T ax = fx * inv_z, ay = fy * inv_z;
  o.cxx = eps2d;
  o.cyy = eps2d;
  o.cxy = 0;
  T sxx = 0, syy = 0, sxy = 0;
  for (int k = 0; k < 3; ++k) {
    o.rx[k] = ax * (o.W[k] - o.tx * o.W[6 + k]);
    o.ry[k] = ay * (o.W[3 + k] - o.ty * o.W[6 + k]);
    sxx += o.rx[k] * o.rx[k];
    syy += o.ry[k] * o.ry[k];
    sxy += o.rx[k] * o.ry[k];
  }
  o.cxx = sxx + eps2d;
  o.cyy = syy + eps2d;
  o.cxy = sxy;
  o.det_raw = o.cxx * o.cyy - o.cxy * o.cxy;
  o.det = std::max(o.det_raw, T(1e-10));
  const T* K = cam.K;
  o.u = (K[0] * o.p[0] + K[1] * o.p[1] + K[2] * o.p[2]) / o.zs;
  o.v = (K[3] * o.p[0] + K[4] * o.p[1] + K[5] * o.p[2]) / o.zs;
}

// R(q) diag(s) of one Gaussian (row-major 3 x 3), with the unit quaternion and R(q).
template <typename T>
inline void rotation_scale(const T* q, const T* s, T* qn, T* Q, T* QS) {
  quat_rotation(q, qn, Q);
  for (int j = 0; j < 3; ++j)
    for (int k = 0; k < 3; ++k) QS[3 * j + k] = Q[3 * j + k] * s[k];
}

struct ProjectArgs {
  at::Tensor means, quats, scales, opacities, colors, viewmats, centres, Ks;
  int64_t sh_degree;  // -1: colours [N, 3] instead of SH [N, K, 3]
  int64_t width, height;
  double eps2d, near_plane, far_plane;
};

// The inputs of one projection call as raw pointers and scalars (forward and backward).
template <typename T>
struct ProjectInputs {
  int64_t n, n_cams;
  std::vector<CameraParams<T>> cams;
  const T *means, *quats, *scales, *opac, *col;
  T eps2d, near_plane, far_plane;
  int degree;        // -1: colours [N, 3]
  int64_t k_coeffs;  // SH coefficients stored per Gaussian (1 for colours)
  int n_bases;       // (degree + 1)^2 of them evaluated (0 for colours)

  explicit ProjectInputs(const ProjectArgs& a)
      : n(a.means.size(0)),
        n_cams(a.viewmats.size(0)),
        cams(camera_params<T>(a.viewmats, a.centres, a.Ks, a.width, a.height)),
        means(a.means.data_ptr<T>()),
        quats(a.quats.data_ptr<T>()),
        scales(a.scales.data_ptr<T>()),
        opac(a.opacities.data_ptr<T>()),
        col(a.colors.data_ptr<T>()),
        eps2d(T(a.eps2d)),
        near_plane(T(a.near_plane)),
        far_plane(T(a.far_plane)),
        degree(static_cast<int>(a.sh_degree)),
        k_coeffs(a.sh_degree >= 0 ? a.colors.size(1) : 1),
        n_bases(a.sh_degree >= 0 ? static_cast<int>((a.sh_degree + 1) * (a.sh_degree + 1)) : 0) {}
};

template <typename T>
std::vector<at::Tensor> project_forward_impl(const ProjectArgs& a) {
  const ProjectInputs<T> in(a);
  const int64_t n = in.n, n_cams = in.n_cams;
  const auto& cams = in.cams;
  const T alpha_min = T(kAlphaThreshold), sigmas = T(kRadiusSigmas);
  const T w_img = T(a.width), h_img = T(a.height);

  // pass 1: project every pair; keep the outputs of the visible ones in pair order
  constexpr int kPairFields = 11;  // u, v, conic (3), cov2d (3), depth, radii (2)
  std::unique_ptr<T[]> pair(new T[static_cast<size_t>(n_cams * n * kPairFields)]);  // read only where visible
  std::vector<uint8_t> visible(static_cast<size_t>(n_cams * n), 0);
  const int64_t n_chunks = (n + kProjectGrain - 1) / kProjectGrain;
  std::vector<int64_t> count(static_cast<size_t>(n_cams * n_chunks + 1), 0);
  parallel_chunks(n, kProjectGrain, [&](int64_t begin, int64_t end) {
    const int64_t chunk = begin / kProjectGrain;
    PairProjection<T> o;
    for (int64_t g = begin; g < end; ++g) {
      T qn[4], Q[9], QS[9];
      rotation_scale(in.quats + 4 * g, in.scales + 3 * g, qn, Q, QS);
      const bool opaque = in.opac[g] >= alpha_min;
      for (int64_t c = 0; c < n_cams; ++c) {
        project_pair(cams[c], in.means + 3 * g, QS, in.eps2d, in.near_plane, in.far_plane, o);
        const T rad_x = std::ceil(sigmas * std::sqrt(o.cxx)), rad_y = std::ceil(sigmas * std::sqrt(o.cyy));
        const bool inside = o.u + rad_x > 0 && o.u - rad_x < w_img && o.v + rad_y > 0 && o.v - rad_y < h_img;
        if (!(o.in_depth && inside && rad_x > 0 && rad_y > 0 && opaque)) continue;
        const int64_t pi = c * n + g;
        visible[pi] = 1;
        ++count[c * n_chunks + chunk + 1];
        T* out = &pair[pi * kPairFields];
        out[0] = o.u;
        out[1] = o.v;
        out[2] = o.cyy / o.det;
        out[3] = -o.cxy / o.det;
        out[4] = o.cxx / o.det;
        out[5] = o.cxx;
        out[6] = o.cxy;
        out[7] = o.cyy;
        out[8] = o.p[2];
        out[9] = rad_x;
        out[10] = rad_y;
      }
    }
  });
  for (size_t i = 1; i < count.size(); ++i) count[i] += count[i - 1];  // start of each (camera, chunk)
  const int64_t m = count.back();

  const auto fopt = a.means.options();
  at::Tensor means2d = at::empty({m, 2}, fopt), conics = at::empty({m, 3}, fopt), opac_p = at::empty({m}, fopt);
  at::Tensor features = at::empty({m, 4}, fopt), cov2d = at::empty({m, 3}, fopt);
  at::Tensor camera_ids = at::empty({m}, fopt.dtype(at::kLong)), gauss_ids = at::empty({m}, fopt.dtype(at::kLong));
  at::Tensor radii = at::empty({m, 2}, fopt.dtype(at::kInt));
  at::Tensor index = at::empty({n_cams, n}, fopt.dtype(at::kInt));  // packed index of each pair, -1: culled
  T* o_m2d = means2d.data_ptr<T>();
  T* o_con = conics.data_ptr<T>();
  T* o_op = opac_p.data_ptr<T>();
  T* o_feat = features.data_ptr<T>();
  T* o_cov = cov2d.data_ptr<T>();
  int64_t* o_cam = camera_ids.data_ptr<int64_t>();
  int64_t* o_gid = gauss_ids.data_ptr<int64_t>();
  int32_t* o_rad = radii.data_ptr<int32_t>();
  int32_t* o_index = index.data_ptr<int32_t>();

  // pass 2: pack the visible pairs and evaluate their colours
  parallel_chunks(n, kProjectGrain, [&](int64_t begin, int64_t end) {
    const int64_t chunk = begin / kProjectGrain;
    for (int64_t c = 0; c < n_cams; ++c) {
      int64_t j = count[c * n_chunks + chunk];
      for (int64_t g = begin; g < end; ++g) {
        const int64_t pi = c * n + g;
        if (!visible[pi]) {
          o_index[pi] = -1;
          continue;
        }
        o_index[pi] = static_cast<int32_t>(j);
        const T* pr = &pair[pi * kPairFields];
        o_m2d[2 * j] = pr[0];
        o_m2d[2 * j + 1] = pr[1];
        for (int e = 0; e < 3; ++e) {
          o_con[3 * j + e] = pr[2 + e];
          o_cov[3 * j + e] = pr[5 + e];
        }
        o_op[j] = in.opac[g];
        o_cam[j] = c;
        o_gid[j] = g;
        o_rad[2 * j] = static_cast<int32_t>(pr[9]);
        o_rad[2 * j + 1] = static_cast<int32_t>(pr[10]);
        T* f = &o_feat[4 * j];
        f[3] = pr[8];
        if (in.degree < 0) {
          for (int e = 0; e < 3; ++e) f[e] = in.col[3 * g + e];
        } else {
          T b[16], dir[3] = {0, 0, 0};
          if (in.degree >= 1) {
            for (int e = 0; e < 3; ++e) dir[e] = in.means[3 * g + e] - cams[c].centre[e];
            const T d = std::max(std::sqrt(dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]), T(1e-12));
            for (int e = 0; e < 3; ++e) dir[e] /= d;
          }
          sh_bases(in.degree, dir[0], dir[1], dir[2], b);
          const T* sh = in.col + g * in.k_coeffs * 3;
          for (int e = 0; e < 3; ++e) {
            T s = 0;
            for (int k = 0; k < in.n_bases; ++k) s += b[k] * sh[3 * k + e];
            f[e] = std::max(s + T(0.5), T(0));
          }
        }
        ++j;
      }
    }
  });
  return {means2d, conics, opac_p, features, cov2d, camera_ids, gauss_ids, radii, index};
}

template <typename T>
std::vector<at::Tensor> project_backward_impl(const ProjectArgs& a, const at::Tensor& index,
                                              const at::Tensor& grad_means2d, const at::Tensor& grad_conics,
                                              const at::Tensor& grad_opacities, const at::Tensor& grad_features) {
  const ProjectInputs<T> in(a);
  const int64_t n = in.n, n_cams = in.n_cams;
  const auto& cams = in.cams;
  const int32_t* idx = index.data_ptr<int32_t>();
  const T* gm2d = grad_means2d.data_ptr<T>();
  const T* gcon = grad_conics.data_ptr<T>();
  const T* gop = grad_opacities.data_ptr<T>();
  const T* gfeat = grad_features.data_ptr<T>();

  // every entry is written below (zeros for Gaussians without a visible pair): no zero fill first
  at::Tensor g_means = at::empty_like(a.means), g_quats = at::empty_like(a.quats);
  at::Tensor g_scales = at::empty_like(a.scales), g_opac = at::empty_like(a.opacities);
  at::Tensor g_colors = at::empty_like(a.colors);
  const int64_t colour_row = in.degree >= 0 ? in.k_coeffs * 3 : 3;
  T* o_means = g_means.data_ptr<T>();
  T* o_quats = g_quats.data_ptr<T>();
  T* o_scales = g_scales.data_ptr<T>();
  T* o_opac = g_opac.data_ptr<T>();
  T* o_col = g_colors.data_ptr<T>();

  // per chunk and camera: d/d viewmat (rows 0-2, 12 entries) and d/d centre (3), in double
  constexpr int kCamFields = 15;
  const int64_t n_chunks = (n + kProjectGrain - 1) / kProjectGrain;
  std::vector<double> partial(static_cast<size_t>(n_chunks * n_cams * kCamFields), 0.0);

  parallel_chunks(n, kProjectGrain, [&](int64_t begin, int64_t end) {
    double* cam_acc = &partial[(begin / kProjectGrain) * n_cams * kCamFields];
    PairProjection<T> o;
    for (int64_t g = begin; g < end; ++g) {
      bool any = false;
      for (int64_t c = 0; c < n_cams; ++c) any |= idx[c * n + g] >= 0;
      std::fill_n(o_col + g * colour_row, colour_row, T(0));
      if (!any) {
        std::fill_n(o_means + 3 * g, 3, T(0));
        std::fill_n(o_quats + 4 * g, 4, T(0));
        std::fill_n(o_scales + 3 * g, 3, T(0));
        o_opac[g] = 0;
        continue;
      }
      const T* mean = in.means + 3 * g;
      const T* s = in.scales + 3 * g;
      T qn[4], Q[9], QS[9];
      rotation_scale(in.quats + 4 * g, s, qn, Q, QS);
      T g_mean[3] = {0, 0, 0}, g_QS[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0}, g_op = 0;
      for (int64_t c = 0; c < n_cams; ++c) {
        const int64_t j = idx[c * n + g];
        if (j < 0) continue;
        const CameraParams<T>& cam = cams[c];
        double* acc = cam_acc + c * kCamFields;
        g_op += gop[j];
        const T* gf = gfeat + 4 * j;
        // colours
        if (in.degree < 0) {
          for (int e = 0; e < 3; ++e) o_col[3 * g + e] += gf[e];
        } else {
          T b[16], dir[3] = {0, 0, 0}, raw[3] = {0, 0, 0}, len = 1;
          if (in.degree >= 1) {
            for (int e = 0; e < 3; ++e) raw[e] = mean[e] - cam.centre[e];
            len = std::sqrt(raw[0] * raw[0] + raw[1] * raw[1] + raw[2] * raw[2]);
            const T d = std::max(len, T(1e-12));
            for (int e = 0; e < 3; ++e) dir[e] = raw[e] / d;
          }
          sh_bases(in.degree, dir[0], dir[1], dir[2], b);
          const T* sh = in.col + g * in.k_coeffs * 3;
          T* gsh = o_col + g * in.k_coeffs * 3;
          T g_rgb[3];
          for (int e = 0; e < 3; ++e) {
            T sum = 0;
            for (int k = 0; k < in.n_bases; ++k) sum += b[k] * sh[3 * k + e];
            g_rgb[e] = sum + T(0.5) >= T(0) ? gf[e] : T(0);  // clamp_min(0) passes the gradient at >= 0
          }
          for (int k = 0; k < in.n_bases; ++k)
            for (int e = 0; e < 3; ++e) gsh[3 * k + e] += b[k] * g_rgb[e];
          if (in.degree >= 1) {
            T g_b[16], g_dir[3];
            for (int k = 0; k < in.n_bases; ++k) g_b[k] = sh[3 * k] * g_rgb[0] + sh[3 * k + 1] * g_rgb[1] + sh[3 * k + 2] * g_rgb[2];
            sh_bases_backward(in.degree, dir[0], dir[1], dir[2], g_b, g_dir);
            T g_raw[3];
            if (len > T(1e-12)) {
              const T dot = dir[0] * g_dir[0] + dir[1] * g_dir[1] + dir[2] * g_dir[2];
              for (int e = 0; e < 3; ++e) g_raw[e] = (g_dir[e] - dir[e] * dot) / len;
            } else {
              for (int e = 0; e < 3; ++e) g_raw[e] = g_dir[e] / T(1e-12);
            }
            for (int e = 0; e < 3; ++e) {
              g_mean[e] += g_raw[e];
              acc[12 + e] -= static_cast<double>(g_raw[e]);
            }
          }
        }
        // projection
        project_pair(cam, mean, QS, in.eps2d, in.near_plane, in.far_plane, o);
        const T* K = cam.K;
        const T fx = K[0], fy = K[4];
        T g_p[3] = {0, 0, gf[3]};  // the depth feature is p_z
        T g_zs = 0;
        // means2d = K[:2] p / zs
        const T gu = gm2d[2 * j], gv = gm2d[2 * j + 1];
        const T inv_zs = T(1) / o.zs;
        for (int e = 0; e < 3; ++e) g_p[e] += (K[e] * gu + K[3 + e] * gv) * inv_zs;
        g_zs -= (o.u * gu + o.v * gv) * inv_zs;
        // conics = (cyy, -cxy, cxx) / det, det = max(cxx cyy - cxy², 1e-10)
        const T ga = gcon[3 * j], gb = gcon[3 * j + 1], gc = gcon[3 * j + 2];
        const T inv_det = T(1) / o.det;
        T g_cxx = gc * inv_det, g_cyy = ga * inv_det, g_cxy = -gb * inv_det;
        const T g_det = -(ga * o.cyy - gb * o.cxy + gc * o.cxx) * inv_det * inv_det;
        if (o.det_raw >= T(1e-10)) {
          g_cxx += g_det * o.cyy;
          g_cyy += g_det * o.cxx;
          g_cxy -= T(2) * o.cxy * g_det;
        }
        // rows of J W: rx = ax (W0 - tx W2), ry = ay (W1 - ty W2)
        const T inv_z = T(1) / o.zs;
        const T ax = fx * inv_z, ay = fy * inv_z;
        T g_rx[3], g_ry[3], g_ax = 0, g_ay = 0, g_tx = 0, g_ty = 0, g_W[9];
        for (int k = 0; k < 3; ++k) {
          g_rx[k] = T(2) * g_cxx * o.rx[k] + g_cxy * o.ry[k];
          g_ry[k] = T(2) * g_cyy * o.ry[k] + g_cxy * o.rx[k];
          const T dx = o.W[k] - o.tx * o.W[6 + k], dy = o.W[3 + k] - o.ty * o.W[6 + k];
          g_ax += dx * g_rx[k];
          g_ay += dy * g_ry[k];
          g_tx -= ax * o.W[6 + k] * g_rx[k];
          g_ty -= ay * o.W[6 + k] * g_ry[k];
          g_W[k] = ax * g_rx[k];
          g_W[3 + k] = ay * g_ry[k];
          g_W[6 + k] = -(ax * o.tx * g_rx[k] + ay * o.ty * g_ry[k]);
        }
        g_zs -= (fx * g_ax + fy * g_ay) * inv_z * inv_z;
        // tx = clamp(px / zs), ty = clamp(py / zs) (torch's min/max: half the gradient at a tie)
        const T xz = o.p[0] / o.zs, yz = o.p[1] / o.zs;
        const T mx = std::max(xz, -cam.x_lim_neg), my = std::max(yz, -cam.y_lim_neg);
        const T g_xz = g_tx * pass_max(cam.x_lim_pos, mx) * pass_max(xz, -cam.x_lim_neg);
        const T g_yz = g_ty * pass_max(cam.y_lim_pos, my) * pass_max(yz, -cam.y_lim_neg);
        g_p[0] += g_xz * inv_zs;
        g_p[1] += g_yz * inv_zs;
        g_zs -= (g_xz * o.p[0] + g_yz * o.p[1]) * inv_zs * inv_zs;
        if (o.in_depth) g_p[2] += g_zs;
        // W = R QS; p = R mean + t
        const T* R = cam.R;
        for (int jj = 0; jj < 3; ++jj)
          for (int k = 0; k < 3; ++k)
            g_QS[3 * jj + k] += R[jj] * g_W[k] + R[3 + jj] * g_W[3 + k] + R[6 + jj] * g_W[6 + k];
        for (int i = 0; i < 3; ++i) {
          for (int jj = 0; jj < 3; ++jj) {
            const T gR = g_W[3 * i] * QS[3 * jj] + g_W[3 * i + 1] * QS[3 * jj + 1] + g_W[3 * i + 2] * QS[3 * jj + 2] +
                         g_p[i] * mean[jj];
            acc[4 * i + jj] += static_cast<double>(gR);
          }
          acc[4 * i + 3] += static_cast<double>(g_p[i]);
        }
        for (int e = 0; e < 3; ++e) g_mean[e] += R[e] * g_p[0] + R[3 + e] * g_p[1] + R[6 + e] * g_p[2];
      }
      // QS = R(q) diag(s)
      T g_Q[9], g_s[3] = {0, 0, 0};
      for (int jj = 0; jj < 3; ++jj)
        for (int k = 0; k < 3; ++k) {
          g_s[k] += Q[3 * jj + k] * g_QS[3 * jj + k];
          g_Q[3 * jj + k] = g_QS[3 * jj + k] * s[k];
        }
      for (int k = 0; k < 3; ++k) o_scales[3 * g + k] = g_s[k];
      quat_rotation_backward(in.quats + 4 * g, qn, g_Q, o_quats + 4 * g);
      for (int e = 0; e < 3; ++e) o_means[3 * g + e] = g_mean[e];
      o_opac[g] = g_op;
    }
  });
  at::Tensor g_view = at::zeros({n_cams, 4, 4}, a.means.options().dtype(at::kDouble));
  at::Tensor g_centre = at::zeros({n_cams, 3}, a.means.options().dtype(at::kDouble));
  double* gv = g_view.data_ptr<double>();
  double* gcen = g_centre.data_ptr<double>();
  for (int64_t ch = 0; ch < n_chunks; ++ch)  // in chunk order: the same sum for any thread count
    for (int64_t c = 0; c < n_cams; ++c) {
      const double* acc = &partial[(ch * n_cams + c) * kCamFields];
      for (int e = 0; e < 12; ++e) gv[16 * c + e] += acc[e];
      for (int e = 0; e < 3; ++e) gcen[3 * c + e] += acc[12 + e];
    }
  return {g_means, g_quats, g_scales, g_opac, g_colors, g_view.to(a.means.scalar_type()),
          g_centre.to(a.means.scalar_type())};
}

ProjectArgs check_project_args(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                               const at::Tensor& opacities, const at::Tensor& colors, int64_t sh_degree,
                               const at::Tensor& viewmats, const at::Tensor& centres, const at::Tensor& Ks,
                               int64_t width, int64_t height, double eps2d, double near_plane, double far_plane) {
  check_floats(means.scalar_type(), {{means, "means"}, {quats, "quats"}, {scales, "scales"}, {opacities, "opacities"},
                                     {colors, "colors"}, {viewmats, "viewmats"}, {centres, "centres"}, {Ks, "Ks"}});
  const int64_t n = means.size(0);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be [N, 3]");
  TORCH_CHECK(quats.sizes() == at::IntArrayRef({n, 4}), "quats must be [N, 4]");
  TORCH_CHECK(scales.sizes() == at::IntArrayRef({n, 3}), "scales must be [N, 3]");
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == n, "opacities must be [N]");
  TORCH_CHECK(sh_degree >= -1 && sh_degree <= 3, "sh_degree must be -1 (colours) or 0..3");
  if (sh_degree < 0) {
    TORCH_CHECK(colors.sizes() == at::IntArrayRef({n, 3}), "colors must be [N, 3]");
  } else {
    TORCH_CHECK(colors.dim() == 3 && colors.size(0) == n && colors.size(2) == 3 &&
                    colors.size(1) >= (sh_degree + 1) * (sh_degree + 1),
                "sh must be [N, K, 3] with K >= (sh_degree + 1)^2");
  }
  const int64_t c = viewmats.size(0);
  TORCH_CHECK(viewmats.sizes() == at::IntArrayRef({c, 4, 4}), "viewmats must be [C, 4, 4]");
  TORCH_CHECK(centres.sizes() == at::IntArrayRef({c, 3}), "centres must be [C, 3]");
  TORCH_CHECK(Ks.sizes() == at::IntArrayRef({c, 3, 3}), "Ks must be [C, 3, 3]");
  TORCH_CHECK(width > 0 && height > 0, "bad image size");
  TORCH_CHECK(c * n < std::numeric_limits<int32_t>::max(), "too many (camera, Gaussian) pairs");
  return ProjectArgs{means, quats, scales, opacities, colors, viewmats, centres, Ks, sh_degree, width, height,
                     eps2d, near_plane, far_plane};
}

std::vector<at::Tensor> project_forward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                        const at::Tensor& opacities, const at::Tensor& colors, int64_t sh_degree,
                                        const at::Tensor& viewmats, const at::Tensor& centres, const at::Tensor& Ks,
                                        int64_t width, int64_t height, double eps2d, double near_plane,
                                        double far_plane) {
  const ProjectArgs a = check_project_args(means, quats, scales, opacities, colors, sh_degree, viewmats, centres, Ks,
                                           width, height, eps2d, near_plane, far_plane);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] { out = project_forward_impl<scalar_t>(a); });
  return out;
}

std::vector<at::Tensor> project_backward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                         const at::Tensor& opacities, const at::Tensor& colors, int64_t sh_degree,
                                         const at::Tensor& viewmats, const at::Tensor& centres, const at::Tensor& Ks,
                                         int64_t width, int64_t height, double eps2d, double near_plane,
                                         double far_plane, const at::Tensor& index, const at::Tensor& grad_means2d,
                                         const at::Tensor& grad_conics, const at::Tensor& grad_opacities,
                                         const at::Tensor& grad_features) {
  const ProjectArgs a = check_project_args(means, quats, scales, opacities, colors, sh_degree, viewmats, centres, Ks,
                                           width, height, eps2d, near_plane, far_plane);
  const auto dtype = means.scalar_type();
  TORCH_CHECK(index.scalar_type() == at::kInt && index.is_contiguous() &&
                  index.sizes() == at::IntArrayRef({viewmats.size(0), means.size(0)}),
              "index must be contiguous int32 [C, N] (from project_forward)");
  const int64_t m = grad_means2d.size(0);
  check_floats(dtype, {{grad_means2d, "grad_means2d"}, {grad_conics, "grad_conics"},
                       {grad_opacities, "grad_opacities"}, {grad_features, "grad_features"}});
  TORCH_CHECK(grad_means2d.sizes() == at::IntArrayRef({m, 2}) && grad_conics.sizes() == at::IntArrayRef({m, 3}) &&
                  grad_opacities.sizes() == at::IntArrayRef({m}) && grad_features.sizes() == at::IntArrayRef({m, 4}),
              "gradients must be [M, 2], [M, 3], [M], [M, 4] (the packed outputs of project_forward)");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(dtype, "project_backward", [&] {
    out = project_backward_impl<scalar_t>(a, index, grad_means2d, grad_conics, grad_opacities, grad_features);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon torch-3dgs compiled CPU rasteriser (projection + SH, binning and compositing, forward and backward)";
  m.def("bin_gaussians", &bin_gaussians, "tile lists (offsets int64 [tiles + 1], ids int32 [P]), front to back");
  m.def("composite_forward", &composite_forward, "image [C,H,W,D], alpha [C,H,W], transmittance [C,H,W], last [C,H,W] int32");
  m.def("composite_backward", &composite_backward, "gradients of means2d, conics, opacities, features");
  m.def("project_forward", &project_forward,
        "packed pairs: means2d [M,2], conics [M,3], opacities [M], features (rgb, depth) [M,4], cov2d [M,3], "
        "camera_ids [M], gaussian_ids [M], radii [M,2] int32, index [C,N] int32 (-1: culled)");
  m.def("project_backward", &project_backward,
        "gradients of means, quats, scales, opacities, colours / SH, viewmats [C,4,4], camera centres [C,3]");
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
