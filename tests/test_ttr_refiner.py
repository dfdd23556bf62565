"""Tests of plugins/ttr/refiner.py on synthetic scenes rendered by our own torch-3dgs renderer."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import recon_plugins.ttr as ttr_module
from recon_core.cameras import Cameras
from recon_core.components import Representation, RunContext
from recon_core.errors import CombinationError
from recon_core.registry import Registry
from recon_core.scene import Bounds, Scene, View
from recon_plugins.gaussians import GaussianSplat, GaussianSplatConfig, TorchGaussianRenderer
from recon_plugins.ttr import TestTimeRefiner, TTRConfig, masked_photometric_loss
from recon_plugins.ttr.poses import pose_errors, se3_exp

pytestmark = pytest.mark.usefixtures("one_thread")

W, H, F = 96, 72, 84.0


def _gaussians(seed: int = 0, n: int = 700) -> dict[str, torch.Tensor]:
    """Opaque coloured blobs filling the view frustum from 1.5 to 10 m: strong parallax makes
    rotation and translation distinguishable (a shallow scene confuses a yaw with a sideways step)."""
    g = torch.Generator().manual_seed(seed)
    depth = 1.5 + 8.5 * torch.rand(n, generator=g) ** 1.5
    u, v = (torch.rand(2, n, generator=g) * 2 - 1) * torch.tensor([[0.7], [0.55]])
    means = torch.stack([u * depth, v * depth, depth], dim=1)
    rgb = torch.rand(n, 3, generator=g) * 0.9 + 0.05
    return {
        "means": means,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
        "scales": torch.log((torch.rand(n, 3, generator=g) * 0.02 + 0.025) * depth[:, None]),
        "opacities": torch.full((n,), 2.0),
        "sh0": ((rgb - 0.5) / 0.28209479177387814)[:, None, :],
        "shN": torch.zeros(n, 0, 3),
    }


def _splat(splats: dict[str, torch.Tensor], cls: type = GaussianSplat) -> GaussianSplat:
    """A degree-0 3dgs-style representation holding ``splats``."""
    rep = cls(GaussianSplatConfig(sh_degree=0))
    rep.set_splats(splats)
    return rep


def _true_c2w(n: int) -> torch.Tensor:
    """Cameras on a short sideways track looking down +z (OpenCV)."""
    c2w = torch.eye(4).repeat(n, 1, 1)
    for i in range(n):
        c2w[i, 0, 3] = -0.6 + 1.2 * i / max(n - 1, 1)
        c2w[i, 2, 3] = 0.1 * i
    return c2w


def make_scene(
    n: int = 5,
    test: tuple[int, ...] = (2,),
    rot_deg: float = 1.5,
    trans_m: float = 0.05,
    sky_rows: int = 0,
    seed: int = 0,
    train_image_fn: Any = None,
) -> tuple[Scene, GaussianSplat, torch.Tensor]:
    """(scene with perturbed training poses, the true Gaussians as a 3dgs representation, true c2w [n, 4, 4]).

    Images are renders at the true poses. Training views other than the first get a pose
    perturbation of ``rot_deg`` degrees about a random axis and ``trans_m`` metres; test views
    keep their true poses. ``sky_rows`` top rows are marked sky; ``train_image_fn`` may alter
    training images (e.g. to make them inconsistent with the held-out view).
    """
    rep = _splat(_gaussians(seed))
    K = torch.tensor([[F, 0.0, W / 2], [0.0, F, H / 2], [0.0, 0.0, 1.0]])
    truth = _true_c2w(n)
    with torch.no_grad():
        images = TorchGaussianRenderer().render(rep, Cameras.create(K, truth, W, H), background=BLACK).rgb.clamp(0, 1)
    g = torch.Generator().manual_seed(100 + seed)
    views = []
    for i in range(n):
        split = "test" if i in test else "train"
        c2w = truth[i].clone()
        if split == "train" and i > 0:
            axis = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0)
            shift = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0) * trans_m
            delta = se3_exp(torch.cat([axis * math.radians(rot_deg), shift])[None].double())[0].float()
            c2w = torch.linalg.inv(delta @ torch.linalg.inv(c2w))
        image = images[i]
        if split == "train" and train_image_fn is not None:
            image = train_image_fn(image)
        sky = torch.zeros(H, W, dtype=torch.bool)
        sky[:sky_rows] = True
        views.append(View(f"{i:04d}", Cameras.create(K, c2w, W, H, times=0.1 * i), image, split, sky_mask=sky))
    scene = Scene("synthetic", views, Bounds.from_cameras(Cameras.cat([v.camera for v in views])))
    return scene, rep, truth


BLACK = torch.zeros(3)
"""The run's background (``run.background``): the synthetic scenes are rendered on black."""


def _create(kind: str, name: str):
    """The run's ``ctx.create``: ttr makes its SSIM / LPIPS evaluators through it."""
    import recon_plugins.metrics as metrics

    return Registry(entry_points=[], modules=[("metrics", metrics)]).create(kind, name)


def _ctx(seed: int = 0) -> RunContext:
    return RunContext(device=torch.device("cpu"), seed=seed, renderer=TorchGaussianRenderer(), background=BLACK,
                      create=_create, log=lambda m: None)


def _run(refiner: TestTimeRefiner, rep: Any, scene: Scene, seed: int = 0) -> dict[str, Any]:
    refiner.setup(rep, scene, _ctx(seed))
    for step in range(refiner.total_steps):
        refiner.step(step)
    return refiner.finish()


def _write_true_poses(path: Path, scene: Scene, truth: torch.Tensor) -> Path:
    frames = [{"file_path": f"images/{v.name}.png", "c2w": truth[i].tolist()} for i, v in enumerate(scene.views)]
    path.write_text(json.dumps({"K": scene.views[0].camera.K[0].tolist(), "w": W, "h": H, "frames": frames}))
    return path


# ------------------------------------------------------------------------------------- poses


def test_recovers_a_small_pose_perturbation_and_keeps_frame_0_fixed(tmp_path: Path) -> None:
    scene, rep, truth = make_scene(n=4)
    train_idx = [0, 1, 3]
    frame0 = scene.views[0].camera.c2w.clone()
    before_rot, before_trans = pose_errors(torch.cat([scene.views[i].camera.c2w for i in train_idx]).double(), truth[train_idx].double())
    true_file = _write_true_poses(tmp_path / "cameras_opencv.json", scene, truth)
    refiner = TestTimeRefiner(TTRConfig(refine_gs=False, steps_pose=60, lr_pose=5e-3, lr_pose_translation=5e-3, lr_final=0.2, true_poses=str(true_file), lpips=False))
    report = _run(refiner, rep, scene)
    after_rot, after_trans = pose_errors(torch.cat([scene.views[i].camera.c2w for i in train_idx]).double(), truth[train_idx].double())
    # written back into the scene's views; frame 0 untouched, bit for bit
    assert torch.equal(scene.views[0].camera.c2w, frame0)
    assert float(after_rot[1:].mean()) * 5 <= float(before_rot[1:].mean()), (before_rot, after_rot)
    assert float(after_trans[1:].mean()) < float(before_trans[1:].mean())
    # the report measures the same thing from the true-poses file
    pe = report["pose_error"]
    assert pe["before"]["rotation_deg"] == pytest.approx(float(before_rot.mean()), rel=1e-4)
    assert pe["after"]["rotation_deg"] == pytest.approx(float(after_rot.mean()), rel=1e-3)
    assert report["train_psnr"]["after"] > report["train_psnr"]["before"] + 3.0
    # SSIM comes from the run's evaluator (ctx.create("evaluator", "ssim")) and improves too
    stage = report["stages"][0]
    assert stage["after"]["train"]["ssim"] > stage["before"]["train"]["ssim"]
    # the test view was never optimised: its pose is the given one
    assert torch.equal(scene.views[2].camera.c2w, truth[2:3])
    assert report["stages"][0]["kept_step"] == 60  # the pose stage is not guarded: it keeps its last step


# --------------------------------------------------------------------------------------- sky


def test_sky_pixels_do_not_contribute_to_the_loss() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 20, 24, 3, generator=g, requires_grad=True)
    target = torch.rand(2, 20, 24, 3, generator=g)
    sky = torch.zeros(2, 20, 24, dtype=torch.bool)
    sky[:, :7] = True
    sky[1, :, 20:] = True
    loss = masked_photometric_loss(pred, target, ~sky)
    (grad,) = torch.autograd.grad(loss, pred)
    assert float(grad[sky].abs().max()) == 0.0 and float(grad[~sky].abs().max()) > 0.0
    other_pred = torch.where(sky[..., None], torch.rand(pred.shape, generator=g), pred.detach())
    other_target = torch.where(sky[..., None], torch.rand(target.shape, generator=g), target)
    assert float(masked_photometric_loss(other_pred, other_target, ~sky)) == pytest.approx(float(loss.detach()), abs=1e-7)
    assert float(masked_photometric_loss(pred.detach(), other_target, torch.ones_like(sky))) != pytest.approx(float(loss.detach()), abs=1e-4)


def test_refinement_ignores_what_the_sky_pixels_show() -> None:
    """Two scenes that differ only in their sky pixels refine to the same parameters."""
    results = []
    for garbage in (False, True):
        fn = (lambda im: torch.cat([torch.rand(12, W, 3, generator=torch.Generator().manual_seed(3)), im[12:]])) if garbage else None
        scene, rep, _ = make_scene(n=3, test=(), sky_rows=12, train_image_fn=fn)
        refiner = TestTimeRefiner(TTRConfig(steps_pose=2, steps_gs=2, lr_pose=3e-3, lpips=False))
        _run(refiner, rep, scene)
        results.append((refiner.corrected_c2w().detach(), rep.splats["sh0"].detach().clone(), rep.splats["opacities"].detach().clone()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- held-out guard


def _tinted(image: torch.Tensor) -> torch.Tensor:
    """A training image whose colours disagree with the held-out view's (a strong colour cast)."""
    return (image * torch.tensor([1.0, 0.45, 0.45]) + torch.tensor([0.25, 0.0, 0.0])).clamp(0, 1)


def test_heldout_guard_keeps_the_best_parameters_when_heldout_psnr_falls() -> None:
    scene, rep, _ = make_scene(rot_deg=0.0, trans_m=0.0, train_image_fn=_tinted)
    start = {k: v.detach().clone() for k, v in rep.state_dict().items()}
    refiner = TestTimeRefiner(TTRConfig(refine_pose=False, steps_gs=12, eval_every=3, lr_color=2e-2, lpips=False))
    report = _run(refiner, rep, scene)
    stage = report["stages"][0]
    # fitting the tinted training views raises train PSNR but lowers held-out PSNR at every check
    heldout_scores = [score for stage, _, score in refiner.history if stage == "attributes"]
    assert max(heldout_scores[1:]) < heldout_scores[0]
    assert stage["kept_step"] == 0
    for k, v in rep.state_dict().items():  # the guard restored the initial parameters
        assert torch.equal(v, start[k]), k
    assert report["heldout_psnr"]["after"] == pytest.approx(report["heldout_psnr"]["before"], abs=1e-6)


def test_heldout_guard_stops_early_after_patience_checks() -> None:
    scene, rep, _ = make_scene(rot_deg=0.0, trans_m=0.0, train_image_fn=_tinted)
    refiner = TestTimeRefiner(TTRConfig(refine_pose=False, steps_gs=30, eval_every=2, patience=2, lr_color=2e-2, lpips=False))
    refiner.setup(rep, scene, _ctx())
    logs = [refiner.step(s) for s in range(refiner.total_steps)]
    stage = refiner.finish()["stages"][0]
    assert stage["stopped_early"] and stage["steps_run"] == 4
    assert all(entry == {"skipped": 1.0} for entry in logs[4:])


def test_without_heldout_views_the_last_parameters_are_kept() -> None:
    scene, rep, _ = make_scene(n=3, test=(), rot_deg=0.0, trans_m=0.0, train_image_fn=_tinted)
    start = rep.splats["sh0"].detach().clone()
    report = _run(TestTimeRefiner(TTRConfig(refine_pose=False, steps_gs=3, lr_color=2e-2, lpips=False)), rep, scene)
    assert report["heldout_views"] == 0 and not torch.equal(rep.splats["sh0"], start)


def test_holdout_option_takes_training_frames_out() -> None:
    scene, rep, _ = make_scene(n=6, test=())
    refiner = TestTimeRefiner(TTRConfig(holdout=2, lpips=False))
    refiner.setup(rep, scene, _ctx())
    assert [v.name for v in refiner.views][0] == "0000"
    assert len(refiner.views) == 4 and len(refiner.held) == 2 and "0000" not in {v.name for v in refiner.held}


# ------------------------------------------------------------------------------------ resume


def test_interrupt_and_resume_is_bit_identical() -> None:
    cfg = TTRConfig(steps_pose=4, steps_gs=4, lr_pose=3e-3, refine_xyz=True, refine_scale=True, views_per_step=2,
                    eval_every=2, lpips=False)
    scene, rep, _ = make_scene(n=4, test=(3,))
    full = TestTimeRefiner(cfg)
    report_full = _run(full, rep, scene)

    scene2, rep2, _ = make_scene(n=4, test=(3,))
    first = TestTimeRefiner(cfg)
    first.setup(rep2, scene2, _ctx())
    for s in range(5):  # stop inside stage 2
        first.step(s)
    saved_rep = copy.deepcopy(rep2.state_dict())
    saved = first.state_dict()

    scene3, rep3, _ = make_scene(n=4, test=(3,))
    rep3.load_state_dict_resizing(saved_rep)
    resumed = TestTimeRefiner(cfg)
    resumed.setup(rep3, scene3, _ctx())
    resumed.load_state_dict(saved)
    for s in range(5, resumed.total_steps):
        resumed.step(s)
    report_resumed = resumed.finish()
    for k, v in rep.state_dict().items():
        assert torch.equal(v, rep3.state_dict()[k]), k
    assert torch.equal(full.corrected_c2w(), resumed.corrected_c2w())
    assert report_full["stages"] == report_resumed["stages"]


def test_refine_stage_driver_interrupts_and_resumes_ttr_bit_identically() -> None:
    """Through recon_core.refine.run_refiners: Ctrl-C mid-stage, checkpoint, resume."""
    from recon_core.errors import Interrupted
    from recon_core.refine import StopFlag, run_refiners

    cfg = TTRConfig(steps_pose=3, steps_gs=3, lr_pose=3e-3, refine_xyz=True, views_per_step=2, eval_every=2, lpips=False)
    saved: dict[str, Any] = {}

    def save(state: dict[str, Any], label: str) -> Path:
        saved[label] = copy.deepcopy(state)
        return Path(label)

    scene, rep, _ = make_scene(n=4, test=(3,))
    full = run_refiners(rep, scene, [("ttr", TestTimeRefiner(cfg))], _ctx(), save=save, checkpoint_every=0, log_every=0)

    scene2, rep2, _ = make_scene(n=4, test=(3,))
    stop = StopFlag()
    with pytest.raises(Interrupted):
        run_refiners(rep2, scene2, [("ttr", TestTimeRefiner(cfg))], _ctx(), save=save, checkpoint_every=0, log_every=4,
                     stop=stop, log=lambda m: stop.set() if "step 4/6" in m else None)
    state = saved["refiner0-step4"]
    scene3, rep3, _ = make_scene(n=4, test=(3,))
    rep3.load_state_dict_resizing(state["representation"])
    resumed = run_refiners(rep3, scene3, [("ttr", TestTimeRefiner(cfg))], _ctx(), save=save, checkpoint_every=0, resume=state)
    for k, v in rep.state_dict().items():
        assert torch.equal(v, rep3.state_dict()[k]), k
    assert full.reports == resumed.reports
    assert all(torch.equal(a.camera.c2w, b.camera.c2w) for a, b in zip(scene.views, scene3.views))


# ---------------------------------------------------------------------- protocol and plugin


class _PosedSplat(GaussianSplat):
    """A 3dgs representation that holds its own (refinable) cameras, like dggt."""

    name = "posed-splat"
    provides = frozenset({"gaussians-3d", "cameras"})

    def cameras(self) -> Cameras:
        return self._cams

    def set_cameras(self, cameras: Cameras) -> None:
        self._cams = cameras


def test_starts_from_and_writes_back_the_representations_cameras() -> None:
    scene, base, truth = make_scene()
    rep = _splat(base.splat_values(), _PosedSplat)
    train = [v for v in scene.views if v.split == "train"]
    # the representation's poses are the true ones; the scene's are perturbed
    rep._cams = Cameras.cat([v.camera for v in train]).with_c2w(truth[[0, 1, 3, 4]])
    refiner = TestTimeRefiner(TTRConfig(refine_gs=False, steps_pose=1, lr_pose=1e-9, lpips=False))
    report = _run(refiner, rep, scene)
    assert report["train_psnr"]["before"] > 40  # rendered from the representation's (true) poses
    assert torch.allclose(rep._cams.c2w, truth[[0, 1, 3, 4]], atol=1e-5)
    assert torch.allclose(scene.views[1].camera.c2w[0], truth[1], atol=1e-5)


def test_registered_as_a_refiner_requiring_gaussians() -> None:
    registry = Registry(entry_points=[], modules=[("ttr", ttr_module)])
    cls = registry.get("refiner", "ttr")
    assert cls is TestTimeRefiner and cls.requires == frozenset({"gaussians-3d"})


def test_representation_without_attribute_parameters_is_refused() -> None:
    scene, rep, _ = make_scene(n=3)

    class Bare(GaussianSplat):
        refinable = frozenset({"means"})

    bare = _splat(rep.splat_values(), Bare)
    assert not bare.splats["opacities"].requires_grad
    with pytest.raises(CombinationError, match="opacities"):
        TestTimeRefiner(TTRConfig()).setup(bare, scene, _ctx())
    TestTimeRefiner(TTRConfig(refine_gs=False)).setup(bare, scene, _ctx())  # poses alone need no attributes


# ------------------------------------------------------------------- through the pipeline


def _write_nerfstudio_scene(root: Path, scene: Scene, rep: GaussianSplat) -> Path:
    """``scene`` as a nerfstudio folder (PNG images, OpenGL poses, splits) plus ``init.ply`` holding ``rep``."""
    from recon_core.io import write_png
    from recon_core.ply import write_splat_ply

    root.mkdir(parents=True)
    frames = []
    for v in scene.views:
        write_png(root / f"{v.name}.png", v.image)
        gl = v.camera.c2w[0].double() @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
        frames.append({"file_path": f"{v.name}.png", "transform_matrix": gl.tolist(), "split": v.split})
    meta = {"camera_model": "PINHOLE", "fl_x": F, "fl_y": F, "cx": W / 2, "cy": H / 2, "w": W, "h": H, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    write_splat_ply(root / "init.ply", rep.splat_values())
    return root


def test_pipeline_resume_after_ttr_keeps_the_refined_poses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ttr`` then ``3dgs-train`` on a 3dgs run, interrupted (real SIGINT) inside 3dgs-train and resumed:
    the refined poses come back from the checkpoint, so poses, parameters and metrics equal an
    uninterrupted run's, and ``restore_run`` (recon eval/render) sees the refined poses too."""
    import signal

    from recon_core.errors import Interrupted
    from recon_core.pipeline import Pipeline
    from recon_core.resolve import resolve_run
    from recon_core.restore import restore_run
    from recon_core.rundir import RunDir
    from recon_plugins.gaussians.trainer import GaussianTrainer

    scene, rep, truth = make_scene(n=4, test=(3,), rot_deg=1.0, trans_m=0.03)
    data = _write_nerfstudio_scene(tmp_path / "data", scene, rep)
    registry = Registry()
    sets = ["3dgs.init=ply", f"3dgs.ply_path={data / 'init.ply'}", "3dgs.sh_degree=0", "ttr.steps_pose=4", "ttr.steps_gs=0",
            "ttr.lr_pose=3e-3", "ttr.lpips=false", "3dgs-train.steps=4", "3dgs-train.densify=false",
            "run.background=0,0,0", "run.checkpoint_every=2", "run.save_renders=false", "run.export=ply"]

    def run(out: Path, resume: bool = False) -> dict[str, Any]:
        if resume:
            run_dir = RunDir.open(out)
            spec = resolve_run(registry, base=run_dir.read_config())
        else:
            spec = resolve_run(registry, data=data, representation="3dgs", refiners=["ttr,3dgs-train"], evaluators=["psnr"],
                               device="cpu", seed=2, sets=sets)
            run_dir = RunDir.create(out)
        return Pipeline(registry, spec, run_dir).run(resume=resume)

    reference_doc = run(tmp_path / "ref")
    original = GaussianTrainer.step
    calls = {"n": 0}

    def step(self: GaussianTrainer, i: int) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)  # the stop flag is set; the loop saves after this step
        return original(self, i)

    with monkeypatch.context() as m:
        m.setattr(GaussianTrainer, "step", step)
        with pytest.raises(Interrupted):
            run(tmp_path / "cut")
    cut = RunDir(tmp_path / "cut")
    assert cut.load_checkpoint()["position"] == {"refiner": 1, "step": 2}  # after ttr, inside 3dgs-train
    resumed_doc = run(tmp_path / "cut", resume=True)

    ref, got = RunDir(tmp_path / "ref").load_checkpoint(), cut.load_checkpoint()
    assert ref["cameras"]["names"] == got["cameras"]["names"] == ["0000", "0001", "0002", "0003"]
    assert torch.equal(ref["cameras"]["c2w"], got["cameras"]["c2w"])
    for key, value in ref["representation"].items():
        assert torch.equal(value, got["representation"][key]), key
    assert resumed_doc["metrics"] == reference_doc["metrics"]
    assert resumed_doc["refiners"] == reference_doc["refiners"]
    # ttr really moved the training poses (frame 0 and the test view keep the given ones) ...
    loaded = torch.stack([v.camera.c2w[0] for v in _loaded_views(registry, data)])
    moved = (got["cameras"]["c2w"] - loaded).abs().amax(dim=(1, 2))
    assert float(moved[0]) == 0.0 and float(moved[3]) == 0.0 and float(moved[1:3].min()) > 1e-5
    # ... and a restored run (recon eval / render) renders from the refined poses
    restored = restore_run(registry, cut, device="cpu", evaluators=["none"])
    assert torch.equal(torch.stack([v.camera.c2w[0] for v in restored.data.views]), got["cameras"]["c2w"])


def _loaded_views(registry: Registry, data: Path) -> list[View]:
    """The views as the loader gives them (the poses before any refinement)."""
    return registry.create("loader", "nerfstudio").load(data).views


class _SplatlessGaussians(Representation):
    """A third-party Gaussian representation that renders but does not hold splats."""

    name = "test-splatless"
    provides = frozenset({"gaussians-3d"})

    def __init__(self, inner: GaussianSplat) -> None:
        super().__init__()
        self.inner = inner

    def gaussians(self, time: float | None = None):  # noqa: ANN201
        return self.inner.gaussians(time)


def test_poses_only_on_a_representation_without_splats() -> None:
    """ttr.refine_gs=false needs nothing but rendering: it works on a representation without splats;
    refining its attributes is refused with the way out."""
    scene, rep, truth = make_scene(n=4)
    other = _SplatlessGaussians(rep)
    before = pose_errors(torch.cat([scene.views[i].camera.c2w for i in (1, 3)]).double(), truth[[1, 3]].double())[0]
    _run(TestTimeRefiner(TTRConfig(refine_gs=False, steps_pose=40, lr_pose=5e-3, lr_pose_translation=5e-3, lpips=False)), other, scene)
    after = pose_errors(torch.cat([scene.views[i].camera.c2w for i in (1, 3)]).double(), truth[[1, 3]].double())[0]
    assert float(after.mean()) < float(before.mean())
    with pytest.raises(CombinationError, match="refine_gs=false"):
        TestTimeRefiner(TTRConfig(lpips=False)).setup(other, scene, _ctx())


def test_a_time_budget_moves_the_stages_on() -> None:
    """With a budget running short (run.budget), the schedule follows the fraction used: the pose
    stage ends (keeping its result, with a report) when the budget is past its share of the steps,
    and a stop in the middle of the last stage still reports it."""
    from recon_core.budget import Budget, BudgetClock

    scene, rep, _ = make_scene(n=4, test=(2,), rot_deg=0.5, trans_m=0.02)
    refiner = TestTimeRefiner(TTRConfig(steps_pose=10, steps_gs=10, eval_every=2, lpips=False))
    ctx = _ctx()
    refiner.setup(rep, scene, ctx)
    clock = BudgetClock(Budget(100.0, "cpu"), 100.0, used=0.0)
    ctx.budget = clock
    for step in range(2):
        refiner.step(step)  # fraction 0: the steps
    clock._before = 60.0  # 60 % of the budget spent after 2 steps
    refiner.step(2)  # schedule step 12: attributes stage, local step 2
    assert refiner.stages[refiner.stage_index] == "attributes" and len(refiner.reports) == 1
    assert refiner.reports[0]["stage"] == "pose" and refiner.reports[0]["steps_run"] == 2
    report = refiner.finish()  # the loop ends the refiner here (budget): the open stage is closed
    assert [s["stage"] for s in report["stages"]] == ["pose", "attributes"]
    assert report["stages"][1]["steps_run"] == 3
