"""d2gv-fit: both stages improve the fit, finished GoPs are saved and skipped on resume, executors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from recon_core import InputError, RunContext
from recon_core.checkpoint import checkpoint_exists
from recon_core.imageops import psnr
from recon_plugins.d2gv import fit as fit_module
from recon_plugins.d2gv.executors import make_executor
from recon_plugins.d2gv.fit import D2GVFit, FitConfig
from recon_plugins.d2gv.renderer import Torch2DGS
from recon_plugins.d2gv.representation import D2GV, D2GVConfig

from test_d2gv_representation import tiny_video

CPU = RunContext(torch.device("cpu"), seed=0)

FAST = dict(static_steps=25, deform_steps=15, lr_step_every=1000, evaluate=True, threads_per_worker=1)


def _setup(num_frames=6, gop_length=3, n=120):
    video = tiny_video(num_frames=num_frames, gop_length=gop_length)
    rep = D2GV(D2GVConfig(num_gaussians=n, mlp_width=32))
    rep.build(video, CPU)
    return video, rep


def _ctx(tmp_path: Path, **kw) -> RunContext:
    return RunContext(device=torch.device("cpu"), seed=0, renderer=Torch2DGS(), out_dir=tmp_path, log=lambda m: None, **kw)


def _mean_psnr(rep, video) -> float:
    with torch.no_grad():
        pred = Torch2DGS().render_frames(rep, torch.arange(rep.num_frames)).rgb
    return float(psnr(pred, torch.stack(list(video.frames()))))


def test_fit_improves_every_gop_and_reports_metrics(tmp_path):
    video, rep = _setup()
    before = _mean_psnr(rep, video)
    report = D2GVFit(FitConfig(executor="inline", **FAST)).run(rep, video, _ctx(tmp_path))
    after = _mean_psnr(rep, video)
    assert after > before + 5, (before, after)
    assert len(report["psnr"]) == video.num_frames and len(report["ms_ssim"]) == video.num_frames
    with torch.no_grad():
        pred = Torch2DGS().render_frames(rep, torch.arange(rep.num_frames)).rgb
    per_frame = [float(psnr(pred[i], video.frame(i))) for i in range(video.num_frames)]
    assert report["psnr"] == pytest.approx(per_frame, abs=1e-4)
    assert report["mean_psnr"] == pytest.approx(sum(per_frame) / len(per_frame), abs=1e-4)
    assert 0 < report["mean_ms_ssim"] <= 1
    assert report["bytes"] == rep.payload_bytes() > 0
    assert all(checkpoint_exists(tmp_path / "d2gv-gops", f"gop_{i:05d}") for i in range(2))


def test_learning_rates_continue_across_stages():
    cfg = FitConfig(static_steps=300, deform_steps=101, lr_gaussians=4e-3, lr_step_every=100, lr_mlp=1e-3, lr_mlp_final=1e-5)
    gop = fit_module.GopModel(4, fit_module.DeformSettings(width=8))
    opt = fit_module._optimizer(gop, cfg)

    def lrs(step):
        fit_module._set_lrs(opt, cfg, step)
        return {g["name"]: g["lr"] for g in opt.param_groups}

    assert lrs(0) == {"gaussians": 4e-3, "mask": cfg.lr_mask, "mlp": 0.0}
    assert lrs(299)["mlp"] == 0.0 and lrs(299)["gaussians"] == pytest.approx(1e-3)
    first = lrs(300)  # the deformation stage starts where the static schedule left off
    assert first["gaussians"] == pytest.approx(5e-4) and first["mlp"] == pytest.approx(1e-3)
    assert lrs(350)["mlp"] == pytest.approx(1e-4)  # halfway in log space
    assert lrs(400)["mlp"] == pytest.approx(1e-5) and lrs(400)["gaussians"] == pytest.approx(2.5e-4)


def test_bfloat16_mlp_fit_trains_the_deformation(tmp_path):
    video, rep = _setup(num_frames=4, gop_length=4, n=100)
    before = _mean_psnr(rep, video)
    cfg = FitConfig(executor="inline", mlp_bf16=True, **dict(FAST, static_steps=20, deform_steps=15, evaluate=False))
    D2GVFit(cfg).run(rep, video, _ctx(tmp_path))
    assert _mean_psnr(rep, video) > before + 3
    head = rep.gops[0].deform.head.weight
    assert head.dtype == torch.float32 and head.abs().sum() > 0  # the zero-initialised head learned


def test_pruning_removes_gaussians_with_strong_sparsity(tmp_path):
    video, rep = _setup(num_frames=3, gop_length=3)
    cfg = FitConfig(executor="inline", static_steps=60, deform_steps=0, sparsity_weight=1.0, lr_mask=0.1, evaluate=False, threads_per_worker=1)
    D2GVFit(cfg).run(rep, video, _ctx(tmp_path))
    assert rep.gops[0].num_gaussians < 120  # physically removed
    assert torch.all(torch.sigmoid(rep.gops[0].mask_logit) > 0.2)


def test_resume_skips_finished_gops(tmp_path, monkeypatch):
    video, rep = _setup(num_frames=9, gop_length=3)
    D2GVFit(FitConfig(executor="inline", **FAST)).run(rep, video, _ctx(tmp_path))
    fitted = {k: v.clone() for k, v in rep.state_dict().items()}
    (tmp_path / "d2gv-gops" / "gop_00001.json").unlink()  # as if killed while GoP 1 was running

    calls: list[int] = []
    real = fit_module.fit_gop

    def counting(job):
        calls.append(job.index)
        return real(job)

    monkeypatch.setattr(fit_module, "fit_gop", counting)
    _, fresh = _setup(num_frames=9, gop_length=3)
    D2GVFit(FitConfig(executor="inline", **FAST)).run(fresh, video, _ctx(tmp_path))
    assert calls == [1]
    for key in ("gops.0.xy", "gops.2.color", "gops.2.deform.hidden.weight"):
        torch.testing.assert_close(fresh.state_dict()[key], fitted[key])
    torch.testing.assert_close(fresh.state_dict()["gops.1.xy"], fitted["gops.1.xy"])  # same seed → same refit


def test_stop_request_saves_and_returns(tmp_path):
    video, rep = _setup(num_frames=9, gop_length=3)
    saved: list[int] = []
    ctx = _ctx(tmp_path)
    ctx.should_stop = lambda: True
    ctx.save_state = saved.append
    refiner = D2GVFit(FitConfig(executor="inline", **FAST))
    report = refiner.run(rep, video, ctx)
    assert report["interrupted"] and report["gops_done"] == [0]
    assert saved == [1] and refiner.state_dict() == {"done": [0]}


def test_local_processes_match_inline(tmp_path):
    video, rep_a = _setup(num_frames=4, gop_length=2, n=60)
    _, rep_b = _setup(num_frames=4, gop_length=2, n=60)
    fast = dict(FAST, static_steps=20, deform_steps=10, evaluate=False)
    D2GVFit(FitConfig(executor="inline", **fast)).run(rep_a, video, _ctx(tmp_path / "a"))
    D2GVFit(FitConfig(executor="local", workers=2, **fast)).run(rep_b, video, _ctx(tmp_path / "b"))
    for (k, a), b in zip(rep_a.state_dict().items(), rep_b.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def test_ray_missing_is_a_clear_input_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(InputError, match="'ray'"):
        make_executor("ray", jobs=2)


@pytest.mark.slow
def test_ray_local_cluster(tmp_path):
    pytest.importorskip("ray")
    import ray

    video, rep_a = _setup(num_frames=4, gop_length=2, n=60)
    _, rep_b = _setup(num_frames=4, gop_length=2, n=60)
    fast = dict(FAST, static_steps=20, deform_steps=10, evaluate=False)
    D2GVFit(FitConfig(executor="inline", **fast)).run(rep_a, video, _ctx(tmp_path / "a"))
    D2GVFit(FitConfig(executor="ray", workers=2, **fast)).run(rep_b, video, _ctx(tmp_path / "b"))
    assert not ray.is_initialized()  # the instance it started is shut down
    for (k, a), b in zip(rep_a.state_dict().items(), rep_b.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
