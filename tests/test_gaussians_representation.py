"""The ``3dgs`` representation: build, activation, creation from tensors, export, resizing load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from plyfile import PlyData

from recon_core.cameras import Cameras
from recon_core.errors import InputError
from recon_core.components import RunContext
from recon_core.gaussians import SPLAT_KEYS, Gaussians3D, GaussianRepresentation, sh_to_rgb, splats_from_activated
from recon_core.geometry import knn_distances
from recon_core.ply import read_splat_ply
from recon_core.scene import Bounds, PointCloud, Scene, View
from recon_plugins.gaussians.representation import GaussianSplat, GaussianSplatConfig

CTX = RunContext(device=torch.device("cpu"), seed=0)
PARAMETER_NAMES = tuple(f"splats.{k}" for k in SPLAT_KEYS)


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
    assert GaussianSplat.native_refiner == "3dgs-train" and GaussianSplat.export_formats == ("ply", "splat", "ply_compressed")


def test_build_from_point_cloud() -> None:
    pts = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    cols = torch.rand(40, 3, generator=torch.Generator().manual_seed(2))
    rep = GaussianSplat()
    rep.build(tiny_scene(PointCloud(pts, cols)), CTX)
    assert len(rep) == 40
    assert [n for n, _ in rep.named_parameters()] == list(PARAMETER_NAMES)
    assert isinstance(rep, GaussianRepresentation)
    sp = rep.splats
    assert sp["sh0"].shape == (40, 1, 3) and sp["shN"].shape == (40, 15, 3) and sp["opacities"].shape == (40,)
    assert torch.equal(sp["means"].detach(), pts)
    g = rep.gaussians()
    assert isinstance(g, Gaussians3D) and g.sh_degree == 3 and g.sh.shape == (40, 16, 3)
    assert torch.allclose(sh_to_rgb(g.sh[:, 0]), cols, atol=1e-6)
    assert torch.allclose(g.opacities, torch.full((40,), 0.1))
    expected = knn_distances(pts, 3).clamp_min(1e-7)
    assert torch.allclose(g.scales, expected[:, None].expand(40, 3), rtol=1e-5)
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(40))
    assert (g.sh[:, 1:] == 0).all()


def test_build_from_depth_and_random_are_seeded() -> None:
    rep = GaussianSplat(GaussianSplatConfig(init="depth", num_points=30))
    rep.build(tiny_scene(depth=True), CTX)
    assert len(rep) == 30 and torch.allclose(rep.splats["means"][:, 2].detach(), torch.full((30,), 2.0))
    a = GaussianSplat(GaussianSplatConfig(init="random", num_points=25, sh_degree=1, seed=4))
    b = GaussianSplat(GaussianSplatConfig(init="random", num_points=25, sh_degree=1, seed=4))
    for r in (a, b):
        r.build(tiny_scene(), CTX)
    assert a.splats["shN"].shape == (25, 3, 3)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    assert (a.splats["means"].detach().norm(dim=-1) <= 1.5 + 1e-5).all()


def test_sh_degree_out_of_range() -> None:
    with pytest.raises(InputError, match=r"3dgs\.sh_degree must be between 0 and 3, got 4"):
        GaussianSplat(GaussianSplatConfig(sh_degree=4))


def test_active_sh_degree_is_capped() -> None:
    rep = GaussianSplat(GaussianSplatConfig(sh_degree=2, init="random", num_points=5))
    rep.build(tiny_scene(), CTX)
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
    rep = GaussianSplat(GaussianSplatConfig(sh_degree=2))
    rep.set_splats(splats_from_activated(g, sh_degree=2))
    out = rep.gaussians()
    assert rep.max_sh_degree == 2 and out.sh.shape == (n, 9, 3)
    for name in ("means", "quats", "scales", "opacities"):
        assert torch.allclose(getattr(out, name), getattr(g, name), atol=1e-6), name
    assert torch.allclose(sh_to_rgb(out.sh[:, 0]), g.colors, atol=1e-6)
    assert (out.sh[:, 1:] == 0).all()
    # gradients flow to the raw parameters
    out.scales.sum().backward()
    assert rep.splats["scales"].grad is not None and torch.allclose(rep.splats["scales"].grad, out.scales.detach())


def test_export_ply_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    rep = GaussianSplat(GaussianSplatConfig(init="random", num_points=20))
    rep.build(tiny_scene(), CTX)
    with torch.no_grad():
        rep.splats["shN"].normal_()
    files = rep.export(tmp_path, "ply")
    assert files == [tmp_path / "point_cloud.ply"] and [p.name for p in tmp_path.iterdir()] == ["point_cloud.ply"]
    raw = read_splat_ply(files[0])
    sp = rep.splat_values()
    assert torch.equal(raw["means"], sp["means"]) and torch.equal(raw["shN"], sp["shN"])
    assert torch.equal(raw["scales"], sp["scales"]) and torch.equal(raw["opacities"], sp["opacities"])
    assert torch.equal(raw["quats"], sp["quats"]) and torch.equal(raw["sh0"], sp["sh0"])
    assert [p.name for p in PlyData.read(str(files[0]))["vertex"].properties][:9] == [
        "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"
    ]
    loaded = GaussianSplat.from_ply(files[0])
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), rep.parameters()))
    with pytest.raises(InputError, match="cannot export 'obj'"):
        rep.export(tmp_path, "obj")


def test_init_from_ply_pads_sh(tmp_path: Path) -> None:
    src = GaussianSplat(GaussianSplatConfig(init="random", num_points=6, sh_degree=1))
    src.build(tiny_scene(), CTX)
    path = src.export(tmp_path, "ply")[0]
    rep = GaussianSplat(GaussianSplatConfig(init="ply", ply_path=str(path), sh_degree=3))
    rep.build(tiny_scene(), CTX)
    assert rep.splats["shN"].shape == (6, 15, 3) and torch.equal(rep.splats["means"], src.splats["means"])
    assert torch.equal(rep.splats["shN"][:, :3], src.splats["shN"]) and not rep.splats["shN"][:, 3:].any()
    with pytest.raises(InputError, match="ply_path"):
        GaussianSplat(GaussianSplatConfig(init="ply")).build(tiny_scene(), CTX)


def test_load_state_dict_resizing_changes_count() -> None:
    big = GaussianSplat(GaussianSplatConfig(init="random", num_points=30))
    big.build(tiny_scene(), CTX)
    small = GaussianSplat(GaussianSplatConfig(init="random", num_points=5))
    small.build(tiny_scene(), CTX)
    small.active_sh_degree = 0
    small.load_state_dict_resizing(big.state_dict())
    assert len(small) == 30 and small.active_sh_degree == 3
    assert [n for n, _ in small.named_parameters()] == list(PARAMETER_NAMES)
    assert all(isinstance(small.splats[k], torch.nn.Parameter) for k in SPLAT_KEYS)
    assert all(torch.equal(a, b) for a, b in zip(small.parameters(), big.parameters()))


def test_unbuilt_representation_has_empty_parameters() -> None:
    rep = GaussianSplat()
    assert len(rep) == 0 and rep.max_sh_degree == 3
    assert math.isclose(float(rep.gaussians().means.numel()), 0.0)


def test_background_is_the_runs_not_the_representations() -> None:
    # the background colour moved to the run (RunContext.background): a 3dgs representation draws
    # no background of its own and its state holds nothing but its splats
    rep = GaussianSplat(GaussianSplatConfig(init="random", num_points=4))
    rep.build(tiny_scene(), CTX)
    assert rep.gaussians().background is None
    assert sorted(rep.state_dict()) == sorted(PARAMETER_NAMES)


def test_set_splats_contract() -> None:
    rep = GaussianSplat(GaussianSplatConfig(sh_degree=1))
    values = {
        "means": torch.randn(3, 3), "quats": torch.randn(3, 4), "scales": torch.randn(3, 3),
        "opacities": torch.randn(3), "sh0": torch.randn(3, 1, 3), "shN": torch.randn(3, 3, 3),
        "flag": torch.tensor([True, False, True]), "times": torch.randn(3, dtype=torch.float64),
    }
    rep.set_splats(values)
    assert len(rep) == 3 and rep.max_sh_degree == 1
    # copied, never aliased; floats as float32; only refinable float entries get gradients
    assert rep.splats["means"].data_ptr() != values["means"].data_ptr()
    assert torch.equal(rep.splats["means"], values["means"])
    assert rep.splats["times"].dtype == torch.float32 and rep.splats["flag"].dtype == torch.bool
    assert rep.splats["means"].requires_grad and not rep.splats["flag"].requires_grad
    assert not rep.splats["times"].requires_grad  # not in 3dgs's refinable entries
    got = rep.splat_values()
    assert set(got) == set(values) and not any(v.requires_grad for v in got.values())
    # replacing drops entries the new values lack
    rep.set_splats({k: v[:2] for k, v in values.items() if k in SPLAT_KEYS})
    assert set(rep.splats) == set(SPLAT_KEYS) and len(rep) == 2
    with pytest.raises(ValueError, match="lack opacities"):
        rep.set_splats({k: v for k, v in values.items() if k != "opacities"})
    with pytest.raises(ValueError, match="3 rows"):
        rep.set_splats({**values, "sh0": torch.randn(2, 1, 3)})
