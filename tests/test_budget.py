"""run.budget (recon_core.budget): parsing, a budget ends refiners as at a normal end, shares,
schedules that follow the fraction used, and resume with the seconds already spent."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import recon_toy
import torch

from recon_core import RunContext
from recon_core.budget import Budget, BudgetClock, parse_budget
from recon_core.errors import InputError, Interrupted
from recon_core.pipeline import Pipeline
from recon_core.resolve import resolve_run
from recon_core.rundir import RunDir


def test_parse_budget() -> None:
    assert parse_budget(None) is None and parse_budget("none") is None and parse_budget("") is None
    assert parse_budget("600") == Budget(600.0, "wall") == parse_budget(600) == parse_budget("wall:600")
    assert parse_budget("cpu:1.5") == Budget(1.5, "cpu") and parse_budget(" CPU: 60 ") == Budget(60.0, "cpu")
    for bad in ("-5", "0", "cpu:x", "gpu:60", "nan", "inf", "cpu:", "ten"):
        with pytest.raises(InputError, match="run.budget"):
            parse_budget(bad)


def test_clock_fraction_and_progress() -> None:
    clock = BudgetClock(Budget(10.0, "cpu"), allowance=10.0, used=4.0)  # not started: only what was restored
    assert clock.used() == 4.0 and clock.fraction() == pytest.approx(0.4) and not clock.spent()
    ctx = RunContext(device=torch.device("cpu"), seed=0)
    assert ctx.budget_fraction() == 0.0 and ctx.progress(5, 100) == 0.05 and not ctx.budget_spent()
    ctx.budget = clock
    assert ctx.progress(5, 100) == pytest.approx(0.4) and ctx.progress(90, 100) == pytest.approx(0.9)
    ctx.budget = BudgetClock(Budget(10.0, "cpu"), allowance=10.0, used=12.0)
    assert ctx.budget_spent() and ctx.progress(0, 100) == 1.0


def _run(registry, data: Path, out: Path, *, refiners: str = "toy-fit", steps: int = 100_000, budget: str | None = "0.4",
         delay: float = 0.02, every: int = 5, resume: bool = False) -> tuple[dict, RunDir]:
    if resume:
        run_dir = RunDir.open(out)
        spec = resolve_run(registry, base=run_dir.read_config())
    else:
        names = list(dict.fromkeys(refiners.split(",")))
        sets = [f"{n}.steps={steps}" for n in names] + [f"{n}.step_delay={delay}" for n in names]
        sets += [f"run.checkpoint_every={every}"] + ([f"run.budget={budget}"] if budget else [])
        spec = resolve_run(registry, data=data, representation="toy-grid", refiners=[refiners], sets=sets, seed=3,
                           evaluators=["psnr"])
        run_dir = RunDir.create(out)
    return Pipeline(registry, spec, run_dir).run(resume=resume), run_dir


def test_a_budget_ends_a_refiner_with_valid_outputs(toy_registry, toy_scene, tmp_path) -> None:
    doc, run_dir = _run(toy_registry, toy_scene, tmp_path / "run")  # 100 000 steps of >= 20 ms: 0.4 s stops it
    report = doc["refiners"]["toy-fit"]
    budget = report["budget"]
    assert budget["clock"] == "wall" and budget["seconds"] == pytest.approx(0.4)
    assert 1 <= budget["stopped_at_step"] <= 21 and budget["used"] >= 0.4
    assert report["final_loss"] < report["first_loss"]  # finish() ran on the trained state
    assert json.loads(run_dir.metrics_path.read_text())["metrics"]["psnr"] > 0  # evaluated and written
    saved = run_dir.load_checkpoint()
    assert saved["position"] == {"refiner": 1, "step": 0}  # checkpointed as at a normal end
    assert saved["budget"]["finished"] == pytest.approx(budget["used"], abs=1e-3)  # the report rounds to ms


def test_refiners_share_what_is_left(toy_registry, toy_scene, tmp_path) -> None:
    doc, _ = _run(toy_registry, toy_scene, tmp_path / "run", refiners="toy-fit,toy-fit", budget="0.6")
    first, second = doc["refiners"]["toy-fit"]["budget"], doc["refiners"]["toy-fit#2"]["budget"]
    assert first["seconds"] == pytest.approx(0.3)  # half of 0.6 s
    assert second["seconds"] == pytest.approx(0.6 - first["used"])  # all that is left
    assert first["stopped_at_step"] and second["stopped_at_step"]


def test_a_custom_loop_sees_the_budget(toy_registry, toy_scene, tmp_path, monkeypatch) -> None:
    """A refiner with its own ``run`` gets ``ctx.budget`` and its report the seconds it used."""
    seen = []
    original = recon_toy.ToyLoop.run

    def run(self, rep, data, ctx):
        seen.append((ctx.budget.allowance, ctx.budget_spent()))
        return original(self, rep, data, ctx)

    monkeypatch.setattr(recon_toy.ToyLoop, "run", run)
    doc, _ = _run(toy_registry, toy_scene, tmp_path / "run", refiners="toy-loop", steps=3, budget="cpu:50", delay=0.0)
    assert seen == [(50.0, False)] and doc["refiners"]["toy-loop"]["budget"]["stopped_at_step"] is None


def test_no_budget_no_report_entry(toy_registry, toy_scene, tmp_path) -> None:
    doc, _ = _run(toy_registry, toy_scene, tmp_path / "run", steps=3, budget=None, delay=0.0)
    assert "budget" not in doc["refiners"]["toy-fit"]


def test_resume_spends_only_what_was_left(toy_registry, toy_scene, tmp_path, monkeypatch) -> None:
    original = recon_toy.ToyFit.step

    def step(self, step):
        if step == 10:
            signal.raise_signal(signal.SIGINT)  # the loop saves and stops before step 11
        return original(self, step)

    with monkeypatch.context() as m:
        m.setattr(recon_toy.ToyFit, "step", step)
        with pytest.raises(Interrupted):
            _run(toy_registry, toy_scene, tmp_path / "run", budget="3", delay=0.05)
    saved = RunDir(tmp_path / "run").load_checkpoint()
    spent = saved["budget"]["current"]
    assert saved["position"]["step"] == 11 and 0.5 <= spent < 3.0  # 11 steps of >= 50 ms
    doc, _ = _run(toy_registry, toy_scene, tmp_path / "run", resume=True)
    budget = doc["refiners"]["toy-fit"]["budget"]
    assert budget["seconds"] == pytest.approx(3.0)  # the same share ...
    assert budget["used"] >= 3.0 and budget["stopped_at_step"] < 11 + (3.0 - spent) / 0.05 + 2  # ... of which only the rest was spent
