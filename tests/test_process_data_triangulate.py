"""``recon process-data triangulate DATA``: a point cloud for a posed nerfstudio dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_points_triangulate import FOCAL, H, W, plane_views

import recon_plugins.loaders as loaders_plugin
from recon_core.registry import Registry
from recon_plugins.loaders.nerfstudio import NerfstudioLoader

pytest.importorskip("pycolmap")

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def cli():  # noqa: ANN201
    from recon_cli.main import make_cli

    return make_cli(Registry(entry_points=[], modules=[("loaders", loaders_plugin)], disabled=()))


def write_plane_dataset(root: Path) -> Path:
    """The textured plane of test_points_triangulate as a nerfstudio folder (OpenGL c2w), one test view."""
    (root / "images").mkdir(parents=True)
    frames = []
    for i, v in enumerate(plane_views(5)):
        Image.fromarray((v.image.numpy() * 255 + 0.5).astype(np.uint8)).save(root / "images" / f"{i:04d}.png")
        c2w_gl = v.camera.c2w[0].double().numpy() @ GL_TO_CV
        frames.append({"file_path": f"images/{i:04d}.png", "transform_matrix": c2w_gl.tolist(), "split": "test" if i == 2 else "train"})
    meta = {"fl_x": FOCAL, "fl_y": FOCAL, "cx": W / 2, "cy": H / 2, "w": W, "h": H, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta, indent=1))
    return root


def test_triangulate_adds_a_point_cloud_the_loader_reads(tmp_path: Path) -> None:
    data = write_plane_dataset(tmp_path / "plane")
    before = json.loads((data / "transforms.json").read_text())
    runner = CliRunner()
    result = runner.invoke(cli(), ["process-data", "triangulate", str(data)])
    assert result.exit_code == 0, result.output
    assert "from 4 posed views" in result.output  # the training views only
    after = json.loads((data / "transforms.json").read_text())
    assert after == {**before, "ply_file_path": "sparse_pc.ply"}  # nothing else changed
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    scene = NerfstudioLoader().load(data)
    pc = scene.point_cloud
    assert pc is not None and len(pc) > 100
    z = pc.points[:, 2].abs()
    assert float(z.median()) < 0.01 and float((z < 0.05).float().mean()) > 0.9  # on the plane z = 0
    assert pc.colors is not None and 0.05 < float(pc.colors.mean()) < 0.95

    result = runner.invoke(cli(), ["process-data", "triangulate", str(data)])
    assert result.exit_code == 2 and "already has ply_file_path" in result.output and "transforms.json" in result.output
    result = runner.invoke(cli(), ["process-data", "triangulate", str(data / "transforms.json"), "--overwrite", "--max-points", "50"])
    assert result.exit_code == 0, result.output
    assert len(NerfstudioLoader().load(data).point_cloud) == 50


def test_triangulate_reports_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli(), ["process-data", "triangulate", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no transforms.json" in result.output and "empty" in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "transforms.json").write_text("[1, 2]")
    result = runner.invoke(cli(), ["process-data", "triangulate", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "JSON object" in result.output and "transforms.json" in result.output
    data = write_plane_dataset(tmp_path / "plane")
    result = runner.invoke(cli(), ["process-data", "triangulate", str(data), "--ply-name", "../x.ply"])
    assert result.exit_code == 2 and "plain file name" in result.output
    assert "ply_file_path" not in json.loads((data / "transforms.json").read_text())
