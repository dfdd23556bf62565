"""Ctrl-C during a multi-GoP ``recon run --repr d2gv`` with worker processes (issue 25, item 7).

The run is started in its own process group, and SIGINT is sent to the whole group (as a
terminal's Ctrl-C does) once the fit reports steps. It must exit within a bound, keep the
finished GoPs, save the running GoPs' mid-GoP state, and ``--resume`` must end with exactly the
GoPs an uninterrupted run gives (CPU, one thread per worker, fixed seeds).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from loaders_support import write_png

from recon_core.checkpoint import checkpoint_exists, load_checkpoint

STOP_BOUND_S = 10.0
GOPS = 3
SETS = [
    "d2gv.num_gaussians=60", "d2gv.mlp_width=16", "d2gv.gop_length=0",
    "d2gv-fit.static_steps=800", "d2gv-fit.deform_steps=800", "d2gv-fit.mlp_bf16=false",
    "d2gv-fit.workers=2", "d2gv-fit.threads_per_worker=1", "d2gv-fit.log_every=0.2", "d2gv-fit.evaluate=false",
]


def _dataset(root: Path) -> Path:
    """The original D2GV layout: one folder of f0000N.png per GoP."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (12, 16, 3))
    for g in range(GOPS):
        for k in range(3):
            i = 3 * g + k + 1
            write_png(root / f"clip_{g + 1}" / f"f{i:05d}.png", np.roll(base, i, axis=1).astype(np.uint8))
    return root


def _recon(*args: str) -> list[str]:
    return [sys.executable, "-m", "recon_cli.main", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _gops(run: Path) -> list[dict[str, torch.Tensor]]:
    work = run / "d2gv-gops"
    return [load_checkpoint(work, f"gop_{i:05d}")["state"] for i in range(GOPS)]


@pytest.mark.timeout(600)
def test_ctrl_c_stops_workers_within_seconds_and_resume_is_exact(tmp_path):
    data = _dataset(tmp_path / "clip")
    sets = [a for s in SETS for a in ("--set", s)]
    base = ["run", "--data", str(data), "--repr", "d2gv", "--eval", "psnr", *sets]

    reference = tmp_path / "reference"
    done = subprocess.run(_recon(*base, "--out", str(reference)), env=_env(), capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "run"
    proc = subprocess.Popen(_recon(*base, "--out", str(run)), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            steps = re.findall(r"GoP \d+ step (\d+)/", line) if "GoPs done" in line else []
            if len(steps) == 2 and all(int(k) > 0 for k in steps):
                break  # both workers are fitting
        else:
            pytest.fail("the fit ended before reporting progress:\n" + "".join(lines[-30:]))
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the parent and its workers
        rest, _ = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = "".join(lines) + rest
    assert proc.returncode == 130, output[-3000:]
    assert stopped_after < STOP_BOUND_S, (stopped_after, output[-3000:])
    work = run / "d2gv-gops"
    finished = [i for i in range(GOPS) if checkpoint_exists(work, f"gop_{i:05d}")]
    partial = [i for i in range(GOPS) if checkpoint_exists(work, f"gop_{i:05d}.partial")]
    assert len(finished) < GOPS and partial, output[-3000:]  # stopped mid-fit, progress kept
    assert all(load_checkpoint(work, f"gop_{i:05d}.partial")["partial"]["step"] > 0 for i in partial)

    resumed = subprocess.run(_recon("run", "--resume", str(run)), env=_env(), capture_output=True, text=True, timeout=500)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not any(checkpoint_exists(work, f"gop_{i:05d}.partial") for i in range(GOPS))
    for i, (a, b) in enumerate(zip(_gops(reference), _gops(run))):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=f"GoP {i} {key}")
