"""d2gv-fit: both stages improve the fit, finished GoPs are saved and skipped on resume, executors."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

from recon_core import InputError, RunContext
from recon_core.checkpoint import checkpoint_exists, load_checkpoint
from recon_core.imageops import psnr
from recon_plugins.d2gv import fit as fit_module
from recon_plugins.d2gv.executors import make_executor
from recon_plugins.d2gv.fit import D2GVFit, FitConfig
from recon_plugins.d2gv.renderer import Torch2DGS
from recon_plugins.d2gv.representation import D2GV, D2GVConfig

from test_d2gv_representation import tiny_video

CPU = RunContext(torch.device("cpu"), seed=0)

FAST = dict(static_steps=25, deform_steps=15, lr_step_every=1.0, mlp_bf16=False, evaluate=True, threads_per_worker=1)


def _setup(num_frames=6, gop_length=3, n=120):
    video = tiny_video(num_frames=num_frames, gop_length=gop_length)
    rep = D2GV(D2GVConfig(gop_length=0, num_gaussians=n, mlp_width=32))
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
    cfg = FitConfig(static_steps=300, deform_steps=100, lr_gaussians=4e-3, lr_step_every=0.25, lr_mlp=1e-3, lr_mlp_final=1e-5)
    s = cfg.settings()
    assert s.lr_step == 100  # a quarter of all 400 steps
    gop = fit_module.GopModel(4, fit_module.DeformSettings(width=8))
    opts = fit_module._optimizers(gop, s)

    def lrs(step):
        fit_module._set_lrs(opts, s, step)
        return {g["name"]: g["lr"] for o in opts for g in o.param_groups}

    assert lrs(0) == {"gaussians": 4e-3, "mask": s.lr_mask, "mlp": 0.0}
    assert lrs(299)["mlp"] == 0.0 and lrs(299)["gaussians"] == pytest.approx(1e-3)
    first = lrs(300)  # the deformation stage starts where the static schedule left off
    assert first["gaussians"] == pytest.approx(5e-4) and first["mlp"] == pytest.approx(1e-3)
    assert lrs(300 + 99)["mlp"] == pytest.approx(1e-5) and lrs(399)["gaussians"] == pytest.approx(5e-4)


def test_cpu_schedules_scale_with_the_step_counts():
    """Every schedule of the cpu preset is a fraction of the steps: halving the steps halves them."""
    a = FitConfig(preset="cpu", prune_start=0.5).settings()
    b = FitConfig(preset="cpu", prune_start=0.5, static_steps=500, deform_steps=400).settings()
    assert (a.total, b.total) == (1800, 900)
    assert a.lr_step == 504 and b.lr_step == 252
    assert a.prune_start == 900 and b.prune_start == 450
    # the MLP decays over the deformation stage, whatever its length
    assert fit_module._mlp_lr(b, b.deform_steps - 1) == pytest.approx(b.lr_mlp_final)


def test_paper_preset_keeps_the_original_literal_schedule():
    s = FitConfig(preset="paper").settings()
    assert (s.static_steps, s.deform_steps, s.optimizer, s.sampling) == (10000, 50000, "adan", "sequential")
    assert (s.lr_step, s.prune_start, s.prune_every, s.sparsity_weight) == (20000, 40000, 15, 5e-3)
    short = FitConfig(preset="paper", static_steps=100, deform_steps=200).settings()
    assert (short.lr_step, short.prune_start) == (20000, 100 + 30000)  # literal: never reached in a short run
    gop = fit_module.GopModel(4, fit_module.DeformSettings(width=8, embedder="deform3dgs", branches=True))
    opts = fit_module._optimizers(gop, s)
    assert [type(o).__name__ for o in opts] == ["Adan", "Adam"] and opts[1].defaults["eps"] == 1e-15

    def lrs(step):
        fit_module._set_lrs(opts, s, step)
        return {g["name"]: g["lr"] for o in opts for g in o.param_groups}

    assert lrs(19999)["gaussians"] == 5e-3 and lrs(20000)["gaussians"] == 2.5e-3  # StepLR(20000, 0.5)
    assert lrs(20000)["mask"] == 2.5e-3  # the logits are in the same Adan as the Gaussians
    expon = lambda k: math.exp(math.log(8e-4) * (1 - k / 50000) + math.log(1.6e-5) * k / 50000)  # noqa: E731
    assert lrs(10000)["mlp"] == pytest.approx(expon(10000))  # first fine step: the rate left by the coarse stage
    assert lrs(10001)["mlp"] == pytest.approx(expon(1)) and lrs(59999)["mlp"] == pytest.approx(expon(49999))
    # sequential frames continue the cycle across stages; the penalty on every 15th fine iteration after 30 000
    gen = torch.Generator()
    assert [int(fit_module._frames_at(s, k, 3, gen)[0]) for k in (0, 1, 2, 3, 10000)] == [0, 1, 2, 0, 1]
    penalised = [k for k in range(39990, 40040) if k >= s.prune_start and (k - s.prune_start + 1) % s.prune_every == 0]
    assert [k - s.static_steps + 1 for k in penalised] == [30015, 30030]  # fine iteration numbers (1-based)


def test_bfloat16_mlp_fit_trains_the_deformation(tmp_path):
    video, rep = _setup(num_frames=4, gop_length=4, n=100)
    before = _mean_psnr(rep, video)
    cfg = FitConfig(executor="inline", **dict(FAST, mlp_bf16=True, static_steps=20, deform_steps=15, evaluate=False))
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


def test_stop_request_mid_gop_saves_its_progress_and_resume_is_exact(tmp_path):
    video, rep = _setup(num_frames=6, gop_length=3)
    _, reference = _setup(num_frames=6, gop_length=3)
    D2GVFit(FitConfig(executor="inline", **FAST)).run(reference, video, _ctx(tmp_path / "ref"))

    saved: list[int] = []
    calls = itertools.count()
    ctx = _ctx(tmp_path / "run")
    # checked before each GoP and before each of its 40 steps: the 56th check is GoP 1's step 13
    ctx.should_stop = lambda: next(calls) >= 55
    ctx.save_state = saved.append
    refiner = D2GVFit(FitConfig(executor="inline", **FAST))
    report = refiner.run(rep, video, ctx)
    assert report["interrupted"] and report["gops_done"] == [0]
    assert saved == [1] and refiner.state_dict() == {"done": [0]}
    work = tmp_path / "run" / "d2gv-gops"
    partial = load_checkpoint(work, "gop_00001.partial")
    assert partial["partial"]["step"] == 13

    _, fresh = _setup(num_frames=6, gop_length=3)
    resumed = D2GVFit(FitConfig(executor="inline", **FAST))
    resumed.run(fresh, video, _ctx(tmp_path / "run"))
    assert not checkpoint_exists(work, "gop_00001.partial")  # replaced by the finished GoP
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0, msg=key)


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


def test_unset_preset_options_round_trip_through_config():
    """Options left to the preset are None; a saved config (as --resume reads it) parses back."""
    from recon_core.config import config_from_dict, config_to_dict

    cfg = config_from_dict(FitConfig, {"preset": "paper", "deform_steps": "200"}, "d2gv-fit")
    again = config_from_dict(FitConfig, config_to_dict(cfg), "d2gv-fit")
    assert again == cfg and again.sampling is None and again.settings().sampling == "sequential"
    with pytest.raises(InputError, match="sampling"):
        config_from_dict(FitConfig, {"sampling": "shuffled"}, "d2gv-fit")
    with pytest.raises(InputError, match="lr_step_every"):
        config_from_dict(FitConfig, {"lr_step_every": "500"}, "d2gv-fit")  # a fraction now


def test_cli_defaults_are_the_documented_benchmark_settings():
    """docs/benchmarks.md's Bunny figure: 16 000 Gaussians, GoP 4, 1 000 + 800 steps, one frame per
    step, bfloat16 MLP, lr 5e-3 halved every ~500 steps (0.28 of 1 800), MLP 8e-4 → 1.6e-5,
    sparsity 5e-4; ``recon run --repr d2gv`` gets them with no --set."""
    rep = D2GVConfig()
    assert (rep.preset, rep.resolved("num_gaussians"), rep.resolved("gop_length")) == ("cpu", 16000, 4)
    s = FitConfig().settings(rep.preset)
    assert (s.static_steps, s.deform_steps, s.frames_per_step, s.mlp_bf16, s.optimizer) == (1000, 800, 1, True, "adam")
    assert (s.lr_gaussians, s.lr_step, s.lr_mlp, s.lr_mlp_final, s.sparsity_weight, s.prune_start) == (5e-3, 504, 8e-4, 1.6e-5, 5e-4, 0)
