"""Space carving of sparse inputs and the points it adds (plugins/reconx/carving.py, pointcloud.complete_points)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import look_at_torch

from recon_core.cameras import Cameras
from recon_core.errors import InputError
from recon_core.scene import PointCloud, View
from recon_plugins.reconx.carving import FREE, SURFACE, UNKNOWN, carve
from recon_plugins.reconx.pointcloud import complete_points

pytestmark = pytest.mark.usefixtures("one_thread")

CENTRE = torch.tensor([0.1, -0.2, 0.05])
RADIUS = 0.5
SIZE = 48


def _camera(position: list[float]) -> Cameras:
    K = torch.tensor([[40.0, 0.0, SIZE / 2], [0.0, 40.0, SIZE / 2], [0.0, 0.0, 1.0]])
    return Cameras.create(K, look_at_torch(position, CENTRE, dtype=torch.float64)[None].float(), SIZE, SIZE)


def _sphere_view(name: str, camera: Cameras) -> View:
    """Exact mask and z-depth of the sphere (ray casting in float64), colour = red above the equator."""
    K, c2w = camera.K[0].double(), camera.c2w[0].double()
    v, u = torch.meshgrid(torch.arange(SIZE, dtype=torch.float64), torch.arange(SIZE, dtype=torch.float64), indexing="ij")
    d_cam = torch.stack([(u + 0.5 - K[0, 2]) / K[0, 0], (v + 0.5 - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)
    d = d_cam @ c2w[:3, :3].T  # world direction with unit camera z
    oc = c2w[:3, 3] - CENTRE.double()
    a, b, c = (d * d).sum(-1), 2 * (d @ oc), float(oc @ oc) - RADIUS**2
    disc = b * b - 4 * a * c
    hit = disc > 0
    t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)  # along d: t is the z-depth
    depth = torch.where(hit, t, torch.zeros_like(t)).float()
    z_world = c2w[2, 3] + t * d[..., 2]
    image = torch.where((hit & (z_world > CENTRE[2]))[..., None], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).float()
    return View(name, camera, image, object_mask=hit, depth=depth)


def _inputs() -> list[View]:
    """Three views 120 degrees apart, 20 degrees above the equator: the underside is unseen."""
    views = []
    for i in range(3):
        a = 2 * math.pi * i / 3
        pos = (CENTRE.double() + 3.0 * torch.tensor([math.cos(a) * math.cos(0.35), math.sin(a) * math.cos(0.35), math.sin(0.35)],
                                                   dtype=torch.float64)).tolist()
        views.append(_sphere_view(f"in{i}", _camera(pos)))
    return views


def _box() -> tuple[torch.Tensor, torch.Tensor]:
    return CENTRE - 0.8, CENTRE + 0.8


def test_carving_classifies_a_sphere_seen_from_three_views() -> None:
    volume = carve(_inputs(), *_box(), resolution=40, depth_tolerance=0.02)
    centres = volume.centers().reshape(-1, 3)
    state = volume.state.reshape(-1)
    dist = (centres - CENTRE).norm(dim=-1)
    half_diag = volume.voxel * math.sqrt(3) / 2
    # nothing inside the sphere is carved away, and everything carved as empty lies outside it
    assert bool((state[dist < RADIUS - half_diag] != FREE).all())
    assert bool((dist[state == FREE] > RADIUS - half_diag).all())
    # the observed surface sits on the sphere (within the depth tolerance, about 2 % of 3 units)
    assert float((dist[state == SURFACE] - RADIUS).abs().max()) < 0.07 + half_diag
    # the sphere's centre is behind every observation: unknown, not empty
    assert int(state[dist.argmin()]) == UNKNOWN
    # far corners of the box are outside a silhouette
    assert int(volume.state[0, 0, 0]) == FREE and int(volume.state[-1, -1, -1]) == FREE


def test_shell_is_outside_the_object_and_covers_its_unseen_underside() -> None:
    volume = carve(_inputs(), *_box(), resolution=40, depth_tolerance=0.02)
    shell = volume.shell()
    assert len(shell) > 0
    dist = (shell - CENTRE).norm(dim=-1)
    assert float(dist.min()) > RADIUS - volume.voxel * math.sqrt(3)  # never inside the object
    below = shell[:, 2] - CENTRE[2]
    assert float(below.min()) < -0.6 * RADIUS  # the unseen underside is bounded by the shell
    # the top, which all three views see, needs little completion (voxels at grazing angles only)
    assert int((below < -0.3 * RADIUS).sum()) > 3 * int((below > 0.3 * RADIUS).sum())


def test_silhouette_of_the_volume_contains_the_object_from_a_new_viewpoint() -> None:
    volume = carve(_inputs(), *_box(), resolution=40, depth_tolerance=0.02)
    below = _camera((CENTRE.double() + torch.tensor([0.5, 0.3, -3.0], dtype=torch.float64)).tolist())
    truth = _sphere_view("below", below).object_mask
    sil = volume.silhouette(below)
    assert sil.shape == (SIZE, SIZE) and bool(truth.any())
    assert bool(sil[truth].all())  # the carved volume contains the sphere, so its image does
    assert not bool(sil[0, 0]) and not bool(sil[-1, -1])  # image corners see only empty space


def test_completed_points_take_the_colour_of_their_nearest_observed_points() -> None:
    volume = carve(_inputs(), *_box(), resolution=40, depth_tolerance=0.02)
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g), dim=-1)
    observed = CENTRE + RADIUS * d
    colors = torch.where((d[:, 2] > 0)[:, None], torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    extra = complete_points(PointCloud(observed, colors), volume, torch.Generator().manual_seed(1), neighbours=4)
    assert len(extra) == len(volume.shell())
    assert float((extra.points - volume.shell()).abs().max()) <= volume.voxel / 2 + 1e-6  # inside their voxels
    nearest = torch.cdist(extra.points, observed).argmin(dim=1)
    clear = (observed[nearest, 2] - CENTRE[2]).abs() > 0.1  # away from the colour boundary
    assert torch.allclose(extra.colors[clear], colors[nearest][clear])


def test_carving_rejects_a_flat_box() -> None:
    with pytest.raises(InputError, match="positive size"):
        carve(_inputs(), torch.zeros(3), torch.tensor([1.0, 1.0, 0.0]))


def test_reconx_build_completes_the_point_cloud_only_when_asked_and_with_silhouettes() -> None:
    from recon_core.components import RunContext
    from recon_core.scene import Bounds, Scene
    from recon_plugins.reconx.representation import ReconXConfig, ReconXSplat

    ctx = RunContext(device=torch.device("cpu"), seed=0)

    views = _inputs()
    scene = Scene("sphere", views, Bounds(CENTRE, 1.0))
    plain = ReconXSplat(ReconXConfig(pointcloud="depth", complete="none", carve_resolution=40))
    plain.build(scene, ctx)
    done = ReconXSplat(ReconXConfig(pointcloud="depth", carve_resolution=40))
    done.build(scene, ctx)
    assert plain.completed_points == 0 and done.completed_points > 0
    assert len(done) == len(plain) + done.completed_points
    assert torch.equal(done.splats["means"].detach()[: len(plain)], plain.splats["means"].detach())  # observed points come first, unchanged
    extra = done.splats["means"].detach()[len(plain):]
    assert float((extra - CENTRE).norm(dim=-1).min()) > RADIUS - 0.1  # on or outside the sphere
    no_masks = [View(v.name, v.camera, v.image, depth=v.depth) for v in views]
    bare = ReconXSplat(ReconXConfig(pointcloud="depth", carve_resolution=40))
    bare.build(Scene("sphere", no_masks, Bounds(CENTRE, 1.0)), ctx)
    assert bare.completed_points == 0 and len(bare) == len(plain)
