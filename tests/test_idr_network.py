"""Tests of recon_plugins.idr.network: geometric initialisation, skip connection, encoders."""

from __future__ import annotations

import pytest
import torch

from conftest import first_and_second_derivatives
from recon_core.activations import activation_with_derivative
from recon_plugins.encoders import FFBEncoder, FourierEncoder, HashGridEncoder
from recon_plugins.idr.network import ImplicitNetwork, RenderingNetwork

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(width=128, n_layers=4, skip_in=(2,), feature_dim=32)


def radial_profile(net: ImplicitNetwork, n_dirs: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    d = torch.randn(n_dirs, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    ts = torch.linspace(0.0, 1.0, 51)
    with torch.no_grad():
        f = net.sdf((d[:, None, :] * ts[None, :, None]).reshape(-1, 3)).reshape(n_dirs, -1)
    return ts, f


def test_geometric_init_is_a_sphere_sdf() -> None:
    """IDR's init: f(x) ≈ |x| − 0.6 (the approximation is loose at finite width and Softplus β = 100)."""
    torch.manual_seed(0)
    net = ImplicitNetwork(FourierEncoder(), width=512, n_layers=8, skip_in=(4,), feature_dim=256)
    ts, f = radial_profile(net)
    assert (f[:, 0] < -0.1).all() and (f[:, -1] > 0.15).all()  # inside negative, boundary positive
    crossing = ts[(f > 0).float().argmax(dim=1)]
    assert crossing.min() > 0.3 and crossing.max() < 0.8
    shell = (ts >= 0.3) & (ts <= 1.0)
    assert (f[:, shell] - (ts[shell] - 0.6)).abs().mean() < 0.2
    # monotone along rays, gradient ≈ unit length near the zero level set
    assert ((f[:, 1:] - f[:, :-1])[:, 15:] > 0).float().mean() > 0.95
    x = torch.randn(64, 3)
    x = 0.6 * x / x.norm(dim=-1, keepdim=True)
    _, feat, grad = net.sdf_and_gradient(x, create_graph=False)
    assert feat.shape == (64, 256)
    assert grad.norm(dim=-1).mean() == pytest.approx(1.0, abs=0.3)
    cosine = (grad / grad.norm(dim=-1, keepdim=True) * x / 0.6).sum(-1)
    assert cosine.mean() > 0.95  # gradient points outwards


def test_geometric_init_tightens_towards_relu_limit() -> None:
    """With a very sharp Softplus the init is |x| − r up to finite-width noise."""
    torch.manual_seed(0)
    net = ImplicitNetwork(FourierEncoder(), width=512, n_layers=8, skip_in=(4,), feature_dim=16, softplus_beta=1e4)
    ts, f = radial_profile(net)
    shell = (ts >= 0.3) & (ts <= 1.0)
    assert (f[:, shell] - (ts[shell] - 0.6)).abs().mean() < 0.1


@pytest.mark.parametrize("encoder", [
    lambda: FourierEncoder(),
    lambda: HashGridEncoder(HashGridEncoder.Config(n_levels=4, log2_hashmap_size=10, max_resolution=64, init_scale=0.5)),
    lambda: FFBEncoder(FFBEncoder.Config(n_levels=2, hidden_dim=16, out_features=16, log2_hashmap_size=10)),
])
def test_encoder_features_are_switched_off_at_init(encoder) -> None:
    """At init the SDF depends on x only through the raw coordinates, whatever the encoder."""
    torch.manual_seed(0)
    enc = encoder()
    net = ImplicitNetwork(enc, **SMALL)
    x = torch.rand(50, 3) * 2 - 1
    with torch.no_grad():
        before = net(x)
        for p in enc.parameters():
            p.add_(torch.randn_like(p))
        after = net(x)
    torch.testing.assert_close(before, after)
    assert net.d_in == (enc.out_dim if getattr(enc, "includes_input", False) else enc.out_dim + 3)
    # but gradients still reach the encoder-reading weights (Adam then switches them on)
    net(x)[:, 1:].sum().backward()
    first = net.layers[0]
    w_grad = first.parametrizations.weight.original1.grad
    assert w_grad[:, 3:].abs().sum() > 0


def test_skip_connection_and_widths() -> None:
    net = ImplicitNetwork(FourierEncoder(), width=64, n_layers=4, skip_in=(2,), feature_dim=8)
    shapes = [lin.weight.shape for lin in net.layers]
    assert shapes[1] == (64 - 39, 64)  # the layer before the skip leaves room for γ(x)
    assert shapes[2] == (64, 64) and shapes[-1] == (9, 64)
    assert net(torch.rand(5, 3)).shape == (5, 9)


def test_rendering_network_shapes_and_range() -> None:
    rn = RenderingNetwork(16, width=32, n_layers=2, view_encoder=FourierEncoder(FourierEncoder.Config(n_frequencies=4)))
    rgb = rn(torch.rand(10, 3), torch.randn(10, 3), torch.randn(10, 3), torch.randn(10, 16))
    assert rgb.shape == (10, 3) and (rgb > 0).all() and (rgb < 1).all()
    assert rn.layers[0].weight.shape[1] == 3 + 27 + 3 + 16  # IDR: points, γ_v(view) 4 octaves, normal, feature


def test_seed_sdf_squashing_known_values() -> None:
    from recon_plugins.idr.network import SEED_LAPLACE_BETA, squash_sdf

    s = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    b = SEED_LAPLACE_BETA
    rho = torch.where(s > 0, 0.5 * torch.exp(-s.abs() / b), 1 - 0.5 * torch.exp(-s.abs() / b)) / b
    rho[2] = 0.5 / b  # sign(0) = 0
    f = squash_sdf(s)
    torch.testing.assert_close(f, torch.tanh(s / (2 + rho.detach())))
    assert f[2].item() == 0.0 and (f.abs() < 1).all()
    (g,) = torch.autograd.grad(f.sum(), s)
    assert g[2].item() == pytest.approx(1 / (2 + 0.5 / b))  # the density is a constant for gradients


def test_squashed_network_keeps_the_zero_level_set() -> None:
    torch.manual_seed(0)
    plain = ImplicitNetwork(FourierEncoder(), width=64, n_layers=2, skip_in=(1,), feature_dim=4)
    squashed = ImplicitNetwork(FourierEncoder(), width=64, n_layers=2, skip_in=(1,), feature_dim=4, sdf_squash=True)
    squashed.load_state_dict(plain.state_dict())
    x = torch.rand(200, 3) * 2 - 1
    a, b = plain(x), squashed(x)
    assert torch.equal(torch.sign(a[:, 0]), torch.sign(b[:, 0])) and torch.equal(a[:, 1:], b[:, 1:])
    assert (b[:, 0].abs() < a[:, 0].abs() + 1e-7).all()


def test_tanh_output_is_idr_rgb_range() -> None:
    torch.manual_seed(0)
    view = FourierEncoder(FourierEncoder.Config(n_frequencies=4))
    sig = RenderingNetwork(8, width=32, n_layers=2, view_encoder=view)
    tanh = RenderingNetwork(8, width=32, n_layers=2, view_encoder=view, output="tanh")
    tanh.load_state_dict(sig.state_dict())
    args = [torch.randn(50, 3), torch.randn(50, 3), torch.randn(50, 3), torch.randn(50, 8)]
    y = tanh(*args)
    assert y.min() < 0 and (y.abs() <= 1).all()
    with pytest.raises(ValueError, match="sigmoid or tanh"):
        RenderingNetwork(8, view_encoder=view, output="relu")


@pytest.mark.parametrize("case", ["small-fourier", "grid-hashgrid", "squash-beta10-no-weight-norm"])
def test_compiled_sdf_inference_matches_the_torch_layers(case: str, monkeypatch: pytest.MonkeyPatch,
        missing_extension) -> None:  # noqa: ANN001
    """The tracer's compiled SDF forward (idr_cpu.cpp: blocks, MKL products, its own vectorised
    Softplus) gives the autograd forward's SDF within 1e-5, and so does the PyTorch fallback."""
    from recon_plugins.idr import network

    if network.IDR_EXTENSION.load() is None:
        pytest.skip("the compiled IDR kernels could not be built")
    torch.manual_seed(0)
    if case == "small-fourier":
        net = ImplicitNetwork(FourierEncoder(), width=128, n_layers=4, skip_in=(2,), feature_dim=64)
    elif case == "grid-hashgrid":
        enc = HashGridEncoder(HashGridEncoder.Config(n_levels=8, log2_hashmap_size=12, max_resolution=128, init_scale=0.2))
        net = ImplicitNetwork(enc, width=64, n_layers=2, skip_in=(), feature_dim=32)
    else:
        net = ImplicitNetwork(FourierEncoder(), width=64, n_layers=3, skip_in=(1, 3), feature_dim=8, softplus_beta=10.0,
                              use_weight_norm=False, sdf_squash=True)
    with torch.no_grad():  # away from the initial sphere: every weight (encoder features too) matters
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.rand(1000, 3) * 2.2 - 1.1  # more than one 256-point block, a partial last one
    with torch.no_grad():
        ref = net.sdf(x)
    compiled = net.sdf_inference(x)
    assert compiled.shape == (1000,) and not compiled.is_inference()
    assert (compiled - ref).abs().max() < 1e-5
    assert ref.abs().max() > 0.1 and ref.std() > 0.05  # a non-trivial field
    monkeypatch.setattr(network, "IDR_EXTENSION", missing_extension)
    assert (net.sdf_inference(x) - ref).abs().max() < 1e-5


def test_compiled_softplus_gradcheck_and_torch_parity() -> None:
    """The training activation (idr_cpu.cpp ``softplus_train``): its (y, d) and the backward built on
    d pass gradcheck and gradgradcheck in float64 (away from the clamp's kink), and in float32 give
    torch's clamp_min + softplus values, first and second derivatives within float32 rounding."""
    from recon_plugins.idr import network

    if network.IDR_EXTENSION.load() is None:
        pytest.skip("the compiled IDR kernels could not be built")
    torch.manual_seed(0)
    beta = 100.0
    z = torch.cat([torch.randn(60, dtype=torch.float64) * 0.08, torch.tensor([0.25, 0.5, -0.5], dtype=torch.float64)])
    z = z[(z + 20 / beta).abs() > 1e-3].requires_grad_()
    assert (z < -20 / beta).any() and (z > 0.2).any()  # clamped values and the far linear tail both present
    kernels = network._SoftplusKernels(network.IDR_EXTENSION.load(), beta)
    both = lambda t: activation_with_derivative(t, kernels)  # noqa: E731
    assert torch.autograd.gradcheck(both, (z,)) and torch.autograd.gradgradcheck(both, (z,))
    # float64 values against torch's
    y64 = both(z.detach())[0]
    assert (y64 - torch.nn.functional.softplus(z.detach().clamp_min(-20 / beta), beta=beta)).abs().max() < 1e-12

    act = network.ClampedSoftplus(beta)
    x = (torch.randn(700, 64) * 0.08).requires_grad_()  # float32: the compiled path
    w = torch.randn(700, 64)
    y, g, gg = first_and_second_derivatives(act, x, w)
    assert type(y.grad_fn).__name__ == "_ActivationBackward"
    y_t, g_t, gg_t = first_and_second_derivatives(
        lambda t: torch.nn.functional.softplus(t.clamp_min(act.floor), beta=beta), x, w)
    assert (y - y_t).abs().max() < 1e-6 and (g - g_t).abs().max() < 1e-6
    assert (gg - gg_t).abs().max() < 1e-5 * gg_t.abs().max()
    assert gg_t.abs().max() > 1  # the second derivative is exercised (β σ (1 − σ) is up to 25)


def test_training_step_gradients_with_and_without_the_compiled_softplus(monkeypatch: pytest.MonkeyPatch,
        missing_extension) -> None:  # noqa: ANN001
    """The eikonal-style double backward through a whole network gives the same parameter gradients
    with the compiled activation as with torch's (RECON_NO_CPP's path), within float32 rounding."""
    from recon_plugins.idr import network

    if network.IDR_EXTENSION.load() is None:
        pytest.skip("the compiled IDR kernels could not be built")
    torch.manual_seed(0)
    net = ImplicitNetwork(FourierEncoder(), width=64, n_layers=3, skip_in=(2,), feature_dim=8)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.rand(500, 3) * 2 - 1

    def grads() -> list[torch.Tensor]:
        net.zero_grad(set_to_none=True)
        f, feat, g = net.sdf_and_gradient(x, create_graph=True)
        (f.sum() + feat.square().sum() + ((g.norm(dim=-1) - 1) ** 2).mean()).backward()
        return [p.grad.clone() for p in net.parameters()]

    compiled = grads()
    monkeypatch.setattr(network, "IDR_EXTENSION", missing_extension)
    reference = grads()
    for a, b in zip(compiled, reference):
        assert (a - b).abs().max() <= 1e-5 * (1 + b.abs().max())
