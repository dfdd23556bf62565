"""dggt and ttr with a camera rig: 3 cameras x S frames, as DGGT's ``--input_views 3``.

Each input image keeps its own dynamic Gaussians (DGGT renders image i with ``dynamic_points[i]``),
static Gaussians fade in DGGT's time normalisation (frame k of S at k/(S-1) * S/4, S the
sequence length, not the number of images) and ttr pairs every view with its own camera.
The renders are checked against an independent composition straight from the network outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from recon_core import Bounds, Cameras, Gaussians3D, RunContext, Scene, View
from recon_core.geometry import unproject_depth
from recon_plugins.dggt.composition import unproject_depth_dggt
from recon_plugins.dggt import DGGTConfig, DGGTRepresentation
from recon_plugins.dggt.pose_encoding import extrinsics_to_c2w, pose_encoding_to_extri_intri
from recon_plugins.dggt.preprocess import plan_resize, resize_images, resize_masks
from recon_plugins.dggt.sky import SkyLayer
from recon_plugins.dggt.weights import load_network
from recon_plugins.gaussians.renderers import TorchGaussianRenderer
from conftest import tiny_dggt_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

H, W, S, CAMS = 14, 28, 3, 3
RENDERER = TorchGaussianRenderer()
CTX = RunContext(device=torch.device("cpu"), seed=0, renderer=RENDERER, background=torch.zeros(3), log=lambda m: None)


def _yaw(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    R = torch.eye(4)
    R[0, 0], R[0, 2], R[2, 0], R[2, 2] = math.cos(a), math.sin(a), -math.sin(a), math.cos(a)
    return R


def _rig_scene() -> Scene:
    """Loader order (camera-major, as the dggt loader writes views): cam 0 frames, cam 1 frames, ..."""
    g = torch.Generator().manual_seed(11)
    K = torch.tensor([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]])
    views = []
    for c, yaw in enumerate((0.0, 50.0, -50.0)):
        for k in range(S):
            c2w = _yaw(yaw)
            c2w[2, 3] = 0.5 * k
            sky = torch.zeros(H, W, dtype=torch.bool)
            sky[:3] = True
            views.append(View(f"{k:03d}_{c}", Cameras.create(K, c2w, W, H, times=0.1 * k),
                              torch.rand(H, W, 3, generator=g), "train", sky_mask=sky))
    return Scene("rig", views, Bounds(torch.zeros(3), 5.0))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> tuple[DGGTRepresentation, Scene, Path]:
    ckpt = tiny_dggt_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt")
    scene = _rig_scene()
    rep = DGGTRepresentation(DGGTConfig(checkpoint=str(ckpt), size="tiny", width=28, min_dynamic_opacity=0.0,
                                        eval_resolution="network"))
    rep.build(scene, CTX)
    return rep, scene, ckpt


def _expected_views(ckpt: Path, scene: Scene) -> tuple[list[Gaussians3D], Cameras, torch.Tensor]:
    """DGGT's mode-2 composition, written out from the network outputs: images in (time, camera)
    order; image i = k*3 + c sees every static Gaussian faded to tau_k and image i's dynamic ones."""
    order = sorted(scene.train_views, key=lambda v: v.time)  # stable: t0 c0, t0 c1, t0 c2, t1 c0, ...
    images = torch.stack([v.image for v in order])
    sky = torch.stack([v.sky_mask for v in order])
    plan = plan_resize(W, H, 28, 14)
    net = load_network(ckpt, "tiny")
    with torch.no_grad():
        out = net(resize_images(images, plan)[None], heads=("depth", "gs", "instance"))
        ext, K = pose_encoding_to_extri_intri(out.pose_enc[0].float(), (plan.height, plan.width))
        c2w = extrinsics_to_c2w(ext)
        pts = unproject_depth_dggt(out.depth[0, ..., 0], ext, K)  # DGGT lifts pixel i at u = i (its float64 arithmetic)
        assert torch.allclose(pts, unproject_depth(out.depth[0, ..., 0], K, c2w, pixel_offset=0.0), atol=1e-5)
    gs, gamma, logit = out.gs_map[0], out.lifespan[0], out.dynamic_logit[0]
    non_sky = ~resize_masks(sky, plan)
    tau = torch.tensor([k / (S - 1) * S / 4 for k in range(S) for _ in range(CAMS)])  # DGGT's timestamps, repeated per view
    static = non_sky & (logit < 0.5)
    img_of = torch.arange(S * CAMS)[:, None, None].expand_as(logit)
    st_op = (gs[..., 3] * (1 - torch.sigmoid(logit)))[static]
    views = []
    for i in range(S * CAMS):
        faded = st_op * torch.exp(math.log(0.1) * (tau[i] - tau[img_of[static]]) ** 2 / (gamma[static] ** 2 + 1e-6))
        dyn = non_sky[i]
        views.append(Gaussians3D(
            means=torch.cat([pts[static], pts[i][dyn]]), quats=torch.cat([gs[..., 7:11][static], gs[i][..., 7:11][dyn]]),
            scales=torch.cat([gs[..., 4:7][static], gs[i][..., 4:7][dyn]]),
            opacities=torch.cat([faded, (gs[i][..., 3] * torch.sigmoid(logit[i]))[dyn]]),
            colors=torch.cat([gs[..., 0:3][static], gs[i][..., 0:3][dyn]]),
        ))
    n = S * CAMS
    w2c = torch.cat([ext, torch.tensor([0.0, 0, 0, 1]).expand(n, 1, 4)], dim=1)  # DGGT renders from the network's own
    cams = Cameras(K=K, c2w=c2w, width=torch.full((n,), plan.width), height=torch.full((n,), plan.height),
                   times=torch.tensor([order[i].time for i in range(n)]), w2c=w2c)
    return views, cams, tau


def test_time_normalisation_uses_the_sequence_length(rig) -> None:
    rep, _, _ = rig
    tmap = rep._time_map()
    assert tmap.num_frames == S, "3 cameras x 3 frames are a sequence of 3, not 9"
    assert tmap.tau(0.2) == pytest.approx(S / 4)


def test_each_view_renders_its_own_image_dynamic_gaussians(rig) -> None:
    rep, scene, ckpt = rig
    expected, cams, _ = _expected_views(ckpt, scene)
    assert torch.allclose(rep.cameras().c2w, cams.c2w, atol=1e-5)
    assert rep.source_images(rep.cameras()) == list(range(S * CAMS)), "each input camera finds its own image"
    # per image, the Gaussians a renderer gets: same set (sorted by position) as the independent composition
    for index, g in rep.gaussians_for_cameras(rep.cameras()):
        [i] = index
        e = expected[i]
        assert len(g) == len(e)
        ka, kb = _sort_key(g.means.detach()), _sort_key(e.means)
        assert torch.allclose(g.means.detach()[ka], e.means[kb], atol=1e-5)
        assert torch.allclose(g.opacities.detach()[ka], e.opacities[kb], atol=1e-5)
    # and the rendered frames (sky off: the colours of the Gaussians alone, DGGT's alpha·rgb); the
    # independent opacities differ by ~3e-8 (float32 time arithmetic), which the rasteriser's
    # transmittance cut-off can turn into ~1e-5 at a few edge pixels: hence 1e-4
    with torch.no_grad():
        got = RENDERER.render(rep, rep.cameras())
        for i in range(S * CAMS):
            want = RENDERER.render(SkyLayer(expected[i]), cams[[i]])  # a plain Gaussian layer
            assert torch.allclose(got.alpha[i], want.alpha[0], atol=1e-4)
            sky = rep.render_sky(rep.cameras()[[i]], RENDERER)[0]
            assert torch.allclose(got.rgb[i], want.alpha[0] * want.rgb[0] + (1 - want.alpha[0]) * sky, atol=1e-4)


def test_cameras_of_one_time_see_different_dynamic_gaussians(rig) -> None:
    rep, _, _ = rig
    parts = rep.gaussians_for_cameras(rep.cameras()[[0, 1, 2]])  # the three cameras at t0
    assert len(parts) == 3
    dyn_rows = [set(g.rows[rep.splats["dynamic"][g.rows]].tolist()) for _, g in parts]
    assert all(dyn_rows) and not (dyn_rows[0] & dyn_rows[1]) and not (dyn_rows[1] & dyn_rows[2])


def test_ttr_pairs_each_view_with_its_own_camera_and_writes_each_back(rig) -> None:
    from recon_plugins.ttr import TestTimeRefiner, TTRConfig

    rep, scene, _ = rig
    ttr = TestTimeRefiner(TTRConfig(steps_pose=2, steps_gs=0, lr_pose=1e-2, lpips=False))
    ttr.setup(rep, scene, CTX)
    order = sorted(scene.train_views, key=lambda v: v.time)
    assert ttr.from_rep == [order.index(v) for v in ttr.views], "matched by (camera, time)"
    for s in range(ttr.total_steps):
        ttr.step(s)
    ttr.finish()
    c2w = rep.cameras().c2w
    centres = c2w[:, :3, 3]
    assert len({tuple(torch.round(c, decimals=5).tolist()) for c in c2w[:, :3, :3].reshape(-1, 9)}) == S * CAMS, \
        "no camera overwritten by another's pose"
    for v in scene.train_views:
        j = order.index(v)
        assert torch.allclose(v.camera.c2w[0], c2w[j], atol=1e-6) and torch.allclose(v.camera.c2w[0, :3, 3], centres[j], atol=1e-6)


def _sort_key(means: torch.Tensor) -> torch.Tensor:
    key = means[:, 0] * 1e6 + means[:, 1] * 1e3 + means[:, 2]
    return torch.argsort(key)


def test_export_writes_what_each_image_sees(rig, tmp_path: Path) -> None:
    from recon_core.ply import read_splat_ply

    rep, scene, ckpt = rig
    expected, _, _ = _expected_views(ckpt, scene)
    paths = rep.export(tmp_path, "ply")
    assert len(paths) == S * CAMS
    for k, p in enumerate(paths):
        assert read_splat_ply(p)["means"].shape[0] == len(expected[k])
