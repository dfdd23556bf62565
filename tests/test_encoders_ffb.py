"""Tests of recon_plugins.encoders.ffb (FFB and style-modulated FFB)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import first_and_second_derivatives
from recon_plugins.encoders import FFBEncoder, FFBStyleModEncoder
from recon_plugins.encoders.ffb import modulated_linear

CFG = dict(n_levels=3, hidden_dim=16, out_features=12, log2_hashmap_size=10, base_resolution=4, max_resolution=32,
           backend="torch")


def make(cls, **kw):
    torch.manual_seed(0)
    return cls(cls.Config(**{**CFG, **kw}))


def test_output_dimensions() -> None:
    for cls in (FFBEncoder, FFBStyleModEncoder):
        enc = make(cls)
        y = enc(torch.rand(2, 7, 3) * 2 - 1)
        assert y.shape == (2, 7, 12) and enc.out_dim == 12
        assert make(cls, include_input=True).out_dim == 15
        assert y.abs().max() <= 1.0  # average of sines


def test_outputs_are_the_average_of_level_heads() -> None:
    enc = make(FFBEncoder)
    x = torch.rand(5, 3) * 2 - 1
    net, c = enc.net, enc.config
    emb = net.level_embeddings(x)
    h = torch.sin(c.w0 * net.backbone[0](x))
    heads = []
    for lvl in range(c.n_levels):
        h = torch.sin(c.w0 * net.backbone[lvl + 1](h)) + emb[lvl]
        heads.append(torch.sin(c.w1 * net.heads[lvl](h)))
    torch.testing.assert_close(enc(x), torch.stack(heads).mean(0))


def test_fourier_maps_grow_per_level() -> None:
    enc = make(FFBEncoder, n_levels=4, hidden_dim=256, base_sigma=1.0, exp_sigma=2.0)
    std = enc.net.fourier_maps.detach().flatten(1).std(dim=1)
    assert torch.all(std[1:] / std[:-1] > 1.5)


def test_modulated_linear_identity_style_and_scaling() -> None:
    lin = nn.Linear(6, 4)
    h = torch.randn(10, 6)
    torch.testing.assert_close(modulated_linear(h, torch.ones(10, 6), lin), lin(h))
    # a uniform style scale is removed by demodulation
    torch.testing.assert_close(modulated_linear(h, 3 * torch.ones(10, 6), lin), lin(h), atol=1e-5, rtol=1e-5)
    s = torch.rand(10, 6) + 0.5
    assert not torch.allclose(modulated_linear(h, s, lin), lin(h))


def test_stylemod_starts_equal_to_ffb_and_then_differs() -> None:
    a, b = make(FFBEncoder), make(FFBStyleModEncoder)
    b.net.load_state_dict(a.net.state_dict(), strict=False)
    x = torch.rand(9, 3) * 2 - 1
    torch.testing.assert_close(a(x), b(x))
    with torch.no_grad():
        for lin in b.net.styles:
            lin.weight.normal_(0, 1.0)
        b.net.grid.params.uniform_(-1, 1)
        a.net.grid.params.copy_(b.net.grid.params)
    assert not torch.allclose(a(x), b(x), atol=1e-4)


def test_gradients_reach_grid_and_inputs() -> None:
    for cls in (FFBEncoder, FFBStyleModEncoder):
        enc = make(cls)
        with torch.no_grad():
            enc.net.grid.params.uniform_(-0.1, 0.1)
            if cls is FFBStyleModEncoder:
                for lin in enc.net.styles:
                    lin.weight.normal_(0, 0.1)
        x = (torch.rand(16, 3) * 2 - 1).requires_grad_(True)
        y = enc(x)
        (gx,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
        y.sum().backward()
        assert (gx.abs().sum(-1) > 0).all()
        assert enc.net.grid.params.grad.abs().sum() > 0
        assert enc.net.fourier_maps.grad.abs().sum() > 0
        if cls is FFBStyleModEncoder:
            assert all(lin.weight.grad.abs().sum() > 0 for lin in enc.net.styles)


@pytest.mark.parametrize("cls", [FFBEncoder, FFBStyleModEncoder])
def test_active_levels_equal_zeroed_finer_grid_levels(cls) -> None:
    """Coarse-to-fine: locking levels ≥ k equals zeroing those levels' table rows."""
    torch.manual_seed(0)
    enc = cls(cls.Config(n_levels=3, hidden_dim=16, out_features=8, log2_hashmap_size=8, base_resolution=4,
                         max_resolution=32, backend="torch"))
    with torch.no_grad():
        enc.net.grid.params.uniform_(-1, 1)
    x = torch.rand(40, 3) * 2 - 1
    full = enc(x).detach()
    enc.active_levels = 1
    assert enc.net.grid.active_levels == 1 and enc.n_grid_levels == 3
    locked = enc(x).detach()
    enc.active_levels = None
    lay, f = enc.net.grid.layout, enc.config.n_features_per_level
    with torch.no_grad():
        enc.net.grid.params[lay.offsets[1] * f:] = 0.0
    torch.testing.assert_close(locked, enc(x).detach(), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(locked, full)


@pytest.mark.parametrize("cls", [FFBEncoder, FFBStyleModEncoder])
def test_table_parameters_are_the_inner_hash_grid(cls) -> None:
    """Trainers find the grid tables by the declared ``table_parameters()``, not by class."""
    enc = make(cls)
    tables = enc.table_parameters()
    grids = [m for m in enc.modules() if hasattr(m, "params") and m is not enc]
    assert len(tables) == 1 and tables[0] is grids[0].params
    assert all(t is not p for t in tables for p in [q for name, q in enc.named_parameters() if not name.endswith("params")])


def test_seed_stylemod_variant_normalises_a_shared_linear_map_per_point() -> None:
    """variant=seed: h_l = sin(ω₀ W_l h) + InstanceNorm1d(A e_l) with one A for all levels (the seed's
    StyleAttention; its softmax over one logit is 1) — checked against torch's InstanceNorm1d."""
    a, b = make(FFBEncoder), make(FFBStyleModEncoder, variant="seed")
    assert not hasattr(b.net, "styles") and isinstance(b.net.style_map, nn.Linear)
    b.net.load_state_dict(a.net.state_dict(), strict=False)
    with torch.no_grad():
        b.net.grid.params.uniform_(-1, 1)
        a.net.grid.params.copy_(b.net.grid.params)
    x = torch.rand(9, 3) * 2 - 1
    # reference: FFB's forward with the level features replaced as the seed does
    net, c = a.net, a.net.c
    norm = nn.InstanceNorm1d(c.hidden_dim)
    emb = net.level_embeddings(x)
    h = torch.sin(c.w0 * net.backbone[0](x / c.bound))
    out = 0.0
    for lvl in range(c.n_levels):
        h = torch.sin(c.w0 * net.backbone[lvl + 1](h)) + norm(b.net.style_map(emb[lvl]))
        out = out + torch.sin(c.w1 * net.heads[lvl](h))
    torch.testing.assert_close(b(x), out / c.n_levels, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a(x), b(x), atol=1e-3)


@pytest.mark.parametrize("active", [None, 3])
def test_compiled_forward_without_gradients_matches_torch(active: int | None, monkeypatch: pytest.MonkeyPatch,
        missing_extension) -> None:  # noqa: ANN001
    """Without gradients (IDR's tracer) FFB runs ffb_cpu.cpp: the same outputs as the autograd forward
    within 1e-5, with coarse-to-fine levels too; the PyTorch path is used when it is missing."""
    from recon_plugins.encoders import ffb

    if ffb.FFB_EXTENSION.load() is None:
        pytest.skip("the compiled FFB kernel could not be built")
    torch.manual_seed(0)
    enc = FFBEncoder(FFBEncoder.Config(n_levels=4, log2_hashmap_size=12, max_resolution=64))
    with torch.no_grad():
        enc.net.grid.params.uniform_(-0.5, 0.5)  # trained-size grid features: the Fourier features matter
    enc.active_levels = active
    x = torch.rand(700, 3) * 2 - 1
    ref = enc(x)
    assert ref.requires_grad  # the autograd forward
    with torch.no_grad():
        compiled = enc(x)
    assert (compiled - ref.detach()).abs().max() < 1e-5 and ref.abs().max() > 0.1
    with torch.inference_mode():
        assert (enc(x) - ref.detach()).abs().max() < 1e-5
    monkeypatch.setattr(ffb, "FFB_EXTENSION", missing_extension)
    with torch.no_grad():
        assert (enc(x) - ref.detach()).abs().max() < 1e-5


def test_compiled_sine_gradcheck_and_torch_parity() -> None:
    """The training sine (ffb_cpu.cpp ``sine_train`` / ``sine_grad``): (y, d) and the backward built on
    them pass gradcheck and gradgradcheck in float64 and give torch's sin(w z), first and second
    derivatives within float32 rounding, including the range reduction of large arguments."""
    from recon_core.activations import activation_with_derivative
    from recon_plugins.encoders import ffb

    ext = ffb.FFB_EXTENSION.load()
    if ext is None:
        pytest.skip("the compiled FFB kernel could not be built")
    torch.manual_seed(0)
    kernels = ffb._SineKernels(ext, 30.0)
    z = (torch.randn(50, dtype=torch.float64) * 0.2).requires_grad_()
    both = lambda t: activation_with_derivative(t, kernels)  # noqa: E731
    assert torch.autograd.gradcheck(both, (z,)) and torch.autograd.gradgradcheck(both, (z,))
    y64, d64 = both(z.detach())
    assert (y64 - torch.sin(30 * z.detach())).abs().max() < 1e-12
    assert (d64 - 30 * torch.cos(30 * z.detach())).abs().max() < 1e-11

    x = (torch.randn(700, 64) * 3).requires_grad_()  # float32: the compiled path; |w x| up to ~300
    wts = torch.randn(700, 64)
    y, g, gg = first_and_second_derivatives(lambda t: ffb.sine(t, 30.0), x, wts)
    assert type(y.grad_fn).__name__ == "_ActivationBackward"
    y_t, g_t, gg_t = first_and_second_derivatives(lambda t: torch.sin(30.0 * t), x, wts)
    # float32 arguments near 300 carry an absolute rounding of ~1.5e-5 that the two sines round differently
    assert (y - y_t).abs().max() < 1e-4 and (g - g_t).abs().max() < 1e-4 * g_t.abs().max()
    assert (gg - gg_t).abs().max() < 1e-4 * gg_t.abs().max() and gg_t.abs().max() > 1000


def test_training_gradients_with_and_without_the_compiled_sine(monkeypatch: pytest.MonkeyPatch,
        missing_extension) -> None:  # noqa: ANN001
    """IDR's double backward (∇ₓ with a graph, then a loss on it) through FFB gives the same parameter
    gradients with the compiled sine as with torch's (the path without the extension), within float32
    rounding, for every parameter group (grid table, Fourier maps, backbone, heads)."""
    from recon_plugins.encoders import ffb

    if ffb.FFB_EXTENSION.load() is None:
        pytest.skip("the compiled FFB kernel could not be built")
    enc = make(FFBEncoder, n_levels=4, hidden_dim=32)
    with torch.no_grad():
        enc.net.grid.params.uniform_(-0.3, 0.3)
    x = torch.rand(300, 3) * 2 - 1

    def grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        enc.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_()
        out = enc(xr)
        f = out[:, 0] + 0.3 * out[:, 1]
        (gx,) = torch.autograd.grad(f.sum(), xr, create_graph=True)
        ((gx.norm(dim=-1) - 1) ** 2).mean().add(f.abs().mean()).backward()
        return gx.detach(), [p.grad.clone() for p in enc.parameters()]

    gx, compiled = grads()
    monkeypatch.setattr(ffb, "FFB_EXTENSION", missing_extension)
    gx_t, reference = grads()
    assert (gx - gx_t).abs().max() < 1e-4 * gx_t.abs().max()
    assert len(compiled) == len(reference) >= 4
    for a, b in zip(compiled, reference):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-9 and b.abs().max() > 0
