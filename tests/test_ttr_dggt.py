"""TTR on the dggt representation (init=fit, no weights): dynamic rendering and its own cameras."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from recon_core import Bounds, Cameras, RunContext, Scene, View
from recon_plugins.gaussians import TorchGaussianRenderer
from recon_plugins.ttr import TestTimeRefiner, TTRConfig
from conftest import tiny_dggt_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

dggt = pytest.importorskip("recon_plugins.dggt")

H, W = 20, 30


def _build_ctx() -> RunContext:
    """What the pipeline hands ``build``: device, seed and the run's renderer (init=fit renders with it)."""
    return RunContext(device=torch.device("cpu"), seed=0, renderer=TorchGaussianRenderer(), log=lambda m: None)


def _scene() -> Scene:
    g = torch.Generator().manual_seed(3)
    K = torch.tensor([[30.0, 0, 15], [0, 30.0, 10], [0, 0, 1]])
    views = []
    for i in range(4):
        c2w = torch.eye(4)
        c2w[2, 3] = 0.3 * i
        sky = torch.zeros(H, W, dtype=torch.bool)
        sky[:4] = True
        dyn = torch.zeros(H, W, dtype=torch.bool)
        dyn[10:14, 10 + i : 16 + i] = True
        split = "test" if i == 2 else "train"
        views.append(View(f"f{i}", Cameras.create(K, c2w, W, H, times=0.1 * i), torch.rand(H, W, 3, generator=g), split,
                          sky_mask=sky, dynamic_mask=dyn, depth=torch.full((H, W), 2.0)))
    return Scene("toy", views, Bounds(torch.zeros(3), 1.0))


def test_ttr_refines_dggt_poses_and_writes_them_into_the_representation(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("RECON_WEIGHTS_DIR", str(tmp_path))
    scene = _scene()
    rep = dggt.DGGTRepresentation(dggt.DGGTConfig(init="fit", size="tiny", fit_steps=3, fit_points=300, fit_dynamic_stride=2))
    rep.build(scene, _build_ctx())
    given = rep.cameras().c2w.clone()
    times_rendered: list[float | None] = []
    original = rep._frame_gaussians

    def spy(time: float, images: Any) -> Any:  # what gaussians_for_cameras asks for each camera
        times_rendered.append(time)
        return original(time, images)

    monkeypatch.setattr(rep, "_frame_gaussians", spy)
    refiner = TestTimeRefiner(TTRConfig(steps_pose=3, steps_gs=3, lr_pose=1e-2, eval_every=1, lpips=False))
    refiner.setup(rep, scene, RunContext(device=torch.device("cpu"), seed=0, renderer=TorchGaussianRenderer(), log=lambda m: None))
    assert [v.name for v in refiner.views] == ["f0", "f1", "f3"] and [v.name for v in refiner.held] == ["f2"]
    for step in range(refiner.total_steps):
        refiner.step(step)
    report = refiner.finish()
    rounded = {round(t, 4) for t in times_rendered if t is not None}
    assert {0.0, 0.1, 0.2, 0.3} <= rounded, "each view rendered at its own time (held-out f2 included)"
    refined = rep.cameras().c2w
    assert torch.equal(refined[0], given[0]), "frame 0 is fixed"
    assert not torch.allclose(refined[1:], given[1:]), "the other poses moved"
    for i, name in enumerate(["f0", "f1", "f3"]):
        view = next(v for v in scene.views if v.name == name)
        assert torch.allclose(view.camera.c2w[0], refined[i], atol=1e-6), "scene views and representation agree"
    assert report["heldout_views"] == 1 and len(report["stages"]) == 2


def test_ttr_refines_the_poses_dggt_predicted_for_a_video(tmp_path: Any) -> None:
    """A video has no cameras: ttr pairs its frames with the representation's predicted cameras and
    hands the refined poses back through ``set_cameras``."""
    from recon_core.scene import Video

    checkpoint = tiny_dggt_checkpoint(tmp_path / "tiny.pt")
    frames = torch.rand(4, H, W, 3, generator=torch.Generator().manual_seed(1))
    video = Video("clip", 4, W, H, 10.0, read_frame=lambda i: frames[i])
    rep = dggt.DGGTRepresentation(dggt.DGGTConfig(checkpoint=str(checkpoint), size="tiny", width=28))
    rep.build(video, _build_ctx())
    given = rep.cameras().c2w.clone()
    assert torch.allclose(rep.cameras().K[:, 0, 0], torch.tensor(W / 2 / math.tan(0.5)), rtol=1e-5)
    refiner = TestTimeRefiner(TTRConfig(steps_pose=3, steps_gs=2, lr_pose=1e-2, holdout=1, eval_every=1, lpips=False))
    refiner.setup(rep, video, RunContext(device=torch.device("cpu"), seed=0, renderer=TorchGaussianRenderer(), log=lambda m: None))
    assert [v.name for v in refiner.views] + [v.name for v in refiner.held] == ["frame-00000", "frame-00001", "frame-00003", "frame-00002"]
    assert torch.equal(refiner.views[1].image, frames[1])
    for step in range(refiner.total_steps):
        refiner.step(step)
    report = refiner.finish()
    refined = rep.cameras().c2w
    assert torch.equal(refined[0], given[0]) and torch.equal(refined[2], given[2]), "frame 0 fixed, held-out frame untouched"
    assert not torch.allclose(refined[[1, 3]], given[[1, 3]]), "the other frames' poses moved"
    assert report["optimised_views"] == 3 and report["heldout_views"] == 1


def test_ttr_refuses_non_finite_cameras() -> None:
    from recon_core.errors import InputError

    scene = _scene()
    rep = dggt.DGGTRepresentation(dggt.DGGTConfig(init="fit", size="tiny", fit_steps=1, fit_points=50))
    rep.build(scene, _build_ctx())
    cams = rep.cameras()
    K = cams.K.clone()
    K[1, 0, 0] = float("inf")  # what a zero predicted field of view decodes to
    rep.set_cameras(dataclasses.replace(cams, K=K))
    with pytest.raises(InputError, match="ttr: the cameras of f1 are not finite"):
        TestTimeRefiner(TTRConfig(lpips=False)).setup(rep, scene, RunContext(device=torch.device("cpu"), seed=0,
                                                                                renderer=TorchGaussianRenderer()))


def test_ttr_on_a_video_needs_a_representation_with_one_camera_per_frame() -> None:
    from recon_core.errors import InputError
    from recon_core.scene import Video
    from recon_plugins.gaussians import GaussianSplat

    video = Video("clip", 2, W, H, 10.0, read_frame=lambda i: torch.zeros(H, W, 3))
    with pytest.raises(InputError, match="ttr needs posed views: a Scene, or a video whose representation holds one camera per frame"):
        TestTimeRefiner(TTRConfig()).setup(GaussianSplat(), video, RunContext(device=torch.device("cpu"), seed=0,
                                                                               renderer=TorchGaussianRenderer()))


def test_guard_figure_is_the_evaluated_figure_on_street(tmp_path: Any) -> None:
    """Through the pipeline (dggt init=fit, then ttr): the held-out PSNR TTR reports for its guard
    views is the full-image ``psnr`` metrics.json reports for the same (test) views, and
    ``psnr_nonsky`` sits beside it."""
    from loaders_support import STREET

    from recon_core.pipeline import Pipeline
    from recon_core.registry import Registry
    from recon_core.resolve import resolve_run
    from recon_core.rundir import RunDir

    registry = Registry()
    sets = ["dggt.init=fit", "dggt.downscale=8", "dggt.fit_steps=10", "dggt.fit_points=500", "ttr.steps_pose=2",
            "ttr.steps_gs=3", "ttr.eval_every=1", "ttr.lpips=false", "run.save_renders=false", "run.export=ply"]
    spec = resolve_run(registry, data=STREET, representation="dggt", refiners=["ttr"], evaluators=["psnr"], device="cpu",
                       seed=0, sets=sets)
    doc = Pipeline(registry, spec, RunDir.create(tmp_path / "run")).run()
    report = doc["refiners"]["ttr"]
    assert report["heldout_views"] == 4 == doc["num_views"]
    assert report["heldout_psnr"]["after"] == pytest.approx(doc["metrics"]["psnr"], abs=1e-6)
    assert "psnr_nonsky" in doc["metrics"] and doc["metrics"]["psnr_nonsky"] != pytest.approx(doc["metrics"]["psnr"], abs=1e-3)
    assert report["heldout_psnr_nonsky"]["after"] == pytest.approx(doc["metrics"]["psnr_nonsky"], abs=1e-6)
