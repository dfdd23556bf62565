"""The ``dggt`` representation: weights handling, build from frames, 4D queries, export."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

import pytest
import torch

from recon_core import Bounds, Cameras, RunContext, Scene, View
from recon_core.errors import InputError, MissingWeightsError
from recon_core.scene import Video
from recon_plugins.dggt import DGGTConfig, DGGTRepresentation, register_representations
from recon_plugins.dggt.network import DGGTNetwork
from recon_plugins.dggt.representation import align_cameras, align_points
from recon_plugins.gaussians.renderers import TorchGaussianRenderer
from conftest import forward_views, tiny_dggt_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 20, 30
RENDERER = TorchGaussianRenderer()
CTX = RunContext(device=torch.device("cpu"), seed=0, renderer=RENDERER, background=torch.ones(3))


def frame_index(rep: DGGTRepresentation) -> torch.Tensor:
    """[N] index of the input frame each Gaussian was predicted from (its ``times`` entry is that frame's time)."""
    return torch.searchsorted(rep.frame_times, rep.splats["times"])


def _scene(n: int = 3) -> Scene:
    g = torch.Generator().manual_seed(3)
    K = torch.tensor([[30.0, 0, 15], [0, 30.0, 10], [0, 0, 1]])
    views = forward_views(n, H, W, 0.4, t0=10.0, generator=g)
    test_view = View("t0", Cameras.create(K, torch.eye(4), W, H, times=10.0), torch.rand(H, W, 3, generator=g), "test")
    return Scene("toy", views + [test_view], Bounds(torch.zeros(3), 1.0))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    torch.save(DGGTNetwork("tiny").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def built(checkpoint: Path) -> tuple[DGGTRepresentation, Scene, list[torch.Tensor]]:
    scene = _scene()
    original = [v.camera.c2w.clone() for v in scene.views]
    rep = DGGTRepresentation(DGGTConfig(checkpoint=str(checkpoint), size="tiny", width=28, eval_resolution="source"))
    rep.build(scene, CTX)
    return rep, scene, original


def test_registered_with_capabilities() -> None:
    assert register_representations() == [DGGTRepresentation]
    assert DGGTRepresentation.name == "dggt"
    assert DGGTRepresentation.provides == {"gaussians-3d", "cameras", "dynamic"}
    assert DGGTRepresentation.default_renderer == {"cpu": "torch-3dgs", "cuda": "gsplat"}
    assert DGGTRepresentation.native_refiner is None


def test_missing_checkpoint_says_what_to_download_and_where(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECON_WEIGHTS_DIR", str(tmp_path))
    [wf] = DGGTRepresentation.required_weights()
    assert wf.path == tmp_path / "dggt" / "model_latest_waymo.pt" and not wf.present
    assert "huggingface.co/xiaomi-research/dggt" in wf.source
    with pytest.raises(MissingWeightsError) as info:
        DGGTRepresentation().build(_scene(), CTX)
    err = info.value
    assert err.filename == "model_latest_waymo.pt" and err.expected_path == wf.path
    assert "huggingface.co/xiaomi-research/dggt" in str(err) and str(wf.path) in str(err)
    custom = tmp_path / "elsewhere.pt"
    with pytest.raises(MissingWeightsError) as info:
        DGGTRepresentation(DGGTConfig(checkpoint=str(custom))).build(_scene(), CTX)
    assert info.value.expected_path == custom


def test_init_fit_builds_without_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECON_WEIGHTS_DIR", str(tmp_path))  # no checkpoint anywhere
    scene = _scene()
    given = [v.camera.c2w.clone() for v in scene.views]
    for view in scene.train_views:
        view.depth = torch.full((H, W), 2.0)
        dyn = torch.zeros(H, W, dtype=torch.bool)
        dyn[10:14, 10:16] = True
        view.dynamic_mask = dyn
    cfg = DGGTConfig(init="fit", size="tiny", fit_steps=3, fit_points=300, fit_dynamic_stride=2, sky_normalize=False)
    rep = DGGTRepresentation(cfg)
    rep.build(scene, CTX)
    assert all(torch.equal(v.camera.c2w, c) for v, c in zip(scene.views, given)), "fit keeps the given cameras"
    assert torch.allclose(rep.cameras().c2w, torch.cat(given[:3]))
    dynamic = rep.splats["dynamic"]
    assert dynamic.dtype == torch.bool and not dynamic.requires_grad
    static = ~dynamic
    assert 0 < int(static.sum()) <= 300
    assert int(dynamic.sum()) == 3 * 2 * 3, "a 4x6 mask at stride 2 gives 2x3 Gaussians per frame"
    dyn_means = rep.splats["means"].detach()[dynamic & (frame_index(rep) == 1)]
    cam1 = scene.train_views[1].camera
    z = (dyn_means - cam1.c2w[0, :3, 3]) @ cam1.c2w[0, :3, :3]
    assert torch.allclose(z[:, 2], torch.full((6,), 2.0), atol=1e-5), "lifted with the view's depth"
    g0, g2 = rep.gaussians(10.0), rep.gaussians(10.2)
    assert torch.allclose(g0.opacities[: int(static.sum())], g2.opacities[: int(static.sum())]), "static parts never fade"
    assert torch.equal(g0.background(rep.cameras()[[0]], RENDERER), torch.zeros(1, H, W, 3)), "untrained sky is black"
    assert rep.sky_visible.any(), "forward-looking cameras see the upper half of the dome"
    with torch.no_grad():
        rep.sky_model.bg_field.layers[1].bias.fill_(0.5)  # every sky Gaussian: tanh(0.5)
        sky = g0.background(rep.cameras()[[0]], RENDERER)[0, :, :, 0]
    assert sky[0].mean().item() == pytest.approx(float(torch.tanh(torch.tensor(0.5))), abs=0.02), "top row: sky"
    assert sky[-1].mean() < 0.5 * sky[0].mean(), "the dome stops at the horizon"
    class WithoutSky:
        provides = rep.provides

        def gaussians(self, time: float | None = None):
            return dataclasses.replace(rep.gaussians(time), background=None)

    cams = scene.cameras(scene.train_views)
    with torch.no_grad():
        out = TorchGaussianRenderer().render(rep, cams)
        raw = TorchGaussianRenderer().render(WithoutSky(), cams)
        backgrounds = rep.render_sky(cams, RENDERER)
    assert out.rgb.shape == (3, H, W, 3) and torch.isfinite(out.rgb).all()
    assert (raw.alpha < 0.9).any(), "some sky must show through"
    assert torch.allclose(out.rgb, raw.alpha * raw.rgb + (1 - raw.alpha) * backgrounds, atol=1e-5), \
        "DGGT composes alpha·render + (1 − alpha)·sky with the rasteriser's (alpha-weighted) render"
    rep.config.sky_normalize = True
    with torch.no_grad():
        lo, hi = rep.sky_range(RENDERER)
        raw_sky = rep.sky_model.render(rep.sky_model.colors(rep.sky_samples), rep.sky_visible, rep.cameras(), RENDERER)
        normed = rep.render_sky(rep.cameras(), RENDERER)
    assert float(lo) == float(raw_sky.min()) and float(hi) == float(raw_sky.max())
    assert torch.allclose(normed, (raw_sky - raw_sky.min()) / (raw_sky.max() - raw_sky.min() + 1e-8), atol=1e-6), \
        "inference.py's min-max normalisation over the input frames"
    with torch.no_grad():
        alone = rep.render_sky(rep.cameras()[[1]], RENDERER)
    assert torch.allclose(alone, normed[1:2], atol=1e-6), "one view alone gets the sky it gets in the batch"
    with pytest.raises(InputError, match="Scene"):
        DGGTRepresentation(cfg).build(Video("v", 2, W, H, 10.0, read_frame=lambda i: torch.rand(H, W, 3)), CTX)


def test_bad_width_is_an_input_error(checkpoint: Path) -> None:
    with pytest.raises(InputError, match="multiple of 14"):
        DGGTRepresentation(DGGTConfig(checkpoint=str(checkpoint), size="tiny", width=30)).build(_scene(), CTX)


def test_predicted_cameras_are_written_back(built) -> None:
    rep, scene, original = built
    cams = rep.cameras()
    assert len(cams) == 3 and torch.equal(cams.width, torch.full((3,), W)) and torch.equal(cams.height, torch.full((3,), H))
    assert torch.allclose(cams.times, torch.tensor([10.0, 10.1, 10.2]))
    R = cams.c2w[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-4), "rigid OpenCV c2w"
    for i, view in enumerate(scene.train_views):
        assert torch.allclose(view.camera.c2w[0], cams.c2w[i]) and torch.allclose(view.camera.K[0], cams.K[i])
        assert view.camera.times is not None and float(view.camera.times[0]) == pytest.approx(10.0 + 0.1 * i)
    # the test view had frame 0's original pose, so it must now sit exactly at frame 0's predicted pose
    test_view = scene.split("test")[0]
    assert torch.allclose(test_view.camera.c2w[0], cams.c2w[0], atol=1e-5)
    assert not torch.allclose(test_view.camera.c2w[0], original[-1][0])
    assert torch.allclose(scene.bounds.center, scene.cameras().centers.mean(0)), "bounds follow the new world"


def test_align_cameras_recovers_a_similarity() -> None:
    g = torch.Generator().manual_seed(0)
    src = torch.eye(4).repeat(4, 1, 1)
    src[:, :3, 3] = torch.randn(4, 3, generator=g)
    q = torch.nn.functional.normalize(torch.randn(4, generator=g), dim=0)
    from recon_plugins.dggt.pose_encoding import quat_to_mat

    A = torch.eye(4)
    A[:3, :3] = quat_to_mat(q)
    A[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    s = 2.5
    S = torch.diag(torch.tensor([s, s, s, 1.0]))
    dst = A @ S @ src @ torch.diag(torch.tensor([1 / s, 1 / s, 1 / s, 1.0]))  # same cameras, scaled world
    other = torch.eye(4)[None].clone()
    other[0, :3, 3] = torch.tensor([0.3, -0.2, 0.9])
    expected = A @ S @ other @ torch.diag(torch.tensor([1 / s, 1 / s, 1 / s, 1.0]))
    assert torch.allclose(align_cameras(src, src, dst), dst, atol=1e-5)
    assert torch.allclose(align_cameras(other, src, dst), expected, atol=1e-5)
    assert torch.allclose(align_points(src[:, :3, 3], src, dst), dst[:, :3, 3], atol=1e-5), "camera centres are points too"


def test_gaussians_at_each_frame_time(built) -> None:
    rep, _, _ = built
    dynamic = rep.splats["dynamic"]
    frame_ids = frame_index(rep)
    assert torch.allclose(rep.frame_times[frame_ids], rep.splats["times"]), "every Gaussian is at an input frame's time"
    static = ~dynamic
    assert static.any() and dynamic.any()
    base = torch.sigmoid(rep.splats["opacities"]).detach()
    for k, t in enumerate([10.0, 10.1, 10.2]):
        g = rep.gaussians(t)
        keep = static | (dynamic & (frame_ids == k))
        assert len(g) == int(keep.sum()) and torch.equal(g.rows, torch.nonzero(keep).flatten())
        own_static = (static & (frame_ids == k))[keep]
        assert torch.allclose(g.opacities[own_static], base[keep][own_static], atol=1e-6), "no fading at its own time"
        others = (static & (frame_ids != k))[keep]
        assert (g.opacities[others] <= base[keep][others] + 1e-7).all()
        assert g.background is not None and g.sh is not None and g.sh_degree == 0
    between = rep.gaussians(10.04)  # nearest frame: 0
    assert len(between) == int((static | (dynamic & (frame_ids == 0))).sum())
    timeless = rep.gaussians(None)
    assert len(timeless) == int(static.sum()) and torch.allclose(timeless.opacities, base[static])


def test_gaussians_are_differentiable(built) -> None:
    rep, _, _ = built
    g = rep.gaussians(10.1)
    (g.opacities.sum() + g.means.sum() + g.scales.sum()).backward()
    sp = rep.splats
    assert sp["lifespans"].grad is not None and sp["lifespans"].grad.abs().sum() > 0
    assert sp["means"].grad is not None and sp["opacities"].grad is not None
    rep.zero_grad(set_to_none=True)


def test_sky_background_callable(built) -> None:
    rep, scene, _ = built
    g = rep.gaussians(10.0)
    cams = scene.cameras(scene.train_views[:2])
    bg = g.background(cams, RENDERER)
    assert bg.shape == (2, H, W, 3) and torch.isfinite(bg).all()
    assert torch.allclose(bg, rep.render_sky(cams, RENDERER))


def test_export_one_ply_per_frame(built, tmp_path: Path) -> None:
    from recon_core.ply import read_splat_ply

    rep, _, _ = built
    paths = rep.export(tmp_path, "ply")
    assert [p.name for p in paths] == ["point_cloud_t000.ply", "point_cloud_t001.ply", "point_cloud_t002.ply"]
    for k, p in enumerate(paths):
        splat = read_splat_ply(p)
        g = rep.gaussians(float(rep.frame_times[k]))
        assert splat["means"].shape[0] == len(g)
        assert torch.allclose(torch.sigmoid(splat["opacities"]), g.opacities.detach(), atol=1e-5)
    with pytest.raises(InputError):
        rep.export(tmp_path, "obj")


def test_state_round_trip(built) -> None:
    rep, _, _ = built
    fresh = DGGTRepresentation(DGGTConfig(size="tiny"))
    fresh.load_state_dict_resizing(rep.state_dict())
    a, b = rep.gaussians(10.1), fresh.gaussians(10.1)
    assert torch.equal(a.means, b.means) and torch.equal(a.opacities, b.opacities)
    cams = rep.cameras()[[0]]
    assert torch.allclose(a.background(cams, RENDERER), b.background(cams, RENDERER))


def test_builds_from_a_video(checkpoint: Path) -> None:
    frames = torch.rand(2, H, W, 3)
    video = Video("clip", 2, W, H, 10.0, read_frame=lambda i: frames[i])
    rep = DGGTRepresentation(DGGTConfig(checkpoint=str(checkpoint), size="tiny", width=28))
    rep.build(video, CTX)
    assert rep.num_frames == 2 and torch.allclose(rep.frame_times, torch.tensor([0.0, 0.1]))
    assert len(rep.gaussians(0.1)) > 0
    with pytest.raises(InputError, match="max_frames"):
        DGGTRepresentation(DGGTConfig(checkpoint=str(checkpoint), size="tiny", width=28, max_frames=1)).build(video, CTX)


def test_set_cameras_replaces_the_held_cameras_and_checks_them(checkpoint: Path) -> None:
    rep = DGGTRepresentation(DGGTConfig(checkpoint=str(checkpoint), size="tiny", width=28))
    rep.build(_scene(), CTX)
    cams = rep.cameras()
    moved = cams.c2w.clone()
    moved[1:, :3, 3] += torch.tensor([0.05, -0.02, 0.1])
    rep.set_cameras(cams.with_c2w(moved))
    assert torch.equal(rep.cameras().c2w, moved) and torch.equal(rep.cameras().K, cams.K)
    fresh = DGGTRepresentation(DGGTConfig(size="tiny"))
    fresh.load_state_dict_resizing(rep.state_dict())  # saved with the state
    assert torch.equal(fresh.cameras().c2w, moved)
    with pytest.raises(InputError, match="holds 3 input cameras; set_cameras got 2"):
        rep.set_cameras(cams[[0, 1]])
    with pytest.raises(InputError, match="other sizes"):
        rep.set_cameras(cams.scaled(0.5))
    with pytest.raises(InputError, match="times"):
        rep.set_cameras(dataclasses.replace(cams, times=cams.times + 1.0))


def test_recon_run_on_a_video_renders_each_frame_from_its_predicted_camera(checkpoint: Path, tmp_path: Path) -> None:
    """`recon run --data clip.mp4 --repr dggt` (tiny random weights): DGGT predicts the poses of
    the frames; evaluation renders frame i from predicted camera i at frame i's time."""
    from click.testing import CliRunner
    from loaders_support import write_video
    from PIL import Image

    from recon_cli.main import make_cli
    from recon_core.restore import restore_run
    from recon_core.registry import Registry
    from recon_core.rundir import RunDir

    pinned = tiny_dggt_checkpoint(tmp_path / "tiny.pt")
    clip = write_video(tmp_path / "clip.mp4", 3, w=32, h=24)
    out = tmp_path / "run"
    registry = Registry()
    args = ["run", "--data", str(clip), "--repr", "dggt", "--device", "cpu", "--eval", "psnr", "--out", str(out),
            "--set", f"dggt.checkpoint={pinned}", "--set", "dggt.size=tiny", "--set", "dggt.width=28"]
    result = CliRunner().invoke(make_cli(registry), args)
    assert result.exit_code == 0, result.output + (result.stderr or "")
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in doc["per_view"]] == ["frame-00000", "frame-00001", "frame-00002"]
    assert sorted(p.name for p in out.glob("point_cloud_t*.ply")) == [f"point_cloud_t{k:03d}.ply" for k in range(3)]
    restored = restore_run(registry, RunDir(out), device="cpu", evaluators=["none"])
    cams = restored.rep.cameras()
    assert len(cams) == 3 and cams.width.tolist() == [32] * 3 and cams.height.tolist() == [24] * 3
    assert torch.allclose(cams.times, restored.data.timestamps)
    assert torch.allclose(cams.K[:, 0, 0], torch.tensor(16 / math.tan(0.5)), rtol=1e-5)
    assert float((cams.c2w[1:] - cams.c2w[0]).abs().max()) > 1e-3, "the frames got different predicted poses"
    for i in range(3):
        with torch.no_grad():
            expected = restored.renderer.render(restored.rep, cams[[i]]).rgb[0].clamp(0, 1)
        png = torch.from_numpy(np.asarray(Image.open(out / "renders" / f"frame-{i:05d}.png"), dtype=np.float32) / 255)
        assert float((png - expected).abs().max()) <= 0.5 / 255 + 1e-4, i
        if i:  # and not from frame 0's camera
            with torch.no_grad():
                other = restored.renderer.render(restored.rep, dataclasses.replace(cams[[0]], times=cams.times[[i]])).rgb[0]
            assert float((png - other.clamp(0, 1)).abs().max()) > 4 / 255  # 8x the tolerance above


def test_network_resolution_is_where_views_are_rendered_and_scored(checkpoint: Path) -> None:
    """eval_resolution=auto (init=network) → DGGT's input size: 30x20 at width 28 → 28x14 (round(20·28/30/14)·14)."""
    scene = _scene()
    source_image = scene.views[0].image.clone()
    rep = DGGTRepresentation(DGGTConfig(checkpoint=str(checkpoint), size="tiny", width=28))
    rep.build(scene, CTX)
    assert rep.network_resolution() and rep.cameras().width.tolist() == [28] * 3 and rep.cameras().height.tolist() == [14] * 3
    for view in scene.views:  # inputs and the test view alike
        assert (view.width, view.height) == (28, 14)
        assert view.image.shape == (14, 28, 3)
        assert view.split == "test" or (view.sky_mask.shape == (14, 28) and view.sky_mask[:2].all())
    from recon_plugins.dggt.preprocess import plan_resize, resize_images

    assert torch.allclose(scene.views[0].image, resize_images(source_image[None], plan_resize(W, H, 28, 14))[0].permute(1, 2, 0))
    src = _scene()
    DGGTRepresentation(DGGTConfig(checkpoint=str(checkpoint), size="tiny", width=28, eval_resolution="source")).build(src, CTX)
    assert all((v.width, v.height) == (W, H) for v in src.views)
