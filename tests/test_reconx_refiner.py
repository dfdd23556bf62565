"""The confidence-aware loss and the ``confidence`` refiner (plugins/reconx/refiner.py)."""

from __future__ import annotations

import math

import pytest
import torch

from recon_core.cameras import Cameras
from recon_core.components import RunContext
from recon_core.imageops import ssim_map
from recon_core.optim import OptimConfig
from recon_core.registry import Registry
from recon_core.scene import Bounds, Scene, View
from recon_plugins.gaussians import GaussianSplat, GaussianSplatConfig, TorchGaussianRenderer
from recon_plugins.reconx.refiner import ConfidenceConfig, ConfidenceRefiner, LossWeights, confidence_loss, lpips_map


def _create(kind: str, name: str):
    """The run's ``ctx.create``: the LPIPS term comes from the run's ``lpips`` evaluator."""
    import recon_plugins.metrics as metrics

    return Registry(entry_points=[], modules=[("metrics", metrics)]).create(kind, name)


def _images(h: int = 16, w: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(h, w, 3, generator=g), torch.rand(h, w, 3, generator=g), torch.rand(h, w, generator=g)


def test_loss_equals_its_definition_on_known_inputs() -> None:
    pred, target, conf = _images()
    w = LossWeights(0.8, 0.2, 0.5)
    fake_lpips = lambda a, b: ((a - b) ** 2).sum(-1)  # noqa: E731 - a known spatial "LPIPS" map
    loss, terms = confidence_loss(pred, target, conf, w, fake_lpips)
    h, wd = conf.shape
    l1 = (conf * (pred - target).abs().mean(-1)).sum() / (h * wd)
    s = ssim_map(pred, target, 11)[0].mean(-1)
    ssim_term = (conf[5 : h - 5, 5 : wd - 5] * (1 - s)).sum() / s.numel()
    lp = (conf * ((pred - target) ** 2).sum(-1)).sum() / (h * wd)
    expected = 0.8 * l1 + 0.2 * ssim_term + 0.5 * lp
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(terms["l1"], 0.8 * l1) and torch.allclose(terms["lpips"], 0.5 * lp)


def test_loss_with_constant_images_is_hand_computable() -> None:
    pred = torch.full((12, 12, 3), 0.75)
    target = torch.full((12, 12, 3), 0.25)
    conf = torch.ones(12, 12)
    conf[:, :6] = 0.0  # half of the pixels count
    loss, terms = confidence_loss(pred, target, conf, LossWeights(1.0, 0.0, 0.0))
    assert math.isclose(float(loss), 0.5 * 0.5, rel_tol=1e-6)  # mean over all pixels of C * |0.5|
    assert set(terms) == {"l1"}


def test_zero_confidence_gives_no_gradient() -> None:
    pred, target, _ = _images(seed=1)
    pred.requires_grad_(True)
    conf = torch.ones(16, 20)
    conf[:, 10:] = 0.0
    loss, _ = confidence_loss(pred, target, conf, LossWeights(0.8, 0.2, 0.0))
    (grad,) = torch.autograd.grad(loss, pred)
    # SSIM windows reach 5 pixels across the boundary; beyond that a zero-confidence pixel gets nothing
    assert torch.count_nonzero(grad[:, 16:]) == 0
    assert torch.count_nonzero(grad[:, :10]) > 0
    loss_zero, _ = confidence_loss(pred, target, torch.zeros(16, 20), LossWeights(0.8, 0.2, 0.0))
    assert float(loss_zero.detach()) == 0.0 and torch.count_nonzero(torch.autograd.grad(loss_zero, pred)[0]) == 0


# ------------------------------------------------------------------------------ refiner


def _camera(position: list[float], size: int = 16) -> Cameras:
    pos = torch.tensor(position, dtype=torch.float64)
    forward = -pos / pos.norm()
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    right = torch.linalg.cross(forward, up)
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, pos
    K = torch.tensor([[20.0, 0, size / 2], [0, 20.0, size / 2], [0, 0, 1]])
    return Cameras.create(K, c2w[None].float(), size, size)


def _tiny_setup(confidences: list[torch.Tensor | None]) -> tuple[GaussianSplat, Scene, RunContext]:
    g = torch.Generator().manual_seed(0)
    n = 40
    rep = GaussianSplat(GaussianSplatConfig(sh_degree=0))
    rep.set_splats({
        "means": (torch.rand(n, 3, generator=g) - 0.5) * 0.6,
        "quats": torch.nn.functional.normalize(torch.rand(n, 4, generator=g), dim=-1),
        "scales": torch.full((n, 3), math.log(0.08)),
        "opacities": torch.zeros(n),
        "sh0": torch.zeros(n, 1, 3),
        "shN": torch.zeros(n, 0, 3),
    })
    positions = [[2.0, 0.0, 0.3], [0.0, 2.0, 0.3], [-2.0, 0.0, 0.3]]
    views = [View(f"v{i}", _camera(p), torch.rand(16, 16, 3, generator=g), confidence=c) for i, (p, c) in enumerate(zip(positions, confidences))]
    scene = Scene("tiny", views, Bounds(torch.zeros(3), 1.0))
    ctx = RunContext(device=torch.device("cpu"), seed=0, renderer=TorchGaussianRenderer(), background=torch.ones(3),
                     create=_create, log=lambda m: None)
    return rep, scene, ctx


def test_view_with_zero_confidence_contributes_no_gradient() -> None:
    rep, scene, ctx = _tiny_setup([torch.zeros(16, 16), None, None])
    refiner = ConfidenceRefiner(ConfidenceConfig(steps=3, generator="none", lambda_lpips=0.0))
    refiner.setup(rep, scene, ctx)
    refiner.order.order, refiner.order.position = torch.tensor([0, 1]), 0  # view 0, then view 1
    before = {n: p.detach().clone() for n, p in rep.named_parameters()}
    logs = refiner.step(0)  # view 0: confidence 0 everywhere
    assert logs["loss"] == 0.0
    for n, p in rep.named_parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, n
        assert torch.equal(p.detach(), before[n]), f"{n} moved on a zero-confidence view"
    refiner.step(1)  # view 1: full confidence, parameters move
    assert not torch.equal(rep.splats["sh0"].detach(), before["splats.sh0"])


def test_refiner_fits_without_densification_and_reports_lpips_state() -> None:
    rep, scene, ctx = _tiny_setup([None, None, None])
    n = len(rep)
    cfg = ConfidenceConfig(steps=12, generator="none", lambda_lpips=0.0)
    assert isinstance(cfg, OptimConfig) and cfg.densify is False  # the engine's options, densification off (ReconX)
    refiner = ConfidenceRefiner(cfg)
    refiner.setup(rep, scene, ctx)
    assert refiner.engine.strategy is None
    losses = [refiner.step(s)["loss"] for s in range(12)]
    assert len(rep) == n  # no densification
    assert sum(losses[-3:]) < sum(losses[:3])
    report = refiner.finish()
    assert report["lpips"] == "off" and report["input_views"] == ["v0", "v1", "v2"]


def test_lpips_term_is_reported_unavailable_without_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: no backbone weights
    pytest.importorskip("lpips")
    rep, scene, ctx = _tiny_setup([None, None, None])
    messages: list[str] = []
    ctx.log = messages.append
    refiner = ConfidenceRefiner(ConfidenceConfig(steps=1, generator="none"))
    with pytest.warns(UserWarning, match="LPIPS term disabled"):
        refiner.setup(rep, scene, ctx)
    assert refiner.lpips is None
    assert any("alexnet" in m for m in messages)
    refiner.step(0)
    assert refiner.finish()["lpips"].startswith("unavailable: ")


def test_lpips_term_with_a_backbone_file_is_weighted_by_confidence(tmp_path, monkeypatch) -> None:
    """The LPIPS term through the metric's own network construction, with a random AlexNet saved
    under torchvision's file name (same keys and shapes as the published weights)."""
    pytest.importorskip("lpips")
    torchvision = pytest.importorskip("torchvision")
    from recon_plugins.metrics.perceptual import BACKBONES
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "hub" / "checkpoints" / BACKBONES["alex"].filename)
    ctx = RunContext(device=torch.device("cpu"), seed=0, create=_create)
    net, reason = lpips_map(ctx)  # the run's lpips evaluator's loss_map
    assert reason is None and net is not None
    assert lpips_map(RunContext(device=torch.device("cpu"), seed=0))[0] is None  # no way to create it: no term
    pred, target, _ = _images(40, 40, seed=3)
    pred.requires_grad_(True)
    lp_map = net(pred, target)
    assert lp_map.shape == (40, 40) and float(lp_map.detach().mean()) > 0
    conf = torch.ones(40, 40)
    loss, terms = confidence_loss(pred, target, conf, LossWeights(0.0, 0.0, 0.5), net)
    assert torch.allclose(loss, 0.5 * lp_map.mean()) and set(terms) == {"l1", "lpips"}
    loss_zero, _ = confidence_loss(pred, target, torch.zeros(40, 40), LossWeights(0.8, 0.2, 0.5), net)
    assert torch.count_nonzero(torch.autograd.grad(loss_zero, pred)[0]) == 0
    assert float(net(target, target).abs().max()) < 1e-6
