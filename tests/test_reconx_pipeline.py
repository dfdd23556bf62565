"""``recon run --repr reconx`` end to end on a tiny nerfstudio scene with depth (plugins/reconx)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import look_at

from recon_core.pipeline import Pipeline
from recon_core.resolve import resolve_run
from recon_core.registry import Registry
from recon_core.rundir import RunDir


def _write_ground_plane_scene(root: Path, n: int = 5, size: int = 20) -> Path:
    """Cameras on a ring looking at a textured ground plane z = 0 (exact depth maps, RGB images);
    views 0-3 train, the last one test, and a split file choosing views 0 and 2."""
    from PIL import Image

    root.mkdir(parents=True)
    f = 18.0
    frames = []
    for i in range(n):
        angle = 2 * np.pi * i / n
        c2w = look_at(np.array([2.0 * np.cos(angle), 2.0 * np.sin(angle), 1.5]))
        v, u = np.mgrid[0:size, 0:size] + 0.5
        rays = np.stack([(u - size / 2) / f, (v - size / 2) / f, np.ones_like(u)], -1) @ c2w[:3, :3].T
        t = -c2w[2, 3] / rays[..., 2]  # ray-plane intersection (every ray goes down)
        hit = c2w[:3, 3] + rays * t[..., None]
        z = t  # camera z-depth: rays have unit camera-z
        img = np.stack([0.5 + 0.4 * np.sin(4 * hit[..., 0]), 0.5 + 0.4 * np.cos(4 * hit[..., 1]), np.full_like(t, 0.4)], -1)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(root / f"{i:04d}.png")
        np.save(root / f"{i:04d}.npy", z.astype(np.float32))
        frames.append({"file_path": f"{i:04d}.png", "depth_path": f"{i:04d}.npy", "split": "test" if i == n - 1 else "train",
                       "transform_matrix": (c2w @ np.diag([1.0, -1.0, -1.0, 1.0])).tolist()})
    meta = {"camera_model": "PINHOLE", "fl_x": f, "fl_y": f, "cx": size / 2, "cy": size / 2, "w": size, "h": size, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    (root / "sparse.json").write_text(json.dumps({"train": ["0000.png", "0002.png"], "test": [f"{n - 1:04d}.png"]}))
    return root


@pytest.fixture
def registry() -> Registry:
    import recon_plugins.reconx as reconx

    reg = Registry()
    if any(r.name == "reconx" and r.kind == "representation" for r in reg.rows()):
        return reg
    return Registry(modules=[("reconx", reconx)])


def test_repr_reconx_runs_point_cloud_generation_and_confidence_fit(tmp_path: Path, registry: Registry) -> None:
    data = _write_ground_plane_scene(tmp_path / "plane")
    spec = resolve_run(registry, data=data, representation="reconx", device="cpu", evaluators=["psnr"],
                       sets=["reconx.views=sparse.json", "reconx.num_points=400", "confidence.steps=6",
                             "confidence.generated_views=2", "confidence.lambda_lpips=0", "run.save_renders=false"])
    assert [c.name for c in spec.refiners] == ["confidence"]  # the native refiner
    doc = Pipeline(registry, spec, RunDir.create(tmp_path / "run")).run()
    report = doc["refiners"]["confidence"]
    assert report["input_views"] == ["0000", "0002"]
    assert report["generated_views"] == 2
    assert report["gaussians"] == 400  # no densification
    assert doc["metrics"]["psnr"] is not None and doc["metrics"]["psnr"] > 10
    assert (tmp_path / "run" / "point_cloud.ply").is_file()


def test_confidence_refiner_resumes_with_its_generated_views(tmp_path: Path, registry: Registry) -> None:
    from recon_core.components import RunContext
    from recon_plugins.gaussians import TorchGaussianRenderer
    from recon_plugins.loaders.nerfstudio import NerfstudioLoader
    from recon_plugins.reconx import ConfidenceConfig, ConfidenceRefiner, ReconXConfig, ReconXSplat

    scene = NerfstudioLoader().load(_write_ground_plane_scene(tmp_path / "plane"))
    ctx = RunContext(device=torch.device("cpu"), seed=0, renderer=TorchGaussianRenderer(), log=lambda m: None,
                        create=lambda kind, name: registry.create(kind, name))
    cfg = ConfidenceConfig(steps=4, generated_views=2, generate_at=0.25, lambda_lpips=0.0)

    def fresh() -> tuple[ReconXSplat, ConfidenceRefiner]:
        rep = ReconXSplat(ReconXConfig(views="0000,0002", num_points=300))
        rep.build(scene, ctx)
        return rep, ConfidenceRefiner(cfg)

    torch.manual_seed(0)
    rep_a, ref_a = fresh()
    ref_a.setup(rep_a, scene, ctx)
    for s in range(4):
        ref_a.step(s)
    torch.manual_seed(0)
    rep_b, ref_b = fresh()
    ref_b.setup(rep_b, scene, ctx)
    for s in range(2):
        ref_b.step(s)
    saved_state, saved_rep = ref_b.state_dict(), {k: v.clone() for k, v in rep_b.state_dict().items()}
    rep_c, ref_c = fresh()
    rep_c.load_state_dict_resizing(saved_rep)
    ref_c.setup(rep_c, scene, ctx)
    ref_c.load_state_dict(saved_state)
    assert len(ref_c.views) == 4  # 2 inputs + 2 generated views restored, not regenerated
    for s in range(2, 4):
        ref_c.step(s)
    for k, v in rep_a.state_dict().items():
        assert torch.allclose(v, rep_c.state_dict()[k], atol=1e-6), k


def test_regenerate_every_makes_the_views_again_from_the_current_model(tmp_path: Path, registry: Registry) -> None:
    from recon_core.components import RunContext
    from recon_plugins.gaussians import TorchGaussianRenderer
    from recon_plugins.loaders.nerfstudio import NerfstudioLoader
    from recon_plugins.reconx import ConfidenceConfig, ConfidenceRefiner, ReconXConfig, ReconXSplat

    scene = NerfstudioLoader().load(_write_ground_plane_scene(tmp_path / "plane"))
    messages: list[str] = []
    ctx = RunContext(device=torch.device("cpu"), seed=0, renderer=TorchGaussianRenderer(), log=messages.append,
                        create=lambda kind, name: registry.create(kind, name))
    rep = ReconXSplat(ReconXConfig(views="0000,0002", num_points=300))
    rep.build(scene, ctx)
    refiner = ConfidenceRefiner(ConfidenceConfig(steps=6, generated_views=2, generate_at=0.0, regenerate_every=2,
                                                 lambda_lpips=0.0))
    refiner.setup(rep, scene, ctx)
    images = []
    for s in range(6):
        refiner.step(s)
        images.append(refiner.generated[0].image.clone())
    assert sum("generated" in m for m in messages) == 3  # steps 0, 2 and 4
    assert torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])  # renders of the newer model
    assert len(refiner.views) == 4
