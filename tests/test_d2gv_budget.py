"""run.budget in d2gv-fit and d2gv-compress: schedules follow the fraction of the budget used, every
GoP ends (pruned, evaluated, quantised) within its allowance, resumed GoPs keep theirs."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from recon_core import RunContext
from recon_core.budget import Budget, BudgetClock
from recon_plugins.d2gv.deform import DeformSettings
from recon_plugins.d2gv.fit import D2GVFit, FitConfig, FitSettings, GopJob, _optimizers, fit_gop
from recon_plugins.d2gv.representation import GopModel

from test_d2gv_fit import _ctx, _mean_psnr, _setup

HUGE = dict(static_steps=400_000, deform_steps=400_000, lr_step_every=0.28, mlp_bf16=False, evaluate=False, threads_per_worker=1,
            backend="torch")  # no first-use build of the C++ kernel inside a timed GoP


def _budget_ctx(tmp_path: Path, seconds: float, clock: str = "wall", used: float = 0.0) -> RunContext:
    ctx = _ctx(tmp_path)
    ctx.budget = BudgetClock(Budget(seconds, clock), seconds, used=used).start()
    return ctx


def test_clock_scheduled_step_and_charge():
    clock = BudgetClock(Budget(10.0, "cpu"), 10.0, used=2.5)
    assert clock.scheduled_step(100, 1000) == 250 and clock.scheduled_step(400, 1000) == 400
    clock.charge(5.0)  # CPU seconds of a worker process
    assert clock.used() >= 7.5 and clock.scheduled_step(0, 1000) >= 750
    clock.charge(10.0)
    assert clock.spent() and clock.scheduled_step(3, 1000) == 1000


def test_a_budget_ends_every_gop_through_its_whole_schedule(tmp_path):
    """800 000 steps per GoP cannot run in 1.2 s; with the budget each GoP reaches the deformation
    stage (its MLP moves) and ends pruned and fitted."""
    video, rep = _setup(num_frames=6, gop_length=3)
    mlp_before = [g.deform.hidden.weight.detach().clone() for g in rep.gops]
    before = _mean_psnr(rep, video)
    t0 = time.perf_counter()
    report = D2GVFit(FitConfig(executor="inline", **HUGE)).run(rep, video, _budget_ctx(tmp_path, 1.2))
    wall = time.perf_counter() - t0
    assert sorted(int(k) for k in report["gop_stats"]) == [0, 1]
    assert report["gop_budget_seconds"] == pytest.approx(0.6, abs=0.05)  # inline: one GoP at a time, 2 waves
    for i, stats in report["gop_stats"].items():
        assert 1 <= stats["steps_run"] < 800_000
        assert stats["seconds"] < 0.6 + 15.0  # its allowance + one step, the pruning and the final render (loaded CPU)
        assert not torch.equal(rep.gops[int(i)].deform.hidden.weight, mlp_before[int(i)]), "deformation stage never ran"
    assert wall < 30
    assert _mean_psnr(rep, video) > before + 1


def test_cpu_budget_of_worker_processes_is_charged(tmp_path):
    """CPU-time budgets: GoPs in worker processes get share / GoPs each, and their CPU seconds
    (which this process's clock does not see) are charged to the refiner's share."""
    video, rep = _setup(num_frames=4, gop_length=2, n=60)
    ctx = _budget_ctx(tmp_path, 2.0, clock="cpu")
    report = D2GVFit(FitConfig(executor="local", workers=2, **HUGE)).run(rep, video, ctx)
    assert report["gop_budget_seconds"] == pytest.approx(1.0, abs=0.05)
    worker_cpu = sum(s["cpu_seconds"] for s in report["gop_stats"].values())
    assert worker_cpu >= 2 * 0.9  # each GoP used its CPU allowance ...
    assert all(s["steps_run"] < 800_000 for s in report["gop_stats"].values())
    assert ctx.budget.used() >= worker_cpu  # ... and the share was charged with it


def test_a_resumed_gop_keeps_the_budget_it_started_with():
    """A GoP's .partial state carries its allowance and the seconds it used: a GoP whose
    allowance was already spent finishes at once (no more steps), pruned."""
    video, rep = _setup(num_frames=3, gop_length=3)
    cfg = FitConfig(**HUGE)
    settings = asdict(cfg.settings())
    state = {k: v.detach().clone() for k, v in rep.gops[0].state_dict().items()}
    frames = torch.stack([video.frame(i) for i in range(3)])
    deform = asdict(rep.deform_settings)
    partial = {"step": 7, "state": state, "optimizers": [], "generator": torch.Generator().manual_seed(0).get_state(),
               "seconds": 3.0, "cpu_seconds": 3.0, "steps_run": 7.0, "budget": {"clock": "wall", "seconds": 2.0}}
    gop = GopModel(state["xy"].shape[0], DeformSettings(**deform))
    gop.load_tensors(state)
    partial["optimizers"] = [o.state_dict() for o in _optimizers(gop, FitSettings(**settings))]  # fresh moments
    job = GopJob(0, 0, frames, state, deform, settings, seed=0, partial=partial, budget={"clock": "wall", "seconds": 4.0})
    result = fit_gop(job)
    assert result.partial is None and result.stats["steps_run"] == 7.0  # the saved 2 s allowance, not a new 4 s
    assert result.stats["budget_seconds"] == 2.0


def test_compress_budget_compresses_the_finetune_schedule(tmp_path):
    pytest.importorskip("constriction")
    from recon_plugins.d2gv.bitstream import decode_file
    from recon_plugins.d2gv.codec import CompressConfig, D2GVCompress, encode_representation
    from test_d2gv_codec import _rep

    rep, video = _rep(n=40, width=8)
    ctx = RunContext(torch.device("cpu"), seed=0, log=lambda m: None, out_dir=tmp_path)
    ctx.budget = BudgetClock(Budget(4.0, "wall"), 4.0).start()
    t0 = time.perf_counter()
    report = D2GVCompress(CompressConfig(steps=1_000_000, backend="torch")).run(rep, video, ctx)
    assert time.perf_counter() - t0 < 40
    steps = report["steps_run"]
    assert set(steps) == {str(g) for g in range(len(rep.gops))} and all(1 <= n < 1_000_000 for n in steps.values())
    decoded, _ = decode_file(Path(report["file"]))  # a valid file of the model left on the grid
    assert encode_representation(decoded)[0] == Path(report["file"]).read_bytes()

    rep, video = _rep(n=40, width=8)  # a share already spent: no fine-tune, still a complete file
    ctx = RunContext(torch.device("cpu"), seed=0, log=lambda m: None, out_dir=tmp_path / "spent")
    ctx.budget = BudgetClock(Budget(1.0, "wall"), 1.0, used=1.0).start()
    report = D2GVCompress(CompressConfig(steps=1_000_000)).run(rep, video, ctx)
    assert report["steps_run"] == {} and report["bytes"] > 0


def test_cli_budget_ends_fit_and_compress(tmp_path):
    """`recon run --set run.budget=…` with step counts that cannot finish: exit 0, both refiners
    report their budget, the .d2gv file decodes."""
    pytest.importorskip("constriction")
    from recon_plugins.d2gv.bitstream import decode_file
    from test_d2gv_codec import cli_run

    t0 = time.perf_counter()
    result, run, _ = cli_run(tmp_path, "run.budget=8", frames=4, gop=2, fit_steps=(500_000, 500_000), compress_steps=1_000_000)
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - t0 < 150
    refiners = json.loads((run / "metrics.json").read_text())["refiners"]
    fit, compress = refiners["d2gv-fit"], refiners["d2gv-compress"]
    assert fit["budget"]["clock"] == "wall" and fit["budget"]["seconds"] == pytest.approx(4.0, abs=0.01)
    assert fit["gop_budget_seconds"] <= 2.0 and all(s["steps_run"] < 1_000_000 for s in fit["gop_stats"].values())
    # d2gv-compress gets what the fit left (its evaluation and start-up may overrun its share)
    assert compress["budget"]["seconds"] == pytest.approx(max(8.0 - fit["budget"]["used"], 0.0), abs=0.01)
    assert all(n < 1_000_000 for n in compress["steps_run"].values())
    decode_file(run / "clip.d2gv")
