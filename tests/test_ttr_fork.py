"""``ttr.preset=fork``: the DGGT-TTR fork's refinement (inference_refine_mode2.py), checked by known answers.

Adam's first step moves every parameter with a non-zero gradient by exactly its learning rate
(m / sqrt(v) = ±1), so one step tells in which space the learning rates act: the fork steps
the *activated* opacity (0.05), RGB (0.003) and scale (1e-5), and never the dynamic Gaussians.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from recon_core import Cameras, Scene
from recon_core.gaussians import SH_C0
from recon_plugins.ttr import TestTimeRefiner, TTRConfig
from recon_plugins.ttr.refiner import fork_loss, resolve_preset

pytestmark = pytest.mark.usefixtures("one_thread")

dggt = pytest.importorskip("recon_plugins.dggt")

from test_ttr_dggt import _build_ctx as _ctx, _scene  # the same toy street (4 views, sky, dynamic masks)


def _rep(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, scene: Scene) -> Any:
    monkeypatch.setenv("RECON_WEIGHTS_DIR", str(tmp_path))
    rep = dggt.DGGTRepresentation(dggt.DGGTConfig(init="fit", size="tiny", fit_steps=3, fit_points=300, fit_dynamic_stride=2))
    rep.build(scene, _ctx())
    return rep


def test_fork_preset_fixes_what_the_fork_fixes() -> None:
    cfg = resolve_preset(TTRConfig(preset="fork", lr_scale=1e-3, select="guard"))
    assert (cfg.refine_scale, cfg.lr_scale, cfg.lr_space, cfg.refine_dynamic, cfg.skip_first_frame, cfg.select) == \
        (True, 1e-5, "activated", False, True, "loss")
    assert resolve_preset(TTRConfig()) == TTRConfig(), "the recon preset changes nothing"


def _ssim_map_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """kornia.metrics.ssim written out independently: a 2D 11x11 Gaussian kernel (sigma 1.5),
    reflect padding, num / (den + 1e-12); [N, C, H, W]."""
    ax = torch.arange(11, dtype=x.dtype) - 5
    g = torch.exp(-(ax**2) / (2 * 1.5**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(x.shape[1], 1, 11, 11)

    def f(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (5, 5, 5, 5), mode="reflect"), k, groups=x.shape[1])

    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2) + 1e-12)


def test_fork_loss_is_l1_plus_a_fifth_of_kornias_ssim_loss() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 16, 18, 3, generator=g), torch.rand(2, 16, 18, 3, generator=g)
    valid = torch.rand(2, 16, 18, generator=g) > 0.3
    m = valid[:, None].float()
    p, t = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    n = m.sum() * 3 + 1e-8
    l1 = ((p - t).abs() * m).sum() / n
    ssim_l = (((1 - _ssim_map_reference(p, t)) / 2).clamp(0, 1) * m).sum() / n
    assert float(fork_loss(pred, target, valid)) == pytest.approx(float(l1 + 0.2 * ssim_l), abs=1e-6)
    kornia = pytest.importorskip("kornia")
    k = kornia.losses.ssim_loss(p, t, window_size=11, reduction="none")
    assert float((k * m).sum() / n) == pytest.approx(float(ssim_l), abs=1e-6)


def test_one_fork_step_moves_activated_values_by_their_learning_rates(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    scene = _scene()
    rep = _rep(monkeypatch, tmp_path, scene)
    sp = rep.splats
    before = {"opacity": torch.sigmoid(sp["opacities"]).detach().clone(), "rgb": (sp["sh0"][:, 0] * SH_C0 + 0.5).detach().clone(),
              "scale": torch.exp(sp["scales"]).detach().clone(), "means": sp["means"].detach().clone()}
    ttr = TestTimeRefiner(TTRConfig(preset="fork", steps_pose=0, steps_gs=2, lpips=False))
    ttr.setup(rep, scene, _ctx())
    ttr.step(0)
    dyn = sp["dynamic"]
    static = ~dyn
    d_op = (torch.sigmoid(sp["opacities"]).detach() - before["opacity"])[static]
    d_rgb = (sp["sh0"][:, 0] * SH_C0 + 0.5).detach()[static] - before["rgb"][static]
    d_sc = torch.exp(sp["scales"]).detach()[static] - before["scale"][static]
    inside = (before["opacity"][static] > 0.06) & (before["opacity"][static] < 0.94)  # no clamping at 0 or 1
    moved = (d_op.abs() > 1e-4) & inside
    assert moved.float().mean() > 0.3
    # |step| = lr · |g| / (|g| + 1e-8): the learning rate itself except for vanishing gradients
    assert ((d_op[moved].abs() - 0.05).abs() < 2e-4).float().mean() > 0.95, "activated opacity, lr 0.05"
    assert (d_op.abs() <= 0.05 + 2e-4).all()
    rgb_moved = d_rgb.abs() > 1e-5
    assert ((d_rgb[rgb_moved].abs() - 3e-3).abs() < 2e-5).float().mean() > 0.95, "RGB, lr 0.003"
    assert (d_rgb.abs() <= 3e-3 + 2e-5).all()
    sc_moved = d_sc.abs() > 1e-8
    assert sc_moved.any() and ((d_sc[sc_moved].abs() - 1e-5).abs() < 3e-7).float().mean() > 0.95, "activated scales, lr 1e-5"
    assert (d_sc.abs() <= 1e-5 + 3e-7).all()
    assert torch.equal(sp["means"].detach(), before["means"]), "no xyz"
    assert torch.equal(torch.sigmoid(sp["opacities"]).detach()[dyn], before["opacity"][dyn]), "dynamic Gaussians detached"
    assert torch.equal(torch.exp(sp["scales"]).detach()[dyn], before["scale"][dyn])


def test_recon_preset_steps_raw_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    scene = _scene()
    rep = _rep(monkeypatch, tmp_path, scene)
    logit = rep.splats["opacities"].detach().clone()
    ttr = TestTimeRefiner(TTRConfig(refine_pose=False, steps_gs=1, lpips=False))
    ttr.setup(rep, scene, _ctx())
    ttr.step(0)
    d = (rep.splats["opacities"].detach() - logit)[~rep.splats["dynamic"]]
    moved = d.abs() > 1e-4
    assert moved.any() and torch.allclose(d[moved].abs(), torch.full_like(d[moved], 0.05), atol=1e-4), "logit opacity, lr 0.05"


def test_fork_leaves_frame_0_out_of_the_loss_and_keeps_the_lowest_loss_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    scene = _scene()
    rep = _rep(monkeypatch, tmp_path, scene)
    ttr = TestTimeRefiner(TTRConfig(preset="fork", steps_pose=3, steps_gs=4, lr_pose=1e-2, lpips=False))
    ttr.setup(rep, scene, _ctx())
    rendered: list[int] = []
    render = ttr.ctx.renderer.render

    def spy(r: Any, cams: Cameras, **kw: Any) -> Any:
        if r is rep and torch.is_grad_enabled():  # the loss's renders (measurements run without grad; the sky is another layer)
            rendered.append(len(cams))
        return render(r, cams, **kw)

    monkeypatch.setattr(ttr.ctx.renderer, "render", spy)
    losses, snaps = [], []
    for s in range(ttr.total_steps):
        if s == 3:
            snaps.clear()
        pre = (ttr.omega.detach().clone(), ttr.tau.detach().clone())
        logs = ttr.step(s)
        losses.append(logs["loss"])
        snaps.append((pre, {k: rep.splats[k].detach().clone() for k in ("opacities", "sh0", "quats", "scales")}))
    assert rendered == [2] * 7, "the loss renders the 2 views besides frame 0 (of 3 training views)"
    report = ttr.finish()
    gs = losses[3:]
    best = min(range(len(gs)), key=lambda i: gs[i])
    assert report["stages"][1]["kept_step"] == best and report["stages"][1]["lowest_loss"] == pytest.approx(gs[best])
    (omega, tau), params = snaps[best]
    assert torch.equal(ttr.omega.detach(), omega) and torch.equal(ttr.tau.detach(), tau), "the pose that gave the lowest loss"
    for k, v in params.items():
        assert torch.equal(rep.splats[k].detach(), v), f"{k} after the lowest-loss step"
    assert math.isfinite(report["train_psnr"]["after"]) and "train_psnr_nonsky" in report


def test_fork_preset_resumes_bit_identically(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import copy

    scene = _scene()
    rep = _rep(monkeypatch, tmp_path, scene)
    cfg = TTRConfig(preset="fork", steps_pose=2, steps_gs=4, lpips=False)
    rep2, scene2, rep3, scene3 = copy.deepcopy(rep), copy.deepcopy(scene), copy.deepcopy(rep), copy.deepcopy(scene)
    full = TestTimeRefiner(cfg)
    full.setup(rep, scene, _ctx())
    for s in range(full.total_steps):
        full.step(s)
    first = TestTimeRefiner(cfg)
    first.setup(rep2, scene2, _ctx())
    for s in range(4):
        first.step(s)
    saved = copy.deepcopy(first.state_dict())
    rep3.load_state_dict(rep2.state_dict())
    resumed = TestTimeRefiner(cfg)
    resumed.setup(rep3, scene3, _ctx())
    resumed.load_state_dict(saved)
    for s in range(4, resumed.total_steps):
        resumed.step(s)
    assert full.finish()["stages"] == resumed.finish()["stages"]
    for k in ("opacities", "sh0", "scales", "quats"):
        assert torch.equal(rep.splats[k], rep3.splats[k]), k
