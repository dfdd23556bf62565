"""Global point-cloud sources of the reconx plugin (plugins/reconx/pointcloud.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import look_at_torch

from recon_core.cameras import Cameras
from recon_core.components import RunContext
from recon_core.errors import InputError, MissingWeightsError
from recon_core.scene import Bounds, Scene, View
from recon_plugins.reconx.pointcloud import PointCloudSettings, global_point_cloud
from recon_plugins.reconx.representation import ReconXConfig, ReconXSplat, select_views

DATA = Path("/work/shared/datasets/object")
CTX = RunContext(device=torch.device("cpu"), seed=0)


def _dggt_ctx(config=None) -> RunContext:
    """A run context whose ``create("representation", "dggt")`` makes a dggt with ``config`` (what
    ``--set dggt.KEY=VALUE`` configures in a run)."""
    from recon_plugins.dggt import DGGTRepresentation
    from recon_plugins.gaussians.renderers import TorchGaussianRenderer

    created = []

    def create(kind: str, name: str):
        assert (kind, name) == ("representation", "dggt")
        created.append(DGGTRepresentation(config))
        return created[-1]

    ctx = RunContext(device=torch.device("cpu"), seed=0, renderer=TorchGaussianRenderer(), create=create)
    ctx.options["created"] = created
    return ctx


def _view_with_known_points(name: str, position: list[float], seed: int) -> tuple[View, torch.Tensor]:
    """A 12x10 view whose depth map holds 15 random pixels at random depths; returns the view and
    the world points those pixels see (computed independently, in float64)."""
    g = torch.Generator().manual_seed(seed)
    w, h = 12, 10
    K = torch.tensor([[11.0, 0.0, 6.0], [0.0, 9.0, 5.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    c2w = look_at_torch(position, dtype=torch.float64)
    pixels = torch.randperm(w * h, generator=g)[:15]
    depth = torch.zeros(h, w)
    z = 1.0 + 2.0 * torch.rand(15, generator=g, dtype=torch.float64)
    depth.view(-1)[pixels] = z.float()
    u, v = (pixels % w).double(), (pixels // w).double()
    x_cam = (u + 0.5 - K[0, 2]) / K[0, 0] * z
    y_cam = (v + 0.5 - K[1, 2]) / K[1, 1] * z
    cam = torch.stack([x_cam, y_cam, z], -1)
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    image = torch.rand(h, w, 3, generator=g)
    view = View(name, Cameras.create(K.float(), c2w[None].float(), w, h), image, depth=depth)
    return view, world


def _match(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest distance from a point of ``a`` to its nearest point of ``b``."""
    return float(torch.cdist(a.double(), b.double()).min(dim=1).values.max())


def test_depth_initialisation_reproduces_the_points() -> None:
    v0, p0 = _view_with_known_points("a", [3.0, 0.0, 1.0], 0)
    v1, p1 = _view_with_known_points("b", [0.0, 3.0, 0.5], 1)
    known = torch.cat([p0, p1])
    pc = global_point_cloud([v0, v1], "depth", 1000, torch.Generator().manual_seed(0))
    assert len(pc) == len(known) == 30
    assert _match(pc.points, known) < 1e-5 and _match(known, pc.points) < 1e-5
    # colours are those of the pixels that saw the points
    pc_a = global_point_cloud([v0], "depth", 1000, torch.Generator().manual_seed(0))
    idx = torch.nonzero(v0.depth.reshape(-1) > 0)[:, 0]
    assert torch.allclose(pc_a.colors, v0.image.reshape(-1, 3)[idx])


def test_reconx_build_puts_one_gaussian_on_each_point() -> None:
    v0, p0 = _view_with_known_points("a", [3.0, 0.0, 1.0], 0)
    v1, p1 = _view_with_known_points("b", [0.0, 3.0, 0.5], 1)
    v2, _ = _view_with_known_points("c", [-3.0, 0.0, 1.0], 2)
    scene = Scene("known", [v0, v1, v2], Bounds(torch.zeros(3), 3.0))
    rep = ReconXSplat(ReconXConfig(views="a,b", pointcloud="depth"))
    rep.build(scene, CTX)
    assert rep.input_views == ["a", "b"]
    known = torch.cat([p0, p1])
    assert len(rep) == 30 and _match(rep.splats["means"].detach(), known) < 1e-5
    g = rep.gaussians()
    assert torch.all(g.scales > 0) and torch.allclose(g.opacities, torch.full_like(g.opacities, 0.5))


def test_select_views_reads_a_split_file(tmp_path: Path) -> None:
    views = [_view_with_known_points(n, [3.0, 0.0, 1.0], i)[0] for i, n in enumerate(["0000", "0001", "0002"])]
    views[2].split = "test"
    scene = Scene("s", views, Bounds(torch.zeros(3), 1.0), source=tmp_path)
    (tmp_path / "sparse.json").write_text('{"train": ["images/0001.png"], "test": ["images/0002.png"]}')
    assert [v.name for v in select_views(scene, "sparse.json")] == ["0001"]
    (tmp_path / "bad.json").write_text('{"train": ["images/0001.png"], "test": ["images/0000.png"]}')
    with pytest.raises(InputError, match="test list"):
        select_views(scene, "bad.json")
    with pytest.raises(InputError, match="lacks: 0009"):
        select_views(scene, "0009")


def test_dggt_source_names_the_missing_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECON_WEIGHTS_DIR", str(tmp_path))
    v0, _ = _view_with_known_points("a", [3.0, 0.0, 1.0], 0)
    with pytest.raises(MissingWeightsError) as err:
        global_point_cloud([v0], "dggt", 100, torch.Generator(), PointCloudSettings(_dggt_ctx()))
    assert err.value.filename == "model_latest_waymo.pt"
    assert err.value.expected_path == tmp_path / "dggt" / "model_latest_waymo.pt"
    assert "model_latest_waymo.pt" in str(err.value)
    with pytest.raises(InputError, match="needs a run context"):  # the dggt comes from the run, not from a global registry
        global_point_cloud([v0], "dggt", 100, torch.Generator())


def test_dggt_network_points_are_aligned_to_the_known_cameras(tmp_path: Path) -> None:
    """pointcloud=dggt builds the run's dggt (a tiny random network here) on copies of the views and
    moves its static Gaussians into the views' world: rigidly through camera 0, scaled so that the
    predicted camera spacing matches the known one."""
    from conftest import tiny_dggt_checkpoint
    from recon_plugins.dggt import DGGTConfig

    checkpoint = tiny_dggt_checkpoint(tmp_path / "tiny.pt")
    config = DGGTConfig(checkpoint=str(checkpoint), size="tiny", width=28)
    views = [_view_with_known_points(n, p, i)[0] for i, (n, p) in enumerate([("a", [3.0, 0.0, 1.0]), ("b", [0.0, 3.0, 1.0])])]
    given = [v.camera.c2w.clone() for v in views]
    ctx = _dggt_ctx(config)
    pc = global_point_cloud(views, "dggt", 10**6, torch.Generator().manual_seed(0), PointCloudSettings(ctx))
    assert all(torch.equal(a, v.camera.c2w) for a, v in zip(given, views)), \
        "the views keep their known cameras (dggt writes its predictions into copies)"
    [rep] = ctx.options["created"]
    assert rep.num_frames == 2
    with torch.no_grad():
        g = rep.gaussians(None)
    predicted = rep.cameras().c2w.double()
    assert 0 < len(pc) == len(g) and pc.points.shape[1] == 3 and torch.isfinite(pc.points).all()
    assert pc.colors.min() >= 0 and pc.colors.max() <= 1
    # in camera 0's frame the points are the network's, scaled by known / predicted camera spacing
    known = torch.cat(given).double()
    scale = (known[1, :3, 3] - known[0, :3, 3]).norm() / (predicted[1, :3, 3] - predicted[0, :3, 3]).norm()
    ours = (pc.points.double() - known[0, :3, 3]) @ known[0, :3, :3]
    theirs = (g.means.double() - predicted[0, :3, 3]) @ predicted[0, :3, :3] * scale
    assert torch.allclose(ours, theirs, atol=1e-4 * float(theirs.abs().max()))
    # subsampling keeps at most max_points
    few = global_point_cloud(views, "dggt", 7, torch.Generator().manual_seed(0), PointCloudSettings(_dggt_ctx(config)))
    assert len(few) == 7


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="benchmark data not present")
def test_triangulation_with_known_poses_lands_on_the_surface() -> None:
    from recon_plugins.loaders.nerfstudio import NerfstudioLoader

    scene = NerfstudioLoader().load(DATA)
    centres = torch.stack([v.camera.centers[0] for v in scene.train_views])
    near = torch.argsort((centres - centres[0]).norm(dim=-1))[:4].tolist()  # view 0 and its 3 neighbours
    views = [scene.train_views[i] for i in near]
    pc = global_point_cloud(views, "triangulate", 5000, torch.Generator().manual_seed(0))
    reference = global_point_cloud(views, "depth", 20000, torch.Generator().manual_seed(0))
    assert len(pc) > 20
    dist = torch.cdist(pc.points, reference.points).min(dim=1).values
    assert float(dist.median()) < 0.05  # the object has radius ~1; median error well under 5 %
