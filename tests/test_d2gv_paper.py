"""d2gv preset=paper: the original D2GV's MLP layout, embedder, initialisation, Adan optimiser.

Parity with the original code itself (same weights → same outputs, Adan bit-identical) is run
outside the repository and recorded in docs/benchmarks.md (D2GV section); these tests check the
same facts against known answers.
"""

from __future__ import annotations

import math

import pytest
import torch

from recon_core import RunContext
from recon_core.imageops import psnr
from recon_plugins.d2gv.adan import Adan
from recon_plugins.d2gv.decode import Decoder
from recon_plugins.d2gv.deform import DeformationMLP, DeformSettings, positional_encoding
from recon_plugins.d2gv.fit import D2GVFit, FitConfig
from recon_plugins.d2gv.representation import D2GV, D2GVConfig

from test_d2gv_decode import training_path
from test_d2gv_representation import tiny_video

CPU = RunContext(torch.device("cpu"), seed=0)
PAPER = DeformSettings(embedder="deform3dgs", branches=True)


def test_deform3dgs_embedder_known_answer():
    x = torch.tensor([[0.3, -0.7]])
    a, b = 0.3, -0.7
    expected = [a, b, math.sin(a), math.sin(b), math.cos(a), math.cos(b),
                math.sin(2 * a), math.sin(2 * b), math.cos(2 * a), math.cos(2 * b)]  # no π, frequency-major
    torch.testing.assert_close(positional_encoding(x, 2, "deform3dgs"), torch.tensor([expected]))
    nerf = positional_encoding(x, 2, "nerf")  # our default keeps π
    assert nerf[0, 2] == pytest.approx(math.sin(math.pi * a))


def test_paper_mlp_layout_and_initialisation():
    mlp = DeformationMLP(PAPER)
    # 55 → 156 → 156, then one W×W + ReLU branch per output: 82 997 parameters; the original's third
    # (opacity) branch, whose output it discards, would add 24 649 (107 646 in all)
    assert sum(p.numel() for p in mlp.parameters()) == 82997
    assert sum(p.numel() for p in DeformationMLP().parameters()) == 34013
    assert mlp.head_xy.weight.abs().sum() > 0  # PyTorch's default init, heads included
    xy, t = torch.rand(7, 2) * 2 - 1, torch.tensor([0.25, 0.5])
    dxy, dcol = mlp(xy, t)
    assert dxy.shape == (2, 7, 2) and dcol.shape == (2, 7, 3)
    # the branches are separate: the colour head ignores the xy branch
    with torch.no_grad():
        mlp.branch_xy.weight.mul_(2)
    dxy2, dcol2 = mlp(xy, t)
    assert not torch.allclose(dxy, dxy2) and torch.equal(dcol, dcol2)


def test_paper_representation_and_decoder():
    video = tiny_video(num_frames=6, gop_length=3)
    rep = D2GV(D2GVConfig(preset="paper", num_gaussians=50, mlp_width=16))
    rep.build(video, CPU)
    assert [len(r) for r in rep.gop_ranges()] == [3, 3]  # GoP = the loader's
    gop = rep.gops[0]
    assert gop.deform.settings.branches and gop.deform.settings.embedder == "deform3dgs"
    assert torch.all(gop.mask_logit == 1.2)
    raw = gop.chol.detach()
    assert raw.min() >= 0 and raw.max() < 1 and gop.color.min() >= 0 and gop.color.max() < 1  # U[0, 1)
    with torch.no_grad():
        rep.gops[1].mask_logit[:10] = -4.0
    # the fused inference path equals the training path for the branched MLP too
    torch.testing.assert_close(Decoder(rep, backend="torch").frames(), training_path(rep, "torch"), rtol=0, atol=2e-5)


def test_paper_export_round_trip(tmp_path):
    video = tiny_video(num_frames=3, gop_length=3)
    rep = D2GV(D2GVConfig(preset="paper", num_gaussians=30, mlp_width=8))
    rep.build(video, CPU)
    rep.export(tmp_path, "d2gv-fp16")
    decoded = D2GV.from_export(tmp_path)
    assert decoded.deform_settings == rep.deform_settings
    for key, value in rep.gops[0].deform.state_dict().items():  # the branched MLP travels (fp16 payload)
        torch.testing.assert_close(decoded.gops[0].deform.state_dict()[key], value.half().float(), rtol=0, atol=0)
    diff = (Decoder(decoded).frames() - Decoder(rep).frames()).abs()
    assert float(diff.mean()) < 1e-3 and float(diff.max()) < 3e-2


def _adan_reference(grads: list[float], lr: float, betas=(0.98, 0.92, 0.99), eps=1e-8, theta=0.0, first_step=1) -> float:
    """Adan's update (arXiv:2208.06677, Algorithm 1, with bias corrections) for one scalar, written
    from the equations; ``first_step`` > 1: the group had already stepped before this parameter's
    first gradient."""
    b1, b2, b3 = betas
    m = v = n = 0.0
    prev = grads[0]
    for j, g in enumerate(grads):
        k = first_step + j
        d = g - prev
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d
        n = b3 * n + (1 - b3) * (g + b2 * d) ** 2
        denom = math.sqrt(n / (1 - b3**k)) + eps
        theta -= lr * (m / (1 - b1**k) + b2 * v / (1 - b2**k)) / denom
        prev = g
    return theta


def test_adan_known_answer_and_late_gradients():
    grads = [0.5, -1.0, 2.0, 0.25]
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    late = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = Adan([p, late], lr=0.1)
    for k, g in enumerate(grads * 2):
        p.grad = torch.tensor([g], dtype=torch.float64)
        late.grad = None if k < 4 else torch.tensor([g], dtype=torch.float64)  # no gradient for 4 steps
        opt.step()
    assert float(p.detach()) == pytest.approx(_adan_reference(grads * 2, 0.1), rel=1e-12)
    assert float(late.detach()) == pytest.approx(_adan_reference(grads, 0.1, first_step=5), rel=1e-12)
    # the first step is lr · sign(g) (m/c1 = g, n/c3 = g²)
    q = torch.nn.Parameter(torch.zeros(2))
    q.grad = torch.tensor([3.0, -0.01])
    Adan([q], lr=0.2).step()
    torch.testing.assert_close(q.detach(), torch.tensor([-0.2, 0.2]), rtol=1e-5, atol=1e-6)


def test_paper_preset_fits_a_gop(tmp_path):
    video = tiny_video(num_frames=3, gop_length=3)
    rep = D2GV(D2GVConfig(preset="paper", num_gaussians=150, mlp_width=16))
    rep.build(video, CPU)
    cfg = FitConfig(executor="inline", static_steps=60, deform_steps=30, threads_per_worker=1)
    assert cfg.settings("paper").optimizer == "adan"  # preset=auto follows the representation
    ctx = RunContext(torch.device("cpu"), seed=0, out_dir=tmp_path, log=lambda m: None)
    with torch.no_grad():
        before = float(psnr(Decoder(rep).frames(), torch.stack(list(video.frames()))))
    report = D2GVFit(cfg).run(rep, video, ctx)
    assert report["mean_psnr"] > before + 3, (before, report["mean_psnr"])
    assert report["gop_stats"]["0"]["gaussians_kept"] == 150  # pruning starts after fine iteration 30 000
