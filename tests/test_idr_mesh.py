"""Tests of recon_plugins.idr.mesh and recon_plugins.idr.chamfer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from recon_core import Bounds, Cameras, EvaluationInput, InputError, Scene, View
from conftest import look_at_torch

from recon_plugins.idr.chamfer import ChamferEvaluator, _sample, chamfer, observed_by
from recon_plugins.idr.mesh import drop_enclosed_voids, extract_mesh, write_mesh

pytestmark = pytest.mark.usefixtures("one_thread")


def box_sphere_sdf(x: torch.Tensor) -> torch.Tensor:
    """Union of a sphere (r 0.4 at (−0.3, 0, 0)) and a box (half-size 0.25 at (0.35, 0.1, 0))."""
    s = (x - torch.tensor([-0.3, 0.0, 0.0])).norm(dim=-1) - 0.4
    q = (x - torch.tensor([0.35, 0.1, 0.0])).abs() - 0.25
    b = q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)
    return torch.minimum(s, b)


def test_marching_cubes_of_analytic_sdf_is_within_grid_spacing() -> None:
    res = 48
    spacing = 2.0 / (res - 1)
    mesh = extract_mesh(lambda x: (x.norm(dim=-1) - 0.6), res)
    gt = trimesh.creation.icosphere(subdivisions=5, radius=0.6)
    cd = chamfer(mesh, gt, density=20000)
    assert cd.chamfer < 0.1 * spacing  # a smooth surface is recovered far below one cell
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(r - 0.6).max() < spacing
    # outward orientation: face normals point away from the centre
    assert (np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center) > 0).mean() > 0.99
    assert mesh.is_watertight


def test_marching_cubes_of_union_with_sharp_edges_below_grid_spacing() -> None:
    res = 64
    spacing = 2.0 / (res - 1)
    mesh = extract_mesh(box_sphere_sdf, res)
    pts, _ = trimesh.sample.sample_surface(mesh, 20000, seed=0)
    d = box_sphere_sdf(torch.from_numpy(np.asarray(pts)).float()).abs()
    assert d.mean() < 0.1 * spacing and d.max() < spacing  # accuracy measured with the exact SDF


def test_chamfer_known_values() -> None:
    a = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    assert chamfer(a, a.copy()).chamfer < 5e-3
    bigger = trimesh.creation.icosphere(subdivisions=4, radius=0.55)
    assert chamfer(a, bigger).chamfer == pytest.approx(0.05, abs=5e-3)
    # the outlier cut-off ignores far points (DTU's max_dist)
    far = np.concatenate([np.asarray(a.vertices), np.array([[5.0, 0, 0]])])
    cut = chamfer(far, np.asarray(a.vertices), max_dist=0.2)
    assert cut.accuracy == pytest.approx(0.0, abs=1e-9)
    assert chamfer(far, np.asarray(a.vertices)).accuracy > 1e-3


def test_drop_voids_removes_the_inner_surface_of_a_hollow_ball_only() -> None:
    # solid shell 0.3 < |x| < 0.6 beside a solid ball: the inner sphere bounds a void no camera sees
    def sdf(x: torch.Tensor) -> torch.Tensor:
        r = (x - torch.tensor([-0.3, 0.0, 0.0])).norm(dim=-1)
        shell = torch.maximum(r - 0.6, 0.3 - r)
        ball = (x - torch.tensor([0.65, 0.0, 0.0])).norm(dim=-1) - 0.2
        return torch.minimum(shell, ball)

    raw = extract_mesh(sdf, 48)
    solid = extract_mesh(sdf, 48, drop_voids=True)
    assert len(raw.split(only_watertight=False)) == 3
    parts = sorted(solid.split(only_watertight=False), key=lambda c: c.area)
    assert len(parts) == 2 and all(c.volume > 0 for c in parts)
    assert parts[0].area == pytest.approx(4 * np.pi * 0.2**2, rel=0.05)  # the ball
    assert parts[1].area == pytest.approx(4 * np.pi * 0.6**2, rel=0.05)  # the shell's outside
    assert raw.area - solid.area == pytest.approx(4 * np.pi * 0.3**2, rel=0.05)  # the void's surface
    ball = extract_mesh(lambda x: x.norm(dim=-1) - 0.5, 24)
    assert drop_enclosed_voids(ball) is ball  # nothing to drop: unchanged


def test_empty_level_set_raises() -> None:
    with pytest.raises(ValueError, match="no zero crossing"):
        extract_mesh(lambda x: x.norm(dim=-1) + 1.0, 16)


def test_write_mesh_is_atomic_ply(tmp_path: Path) -> None:
    mesh = extract_mesh(lambda x: x.norm(dim=-1) - 0.5, 24)
    path = write_mesh(mesh, tmp_path / "mesh.ply")
    assert path.exists() and [p.name for p in tmp_path.iterdir()] == ["mesh.ply"]
    back = trimesh.load(path, force="mesh", process=False)
    assert len(back.faces) == len(mesh.faces)


def _scene(gt: Path | None) -> Scene:
    cam = Cameras.create(torch.eye(3), torch.eye(4), 4, 4)
    view = View("0", cam, torch.zeros(4, 4, 3))
    return Scene("s", [view], Bounds(torch.zeros(3), 1.0), gt_mesh_path=gt)


def test_chamfer_evaluator(tmp_path: Path) -> None:
    gt_path = tmp_path / "gt.ply"
    trimesh.creation.icosphere(subdivisions=4, radius=0.5).export(gt_path)
    run = tmp_path / "run"
    write_mesh(trimesh.creation.icosphere(subdivisions=4, radius=0.52), run / "mesh.ply")
    ev = ChamferEvaluator()
    assert ev.unavailable_reason() is None
    assert ev.unavailable_reason(_scene(None)) is not None
    value = ev.evaluate(EvaluationInput(rep=None, data=_scene(gt_path), run_dir=run))  # type: ignore[arg-type]
    assert value["chamfer"] == pytest.approx(0.02, abs=4e-3)
    assert value["chamfer"] == pytest.approx((value["accuracy"] + value["completeness"]) / 2)
    assert value["accuracy"] == pytest.approx(0.02, abs=4e-3) and value["completeness"] == pytest.approx(0.02, abs=4e-3)
    with pytest.raises(InputError, match="ground-truth"):
        ev.evaluate(EvaluationInput(rep=None, data=_scene(None), run_dir=run))  # type: ignore[arg-type]
    # a DTU STL point cloud as ground truth: a clear error pointing to dtu-chamfer (it used to be an IndexError)
    stl = tmp_path / "stl007_total.ply"
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(100, 3))).export(stl)
    with pytest.raises(InputError, match="dtu-chamfer"):
        ev.evaluate(EvaluationInput(rep=None, data=_scene(stl), run_dir=run))  # type: ignore[arg-type]


def _cameras(eyes: list[tuple[float, float, float]], focal: float = 500.0, size: int = 200) -> Cameras:
    K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    c2w = torch.stack([look_at_torch(torch.tensor(e), up=(0.0, 1.0, 0.0) if e[0] == e[1] == 0 else (0.0, 0.0, 1.0)) for e in eyes])
    return Cameras.create(K.expand(len(eyes), 3, 3), c2w, size, size)


def test_observed_by_sees_the_near_cap_and_not_what_is_occluded() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    pts, normals = _sample(sphere, 20000, 200000, 1)
    # a camera at distance 10 sees the cap z > R²/D: a fraction (1 - R/D) / 2 of the sphere
    seen = observed_by(_cameras([(0.0, 0.0, 10.0)]), sphere, pts, normals)
    assert seen.mean() == pytest.approx(0.45, abs=0.01)
    assert not seen[pts[:, 2] < 0.08].any() and seen[pts[:, 2] > 0.12].all()
    # a second sphere between the camera and the first hides the first one's pole
    near = trimesh.creation.icosphere(subdivisions=5, radius=1.0).apply_translation([0.0, 0.0, 3.0])
    both = trimesh.util.concatenate([sphere, near])
    seen = observed_by(_cameras([(0.0, 0.0, 10.0)]), both, pts, normals)
    off_axis = np.degrees(np.arctan2(np.linalg.norm(pts[:, :2], axis=1), 10.0 - pts[:, 2]))
    shadow = np.degrees(np.arcsin(1.0 / 7.0))  # the near sphere's angular radius from the camera
    assert not seen[off_axis < shadow - 0.2].any()
    assert seen[(off_axis > shadow + 0.2) & (pts[:, 2] > 0.12)].all()


def test_chamfer_evaluator_reports_the_observed_surface(tmp_path: Path) -> None:
    """Cameras all above a sphere: geometry under it changes the full accuracy, not the observed one."""
    gt_path = tmp_path / "gt.ply"
    trimesh.creation.icosphere(subdivisions=5, radius=0.5).export(gt_path)
    eyes = [(4.0 * np.cos(a), 4.0 * np.sin(a), 2.0) for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
    cams = _cameras(eyes)
    views = [View(str(i), cams[i], torch.zeros(200, 200, 3)) for i in range(len(eyes))]
    scene = Scene("s", views, Bounds(torch.zeros(3), 1.0), gt_mesh_path=gt_path)
    ev = ChamferEvaluator()

    def run(*parts: trimesh.Trimesh) -> dict[str, float]:
        run_dir = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        write_mesh(trimesh.util.concatenate(list(parts)), run_dir / "mesh.ply")
        return ev.evaluate(EvaluationInput(rep=None, data=scene, run_dir=run_dir))  # type: ignore[arg-type]

    bigger = run(trimesh.creation.icosphere(subdivisions=5, radius=0.52))
    assert bigger["observed"] == pytest.approx(0.02, abs=2e-3)
    assert bigger["observed_accuracy"] == pytest.approx(0.02, abs=2e-3) and bigger["observed_completeness"] == pytest.approx(0.02, abs=2e-3)
    # a blob under the sphere, where no camera looks: the full accuracy grows, the observed one does not
    exact = run(trimesh.creation.icosphere(subdivisions=5, radius=0.5))
    blob = run(trimesh.creation.icosphere(subdivisions=5, radius=0.5),
               trimesh.creation.icosphere(subdivisions=3, radius=0.2).apply_translation([0.0, 0.0, -1.0]))
    assert blob["accuracy"] > exact["accuracy"] + 0.05
    assert blob["observed_accuracy"] == pytest.approx(exact["observed_accuracy"], abs=1e-3)
    assert exact["observed"] < 5e-3  # two samplings of one surface
    assert ev.part_regions["observed"] == "observed surface" and ev.part_regions["chamfer"] == "whole surface"
    # with observed=false there is no observed variant
    off = ChamferEvaluator(ChamferEvaluator.Config(observed=False))
    assert "observed" not in off.evaluate(EvaluationInput(rep=None, data=scene, run_dir=tmp_path / "run1"))  # type: ignore[arg-type]
