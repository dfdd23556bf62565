"""``recon process-data images`` (recon_plugins.loaders.process_data): SfM with pycolmap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from loaders_support import OBJECT, ring_poses
from scipy.spatial.transform import Rotation

import recon_plugins.loaders as loaders_plugin
from recon_core.registry import Registry
from recon_plugins.loaders.colmap import ColmapConfig, ColmapLoader
from recon_plugins.loaders.process_data import compare_poses, umeyama


def cli():  # noqa: ANN201
    from recon_cli.main import make_cli

    return make_cli(Registry(entry_points=[], modules=[("loaders", loaders_plugin)], disabled=()))


def similarity(c2w: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Estimated poses ``est`` such that the true poses are ``s R est + t`` (a similarity copy)."""
    out = c2w.copy()
    out[:, :3, :3] = R.T[None] @ c2w[:, :3, :3]
    out[:, :3, 3] = ((R.T @ (c2w[:, :3, 3] - t).T) / s).T
    return out


def test_umeyama_recovers_a_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(10, 3))
    R = Rotation.random(random_state=3).as_matrix()
    s, R2, t = umeyama(src, 2.5 * src @ R.T + [1.0, -2.0, 0.5])
    assert s == pytest.approx(2.5) and np.allclose(R2, R) and np.allclose(t, [1.0, -2.0, 0.5])


def test_compare_poses_is_zero_for_a_similar_copy_and_robust_to_outliers() -> None:
    true = np.stack(ring_poses(12, radius=3.0))
    true[::2, 2, 3] += 0.7  # not coplanar
    est = similarity(true, 0.3, Rotation.random(random_state=1).as_matrix(), np.array([1.0, 2.0, 3.0]))
    cmp = compare_poses(est, true)
    assert cmp.scale == pytest.approx(0.3) and cmp.rotation_deg.max() < 1e-5 and cmp.center_error.max() < 1e-6
    bad = est.copy()
    bad[0, :3, 3] += 50.0  # one wildly misplaced camera
    bad[0, :3, :3] = Rotation.from_euler("x", 90, degrees=True).as_matrix() @ bad[0, :3, :3]
    cmp = compare_poses(bad, true)
    assert not cmp.inliers[0] and cmp.inliers[1:].all()
    assert cmp.rotation_deg[1:].max() < 1e-5 and cmp.rotation_deg[0] == pytest.approx(90.0, abs=1e-4)
    assert compare_poses(bad, true, robust=False).rotation_deg[1:].max() > 1e-3  # why robust is the default


def test_command_is_registered_and_reports_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli(), ["process-data", "images", "--help"])
    assert result.exit_code == 0 and "--out" in result.output and "--matcher" in result.output
    (tmp_path / "photos").mkdir()
    result = runner.invoke(cli(), ["process-data", "images", str(tmp_path / "photos"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no images" in result.output
    shutil.copy(OBJECT / "images" / "0000.png", tmp_path / "photos" / "a.png")
    result = runner.invoke(cli(), ["process-data", "images", str(tmp_path / "photos"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "at least 2" in result.output


@pytest.mark.slow
def test_process_data_on_object_train_views(tmp_path: Path) -> None:
    """48 unposed renders → COLMAP model → colmap loader; poses agree with the truth up to a similarity."""
    meta = json.loads((OBJECT / "cameras_opencv.json").read_text())
    train = [f for f in meta["frames"] if f["split"] == "train"]
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in train:
        shutil.copy(OBJECT / f["file_path"], photos / Path(f["file_path"]).name)
    out = tmp_path / "data"
    result = CliRunner().invoke(cli(), ["process-data", "images", str(photos), "--out", str(out), "--camera-model", "SIMPLE_PINHOLE"])
    assert result.exit_code == 0, result.output
    assert "registered" in result.output
    scene = ColmapLoader(ColmapConfig(test_every=0)).load(out)
    assert len(scene.views) >= 40, f"only {len(scene.views)} of 48 images registered"
    true = {Path(f["file_path"]).name: np.asarray(f["c2w"]) for f in train}
    est = np.stack([v.camera.c2w[0].double().numpy() for v in scene.views])
    cmp = compare_poses(est, np.stack([true[Path(v.path).name] for v in scene.views]))
    assert np.median(cmp.rotation_deg) < 3.0
    assert (cmp.rotation_deg < 5.0).sum() >= 36
    assert scene.point_cloud is not None and len(scene.point_cloud) > 200
