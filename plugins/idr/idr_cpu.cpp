// IDR's sphere tracing on the CPU: the SDF network's inference forward and the bidirectional
// sphere-tracing loop (recon_plugins.idr.raytrace); and the training graph's activation
// (softplus_train / softplus_grad, below: network._SoftplusKernels via recon_core.activations).
//
// sdf_mlp:
// Same computation as recon_plugins.idr.network.ImplicitNetwork.sdf_inference: given the embedded
// input gamma(x) [N, d_in], the hidden layers h = softplus_beta(max(W h + b, -20/beta)) with the skip
// layers fed cat([h, gamma(x)]) / sqrt(2), then only the SDF row of the last layer. Points are taken
// in blocks of kBlock rows, so a block's activations stay in the cache; the matrix products are
// ATen's (MKL), the Softplus is computed here in one vectorised pass (ATen's takes ~3 ns a value
// through log1p(exp(.)); this one ~0.7 ns) with relative error ~1e-7.
//
// sphere_trace: raytrace._sphere_trace's loop with the same float operations in the same order
// (compiled without FMA contraction: o + t v rounds as PyTorch's mul then add), so it returns the same
// tensors bit for bit; the SDF is a Python callable, evaluated once per front step (both fronts in
// one call) and once per back-off, as there. Only the ray bookkeeping (hundreds of small tensor ops
// a batch in Python) moves here.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlock = 256;

// exp(-z) for z in [0, 30]: Cody-Waite reduction by ln 2, degree-7 Taylor polynomial on |r| <= ln2/2
// (truncation < 3e-9 relative), scaled by 2^n built in the exponent bits (n >= -44: always normal).
inline float exp_neg(float z) {
  const float t = -z;
  const float n = std::floor(t * 1.44269504088896341f + 0.5f);
  float r = t - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.f / 5040;  // Horner with explicit FMAs (the file is compiled without contraction)
  p = std::fma(p, r, 1.f / 720);
  p = std::fma(p, r, 1.f / 120);
  p = std::fma(p, r, 1.f / 24);
  p = std::fma(p, r, 1.f / 6);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.f);
  p = std::fma(p, r, 1.f);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// log1p(e) for e in [0, 1] as 2 atanh(e / (2 + e)), an odd series in s = e / (2 + e) <= 1/3 (terms to
// s^15: < 1e-9); s^2 is floored at 1e-20 (see softplus_inplace).
inline float log1p_small(float e) {
  const float s = e / (2.f + e);
  const float s2r = s * s;
  const float s2 = s2r > 1e-20f ? s2r : 1e-20f;
  float q = 1.f / 15;
  q = std::fma(q, s2, 1.f / 13);
  q = std::fma(q, s2, 1.f / 11);
  q = std::fma(q, s2, 1.f / 9);
  q = std::fma(q, s2, 1.f / 7);
  q = std::fma(q, s2, 1.f / 5);
  q = std::fma(q, s2, 1.f / 3);
  q = std::fma(q, s2, 1.f);
  return 2.f * s * q;
}

// In place: x <- softplus_beta(max(x, -20/beta)) = max(x, 0) + log1p(exp(-beta |x|)) / beta, with
// log1p(e) = 2 atanh(e / (2 + e)) as an odd series in s = e / (2 + e) <= 1/3 (terms to s^15: < 1e-9).
// Beyond beta |x| = 30 the correction (< 1e-13 / beta) is dropped. Written with selects instead of
// std::min/max so that the loop vectorises (with -fno-trapping-math); s^2 is floored at 1e-20 (a
// change below 1e-20 relative): tinier values made the series' products take the CPU's slow path
// (measured: 5.5 instead of 0.7 ns a value).
inline void softplus_inplace(float* x, int64_t n, float beta) {
  const float floor_v = -20.f / beta, inv_beta = 1.f / beta;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xi = x[i];
    const float v = xi > floor_v ? xi : floor_v;
    const float z = std::fabs(v) * beta;
    const float e = exp_neg(z < 30.f ? z : 30.f);
    const float l = log1p_small(e);
    x[i] = (v > 0.f ? v : 0.f) + l * inv_beta;
  }
}

void check_float_cpu(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(!t.is_cuda() && t.scalar_type() == torch::kFloat32, what, " must be a float32 CPU tensor");
}

}  // namespace

// inp [N, d_in]; weights[i] [out_i, in_i], biases[i] [out_i] for the hidden layers and, last, the SDF
// row of the output layer ([1, in], [1]); skip_in: layer indices fed cat([h, inp]) / sqrt(2).
torch::Tensor sdf_mlp(torch::Tensor inp, std::vector<torch::Tensor> weights, std::vector<torch::Tensor> biases,
                      std::vector<int64_t> skip_in, double beta) {
  check_float_cpu(inp, "inp");
  TORCH_CHECK(inp.dim() == 2, "inp must be [N, d_in]");
  TORCH_CHECK(weights.size() >= 1 && weights.size() == biases.size(), "one bias per weight, at least one layer");
  TORCH_CHECK(beta > 0, "beta must be positive");
  inp = inp.contiguous();
  const int64_t N = inp.size(0), d_in = inp.size(1), n_layers = static_cast<int64_t>(weights.size());
  std::vector<bool> skip(n_layers, false);
  for (int64_t k : skip_in) {
    TORCH_CHECK(k >= 1 && k < n_layers, "skip layer ", k, " out of range");
    skip[k] = true;
  }
  int64_t width = d_in;
  std::vector<torch::Tensor> wt(n_layers), bs(n_layers), bufs(n_layers);
  for (int64_t i = 0; i < n_layers; ++i) {
    check_float_cpu(weights[i], "weight");
    check_float_cpu(biases[i], "bias");
    const int64_t in_i = width + (skip[i] ? d_in : 0);
    TORCH_CHECK(weights[i].dim() == 2 && weights[i].size(1) == in_i, "layer ", i, " expects ", in_i, " inputs");
    TORCH_CHECK(biases[i].numel() == weights[i].size(0), "layer ", i, ": bias size");
    wt[i] = weights[i].contiguous().t();  // [in, out], a transposed view: MKL reads it as is (no copy per call)
    bs[i] = biases[i].reshape({-1}).contiguous();
    width = weights[i].size(0);
    if (skip[i]) bufs[i] = torch::empty({kBlock, in_i}, inp.options());  // the concatenated input
  }
  TORCH_CHECK(width == 1, "the last layer must be the SDF row alone ([1, in])");
  const float sqrt2 = static_cast<float>(std::sqrt(2.0));  // as torch's cat(...) / math.sqrt(2)
  std::vector<torch::Tensor> outs(n_layers - 1);
  for (int64_t i = 0; i + 1 < n_layers; ++i) outs[i] = torch::empty({kBlock, wt[i].size(1)}, inp.options());
  auto sdf = torch::empty({N}, inp.options());
  float* sp = sdf.data_ptr<float>();
  const float* w_last = wt[n_layers - 1].data_ptr<float>();
  const float b_last = bs[n_layers - 1].data_ptr<float>()[0];
  const int64_t in_last = wt[n_layers - 1].size(0);
  for (int64_t s = 0; s < N; s += kBlock) {
    const int64_t b = std::min(kBlock, N - s);
    const torch::Tensor x = inp.narrow(0, s, b);
    torch::Tensor h = x;
    for (int64_t i = 0; i < n_layers; ++i) {
      if (skip[i]) {  // cat([h, inp]) / sqrt(2)
        const int64_t wh = h.size(1), wc = wh + d_in;
        float* c = bufs[i].data_ptr<float>();
        const float* hp = h.data_ptr<float>();
        const float* xp = x.data_ptr<float>();
        for (int64_t r = 0; r < b; ++r) {
          for (int64_t k = 0; k < wh; ++k) c[r * wc + k] = hp[r * wh + k] / sqrt2;
          for (int64_t k = 0; k < d_in; ++k) c[r * wc + wh + k] = xp[r * d_in + k] / sqrt2;
        }
        h = bufs[i].narrow(0, 0, b);
      }
      if (i + 1 < n_layers) {
        torch::Tensor o = outs[i].narrow(0, 0, b);
        at::addmm_out(o, bs[i], h, wt[i]);
        softplus_inplace(o.data_ptr<float>(), o.numel(), static_cast<float>(beta));
        h = o;
      } else {
        const float* hp = h.data_ptr<float>();
        for (int64_t r = 0; r < b; ++r) {
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t k = 0; k < in_last; ++k) acc += hp[r * in_last + k] * w_last[k];
          sp[s + r] = acc + b_last;
        }
      }
    }
  }
  return sdf;
}

namespace {

// o + t v for the rays in idx (points [n, 3]), as PyTorch's o[idx] + t[idx, None] * v[idx].
inline void ray_points(const float* o, const float* v, const float* t, const std::vector<int64_t>& idx, float* out) {
  for (size_t j = 0; j < idx.size(); ++j) {
    const int64_t r = idx[j];
    for (int d = 0; d < 3; ++d) {
      const float tv = t[r] * v[r * 3 + d];
      out[j * 3 + d] = o[r * 3 + d] + tv;
    }
  }
}

torch::Tensor call_sdf(const py::object& sdf, const torch::Tensor& pts) {
  torch::Tensor f = sdf(pts).cast<torch::Tensor>();
  TORCH_CHECK(f.dim() == 1 && f.size(0) == pts.size(0) && f.scalar_type() == torch::kFloat32 && !f.is_cuda(),
              "the SDF must return a float32 CPU tensor [P] for points [P, 3]");
  return f.contiguous();
}

}  // namespace

// Bidirectional sphere tracing (raytrace._sphere_trace): o, v [R, 3], near, far [R] ->
// (t_start, t_end, converged, seen_t [R, K], seen_f [R, K]).
std::vector<torch::Tensor> sphere_trace(py::object sdf, torch::Tensor o, torch::Tensor v, torch::Tensor near,
                                        torch::Tensor far, double threshold, int64_t iters, int64_t back_off_iters,
                                        double back_off_step) {
  for (const auto* t : {&o, &v, &near, &far}) check_float_cpu(*t, "rays");
  TORCH_CHECK(o.dim() == 2 && o.size(1) == 3 && v.sizes() == o.sizes() && near.dim() == 1 && near.size(0) == o.size(0) &&
                  far.sizes() == near.sizes(), "o, v [R, 3], near, far [R] expected");
  o = o.contiguous();
  v = v.contiguous();
  near = near.contiguous();
  far = far.contiguous();
  const int64_t R = o.size(0);
  const float thr = static_cast<float>(threshold);
  const float* op = o.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  std::vector<float> ts(near.data_ptr<float>(), near.data_ptr<float>() + R);
  std::vector<float> te(far.data_ptr<float>(), far.data_ptr<float>() + R);
  std::vector<uint8_t> act_s(R, 1), act_e(R, 1);
  std::vector<float> fs(R), fe(R), step_s(R), step_e(R);
  std::vector<std::vector<float>> seen_t, seen_f;
  auto opts = o.options();
  {
    auto pts = torch::empty({2 * R, 3}, opts);
    std::vector<int64_t> all(R);
    for (int64_t r = 0; r < R; ++r) all[r] = r;
    ray_points(op, vp, ts.data(), all, pts.data_ptr<float>());
    ray_points(op, vp, te.data(), all, pts.data_ptr<float>() + R * 3);
    const auto f = call_sdf(sdf, pts);
    const float* fp = f.data_ptr<float>();
    std::copy(fp, fp + R, fs.begin());
    std::copy(fp + R, fp + 2 * R, fe.begin());
  }
  seen_t.push_back(ts);
  seen_t.push_back(te);
  seen_f.push_back(fs);
  seen_f.push_back(fe);
  std::vector<int64_t> idx_s, idx_e, bi_s, bi_e;
  for (int64_t it = 0; it <= iters; ++it) {
    idx_s.clear();
    idx_e.clear();
    for (int64_t r = 0; r < R; ++r) {
      const bool before = ts[r] < te[r];
      act_s[r] = act_s[r] && std::fabs(fs[r]) > thr && before;
      act_e[r] = act_e[r] && std::fabs(fe[r]) > thr && before;
      step_s[r] = act_s[r] ? fs[r] : 0.f;
      step_e[r] = act_e[r] ? fe[r] : 0.f;
      if (act_s[r]) idx_s.push_back(r);
      if (act_e[r]) idx_e.push_back(r);
    }
    if (idx_s.empty() && idx_e.empty()) break;
    std::vector<float> ns(R), ne(R);
    for (int64_t r = 0; r < R; ++r) {
      ns[r] = ts[r] + step_s[r];
      ne[r] = te[r] - step_e[r];
    }
    const int64_t a = static_cast<int64_t>(idx_s.size()), c = static_cast<int64_t>(idx_e.size());
    auto pts = torch::empty({a + c, 3}, opts);
    ray_points(op, vp, ns.data(), idx_s, pts.data_ptr<float>());
    ray_points(op, vp, ne.data(), idx_e, pts.data_ptr<float>() + a * 3);
    const auto vals = call_sdf(sdf, pts);
    std::vector<float> nf(vals.data_ptr<float>(), vals.data_ptr<float>() + a + c);  // [front s | front e]
    for (int64_t k = 0; k < back_off_iters; ++k) {  // back off steps that overshot into the inside (f < 0)
      const float frac = static_cast<float>((1 - back_off_step) / std::pow(2.0, static_cast<double>(k)));
      std::vector<int64_t> js, je;  // positions in idx_s / idx_e
      for (int64_t j = 0; j < a; ++j)
        if (nf[j] < 0.f) js.push_back(j);
      for (int64_t j = 0; j < c; ++j)
        if (nf[a + j] < 0.f) je.push_back(j);
      if (js.empty() && je.empty()) break;
      bi_s.clear();
      bi_e.clear();
      for (int64_t j : js) {
        const int64_t r = idx_s[j];
        ns[r] -= frac * step_s[r];
        bi_s.push_back(r);
      }
      for (int64_t j : je) {
        const int64_t r = idx_e[j];
        ne[r] += frac * step_e[r];
        bi_e.push_back(r);
      }
      const int64_t nb = static_cast<int64_t>(bi_s.size());
      auto bpts = torch::empty({nb + static_cast<int64_t>(bi_e.size()), 3}, opts);
      ray_points(op, vp, ns.data(), bi_s, bpts.data_ptr<float>());
      ray_points(op, vp, ne.data(), bi_e, bpts.data_ptr<float>() + nb * 3);
      const auto vb = call_sdf(sdf, bpts);
      const float* vbp = vb.data_ptr<float>();
      for (size_t q = 0; q < js.size(); ++q) nf[js[q]] = vbp[q];
      for (size_t q = 0; q < je.size(); ++q) nf[a + je[q]] = vbp[nb + q];
    }
    ts.swap(ns);
    te.swap(ne);
    for (int64_t j = 0; j < a; ++j) fs[idx_s[j]] = nf[j];
    for (int64_t j = 0; j < c; ++j) fe[idx_e[j]] = nf[a + j];
    seen_t.push_back(ts);
    seen_t.push_back(te);
    seen_f.push_back(fs);
    seen_f.push_back(fe);
  }
  const int64_t K = static_cast<int64_t>(seen_t.size());
  auto t_start = torch::empty({R}, opts), t_end = torch::empty({R}, opts);
  auto conv = torch::empty({R}, opts.dtype(torch::kBool));
  auto vt = torch::empty({R, K}, opts), vf = torch::empty({R, K}, opts);
  std::copy(ts.begin(), ts.end(), t_start.data_ptr<float>());
  std::copy(te.begin(), te.end(), t_end.data_ptr<float>());
  bool* cp = conv.data_ptr<bool>();
  float* vtp = vt.data_ptr<float>();
  float* vfp = vf.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    cp[r] = std::fabs(fs[r]) <= thr && ts[r] <= te[r];
    for (int64_t k = 0; k < K; ++k) {
      vtp[r * K + k] = seen_t[k][r];
      vfp[r * K + k] = seen_f[k][r];
    }
  }
  return {t_start, t_end, conv, vt, vf};
}

// softplus_train: the SDF network's activation in training (network.ClampedSoftplus with autograd).
// z -> (y, d): y = softplus_beta(max(z, -20/beta)) as softplus_inplace above, and its derivative
// d = dy/dz = sigmoid(beta max(z, -20/beta)) where z >= -20/beta, else 0 (torch's clamp_min passes
// the gradient where z >= the floor), from the same exp(-beta |v|) in one pass. Everything after
// (the first-order backward gy * d, the second derivative beta d (1 - d)) is elementwise on d: see
// softplus_grad. float64 (gradcheck) uses std::exp / std::log1p.
std::vector<torch::Tensor> softplus_train(torch::Tensor z, double beta) {
  TORCH_CHECK(!z.is_cuda() && (z.scalar_type() == torch::kFloat32 || z.scalar_type() == torch::kFloat64),
              "z must be a float32 or float64 CPU tensor");
  TORCH_CHECK(beta > 0, "beta must be positive");
  z = z.contiguous();
  auto y = torch::empty_like(z), d = torch::empty_like(z);
  const int64_t n = z.numel();
  if (z.scalar_type() == torch::kFloat64) {
    const double* zp = z.data_ptr<double>();
    double* yp = y.data_ptr<double>();
    double* dp = d.data_ptr<double>();
    const double floor_v = -20.0 / beta;
    at::parallel_for(0, n, 16384, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const double v = zp[i] >= floor_v ? zp[i] : floor_v;
        const double e = std::exp(-std::fabs(v) * beta);
        yp[i] = (v > 0 ? v : 0.0) + std::log1p(e) / beta;
        dp[i] = zp[i] >= floor_v ? (v >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e)) : 0.0;
      }
    });
    return {y, d};
  }
  const float* zp = z.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* dp = d.data_ptr<float>();
  const float fb = static_cast<float>(beta), floor_v = -20.f / fb, inv_beta = 1.f / fb;
  at::parallel_for(0, n, 16384, [&](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      const float zi = zp[i];
      const bool pass = zi >= floor_v;
      const float v = pass ? zi : floor_v;
      const float a = std::fabs(v) * fb;
      const float e = exp_neg(a < 30.f ? a : 30.f);
      yp[i] = (v > 0.f ? v : 0.f) + log1p_small(e) * inv_beta;
      const float r = 1.f / (1.f + e);
      const float sig = v >= 0.f ? r : e * r;
      dp[i] = pass ? sig : 0.f;
    }
  });
  return {y, d};
}

template <typename T>
void softplus_grad_loop(const T* a, const T* b, const T* c, T* o, double beta, int64_t n) {
  const T bt = static_cast<T>(beta);
  at::parallel_for(0, n, 16384, [&](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) o[i] = a[i] * c[i] + b[i] * bt * c[i] * (T(1) - c[i]);
  });
}

// gz = gy * d + gd * beta * d * (1 - d): the backward of softplus_train's (y, d) when both outputs
// have gradients (IDR's double backward: gd comes from the first-order backward's gy * d).
torch::Tensor softplus_grad(torch::Tensor gy, torch::Tensor gd, torch::Tensor d, double beta) {
  TORCH_CHECK(gy.sizes() == d.sizes() && gd.sizes() == d.sizes() && gy.scalar_type() == d.scalar_type() &&
                  gd.scalar_type() == d.scalar_type() && !d.is_cuda(), "gy, gd, d: same shape and dtype, CPU");
  gy = gy.contiguous();
  gd = gd.contiguous();
  d = d.contiguous();
  auto gz = torch::empty_like(d);
  TORCH_CHECK(d.scalar_type() == torch::kFloat32 || d.scalar_type() == torch::kFloat64, "softplus_grad: float32 or float64");
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "softplus_grad", [&] {
    softplus_grad_loop(gy.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), gz.data_ptr<scalar_t>(), beta,
                       d.numel());
  });
  return gz;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sdf_mlp", &sdf_mlp, "IDR SDF network inference forward from the embedded input (CPU): SDF [N]");
  m.def("sphere_trace", &sphere_trace, "IDR bidirectional sphere tracing (CPU) with a Python SDF callable");
  m.def("softplus_train", &softplus_train, "clamped Softplus(beta) and its derivative (y, d) in one pass (CPU)");
  m.def("softplus_grad", &softplus_grad, "gy * d + gd * beta * d * (1 - d) (CPU)");
}
