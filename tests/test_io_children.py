"""recon_core.io's child interpreters: MP4 encoding (PyAV) and curves.png (matplotlib) happen in
a child process, so the run never imports either (memory, issue 24)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recon_core.io import ChildError, Mp4Writer, child_python


def test_mp4_frames_round_trip_and_the_parent_never_imports_av(tmp_path):
    av = pytest.importorskip("av")
    code = f"""
import sys, torch
from pathlib import Path
from recon_core.io import Mp4Writer
w = Mp4Writer(Path({str(tmp_path / 'v.mp4')!r}), 10.0)
for i in range(5):
    w.add(torch.full((33, 40, 3), i / 4.0))
w.add(torch.zeros(8, 8, 3))  # another size: skipped
w.close()
print('av' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with av.open(str(tmp_path / "v.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (34, 40, 3)  # padded to an even height
    means = [float(f.mean()) for f in frames]
    assert np.allclose(means, [255 * i / 4.0 for i in range(5)], atol=3)
    assert not list(tmp_path.glob(".*partial*"))


def test_mp4_not_kept_and_nothing_left_without_frames(tmp_path):
    pytest.importorskip("av")
    w = Mp4Writer(tmp_path / "a.mp4", 10.0)
    w.close()
    w = Mp4Writer(tmp_path / "b.mp4", 10.0)
    w.add(torch.rand(16, 16, 3))
    w.close(keep=False)
    assert list(tmp_path.iterdir()) == []


def test_child_errors_name_the_job_and_the_childs_last_line(tmp_path):
    failing = subprocess.run(child_python("json:loads", "x"), capture_output=True)
    assert failing.returncode != 0  # json.loads(["x"]): TypeError in the child
    from recon_core.io import _child_failed

    error = _child_failed("drawing x.png", failing.returncode, failing.stderr)
    assert isinstance(error, ChildError) and "drawing x.png failed: TypeError" in str(error)
    missing = subprocess.run(child_python("no_such_module_xyz:f"), capture_output=True)
    assert isinstance(_child_failed("encoding v.mp4", missing.returncode, missing.stderr), ImportError)


def test_child_ignores_the_current_directory(tmp_path):
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed')\n")
    out = subprocess.run(child_python("json:dumps", "a"), cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_curves_are_drawn_without_importing_matplotlib_here(tmp_path):
    pytest.importorskip("matplotlib")
    code = f"""
import sys
from recon_core.scalars import plot_curves
records = [{{"refiner": "r", "index": 0, "step": s, "loss": 1.0 / (s + 1), "psnr": 10.0 + s}} for s in range(20)]
print(plot_curves(records, {str(tmp_path / 'c.png')!r}, eval_psnr=25.0), 'matplotlib' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(tmp_path / "c.png"), "False"]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
