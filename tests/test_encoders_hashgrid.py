"""Tests of recon_plugins.encoders.hashgrid (torch implementation)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from recon_plugins.encoders import HashGridEncoder
from recon_plugins.encoders._tcnn import tcnn_available
from recon_plugins.encoders.hashgrid import PRIMES, HashGridLayout


def small(**kw) -> HashGridEncoder:
    cfg = dict(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, max_resolution=64,
               init_scale=1.0, backend="torch")
    cfg.update(kw)
    torch.manual_seed(0)
    return HashGridEncoder(HashGridEncoder.Config(**cfg))


def reference_encode(enc: HashGridEncoder, x: torch.Tensor) -> torch.Tensor:
    """Scalar-loop reference of the documented definition (one point at a time)."""
    c, lay = enc.config, enc.layout
    table = enc.params.detach().view(-1, c.n_features_per_level)
    out = []
    for p in x:
        u = ((p + c.bound) / (2 * c.bound)).clamp(0, 1)
        feats = []
        for lvl in range(c.n_levels):
            pos = u * lay.scales[lvl] + 0.5
            base = torch.floor(pos)
            f = torch.zeros(c.n_features_per_level)
            for corner in itertools.product((0, 1), repeat=3):
                v = [int(base[d]) + corner[d] for d in range(3)]
                w = math.prod(float(pos[d] - base[d]) if corner[d] else float(1 - (pos[d] - base[d])) for d in range(3))
                if lay.dense[lvl]:
                    idx = v[0] + v[1] * lay.resolutions[lvl] + v[2] * lay.resolutions[lvl] ** 2
                else:
                    idx = ((v[0] * PRIMES[0]) ^ (v[1] * PRIMES[1]) ^ (v[2] * PRIMES[2])) & 0xFFFFFFFF
                f += w * table[lay.offsets[lvl] + idx % lay.sizes[lvl]]
            feats.append(f)
        out.append(torch.cat(feats))
    return torch.stack(out)


def test_output_dimension_and_layout() -> None:
    enc = small()
    y = enc(torch.rand(3, 5, 3) * 2 - 1)
    assert y.shape == (3, 5, 8) and enc.out_dim == 8
    assert small(include_input=True).out_dim == 11
    lay = enc.layout
    assert lay.dense[0] and not lay.dense[-1]  # coarse level fits densely, fine level is hashed
    assert all(s % 8 == 0 and s <= 2**10 for s in lay.sizes)
    assert enc.params.numel() == lay.total_rows * 2
    # geometric growth from N_min to N_max (tcnn: scale = N_min b^l − 1)
    b = math.exp(math.log(64 / 4) / 3)
    assert lay.scales[0] == pytest.approx(3.0) and lay.scales[-1] == pytest.approx(4 * b**3 - 1)


def test_matches_reference_definition() -> None:
    enc = small()
    x = torch.rand(20, 3) * 2 - 1
    torch.testing.assert_close(enc(x).detach(), reference_encode(enc, x), atol=1e-5, rtol=1e-5)


def test_interpolation_is_continuous_and_trilinear() -> None:
    enc = small()
    # a dense walk through many cells: neighbouring samples differ by O(step)
    t = torch.linspace(-0.9, 0.9, 4001)[:, None]
    x = torch.cat([t, 0.37 * t + 0.1, -0.5 * t], dim=1)
    y = enc(x).detach()
    jumps = (y[1:] - y[:-1]).abs().max()
    assert jumps < 0.2  # table values are O(1); a floor (nearest-vertex) lookup jumps by O(1)
    # exactly linear inside one cell along an axis (level 0 has 3 cells per unit of u)
    lvl0 = HashGridEncoder(HashGridEncoder.Config(n_levels=1, base_resolution=4, max_resolution=4, init_scale=1.0,
                                                  log2_hashmap_size=10, backend="torch"))
    u0 = torch.tensor([0.52, 0.52, 0.52])  # pos = u·3 + 0.5 ∈ cell [2, 3)
    xs = torch.stack([u0 + torch.tensor([d, 0.0, 0.0]) for d in (0.0, 0.05, 0.1)]) * 2 - 1
    ys = lvl0(xs).detach()
    torch.testing.assert_close(ys[1], 0.5 * (ys[0] + ys[2]), atol=1e-5, rtol=1e-5)


def test_nonzero_spatial_gradients() -> None:
    enc = small()
    x = (torch.rand(64, 3) * 2 - 1).requires_grad_(True)
    y = enc(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all()
    assert (g.abs().sum(-1) > 1e-3).all()
    # and the gradient matches finite differences (piecewise-trilinear: small step stays in the cell)
    x0 = torch.tensor([[0.123, -0.456, 0.321]], requires_grad=True)
    (g0,) = torch.autograd.grad(enc(x0)[:, 3].sum(), x0)
    eps = 1e-4
    for d in range(3):
        e = torch.zeros(1, 3)
        e[0, d] = eps
        fd = (enc(x0 + e)[:, 3] - enc(x0 - e)[:, 3]).item() / (2 * eps)
        assert g0[0, d].item() == pytest.approx(fd, rel=1e-2, abs=1e-2)


def test_parameter_gradients_are_local() -> None:
    enc = small()
    y = enc(torch.tensor([[0.1, 0.2, 0.3]]))
    y.sum().backward()
    touched = (enc.params.grad.view(-1, 2).abs().sum(-1) > 0).sum().item()
    assert 0 < touched <= 4 * 8  # at most 8 corners per level


def test_layout_sizes_follow_tcnn() -> None:
    lay = HashGridLayout.create(3, 2, 12, 16, 2.0)
    assert lay.resolutions == [16, 32]  # ceil(16 − 1) + 1, ceil(32 − 1) + 1
    assert lay.sizes == [4096, 4096]  # min(res³, 2^12) rounded up to a multiple of 8
    assert lay.dense == [True, False]  # 16³ = 4096 fits densely, 32³ does not
    assert lay.offsets == [0, 4096]


@pytest.mark.skipif(not tcnn_available(), reason="tinycudann with CUDA is not available")
def test_tcnn_matches_torch_for_same_parameters() -> None:
    a = small(backend="tcnn").cuda()
    b = small(backend="torch").cuda()
    with torch.no_grad():
        b.params.copy_(a.params)
    x = torch.rand(256, 3, device="cuda") * 2 - 1
    torch.testing.assert_close(a(x), b(x), atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- compiled kernel vs the torch twin

def _compiled_available() -> bool:
    from recon_plugins.encoders import _cpp

    return _cpp.extension() is not None


needs_cpp = pytest.mark.skipif(not _compiled_available(), reason="the compiled hash-grid kernel could not be built")


def _both(n_active: int | None, seed: int = 0):
    """A 5-level grid (dense and hashed levels) and points, for parity checks."""
    enc = small(n_levels=5, max_resolution=128)
    torch.manual_seed(seed)
    u = torch.rand(300, 3)
    table = enc.params.detach().view(-1, 2).clone()
    return enc.layout, u, table, n_active


@needs_cpp
@pytest.mark.parametrize("n_active", [None, 2, 0])
def test_compiled_values_and_gradients_match_torch_twin(n_active) -> None:
    from recon_plugins.encoders.hashgrid import _hash_grid_encode, hash_grid_encode

    torch.set_num_threads(1)
    layout, u, table, a = _both(n_active)
    outs, grads = [], []
    for fn in (hash_grid_encode, _hash_grid_encode):
        uu, tt = u.clone().requires_grad_(True), table.clone().requires_grad_(True)
        y = fn(uu, tt, layout, a)
        g = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        outs.append(y.detach())
        if y.requires_grad:
            grads.append(torch.autograd.grad(y, (uu, tt), g, allow_unused=True, materialize_grads=True))
        else:
            grads.append((torch.zeros_like(uu), torch.zeros_like(tt)))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    for gc, gt in zip(grads[0], grads[1]):
        torch.testing.assert_close(gc, gt, atol=1e-4, rtol=1e-4)
    if n_active is not None:
        assert (outs[0][:, 2 * n_active:] == 0).all() and (n_active == 0 or outs[0][:, : 2 * n_active].abs().sum() > 0)


@needs_cpp
def test_compiled_second_derivatives_match_torch_twin() -> None:
    """IDR's eikonal loss differentiates ∇ₓ(encoding); the compiled op must support create_graph."""
    from recon_plugins.encoders.hashgrid import _hash_grid_encode, hash_grid_encode

    layout, u, table, a = _both(None, seed=3)
    w = torch.randn(10)
    res = []
    for fn in (hash_grid_encode, _hash_grid_encode):
        uu, tt = u.clone().requires_grad_(True), table.clone().requires_grad_(True)
        y = fn(uu, tt, layout, a)
        sdf = (torch.tanh(y) * w).sum(-1)  # a small nonlinear head, so the Hessian terms are non-trivial
        (gx,) = torch.autograd.grad(sdf.sum(), uu, create_graph=True)
        loss = ((gx.norm(dim=-1) - 1) ** 2).mean() + sdf.square().mean()
        res.append(torch.autograd.grad(loss, (uu, tt)))
    for gc, gt in zip(*res):
        scale = float(gt.abs().max())  # second derivatives reach scale_l² · |table|: compare relative to the largest
        assert scale > 0
        torch.testing.assert_close(gc, gt, atol=1e-4 * scale, rtol=1e-4)


@needs_cpp
def test_compiled_scatter_is_thread_safe() -> None:
    from recon_plugins.encoders.hashgrid import _hash_grid_encode, hash_grid_encode

    layout, u, table, a = _both(None, seed=5)
    u = u.repeat(20, 1)  # many points share table rows: concurrent scatter-adds
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tt = table.clone().requires_grad_(True)
        hash_grid_encode(u, tt, layout).sum().backward()
    finally:
        torch.set_num_threads(n)
    tr = table.clone().requires_grad_(True)
    _hash_grid_encode(u, tr, layout).sum().backward()
    torch.testing.assert_close(tt.grad, tr.grad, atol=1e-4, rtol=1e-4)


def test_torch_fallback_when_kernel_unavailable(monkeypatch) -> None:
    from recon_plugins.encoders import _cpp

    monkeypatch.setattr(_cpp, "extension", lambda: None)
    enc = small()
    x = torch.rand(20, 3) * 2 - 1
    torch.testing.assert_close(enc(x).detach(), reference_encode(enc, x), atol=1e-5, rtol=1e-5)


def test_active_levels_zero_the_finer_levels() -> None:
    enc = small()
    x = torch.rand(30, 3) * 2 - 1
    full = enc(x).detach()
    enc.active_levels = 2
    part = enc(x).detach()
    torch.testing.assert_close(part[:, :4], full[:, :4])
    assert (part[:, 4:] == 0).all() and enc.n_grid_levels == 4


def test_table_parameters_declare_the_hash_table() -> None:
    enc = HashGridEncoder(HashGridEncoder.Config(n_levels=2, log2_hashmap_size=8, max_resolution=32, backend="torch"))
    assert enc.table_parameters() == [enc.params] and enc.table_lr == 1e-2


def test_gradient_wrt_points_skips_the_table_sized_table_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """∇ₓ with create_graph (IDR's eikonal loss) does not build the table gradient it would discard;
    a later backward still gives the table the same gradient as the PyTorch twin."""
    from recon_plugins.encoders import _cpp, hashgrid

    if _cpp.extension() is None:
        pytest.skip("the compiled hash-grid kernel could not be built")
    calls = []
    original = hashgrid._CompiledGradTable.apply
    monkeypatch.setattr(hashgrid._CompiledGradTable, "apply", lambda *a: (calls.append(1), original(*a))[1])
    torch.manual_seed(0)
    enc = HashGridEncoder(HashGridEncoder.Config(n_levels=4, log2_hashmap_size=10, max_resolution=64, init_scale=0.3))
    x = torch.rand(200, 3) * 2 - 1
    w = torch.randn(200, enc.out_dim)

    def table_grad(encode) -> torch.Tensor:  # noqa: ANN001
        enc.params.grad = None
        xr = x.clone().requires_grad_()
        y = (encode(xr) * w).sum()
        (g,) = torch.autograd.grad(y, xr, create_graph=True)
        (y + (g * g).sum()).backward()
        return enc.params.grad.clone()

    compiled = table_grad(enc)
    assert calls == []
    u = lambda xr: hashgrid._hash_grid_encode(enc.normalise(xr), enc.params.view(-1, 2), enc.layout)  # noqa: E731
    reference = table_grad(u)
    assert (compiled - reference).abs().max() < 1e-5 * (1 + reference.abs().max())
    (g_t,) = torch.autograd.grad((enc(x) * w).sum(), enc.params, create_graph=True)  # asked for: computed
    assert calls == [1] and g_t.abs().max() > 0
