"""The ``3dgs`` representation: build, activation, creation from tensors, export, resizing load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from plyfile import PlyData

from recon_core.cameras import Cameras
from recon_core.errors import InputError
from recon_core.gaussians import Gaussians3D, sh_to_rgb
from recon_core.scene import Bounds, PointCloud, Scene, View
from recon_plugins.gaussians.init import knn_scales
from recon_plugins.gaussians.ply import read_splat_ply
from recon_plugins.gaussians.representation import PARAMETER_NAMES, GaussianSplat, GaussianSplatConfig


def tiny_scene(pc: PointCloud | None = None, depth: bool = False) -> Scene:
    K = torch.tensor([[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]])
    views = []
    for i in range(2):
        c2w = torch.eye(4)
        c2w[0, 3] = 0.1 * i
        image = torch.full((8, 8, 3), 0.25 + 0.5 * i)
        views.append(View(f"v{i}", Cameras.create(K, c2w, 8, 8), image, depth=torch.full((8, 8), 2.0) if depth else None))
    return Scene("tiny", views, Bounds(torch.zeros(3), 1.5), point_cloud=pc)


def test_component_declarations() -> None:
    assert GaussianSplat.name == "3dgs" and GaussianSplat.kind == "representation"
    assert GaussianSplat.provides == frozenset({"gaussians-3d"})
    assert dict(GaussianSplat.default_renderer) == {"cpu": "torch-3dgs", "cuda": "gsplat"}
    assert GaussianSplat.native_refiner == "3dgs-train" and GaussianSplat.export_formats == ("ply",)


def test_build_from_point_cloud() -> None:
    pts = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    cols = torch.rand(40, 3, generator=torch.Generator().manual_seed(2))
    rep = GaussianSplat()
    rep.build(tiny_scene(PointCloud(pts, cols)), device=torch.device("cpu"))
    assert len(rep) == 40
    assert [n for n, _ in rep.named_parameters()] == list(PARAMETER_NAMES)
    assert rep.sh0.shape == (40, 1, 3) and rep.shN.shape == (40, 15, 3) and rep.opacities.shape == (40,)
    assert torch.equal(rep.means.detach(), pts)
    g = rep.gaussians()
    assert isinstance(g, Gaussians3D) and g.sh_degree == 3 and g.sh.shape == (40, 16, 3)
    assert torch.allclose(sh_to_rgb(g.sh[:, 0]), cols, atol=1e-6)
    assert torch.allclose(g.opacities, torch.full((40,), 0.1))
    expected = knn_scales(pts)
    assert torch.allclose(g.scales, expected[:, None].expand(40, 3), rtol=1e-5)
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(40))
    assert (g.sh[:, 1:] == 0).all()


def test_build_from_depth_and_random_are_seeded() -> None:
    rep = GaussianSplat(GaussianSplatConfig(init="depth", num_points=30))
    rep.build(tiny_scene(depth=True), device=torch.device("cpu"))
    assert len(rep) == 30 and torch.allclose(rep.means[:, 2].detach(), torch.full((30,), 2.0))
    a = GaussianSplat(GaussianSplatConfig(init="random", num_points=25, sh_degree=1, seed=4))
    b = GaussianSplat(GaussianSplatConfig(init="random", num_points=25, sh_degree=1, seed=4))
    for r in (a, b):
        r.build(tiny_scene(), device=torch.device("cpu"))
    assert a.shN.shape == (25, 3, 3)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    assert (a.means.detach().norm(dim=-1) <= 1.5 + 1e-5).all()


def test_sh_degree_out_of_range() -> None:
    with pytest.raises(InputError, match="sh_degree"):
        GaussianSplat(GaussianSplatConfig(sh_degree=4))


def test_active_sh_degree_is_capped() -> None:
    rep = GaussianSplat(GaussianSplatConfig(sh_degree=2, init="random", num_points=5))
    rep.build(tiny_scene(), device=torch.device("cpu"))
    rep.active_sh_degree = 1
    assert rep.gaussians().sh_degree == 1
    rep.active_sh_degree = 3
    assert rep.gaussians().sh_degree == 2


def test_from_gaussians_round_trips_activated_values() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 12
    g = Gaussians3D(
        means=torch.randn(n, 3, generator=gen),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        scales=torch.rand(n, 3, generator=gen) * 0.1 + 0.01,
        opacities=torch.rand(n, generator=gen) * 0.9 + 0.05,
        colors=torch.rand(n, 3, generator=gen),
    )
    rep = GaussianSplat.from_gaussians(g, sh_degree=2)
    out = rep.gaussians()
    assert rep.max_sh_degree == 2 and out.sh.shape == (n, 9, 3)
    for name in ("means", "quats", "scales", "opacities"):
        assert torch.allclose(getattr(out, name), getattr(g, name), atol=1e-6), name
    assert torch.allclose(sh_to_rgb(out.sh[:, 0]), g.colors, atol=1e-6)
    assert (out.sh[:, 1:] == 0).all()
    # gradients flow to the raw parameters
    out.scales.sum().backward()
    assert rep.scales.grad is not None and torch.allclose(rep.scales.grad, out.scales.detach())


def test_export_ply_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    rep = GaussianSplat(GaussianSplatConfig(init="random", num_points=20))
    rep.build(tiny_scene(), device=torch.device("cpu"))
    with torch.no_grad():
        rep.shN.normal_()
    files = rep.export(tmp_path, "ply")
    assert files == [tmp_path / "point_cloud.ply"] and [p.name for p in tmp_path.iterdir()] == ["point_cloud.ply"]
    raw = read_splat_ply(files[0])
    assert torch.equal(raw.means, rep.means.detach()) and torch.equal(raw.shN, rep.shN.detach())
    assert torch.equal(raw.log_scales, rep.scales.detach()) and torch.equal(raw.logit_opacities, rep.opacities.detach())
    assert [p.name for p in PlyData.read(str(files[0]))["vertex"].properties][:9] == [
        "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"
    ]
    loaded = GaussianSplat.from_ply(files[0])
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), rep.parameters()))
    with pytest.raises(InputError, match="cannot export 'obj'"):
        rep.export(tmp_path, "obj")


def test_init_from_ply_pads_sh(tmp_path: Path) -> None:
    src = GaussianSplat(GaussianSplatConfig(init="random", num_points=6, sh_degree=1))
    src.build(tiny_scene(), device=torch.device("cpu"))
    path = src.export(tmp_path, "ply")[0]
    rep = GaussianSplat(GaussianSplatConfig(init="ply", ply_path=str(path), sh_degree=3))
    rep.build(tiny_scene(), device=torch.device("cpu"))
    assert rep.shN.shape == (6, 15, 3) and torch.equal(rep.means, src.means)
    with pytest.raises(InputError, match="ply_path"):
        GaussianSplat(GaussianSplatConfig(init="ply")).build(tiny_scene(), device=torch.device("cpu"))


def test_load_state_dict_resizing_changes_count() -> None:
    big = GaussianSplat(GaussianSplatConfig(init="random", num_points=30))
    big.build(tiny_scene(), device=torch.device("cpu"))
    small = GaussianSplat(GaussianSplatConfig(init="random", num_points=5))
    small.build(tiny_scene(), device=torch.device("cpu"))
    small.active_sh_degree = 0
    small.load_state_dict_resizing(big.state_dict())
    assert len(small) == 30 and small.active_sh_degree == 3
    assert all(isinstance(getattr(small, n), torch.nn.Parameter) for n in PARAMETER_NAMES)
    assert all(torch.equal(a, b) for a, b in zip(small.parameters(), big.parameters()))


def test_unbuilt_representation_has_empty_parameters() -> None:
    rep = GaussianSplat()
    assert len(rep) == 0 and rep.max_sh_degree == 3
    assert math.isclose(float(rep.gaussians().means.numel()), 0.0)


def test_background_colour_is_rendered_state() -> None:
    rep = GaussianSplat(GaussianSplatConfig(init="random", num_points=4))
    assert rep.gaussians().background is None
    rep.set_background([0.0, 1.0, 0.0])
    cams = tiny_scene().cameras()
    image = rep.gaussians().background(cams)
    assert image.shape == (2, 8, 8, 3) and torch.equal(image[1, 3, 4], torch.tensor([0.0, 1.0, 0.0]))
    other = GaussianSplat()
    other.load_state_dict_resizing(rep.state_dict())  # saved with the checkpoint
    assert torch.equal(other.background_color, torch.tensor([0.0, 1.0, 0.0]))
    configured = GaussianSplat(GaussianSplatConfig(background=[1.0, 1.0, 1.0]))
    assert torch.equal(configured.background_color, torch.ones(3))
    with pytest.raises(InputError, match="3 values"):
        rep.set_background([1.0, 0.0])
