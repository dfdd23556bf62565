"""recon_core.refine: step loop, checkpoints, signal handling, resume equality (in-process)."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import numpy as np
import pytest
import recon_toy
import torch

from recon_core.errors import Interrupted
from recon_core.pipeline import Pipeline
from recon_core.resolve import resolve_run
from recon_core.refine import StopFlag, catch_stop_signals, rng_state, set_rng_state
from recon_core.rundir import RunDir


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
