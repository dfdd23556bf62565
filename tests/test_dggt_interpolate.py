"""``dggt.mode=interpolate`` (DGGT's inference.py --mode 3): cameras, clustering, tracked motion
of dynamic objects, and the representation rendering the frames between the input frames."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recon_core import Bounds, Cameras, RunContext, Scene, View
from recon_core.errors import InputError
from recon_plugins.dggt import DGGTConfig, DGGTRepresentation
from recon_plugins.dggt.interpolate import (
    TRACK_MIN_DYNAMIC_PIXELS, dbscan, dense_points, frame_clusters, interpolate_cameras, interpolate_dynamic,
)
from recon_plugins.dggt.pose_encoding import extrinsics_to_c2w
from recon_plugins.gaussians.renderers import TorchGaussianRenderer
from conftest import forward_views, tiny_dggt_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

RENDERER = TorchGaussianRenderer()
CTX = RunContext(device=torch.device("cpu"), seed=0, renderer=RENDERER, background=torch.zeros(3), log=lambda m: None)


def _yaw_w2c(deg: float, t: tuple[float, float, float]) -> torch.Tensor:
    a = math.radians(deg)
    m = torch.eye(4)
    m[0, 0], m[0, 2], m[2, 0], m[2, 2] = math.cos(a), math.sin(a), -math.sin(a), math.cos(a)
    m[:3, 3] = torch.tensor(t)
    return m


def test_cameras_slerp_rotation_and_lerp_translation_and_K() -> None:
    w2c = torch.stack([_yaw_w2c(0, (0, 0, 0)), _yaw_w2c(40, (1.0, 0, -2.0)), _yaw_w2c(60, (1.5, 0.5, -3.0))])
    K = torch.tensor([[50.0, 0, 20], [0, 50.0, 10], [0, 0, 1]]).repeat(3, 1, 1)
    K[1, 0, 0] = 70.0
    e, k = interpolate_cameras(w2c, K, 4)
    assert e.shape == (9, 4, 4) and k.shape == (9, 3, 3), "(S - 1) * I + 1 frames"
    assert torch.allclose(e[[0, 4, 8]], w2c, atol=1e-6), "every I-th frame is a keyframe"
    assert torch.allclose(e[2], _yaw_w2c(20, (0.5, 0, -1.0)), atol=1e-6), "half way: 20 degrees, mid translation"
    assert torch.allclose(e[5], _yaw_w2c(45, (1.125, 0.125, -2.25)), atol=1e-6), "a quarter of the way from 40 to 60"
    assert k[2, 0, 0] == pytest.approx(60.0) and k[6, 0, 0] == pytest.approx(60.0)


def test_dbscan_known_clusters_noise_and_order() -> None:
    g = np.random.RandomState(0)
    a = g.normal(0, 0.002, (40, 3))
    b = g.normal(0, 0.002, (30, 3)) + np.array([1.0, 0, 0])
    lone = np.array([[5.0, 5, 5]])
    pts = np.concatenate([b, lone, a])  # b first: it gets label 0
    labels = dbscan(pts, eps=0.015, min_samples=10)
    assert (labels[:30] == 0).all() and labels[30] == -1 and (labels[31:] == 1).all()
    sk = pytest.importorskip("sklearn.cluster")
    pts = g.uniform(0, 0.1, (400, 3))
    assert np.array_equal(dbscan(pts, 0.015, 10), sk.DBSCAN(eps=0.015, min_samples=10).fit(pts).labels_)


def test_dense_points_keeps_points_with_enough_neighbours() -> None:
    g = np.random.RandomState(1)
    dense = g.normal(0, 0.01, (60, 3))
    sparse = np.arange(5)[:, None] * np.array([[3.0, 0, 0]]) + 10
    out = dense_points(np.concatenate([dense, sparse, [[np.nan, 0, 0]]]))
    assert out.shape == (60, 3) and np.allclose(np.sort(out, axis=0), np.sort(dense, axis=0))
    assert dense_points(dense[:40]).shape == (0, 3), "fewer than 50 points: nothing"


def _moving_blocks(S: int = 3) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Keyframe point maps: a static plane and two 20x30 blocks (5 mm grids) moving by known steps."""
    h, w = 40, 80
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    points = torch.stack([(xs - w / 2) * 0.05, (ys - h / 2) * 0.05, torch.full_like(xs, 4.0)], dim=-1).repeat(S, 1, 1, 1)
    logits = torch.full((S, h, w), -5.0)
    steps = {"a": torch.tensor([0.10, 0.0, 0.02]), "b": torch.tensor([-0.05, 0.04, 0.0])}
    for t in range(S):
        for (r0, c0), v in (((5, 5), steps["a"]), ((15, 45), steps["b"])):
            r, c = slice(r0, r0 + 20), slice(c0 + t, c0 + t + 30)
            base = torch.tensor([c0 * 0.05, r0 * 0.05, 3.0]) + t * v
            points[t, r, c] = base + torch.stack([(xs[r, c] - c0 - t) * 0.005, (ys[r, c] - r0) * 0.005, torch.zeros(20, 30)], -1)
            logits[t, r, c] = 5.0
    return points, logits, steps


def test_frame_clusters_finds_each_object() -> None:
    points, logits, _ = _moving_blocks()
    clusters = frame_clusters(points[0], torch.sigmoid(logits[0]) > 0.95)
    assert len(clusters) == 2 and sorted(len(c.pixels) for c in clusters) == [600, 600]
    W = points.shape[2]
    c = clusters[0]
    r, col = c.pixels // W, c.pixels % W
    assert torch.allclose(points[0][torch.as_tensor(r), torch.as_tensor(col)], torch.as_tensor(c.points).float())


def test_tracked_objects_move_by_their_share_of_the_step() -> None:
    points, logits, steps = _moving_blocks()
    calls = []

    def tracker(images, depths, K, w2c, queries, pixels):  # each query follows its block
        calls.append((queries.clone(), pixels.clone()))
        v = torch.where(queries[:, 1:2] < 1.0, steps["a"][None], steps["b"][None])
        return queries[None, :, 1:] + torch.arange(3.0)[:, None, None] * v[None]

    out_pts, out_logits = interpolate_dynamic(points, logits, 4, tracker, np.random.RandomState(0))
    assert out_pts.shape == (9, 40, 80, 3) and out_logits.shape == (9, 40, 80)
    q, pix = calls[0]
    assert q.shape == (100, 4) and (q[:, 0] == 0).all(), "50 points of each cluster of frame 0"
    assert torch.equal(points[0][pix[:, 1].long(), pix[:, 0].long()], q[:, 1:]), "pixels are where the queries were seen"
    for k in range(9):
        b, j = divmod(k, 4)
        if j == 0:
            assert torch.equal(out_pts[k], points[b]) and torch.equal(out_logits[k], logits[b]), "keyframes unchanged"
            continue
        moving = logits[b] > 0
        want = points[b].clone()
        blk_a = moving & (points[b][..., 0] < 1.0)
        want[blk_a] += j / 4 * steps["a"]
        want[moving & ~blk_a] += j / 4 * steps["b"]
        assert torch.allclose(out_pts[k], want, atol=1e-6)
        assert torch.equal(out_logits[k], moving.float()), "tracked pixels logit 1, every other pixel 0 (as the original)"


def test_without_enough_dynamic_pixels_frames_repeat_their_keyframe() -> None:
    points, logits, _ = _moving_blocks()
    logits[0] = -5.0  # frame 0 has no dynamic pixel: the original does not track
    assert int((torch.sigmoid(logits[0]) > 0.95).sum()) <= TRACK_MIN_DYNAMIC_PIXELS

    def tracker(*a):  # noqa: ANN002
        raise AssertionError("not called")

    pts, lg = interpolate_dynamic(points, logits, 3, tracker, np.random.RandomState(0))
    assert torch.equal(pts, points.repeat_interleave(3, 0)[:7]) and torch.equal(lg, logits.repeat_interleave(3, 0)[:7])


def _clip(n: int = 5, H: int = 20, W: int = 28) -> Scene:
    return Scene("clip", forward_views(n, H, W, 0.2), Bounds(torch.zeros(3), 1.0))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dggt_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt")


def test_representation_renders_the_frames_between_at_interpolated_cameras(checkpoint: Path) -> None:
    scene = _clip(6)
    cfg = DGGTConfig(checkpoint=str(checkpoint), size="tiny", width=28, mode="interpolate", intervals=2,
                     eval_resolution="source", min_dynamic_opacity=0.0)
    rep = DGGTRepresentation(cfg)
    rep.build(scene, CTX)
    assert [v.split for v in scene.views] == ["train", "test", "train", "test", "train", "val"]
    assert rep.num_frames == 3 and torch.allclose(rep.novel_times, torch.tensor([0.1, 0.3]))
    assert rep.novel_keyframe.tolist() == [0, 1]
    keys = rep.cameras()
    w2c, K = interpolate_cameras(keys.viewmats, keys.K, 2)
    test = scene.split("test")
    cams = Cameras.cat([v.camera for v in test])
    assert torch.equal(cams.viewmats, w2c[[1, 3]]) and torch.allclose(cams.K, K[[1, 3]])
    assert torch.allclose(cams.c2w, extrinsics_to_c2w(w2c[[1, 3]]))
    assert rep.source_images(cams) == [3, 4], "each new frame finds its own dynamic Gaussians"
    assert not rep.sky_normalized(), "mode 3 draws the sky without min-max normalisation"
    # what the new frame at 0.1 s sees: keyframe 0's static Gaussians faded to keyframe 0's time,
    # and keyframe 0's pixels (the tiny net has no confident dynamic pixels: repeated) as dynamic ones
    [(idx0, g0)] = [(i, g) for i, g in rep.gaussians_for_cameras(cams[[0]])]
    ref = rep._frame_gaussians(float(rep.frame_times[0]), [0])
    assert torch.equal(g0.means, ref.means) and torch.allclose(g0.opacities, ref.opacities)
    with torch.no_grad():
        out = RENDERER.render(rep, cams)
    assert out.rgb.shape == (2, 20, 28, 3) and torch.isfinite(out.rgb).all()


def test_interpolate_mode_input_errors(checkpoint: Path) -> None:
    cfg = dict(checkpoint=str(checkpoint), size="tiny", width=28, mode="interpolate")
    with pytest.raises(InputError, match="init=network"):
        DGGTRepresentation(DGGTConfig(**cfg, init="fit")).build(_clip(), CTX)
    with pytest.raises(InputError, match="at least 5 views"):
        DGGTRepresentation(DGGTConfig(**cfg, intervals=4)).build(_clip(4), CTX)
    rig = _clip(4)
    rig.views.append(View("other", Cameras.create(rig.views[0].camera.K, torch.eye(4), 28, 20, times=0.0),
                          rig.views[0].image, "train"))
    with pytest.raises(InputError, match="one camera"):
        DGGTRepresentation(DGGTConfig(**cfg)).build(rig, CTX)


def test_track_head_tracker_lifts_tracks_through_the_point_maps(checkpoint: Path) -> None:
    from recon_plugins.dggt.interpolate import TrackHeadTracker
    from recon_plugins.dggt.weights import load_network

    net = load_network(checkpoint, "tiny", torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 14, 28, generator=g)
    point_map = torch.randn(3, 14, 28, 3, generator=g)
    pixels = torch.tensor([[3.0, 2.0], [20.0, 9.0], [27.0, 13.0]])
    queries = torch.cat([torch.zeros(3, 1), point_map[0, pixels[:, 1].long(), pixels[:, 0].long()]], dim=1)
    out = TrackHeadTracker(net, images, point_map)(images, point_map[..., 2], None, None, queries, pixels)
    assert out.shape == (3, 3, 3) and torch.isfinite(out).all()
    assert torch.allclose(out[0], queries[:, 1:], atol=1e-5), "frame 0 holds the queries: their own points"
    with pytest.raises(ValueError, match="frame 0"):
        TrackHeadTracker(net, images, point_map)(images, None, None, None, queries + torch.tensor([1.0, 0, 0, 0]), pixels)
