"""Tests of recon_plugins.encoders.fourier."""

from __future__ import annotations

import math

import pytest
import torch

from recon_plugins.encoders import FourierEncoder
from recon_plugins.encoders._tcnn import tcnn_available
from recon_plugins.encoders.fourier import frequency_encoding, tcnn_frequency_permutation


@pytest.mark.parametrize("n_freq,include,in_dim", [(6, True, 3), (4, True, 3), (0, True, 3), (3, False, 2)])
def test_output_dimension(n_freq: int, include: bool, in_dim: int) -> None:
    enc = FourierEncoder(FourierEncoder.Config(n_frequencies=n_freq, include_input=include), in_dim=in_dim)
    y = enc(torch.rand(2, 5, in_dim))
    assert y.shape == (2, 5, enc.out_dim)
    assert enc.out_dim == in_dim * (int(include) + 2 * n_freq)


def test_idr_sizes() -> None:
    assert FourierEncoder(FourierEncoder.Config(n_frequencies=6)).out_dim == 39  # IDR points
    assert FourierEncoder(FourierEncoder.Config(n_frequencies=4)).out_dim == 27  # IDR view directions


def test_values_follow_nerf_layout() -> None:
    x = torch.tensor([[0.3, -0.7, 0.1]])
    y = frequency_encoding(x, 2, include_input=True)
    expected = torch.cat([x, torch.sin(x), torch.cos(x), torch.sin(2 * x), torch.cos(2 * x)], dim=-1)
    torch.testing.assert_close(y, expected)
    ypi = frequency_encoding(x, 1, include_input=False, pi_scale=True)
    torch.testing.assert_close(ypi, torch.cat([torch.sin(math.pi * x), torch.cos(math.pi * x)], dim=-1))


def test_tcnn_permutation_maps_tcnn_layout_to_ours() -> None:
    """Build the tcnn Frequency layout from its definition and check the permutation recovers ours."""
    x = torch.rand(7, 3)
    n = 3
    tcnn_layout = []
    for d in range(3):  # tcnn: per input dim, per octave: sin, cos of 2^k π x
        for k in range(n):
            a = x[:, d] * (2**k) * math.pi
            tcnn_layout += [torch.sin(a), torch.cos(a)]
    tcnn_out = torch.stack(tcnn_layout, dim=-1)
    perm = tcnn_frequency_permutation(3, n)
    assert sorted(perm.tolist()) == list(range(3 * 2 * n))
    torch.testing.assert_close(tcnn_out[:, perm], frequency_encoding(x, n, include_input=False, pi_scale=True))


@pytest.mark.skipif(not tcnn_available(), reason="tinycudann with CUDA is not available")
def test_tcnn_backend_matches_torch() -> None:
    x = torch.rand(64, 3, device="cuda")
    cfg = dict(n_frequencies=4, pi_scale=True)
    a = FourierEncoder(FourierEncoder.Config(**cfg, backend="tcnn")).cuda()(x)
    b = FourierEncoder(FourierEncoder.Config(**cfg, backend="torch")).cuda()(x)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_all_encoders_registered_as_encoder_plugins() -> None:
    from recon_core.registry import get_registry

    reg = get_registry()
    names = {r.name for r in reg.components("encoder")}
    assert {"fourier", "fourier-features", "sh", "hashgrid", "ffb", "ffb-stylemod"} <= names
    for name in ("fourier", "fourier-features", "sh", "hashgrid", "ffb", "ffb-stylemod"):
        cls = reg.get("encoder", name)
        enc = cls(cls.Config(**({"log2_hashmap_size": 8} if name in ("hashgrid", "ffb", "ffb-stylemod") else {})), in_dim=3)
        assert enc(torch.zeros(4, 3)).shape == (4, enc.out_dim)


def test_gaussian_fourier_features_values_and_seed() -> None:
    from recon_plugins.encoders import GaussianFourierEncoder

    enc = GaussianFourierEncoder(GaussianFourierEncoder.Config(n_features=5, sigma=2.0, seed=7))
    assert enc.out_dim == 3 + 10 and enc.includes_input
    B = torch.randn(3, 5, generator=torch.Generator().manual_seed(7)) * 2.0
    x = torch.rand(11, 3, dtype=torch.float64) * 2 - 1
    xp = 2 * math.pi * (x @ B.double())
    torch.testing.assert_close(enc(x.float()).double(), torch.cat([x, xp.sin(), xp.cos()], -1), atol=2e-5, rtol=0)
    assert "B" in enc.state_dict()  # fixed, but saved with the weights (as the seed's persistent buffer)
    assert not list(enc.parameters())
    other = GaussianFourierEncoder(GaussianFourierEncoder.Config(n_features=5, sigma=2.0, seed=8))
    assert not torch.allclose(other.B, enc.B)
    # the seed's default: 3 features (its network's first dims entry), sigma 1
    assert GaussianFourierEncoder().out_dim == 9


def test_spherical_harmonics_are_orthonormal() -> None:
    """∫ Y_i Y_j dΩ = δ_ij over the sphere (Monte Carlo with 400k directions), degree 5 (25 functions)."""
    from recon_plugins.encoders import SphericalHarmonicsEncoder

    g = torch.Generator().manual_seed(0)
    d = torch.randn(400000, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    Y = SphericalHarmonicsEncoder(SphericalHarmonicsEncoder.Config(degree=5))(d)
    gram = (Y.T @ Y) * (4 * math.pi / len(d))
    assert (gram - torch.eye(25, dtype=torch.float64)).abs().max() < 0.03
    assert SphericalHarmonicsEncoder().out_dim == 16
