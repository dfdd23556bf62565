"""recon_core.io: written files honour the process umask (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from recon_core import io as rio
from recon_core.rundir import RunDir


@pytest.fixture
def umask():
    def set_mask(mask: int) -> int:
        os.umask(mask)
        return mask

    old = os.umask(0o022)
    os.umask(old)
    yield set_mask
    os.umask(old)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writers_give_the_umask_mode(tmp_path, umask, mask):
    from recon_core.ply import write_splat_ply

    umask(mask)
    assert rio.current_umask() == mask
    expected = 0o666 & ~mask
    run = RunDir.create(tmp_path / "run")
    run.write_config({"recon_config": 1})
    run.write_metrics({"metrics": {}})
    run.save_checkpoint({"w": torch.ones(3), "step": 1}, "a")
    run.log("line")
    rio.write_png(tmp_path / "run" / "renders" / "v.png", np.zeros((4, 4, 3), np.float32))
    rio.write_bytes(tmp_path / "run" / "raw.bin", b"x")
    n = 3
    splats = {"means": torch.zeros(n, 3), "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3),
              "opacities": torch.zeros(n), "scales": torch.zeros(n, 3), "quats": torch.tensor([[1.0, 0, 0, 0]] * n)}
    write_splat_ply(tmp_path / "run" / "point_cloud.ply", splats)
    files = _files(tmp_path / "run")
    names = {p.name for p in files}
    assert {"config.json", "metrics.json", "state.json", "state.safetensors", "latest.json", "v.png", "raw.bin",
            "point_cloud.ply", "log.txt"} <= names
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(expected) for p in files}


def test_demo_data_honours_the_umask(tmp_path, umask):
    from recon_plugins.gaussians.demo import make_demo_scene

    umask(0o022)
    make_demo_scene(tmp_path / "demo", n_train=2, n_test=1, size=16)
    files = _files(tmp_path / "demo")
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), [
        (p.name, oct(stat.S_IMODE(p.stat().st_mode))) for p in files]
