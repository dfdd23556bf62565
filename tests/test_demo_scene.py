"""``recon demo-scene``: the generated scene of the README's first command loads and trains."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from recon_cli.main import make_cli
from recon_core.registry import Registry


def test_demo_scene_loads_with_the_nerfstudio_loader(tmp_path) -> None:
    cli = make_cli(Registry())
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo-scene", str(out), "--train-views", "6", "--test-views", "2", "--size", "24"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["inspect-data", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["loader"] == "nerfstudio"
    splits = [v["split"] for v in info["views"]]
    assert splits.count("train") == 6 and splits.count("test") == 2
    assert all(v["width"] == 24 and v["height"] == 24 for v in info["views"])
    assert info["point_cloud"] == 3000


def test_demo_scene_point_cloud_lies_on_the_rendered_object(tmp_path) -> None:
    """Every sparse point projects inside the object's alpha in every view (jitter is 1 cm)."""
    from recon_plugins.gaussians.demo import make_demo_scene
    from recon_plugins.loaders import NerfstudioLoader

    make_demo_scene(tmp_path, n_train=4, n_test=0, size=48)
    scene = NerfstudioLoader().load(tmp_path)
    pts = scene.point_cloud.points
    for view in scene.views:
        w2c = torch.linalg.inv(view.camera.c2w.reshape(4, 4).double()).float()
        cam = pts @ w2c[:3, :3].mT + w2c[:3, 3]
        uv = cam @ view.camera.K.reshape(3, 3).mT
        uv = (uv[:, :2] / uv[:, 2:]).round().long().clamp(0, 47)
        covered = view.alpha.reshape(48, 48)[uv[:, 1], uv[:, 0]] > 0.05
        assert covered.float().mean() > 0.97
