"""recon_core.refine: step loop, checkpoints, signal handling, resume equality (in-process)."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import numpy as np
import pytest
import recon_toy
import torch

from recon_core.errors import InputError, Interrupted, ReconError
from recon_core.pipeline import Pipeline
from recon_core.resolve import resolve_run
from recon_core.refine import NonFiniteError, StopFlag, catch_stop_signals, rng_state, set_rng_state
from recon_core.rundir import RunDir
from recon_core.scalars import read_scalars


def _run(registry, data: Path, out: Path, refiners: str = "toy-fit", steps: int = 25, every: int = 7, resume: bool = False):
    if resume:
        run_dir = RunDir.open(out)
        spec = resolve_run(registry, base=run_dir.read_config())
    else:
        sets = [f"{name}.steps={steps}" for name in dict.fromkeys(refiners.split(","))] + [f"run.checkpoint_every={every}"]
        spec = resolve_run(registry, data=data, representation="toy-grid", refiners=[refiners], sets=sets, seed=3,
                           evaluators=["psnr"])
        run_dir = RunDir.create(out)
    return Pipeline(registry, spec, run_dir).run(resume=resume), run_dir


def _final_params(run_dir: RunDir) -> dict[str, torch.Tensor]:
    return run_dir.load_checkpoint()["representation"]


def _interrupt_at(monkeypatch, cls, at_call: int) -> None:
    """Make the at_call-th step (counted across refiners) deliver a real SIGINT to this process."""
    original = cls.step
    calls = {"n": 0}

    def step(self, step):
        calls["n"] += 1
        if calls["n"] == at_call:
            signal.raise_signal(signal.SIGINT)  # handled by catch_stop_signals: sets the stop flag
        return original(self, step)

    monkeypatch.setattr(cls, "step", step)


@pytest.mark.parametrize(
    ("refiners", "at_call"),
    [("toy-fit", 12), ("toy-fit", 14), ("toy-fit,toy-fit", 31), ("toy-loop", 9)],
    ids=["mid-refiner", "right-after-checkpoint", "second-refiner", "custom-run-loop"],
)
def test_interrupt_then_resume_is_bit_identical(toy_registry, toy_scene, tmp_path, monkeypatch, refiners, at_call):
    reference_doc, reference = _run(toy_registry, toy_scene, tmp_path / "ref", refiners)
    with monkeypatch.context() as m:
        _interrupt_at(m, recon_toy.ToyFit, at_call)
        with pytest.raises(Interrupted) as info:
            _run(toy_registry, toy_scene, tmp_path / "cut", refiners)
    cut = RunDir(tmp_path / "cut")
    saved = cut.load_checkpoint()
    # the signal arrived during step at_call-1 (0-based, across refiners); that step completes first
    steps_per_refiner = 25
    assert saved["position"] == {"refiner": at_call // steps_per_refiner, "step": at_call % steps_per_refiner}
    assert info.value.checkpoint == cut.latest_checkpoint()
    assert not (cut.metrics_path.exists())

    resumed_doc, _ = _run(toy_registry, toy_scene, tmp_path / "cut", resume=True)
    ref_params, got_params = _final_params(reference), _final_params(cut)
    assert ref_params.keys() == got_params.keys()
    for key in ref_params:
        assert torch.equal(ref_params[key], got_params[key]), key
    assert resumed_doc["metrics"] == reference_doc["metrics"]
    assert resumed_doc["refiners"] == reference_doc["refiners"]
    # scalars.jsonl: the lines past the resumed step were dropped, so the log equals the uninterrupted one
    ref_scalars = read_scalars(reference.path / "scalars.jsonl")
    assert len(ref_scalars) == 25 * len(refiners.split(","))
    assert read_scalars(cut.path / "scalars.jsonl") == ref_scalars


def test_stop_flag_set_directly_saves_and_raises(toy_registry, toy_scene, tmp_path):
    stop = StopFlag()
    stop.set(signal.SIGTERM)
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid", sets=["toy-fit.steps=5"])
    with pytest.raises(Interrupted):
        Pipeline(toy_registry, spec, RunDir.create(tmp_path / "r"), stop=stop).run()
    assert RunDir(tmp_path / "r").load_checkpoint()["position"] == {"refiner": 0, "step": 0}


def test_periodic_and_final_checkpoints(toy_registry, toy_scene, tmp_path, monkeypatch):
    labels = []
    original = RunDir.save_checkpoint

    def spy(self, state, label=""):
        labels.append((state["position"]["refiner"], state["position"]["step"]))
        return original(self, state, label)

    monkeypatch.setattr(RunDir, "save_checkpoint", spy)
    _, run_dir = _run(toy_registry, toy_scene, tmp_path / "r", "toy-fit,toy-fit", steps=10, every=4)
    assert labels == [(0, 4), (0, 8), (1, 0), (1, 4), (1, 8), (2, 0)]
    final = run_dir.load_checkpoint()
    assert final["refiner"] is None and [r["name"] for r in final["reports"]] == ["toy-fit", "toy-fit"]
    # only the newest checkpoint folder is kept
    assert [p.name for p in run_dir.checkpoints_dir.iterdir() if p.is_dir()] == [run_dir.latest_checkpoint().name]


def test_refiner_reduces_loss_and_reports(toy_registry, toy_scene, tmp_path):
    doc, run_dir = _run(toy_registry, toy_scene, tmp_path / "r", steps=40)
    report = doc["refiners"]["toy-fit"]
    assert report["steps"] == 40 and report["final_loss"] < report["first_loss"]
    log = run_dir.log_path.read_text()  # step logs every run.log_every (100) steps and at the end
    assert "toy-fit step 40/40: loss=" in log and "step 39/40" not in log


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_catch_stop_signals_sets_flag_then_second_sigint_raises():
    before = signal.getsignal(signal.SIGINT)
    flag = StopFlag()
    with catch_stop_signals(flag):
        signal.raise_signal(signal.SIGTERM)
        assert flag and flag.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def _nan_run(registry, data: Path, out: Path, refiners: str, sets: list[str]):
    spec = resolve_run(registry, data=data, representation="toy-grid", refiners=[refiners], sets=sets, seed=3,
                       evaluators=["psnr"])
    run_dir = RunDir.create(out)
    return Pipeline(registry, spec, run_dir).run(), run_dir


@pytest.mark.parametrize("refiner", ["toy-fit", "toy-loop"])
def test_non_finite_without_checkpoint_stops_the_run_and_exports_nothing(toy_registry, toy_scene, tmp_path, refiner):
    with pytest.raises(NonFiniteError) as info:
        _nan_run(toy_registry, toy_scene, tmp_path / "r", refiner, [f"{refiner}.steps=12", f"{refiner}.nan_at=5"])
    message = str(info.value)
    assert isinstance(info.value, ReconError) and not isinstance(info.value, InputError)
    assert f"refiner {refiner}" in message and "'grid'" in message
    if refiner == "toy-fit":  # the step loop notices at once; a custom run at its end
        assert "step 5" in message
    assert not (tmp_path / "r" / "grid.npy").exists()
    assert RunDir(tmp_path / "r").latest_checkpoint() is None


def test_non_finite_rolls_back_to_the_last_checkpoint(toy_registry, toy_scene, tmp_path):
    doc, run_dir = _nan_run(toy_registry, toy_scene, tmp_path / "r", "toy-fit",
                            ["toy-fit.steps=12", "toy-fit.nan_at=6", "run.checkpoint_every=4"])
    report = doc["refiners"]["toy-fit"]
    assert report["stopped"] == "non-finite" and report["step"] == 6 and "'grid'" in report["non_finite"]
    assert "refiner0-step4" in report["rolled_back_to"]
    final = run_dir.load_checkpoint()["representation"]
    assert all(torch.isfinite(t).all() for t in final.values())
    grid = np.load(tmp_path / "r" / "grid.npy")
    assert np.isfinite(grid).all()
    assert "non-finite values at step 6" in run_dir.log_path.read_text()


def test_non_finite_logged_loss_is_caught(toy_registry, toy_scene, tmp_path, monkeypatch):
    original = recon_toy.ToyFit.step

    def step(self, step):
        logs = original(self, step)
        return {**logs, "loss": float("inf")} if step == 2 else logs

    monkeypatch.setattr(recon_toy.ToyFit, "step", step)
    with pytest.raises(NonFiniteError, match=r"step 2 \(logged value loss=inf\)"):
        _nan_run(toy_registry, toy_scene, tmp_path / "r", "toy-fit", ["toy-fit.steps=5"])
