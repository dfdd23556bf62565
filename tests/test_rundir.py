"""recon_core.rundir (and the atomic writes of recon_core.io it relies on)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recon_core import io as rio
from recon_core.errors import InputError
from recon_core.rundir import RunDir, default_run_path


def test_default_run_path_layout(tmp_path):
    path = default_run_path("my scene/1", "3dgs", root=tmp_path)
    assert path.parent == tmp_path / "my_scene_1" / "3dgs"
    assert re.fullmatch(r"\d{8}-\d{6}", path.name)
    path.mkdir(parents=True)
    second = default_run_path("my scene/1", "3dgs", root=tmp_path)
    assert second != path and second.name.startswith(path.name)


def test_open_rejects_what_is_not_a_run(tmp_path):
    with pytest.raises(InputError, match="run folder does not exist"):
        RunDir.open(tmp_path / "nope")
    with pytest.raises(InputError, match=r"no config\.json"):
        RunDir.open(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        RunDir.create(tmp_path / "file")


def test_config_metrics_and_log(tmp_path):
    run = RunDir.create(tmp_path / "r")
    run.write_config({"a": 1})
    assert RunDir.open(tmp_path / "r").read_config() == {"a": 1}
    run.write_metrics({"metrics": {}})
    run.log("one")
    run.log("two")
    lines = run.log_path.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["one", "two"]
    run.config_path.write_text("[1, 2]")
    with pytest.raises(InputError, match="must hold a JSON object"):
        run.read_config()


def test_checkpoints_follow_the_pointer_and_prune(tmp_path):
    run = RunDir.create(tmp_path / "r")
    with pytest.raises(InputError, match="no checkpoint"):
        run.load_checkpoint()
    run.save_checkpoint({"w": torch.ones(2), "step": 1}, "first")
    second = run.save_checkpoint({"w": torch.full((3,), 2.0), "step": 2}, "second")
    assert run.latest_checkpoint() == second
    state = run.load_checkpoint()
    assert state["step"] == 2 and torch.equal(state["w"], torch.full((3,), 2.0))
    assert [p for p in run.checkpoints_dir.iterdir() if p.is_dir()] == [second]


def test_crash_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    run.save_checkpoint({"w": torch.ones(2)}, "good")
    real = rio.write_json

    def crash_on_pointer(path, obj):
        if Path(path).name == "latest.json":
            raise OSError("disk full")
        return real(path, obj)

    import recon_core.rundir as rundir_module

    monkeypatch.setattr(rundir_module, "write_json", crash_on_pointer)
    with pytest.raises(OSError):
        run.save_checkpoint({"w": torch.zeros(5)}, "bad")
    monkeypatch.undo()
    assert torch.equal(run.load_checkpoint()["w"], torch.ones(2))
    # the next save succeeds and cleans up the orphan folder
    run.save_checkpoint({"w": torch.zeros(1)}, "next")
    assert len([p for p in run.checkpoints_dir.iterdir() if p.is_dir()]) == 1


def test_exception_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    rio.write_json(target, {"old": True})
    with pytest.raises(RuntimeError):
        with rio.atomic_path(target) as tmp:
            tmp.write_text('{"new": tr')
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_killed_process_mid_write_leaves_the_old_file(tmp_path):
    """A real crash: the process dies (no cleanup at all) while the new content is half written."""
    target = tmp_path / "config.json"
    rio.write_json(target, {"version": 1})
    script = (
        "import os, sys\n"
        "from recon_core.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    f = open(tmp, 'w'); f.write('{\"version\": 2, \"half'); f.flush()\n"
        "    os._exit(9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert json.loads(target.read_text()) == {"version": 1}


def test_swap_in_replaces_the_folder_and_leaves_nothing_beside(tmp_path):
    from recon_core.rundir import swap_in, temporary_sibling

    target, new = tmp_path / "run", temporary_sibling(tmp_path / "run", "new")
    target.mkdir()
    (target / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    swap_in(new, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_run_lock_is_exclusive_and_takes_over_stale_locks(tmp_path):
    from recon_core.rundir import RunLock

    lock = RunLock(tmp_path).acquire()
    assert (tmp_path / "run.lock").read_text().strip() == str(os.getpid())
    with pytest.raises(InputError, match=f"PID {os.getpid()}"):
        RunLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / "run.lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run.lock").write_text(f"{dead.pid}\n")
    with RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / "run.lock").exists()


# ------------------------------------------------------------------------- pointer robustness


@pytest.mark.parametrize("pointer, match", [
    ({"seq": 1}, 'no "folder"'),
    ({"seq": 1, "folder": 7}, 'no "folder"'),
    ({"seq": "x", "folder": "000001"}, '"seq"'),
    ({"seq": 1, "folder": "../../other_run/checkpoints/000001"}, "not a folder inside"),
    ({"seq": 1, "folder": ".."}, "not a folder inside"),
    ({"seq": 1, "folder": "/tmp"}, "not a folder inside"),
])
def test_a_bad_checkpoint_pointer_is_an_input_error_naming_it(tmp_path, pointer, match):
    run = RunDir.create(tmp_path / "r")
    run.save_checkpoint({"w": torch.ones(2)}, "good")
    (run.checkpoints_dir / "latest.json").write_text(json.dumps(pointer))
    for read in (run.latest_checkpoint, run.load_checkpoint):
        with pytest.raises(InputError, match=match) as e:
            read()
        assert e.value.path == run.checkpoints_dir / "latest.json"


def test_a_pointer_into_another_run_is_refused_even_through_a_link(tmp_path):
    other = RunDir.create(tmp_path / "other_run")
    other.save_checkpoint({"w": torch.zeros(2)}, "theirs")
    run = RunDir.create(tmp_path / "r")
    run.save_checkpoint({"w": torch.ones(2)}, "good")
    (run.checkpoints_dir / "link").symlink_to(other.latest_checkpoint())
    (run.checkpoints_dir / "latest.json").write_text(json.dumps({"seq": 1, "folder": "link"}))
    with pytest.raises(InputError, match="not a folder inside"):
        run.load_checkpoint()


def test_no_checkpoint_says_there_is_nothing_to_resume_from(tmp_path):
    run = RunDir.create(tmp_path / "r")
    with pytest.raises(InputError, match="no checkpoint to resume from") as e:
        run.load_checkpoint()
    assert "before it saved its first checkpoint" in str(e.value) and "refining began" not in str(e.value)


def test_cli_resume_of_a_run_killed_before_its_first_checkpoint_or_with_a_bad_pointer(toy_registry, toy_scene, tmp_path):
    import shutil

    from click.testing import CliRunner

    from recon_cli.main import make_cli

    cli = make_cli(toy_registry)
    out = tmp_path / "run"
    args = ["run", "--data", str(toy_scene), "--repr", "toy-grid", "--set", "toy-fit.steps=1", "--eval", "psnr", "--out", str(out)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    pointer = out / "checkpoints" / "latest.json"
    good = pointer.read_text()
    pointer.write_text(json.dumps({"seq": 1}))  # no "folder": exit 2 naming it, not an internal error
    result = CliRunner().invoke(cli, ["run", "--resume", str(out)])
    assert result.exit_code == 2 and "latest.json" in result.stderr and "internal error" not in result.stderr
    pointer.write_text(good)
    folder = out / "checkpoints" / json.loads(good)["folder"]
    (folder / "state.json").write_text(json.dumps({"format": "recon-checkpoint-1", "state": {"__tensor__": "gone"}}))
    result = CliRunner().invoke(cli, ["run", "--resume", str(out)])
    assert result.exit_code == 2 and "state.json" in result.stderr
    # as after a SIGKILL during loading: config.json, no checkpoint
    shutil.rmtree(out / "checkpoints")
    (out / "metrics.json").unlink()
    result = CliRunner().invoke(cli, ["run", "--resume", str(out)])
    assert result.exit_code == 2 and "no checkpoint to resume from" in result.stderr, result.stderr
    # and the command it suggests starts the run again in the same folder
    result = CliRunner().invoke(cli, ["run", "--config", str(out / "config.json"), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.stderr
    assert RunDir(out).latest_checkpoint() is not None
