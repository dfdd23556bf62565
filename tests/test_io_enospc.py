"""A full disk (OSError ENOSPC) while writing run outputs: exit 2 naming the folder, resumable."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from click.testing import CliRunner

from recon_core import checkpoint as ckpt
from recon_core.rundir import RunDir


def _full(*args, **kwargs):  # noqa: ANN002, ANN003
    raise OSError(errno.ENOSPC, "No space left on device", str(args[-1]) if args else None)


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    first = run.save_checkpoint({"w": torch.ones(2)}, "first")
    monkeypatch.setattr(ckpt, "save_file", _full)
    with pytest.raises(OSError) as e:
        run.save_checkpoint({"w": torch.zeros(2)}, "second")
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert run.latest_checkpoint() == first and torch.equal(run.load_checkpoint()["w"], torch.ones(2))
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == [first.name, "latest.json"]  # nothing half-written left
    assert not [p for p in run.checkpoints_dir.rglob(".*")]


def test_cli_run_on_a_full_disk_exits_2_naming_the_folder_and_resumes(toy_registry, toy_scene, tmp_path, monkeypatch):
    import recon_core.evaluate as evaluate
    from recon_cli.main import make_cli

    cli = make_cli(toy_registry)
    out = tmp_path / "run"
    monkeypatch.setattr(evaluate, "write_png", _full)  # refining and its checkpoint are done; the renders fail
    args = ["run", "--data", str(toy_scene), "--repr", "toy-grid", "--set", "toy-fit.steps=1", "--eval", "psnr", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.stderr
    assert "no space left" in result.stderr and str(out) in result.stderr and f"recon run --resume {out}" in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    monkeypatch.undo()
    result = CliRunner().invoke(cli, ["run", "--resume", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "psnr" in json.loads((out / "metrics.json").read_text())["metrics"]


def test_cli_full_disk_before_any_checkpoint_says_to_start_again(toy_registry, toy_scene, tmp_path, monkeypatch):
    from recon_cli.main import make_cli

    cli = make_cli(toy_registry)
    out = tmp_path / "run"
    monkeypatch.setattr(ckpt, "save_file", _full)
    args = ["run", "--data", str(toy_scene), "--repr", "toy-grid", "--set", "toy-fit.steps=1", "--eval", "psnr", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.stderr
    assert "no space left" in result.stderr and "--overwrite" in result.stderr and str(out) in result.stderr
    assert RunDir(out).latest_checkpoint() is None
