"""Parity of the summation rasteriser (both backends) with a dense brute-force version (forward and gradients)."""

from __future__ import annotations

import pytest
import torch

from recon_plugins.d2gv._reference import _rasterize_sum_dense
from recon_core.cpp_extension import cpp_disabled
from recon_plugins.d2gv.rasterize import RasterSettings, project_cholesky, rasterize_sum

BACKENDS = ["torch"] + ([] if cpp_disabled() else ["cpp"])


def _random_case(seed: int, B: int, N: int, H: int, W: int, big: bool = False):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, N, 2, generator=g, dtype=torch.float64) * 2.4 - 1.2  # some centres off-image
    scale = torch.tensor([6.0, 4.0, 6.0] if big else [2.5, 1.5, 2.5], dtype=torch.float64)
    chol = torch.rand(B, N, 3, generator=g, dtype=torch.float64) * scale
    chol = chol + torch.tensor([0.3, -0.5 * float(scale[1]), 0.3], dtype=torch.float64)
    colors = torch.rand(B, N, 3, generator=g, dtype=torch.float64) * 1.2 - 0.1
    weights = torch.rand(B, N, generator=g, dtype=torch.float64)
    return xy, chol, colors, weights


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "seed,B,N,H,W,big,clamp",
    [(0, 1, 40, 17, 29, False, True), (1, 2, 60, 23, 37, True, False), (2, 3, 25, 16, 16, True, True), (3, 1, 1, 5, 7, False, False)],
)
def test_forward_and_gradients_match_dense_reference(seed, B, N, H, W, big, clamp, backend):
    xy, chol, colors, weights = _random_case(seed, B, N, H, W, big)
    leaves = [t.clone().requires_grad_(True) for t in (xy, chol, colors, weights)]
    settings = RasterSettings(H, W, clamp=clamp, chunk_evals=300, backend=backend)  # tiny chunks: torch chunking

    def run(fn, params):
        means, conics, radii = project_cholesky(params[0], params[1], H, W)
        return fn(means, conics, params[2], radii, params[3], settings)

    fast, ref = run(rasterize_sum, leaves), run(_rasterize_sum_dense, leaves)
    assert fast.shape == (B, H, W, 3)
    assert ref.abs().sum() > 0  # the case renders something
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)

    cotangent = torch.randn(fast.shape, generator=torch.Generator().manual_seed(seed + 100), dtype=fast.dtype)
    g_fast = torch.autograd.grad((fast * cotangent).sum(), leaves)
    g_ref = torch.autograd.grad((run(_rasterize_sum_dense, leaves) * cotangent).sum(), leaves)
    for a, b in zip(g_fast, g_ref):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
def test_contribution_rule_single_gaussian(backend):
    """One isotropic Gaussian centred on a pixel centre: α = exp(-d²/2σ²), cut at 1/255 and 3σ."""
    H = W = 21
    xy = torch.tensor([[[(10.5 / W) * 2 - 1, (10.5 / H) * 2 - 1]]])  # centre of pixel (10, 10)
    chol = torch.tensor([[[2.0, 0.0, 2.0]]])
    means, conics, radii = project_cholesky(xy, chol, H, W)
    assert radii.item() == 6  # ceil(3 * 2)
    img = rasterize_sum(means, conics, torch.ones(1, 1, 3), radii, None, RasterSettings(H, W, backend=backend))[0, ..., 0]
    assert img[10, 10] == pytest.approx(1.0)
    assert img[10, 12] == pytest.approx(float(torch.exp(torch.tensor(-4.0 / 8.0))), rel=1e-6)
    assert img[10, 16] == pytest.approx(float(torch.exp(torch.tensor(-36.0 / 8.0))), rel=1e-6)  # 3σ: still ≥ 1/255
    assert img[10, 17] == 0  # outside the 3σ footprint
    assert img[16, 16] == 0  # inside the box but α = exp(-9) < 1/255


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_is_not_capped_per_tile(backend):
    """300 Gaussians on one 16×16 tile all count (the CUDA reference stops at 256)."""
    n = 300
    xy = torch.zeros(1, n, 2)  # image centre
    chol = torch.full((1, n, 3), 1.0) * torch.tensor([1.0, 0.0, 1.0])
    means, conics, radii = project_cholesky(xy, chol, 16, 16)
    img = rasterize_sum(means, conics, torch.full((1, n, 1), 1.0 / n), radii, None, RasterSettings(16, 16, backend=backend))
    assert img[0, 8, 8, 0] == pytest.approx(n * (1.0 / n) * float(torch.exp(torch.tensor(-0.25))), rel=1e-5)


def test_projection_conic_is_inverse_covariance():
    g = torch.Generator().manual_seed(5)
    chol = torch.rand(50, 3, generator=g, dtype=torch.float64) + torch.tensor([0.2, -0.5, 0.2], dtype=torch.float64)
    _, conics, radii = project_cholesky(torch.zeros(50, 2, dtype=torch.float64), chol, 10, 10)
    L = torch.zeros(50, 2, 2, dtype=torch.float64)
    L[:, 0, 0], L[:, 1, 0], L[:, 1, 1] = chol[:, 0], chol[:, 1], chol[:, 2]
    cov = L @ L.transpose(1, 2)
    inv = torch.linalg.inv(cov)
    torch.testing.assert_close(conics, torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1))
    expected = torch.ceil(3 * torch.linalg.eigvalsh(cov)[:, -1].sqrt()).long()
    assert torch.equal(radii, expected)
