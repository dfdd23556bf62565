"""Tests of recon_plugins.idr.raytrace: sphere tracing, fallback search, implicit differentiation."""

from __future__ import annotations

import pytest
import torch

from recon_plugins.idr.raytrace import TraceSettings, sphere_intersections, surface_points, trace

pytestmark = pytest.mark.usefixtures("one_thread")


def sphere_sdf(center: torch.Tensor, radius: torch.Tensor | float):
    return lambda x: (x - center).norm(dim=-1) - radius


def analytic_t(o: torch.Tensor, v: torch.Tensor, center: torch.Tensor, r: torch.Tensor | float) -> torch.Tensor:
    """First intersection distance of rays with a sphere (nan when missed)."""
    oc = o - center
    b = (oc * v).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - r**2)
    return -b - disc.sqrt()


def camera_rays(n: int, spread: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    o = torch.tensor([0.2, -0.3, -3.0]).expand(n, 3).clone()
    target = (torch.rand(n, 3, generator=g) * 2 - 1) * spread
    v = target - o
    return o, v / v.norm(dim=-1, keepdim=True)


def test_sphere_intersections() -> None:
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0]])
    v = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, ok = sphere_intersections(o, v, 1.0)
    assert ok.tolist() == [True, False]
    assert near[0].item() == 2.0 and far[0].item() == 4.0


def test_sphere_tracing_hits_analytic_sphere_at_right_depth() -> None:
    c, r = torch.tensor([0.05, -0.1, 0.02]), 0.5
    o, v = camera_rays(400, spread=0.7)
    res = trace(sphere_sdf(c, r), o, v, TraceSettings(radius=1.0))
    t_true = analytic_t(o, v, c, r)
    should_hit = ~torch.isnan(t_true)
    assert should_hit.sum() > 100 and (~should_hit).sum() > 20
    assert torch.equal(res.hit, should_hit)
    assert (res.t[should_hit] - t_true[should_hit]).abs().max() < 1e-3
    # a ray missing the bounding sphere altogether is neither in the sphere nor hit
    far = trace(sphere_sdf(c, r), torch.tensor([[0.0, 3.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]]))
    assert not far.in_sphere.item() and not far.hit.item()


def test_fallback_search_finds_surface_of_non_metric_sdf() -> None:
    """f = 3·(|x| − r) overshoots every sphere-tracing step; the sampling + secant fallback must still hit."""
    c, r = torch.zeros(3), 0.5
    sdf = lambda x: 3.0 * ((x - c).norm(dim=-1) - r)  # noqa: E731
    o, v = camera_rays(200, spread=0.3)
    res = trace(sdf, o, v, TraceSettings(radius=1.0, iters=3))
    t_true = analytic_t(o, v, c, r)
    should = ~torch.isnan(t_true)
    assert torch.equal(res.hit, should)
    assert (res.t[should] - t_true[should]).abs().max() < 2e-3


def test_missed_rays_return_minimal_sdf_sample() -> None:
    sdf = sphere_sdf(torch.zeros(3), 0.3)
    o = torch.tensor([[0.0, 0.5, -3.0]])
    v = torch.tensor([[0.0, 0.0, 1.0]])
    res = trace(sdf, o, v, TraceSettings(n_samples=201))
    assert not res.hit.item() and res.in_sphere.item()
    x = o + res.t[:, None] * v
    assert abs(x[0, 2].item()) < 0.02  # the closest approach to the sphere is at z = 0


def test_implicit_differentiation_gradient_matches_finite_differences() -> None:
    """d x(θ) / dθ for θ = (sphere centre, radius, camera origin) equals finite differences of the exact intersection."""
    torch.set_default_dtype(torch.float64)
    try:
        center = torch.tensor([0.1, -0.05, 0.2], requires_grad=True)
        radius = torch.tensor(0.45, requires_grad=True)
        o = torch.tensor([[0.3, 0.1, -2.5]], requires_grad=True)
        v = torch.tensor([[-0.05, -0.02, 1.0]])
        v = v / v.norm()
        sdf = lambda x: (x - center).norm(dim=-1) - radius  # noqa: E731
        res = trace(sdf, o.detach(), v, TraceSettings(threshold=1e-10, iters=50))
        assert res.hit.item()
        x0 = (o + res.t[:, None] * v).detach().requires_grad_(True)
        (g0,) = torch.autograd.grad(sdf(x0).sum(), x0)
        x = surface_points(sdf, o, v, res.t, g0)
        torch.testing.assert_close(x.detach(), x0.detach())
        weights = torch.tensor([0.3, -0.7, 0.5])  # a scalar function of the point
        grads = torch.autograd.grad((x[0] * weights).sum(), [center, radius, o])

        def exact(cen: torch.Tensor, rad: torch.Tensor, orig: torch.Tensor) -> torch.Tensor:
            t = analytic_t(orig, v, cen, rad)
            return ((orig + t[:, None] * v)[0] * weights).sum()

        eps = 1e-6
        base = [center.detach(), radius.detach(), o.detach()]
        for k, g in enumerate(grads):
            fd = torch.zeros_like(base[k]).flatten()
            for i in range(fd.numel()):
                plus = [b.clone() for b in base]
                minus = [b.clone() for b in base]
                plus[k].view(-1)[i] += eps
                minus[k].view(-1)[i] -= eps
                fd[i] = (exact(*plus) - exact(*minus)) / (2 * eps)
            torch.testing.assert_close(g.flatten(), fd, atol=1e-6, rtol=1e-5)
    finally:
        torch.set_default_dtype(torch.float32)


def test_coarse_to_fine_minimum_matches_uniform_samples() -> None:
    """On rays whose fronts crossed, the coarse-to-fine search gives the same hits as sampling the whole
    chord uniformly, and on rays without a surface a minimal SDF within tolerance of the uniform one,
    with 32 instead of 100 evaluations per such ray; a non-metric SDF (fronts overshoot and cross) still hits."""
    c = torch.tensor([0.05, -0.1, 0.02])
    wavy = lambda x: (x - c).norm(dim=-1) - 0.45 + 0.03 * torch.sin(9 * x[:, 0]) * torch.cos(7 * x[:, 1])  # noqa: E731
    for sdf, iters in ((wavy, 10), (lambda x: 3.0 * wavy(x), 3)):
        o, v = camera_rays(600, spread=0.9, seed=3)
        calls = []

        def counted(x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return sdf(x)

        uni = trace(counted, o, v, TraceSettings(min_search="uniform", iters=iters))
        n_uniform = sum(calls)
        n = {}
        for search in ("coarse-to-fine", "traced"):
            calls.clear()
            ctf = trace(counted, o, v, TraceSettings(iters=iters, min_search=search))
            n[search] = sum(calls)
            assert torch.equal(uni.hit, ctf.hit)
            assert (uni.t[uni.hit] - ctf.t[ctf.hit]).abs().max() < 1e-4
            missed = uni.in_sphere & ~uni.hit
            assert missed.sum() > 100 and uni.hit.sum() > 100
            f_uni = sdf(o[missed] + uni.t[missed, None] * v[missed])
            f_ctf = sdf(o[missed] + ctf.t[missed, None] * v[missed])
            assert (f_ctf - f_uni).max() < 2e-3  # never noticeably above IDR's minimum
        if iters == 10:  # metric SDF: rays that miss are searched with 32 (16 traced) instead of 100 evaluations
            assert n["traced"] < n["coarse-to-fine"] < 0.5 * n_uniform


def test_clamped_softplus_equals_softplus() -> None:
    from recon_plugins.idr.network import ClampedSoftplus

    x = (torch.randn(5000, dtype=torch.float64) * 0.3).requires_grad_(True)
    ours, ref = ClampedSoftplus(100.0)(x), torch.nn.functional.softplus(x, beta=100.0)
    (g1,) = torch.autograd.grad(ours.sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(ref.sum(), x, create_graph=True)
    (h1,) = torch.autograd.grad(g1.sum(), x)
    (h2,) = torch.autograd.grad(g2.sum(), x)
    assert (ours - ref).abs().max() < 3e-11 and (g1 - g2).abs().max() < 3e-9 and (h1 - h2).abs().max() < 1e-6


@pytest.mark.parametrize("back_off_iters", [1, 3])
def test_compiled_sphere_tracing_equals_the_torch_loop(back_off_iters: int, monkeypatch: pytest.MonkeyPatch,
        missing_extension) -> None:  # noqa: ANN001
    """The compiled loop (idr_cpu.cpp) returns the PyTorch loop's tensors bit for bit, with the same
    SDF calls (count and points), on a wavy SDF whose steps overshoot (back-off) and a network."""
    from recon_plugins.encoders import FourierEncoder
    from recon_plugins.idr import raytrace
    from recon_plugins.idr.network import ImplicitNetwork

    if raytrace.IDR_EXTENSION.load() is None:
        pytest.skip("the compiled IDR kernels could not be built")
    c = torch.tensor([0.05, -0.1, 0.02])
    wavy = lambda x: 1.6 * ((x - c).norm(dim=-1) - 0.45 + 0.03 * torch.sin(9 * x[:, 0]) * torch.cos(7 * x[:, 1]))  # noqa: E731
    torch.manual_seed(0)
    net = ImplicitNetwork(FourierEncoder(), width=64, n_layers=3, skip_in=(2,), feature_dim=8)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    o, v = camera_rays(500, spread=0.8)
    near, far, ok = sphere_intersections(o, v, 1.0)
    o, v, near, far = o[ok], v[ok], near[ok], far[ok]
    s = TraceSettings(back_off_iters=back_off_iters, n_samples=32)
    for sdf in (wavy, net.sdf_inference):
        calls: dict[str, list[torch.Tensor]] = {"compiled": [], "torch": []}
        results = {}
        for name in ("compiled", "torch"):
            if name == "torch":
                monkeypatch.setattr(raytrace, "IDR_EXTENSION", missing_extension)

            def counted(x: torch.Tensor, name: str = name) -> torch.Tensor:
                calls[name].append(x.clone())
                return sdf(x)

            results[name] = raytrace._sphere_trace(counted, o, v, near, far, s)
            monkeypatch.undo()
        a, b = results["compiled"], results["torch"]
        for x, y in zip((*a[:3], *a[3]), (*b[:3], *b[3])):
            assert torch.equal(x, y)
        assert len(calls["compiled"]) == len(calls["torch"]) > 3
        assert all(torch.equal(x, y) for x, y in zip(calls["compiled"], calls["torch"]))
        assert a[2].sum() > 50  # some rays converged
    assert any(len(x) < 2 * len(o) for x in calls["torch"][1:])  # only unfinished rays are evaluated
