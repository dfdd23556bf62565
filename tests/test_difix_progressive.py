"""The ``difix3d+`` loop: camera shifting, the masked/weighted loss, the ``nearest-gt`` oracle fixer,
distillation improving held-out views, and bit-identical resume (pseudo-views included).

Scenes are tiny random Gaussian scenes rendered by ``torch-3dgs`` (no weights, no diffusers).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import look_at_torch

from recon_core.cameras import Cameras
from recon_core.checkpoint import load_checkpoint, save_checkpoint
from recon_core.components import RunContext
from recon_core.errors import CombinationError, InputError
from recon_core.imageops import psnr
from recon_core.scene import Bounds, Scene, View
from recon_plugins.difix.camera_path import nearest_assignments, pose_distance, shift_poses
from recon_plugins.difix.known import NearestGTConfig, NearestGTFixer
from recon_core.optim import OptimConfig
from recon_core.strategies import StrategyConfig
from recon_plugins.difix.progressive import (
    PAPER_FIX_STEPS,
    Difix3DPlus,
    Difix3DPlusConfig,
    fix_schedule,
    weighted_photometric_loss,
)
from recon_plugins.gaussians.renderers import TorchGaussianRenderer
from recon_plugins.gaussians.representation import GaussianSplat, GaussianSplatConfig
from recon_plugins.gaussians.trainer import GaussianTrainConfig, GaussianTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

BLACK = [0.0, 0.0, 0.0]
"""The run's background (``run.background``) and nearest-gt's."""
FAST = {"lr_sh0": 0.05, "lr_opacities": 0.1, "lr_means": 1e-3, "lr_scales": 0.02, "lr_quats": 0.01,
        "lr_means_final": 1.0, "sh_degree_interval": 1000}
"""Learning rates of a short CPU run (as in test_gaussians_trainer), shared by both refiners."""


def rot_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def pose(R: torch.Tensor, t: list[float]) -> torch.Tensor:
    c2w = torch.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R, torch.tensor(t)
    return c2w


# ------------------------------------------------------------------------------ camera path


def test_shift_moves_by_the_distance_then_snaps_to_the_target() -> None:
    start = pose(torch.eye(3), [0.0, 0.0, 0.0])
    target = pose(rot_z(90.0), [2.0, 0.0, 0.0])
    far = pose(torch.eye(3), [9.0, 9.0, 9.0])  # never the nearest
    current = torch.stack([far, start])
    xs, angles = [], []
    for _ in range(4):
        current = shift_poses(current, target[None], 0.5)
        xs.append(float(current[0, 0, 3]))
        angles.append(math.degrees(float(pose_distance(current[0], start) - current[0, :3, 3].norm())))
    # 0.5 then 1.0 along the line; at 1.5 the target is within 0.5, so the pose snaps onto it
    assert xs == pytest.approx([0.5, 1.0, 2.0, 2.0], abs=1e-6)
    assert angles[0] == pytest.approx(90 * 0.5 / 2.0, abs=1e-3)  # rotation slerped by distance / |t2 - t1|
    assert angles[1] == pytest.approx(22.5 + 67.5 * 0.5 / 1.5, abs=1e-3)
    assert torch.allclose(current[0], target, atol=1e-6)
    assert float(current[0, :3, 1].norm()) == pytest.approx(1.0) and torch.allclose(current[0, 1:3, 3], torch.zeros(2))


def test_shift_snaps_when_within_the_pose_distance_and_picks_the_nearest() -> None:
    targets = torch.stack([pose(rot_z(10.0), [0.1, 0.0, 0.0]), pose(torch.eye(3), [10.0, 0.0, 0.0])])
    current = torch.stack([pose(torch.eye(3), [0.0, 0.0, 0.0]), pose(torch.eye(3), [6.0, 0.0, 0.0])])
    assert nearest_assignments(current, targets).tolist() == [0, 1]
    out = shift_poses(current, targets, 0.5)
    assert torch.allclose(out[0], targets[0], atol=1e-6)  # 0.1 + 10° = 0.27 < 0.5: snapped
    assert out[1, 0, 3] == pytest.approx(6.5) and torch.allclose(out[1, :3, :3], torch.eye(3), atol=1e-6)
    with pytest.raises(ValueError):
        shift_poses(current, targets, 0.0)


# ------------------------------------------------------------------------------ loss, fixer


def test_masked_loss_ignores_pixels_outside_the_mask() -> None:
    pred = torch.rand(16, 16, 3, requires_grad=True)
    target = torch.rand(16, 16, 3)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:12, 4:12] = True
    loss, _ = weighted_photometric_loss(pred, target, 0.2, 0.3, mask)
    loss.backward()
    assert pred.grad[~mask].abs().max() == 0 and pred.grad[mask].abs().max() > 0
    full, _ = weighted_photometric_loss(pred.detach(), target, 0.2, 1.0)
    assert float(weighted_photometric_loss(pred.detach(), target, 0.2, 0.3)[0]) == pytest.approx(0.3 * float(full))


def splat(values: dict[str, torch.Tensor]) -> GaussianSplat:
    """A 3dgs representation holding ``values`` (copied)."""
    rep = GaussianSplat(GaussianSplatConfig(sh_degree=1))
    rep.set_splats(values)
    return rep


def ground_truth(n: int = 60, seed: int = 0) -> GaussianSplat:
    g = torch.Generator().manual_seed(seed)
    return splat({
        "means": torch.randn(n, 3, generator=g) * 0.3, "quats": torch.randn(n, 4, generator=g),
        "scales": torch.log(torch.rand(n, 3, generator=g) * 0.08 + 0.04), "opacities": torch.full((n,), 2.0),
        "sh0": torch.randn(n, 1, 3, generator=g), "shN": torch.zeros(n, 3, 3)})


def scene_with_held_out(renderer: TorchGaussianRenderer, size: int = 16) -> tuple[Scene, GaussianSplat]:
    """Train cameras on one half of a ring, test cameras on the other half (black background)."""
    gt = ground_truth()
    K = torch.tensor([[1.2 * size, 0, size / 2], [0, 1.2 * size, size / 2], [0, 0, 1]])
    views = []
    for i, deg in enumerate([0, 40, 80, 120, 200, 260, 320]):
        a = math.radians(deg)
        cam = Cameras.create(K, look_at_torch(torch.tensor([2.5 * math.cos(a), 2.5 * math.sin(a), 0.6])), size, size)
        with torch.no_grad():
            image = renderer.render(gt, cam, background=torch.zeros(3)).rgb[0].clamp(0, 1)
        views.append(View(f"v{i}", cam, image, "train" if deg <= 120 else "test"))
    return Scene("held-out", views, Bounds.from_cameras(Cameras.cat([v.camera for v in views]))), gt


def start_from(gt: GaussianSplat, seed: int = 1) -> GaussianSplat:
    g = torch.Generator().manual_seed(seed)
    raw = gt.splat_values()
    return splat({"means": raw["means"] + 0.05 * torch.randn(raw["means"].shape, generator=g), "quats": raw["quats"],
                  "scales": raw["scales"] + 0.3, "opacities": torch.zeros_like(raw["opacities"]),
                  "sh0": torch.zeros_like(raw["sh0"]), "shN": raw["shN"]})


def held_out_psnr(rep: GaussianSplat, scene: Scene, renderer: TorchGaussianRenderer) -> float:
    views = scene.split("test")
    with torch.no_grad():
        out = renderer.render(rep, scene.cameras(views), background=torch.zeros(3)).rgb
    return float(torch.stack([psnr(out[i].clamp(0, 1), v.image) for i, v in enumerate(views)]).mean())


@pytest.fixture(scope="module")
def renderer() -> TorchGaussianRenderer:
    return TorchGaussianRenderer()


def test_nearest_gt_returns_the_nearest_pooled_ground_truth(renderer) -> None:
    scene, _ = scene_with_held_out(renderer)
    fixer = NearestGTFixer(NearestGTConfig(background=BLACK))
    test = scene.split("test")
    fixed = fixer.fix(torch.zeros(len(test), 16, 16, 3), views=test)  # no pool: the views' own images
    assert torch.equal(fixed, torch.stack([v.image for v in test]))
    fixer.set_pool(scene.split("train"))
    novel = View("n", test[0].camera.with_c2w(scene.views[1].camera.c2w.clone()), None)  # at train view v1's pose
    assert torch.equal(fixer.fix(torch.zeros(1, 16, 16, 3), views=[novel])[0], scene.views[1].image)
    with pytest.raises(InputError, match="needs the 1 views"):
        fixer.fix(torch.zeros(1, 16, 16, 3))


def test_difix3d_plus_needs_a_fixer(renderer) -> None:
    scene, gt = scene_with_held_out(renderer)
    with pytest.raises(CombinationError, match="needs a fixer"):
        Difix3DPlus().setup(start_from(gt), scene, RunContext(device=torch.device("cpu"), seed=0, renderer=renderer))


def test_recon_run_refuses_difix3d_plus_without_a_fixer_up_front(tmp_path: Path) -> None:
    """difix3d+ requires "fixer": `recon run` exits 2 naming --fixer before creating the run folder."""
    from click.testing import CliRunner

    import recon_plugins.difix as plugin
    from recon_cli.main import make_cli
    from recon_core.registry import Registry

    data = tmp_path / "data"
    data.mkdir()
    (data / "transforms.json").write_text('{"frames": []}')  # enough to pick a loader; nothing is loaded
    registry = Registry()
    if not any(r.name == "difix3d+" for r in registry.rows()):
        registry = Registry(modules=[("difix", plugin)])
    assert registry.get("refiner", "difix3d+").requires == {"gaussians-3d", "fixer"}
    out = tmp_path / "run"
    result = CliRunner().invoke(make_cli(registry), ["run", "--data", str(data), "--repr", "3dgs", "--refiner",
                                                     "3dgs-train,difix3d+", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "refiner difix3d+ needs a fixer: add --fixer NAME (installed fixers: " in result.stderr
    assert "nearest-gt" in result.stderr and not out.exists()


# ------------------------------------------------------------------------------------ loop


def _run(refiner, rep, scene, renderer, fixer, steps: range, seed: int = 0) -> list[dict[str, float]]:
    refiner.setup(rep, scene, RunContext(device=torch.device("cpu"), seed=seed, renderer=renderer, fixer=fixer,
                                            background=torch.tensor(BLACK), log=lambda m: None))
    return [refiner.step(s) for s in steps]


def test_distilled_pseudo_views_improve_held_out_views(renderer) -> None:
    """Oracle fixes at the test cameras (after one long shift) must lift held-out PSNR over more
    training on the real views alone, for the same number of steps."""
    scene, gt = scene_with_held_out(renderer)
    rep = start_from(gt)
    pre = GaussianTrainer(GaussianTrainConfig(steps=40, densify=False, **FAST))
    _run(pre, rep, scene, renderer, None, range(40))
    before = held_out_psnr(rep, scene, renderer)

    baseline = splat(rep.splat_values())
    more = GaussianTrainer(GaussianTrainConfig(steps=60, densify=False, **FAST))
    _run(more, baseline, scene, renderer, None, range(60))

    fixer = NearestGTFixer(NearestGTConfig(background=BLACK))
    fixer.set_pool(scene.views)
    cfg = Difix3DPlusConfig(steps=60, fix_every=30, shift_distance=5.0, novel_prob=0.5, **FAST)
    assert isinstance(cfg, OptimConfig) and cfg.densify is None and cfg.schedule == "after"
    refiner = Difix3DPlus(cfg)
    logs = _run(refiner, rep, scene, renderer, fixer, range(60))
    assert refiner.engine.strategy is None  # schedule=after: no densification by default
    summary = refiner.finish()
    after, plain = held_out_psnr(rep, scene, renderer), held_out_psnr(baseline, scene, renderer)
    assert summary["rounds"] == 2 and summary["pseudo_views"] == 3
    assert 15 < sum(log["pseudo"] for log in logs) < 45 and all(math.isfinite(log["loss"]) for log in logs)
    assert torch.allclose(refiner.current_poses, scene.cameras(scene.split("test")).c2w, atol=1e-5)  # snapped
    print(f"held-out PSNR: before {before:.2f}, +60 real steps {plain:.2f}, +60 difix3d+ steps {after:.2f}")
    assert after > before + 3 and after > plain + 3, (before, plain, after)


def test_fix_schedules() -> None:
    # after: from step 0, every fix_every (default steps / 3)
    assert fix_schedule("after", 6000) == [0, 2000, 4000]
    assert fix_schedule("after", 400, fix_every=100) == [0, 100, 200, 300]
    # paper at the original's length: its fix_steps, each before that step (the one after the last step is dropped)
    assert PAPER_FIX_STEPS[:4] == (3000, 6000, 8000, 10000) and PAPER_FIX_STEPS[-1] == 60000 and len(PAPER_FIX_STEPS) == 29
    assert fix_schedule("paper", 60000) == list(PAPER_FIX_STEPS[:-1])
    # scaled with the run, and by steps_scaler on top
    assert fix_schedule("paper", 6000)[:4] == [300, 600, 800, 1000] and fix_schedule("paper", 6000)[-1] == 5800
    assert fix_schedule("paper", 6000, steps_scaler=0.5)[:3] == [150, 300, 400]
    assert fix_schedule("paper", 100, fix_steps=[0, 30000, 90000]) == [0, 50]
    with pytest.raises(ValueError):
        fix_schedule("later", 10)


def test_paper_schedule_trains_from_the_start_with_densification_and_interleaved_fixes(renderer) -> None:
    scene, gt = scene_with_held_out(renderer)
    fixer = NearestGTFixer(NearestGTConfig(background=BLACK))
    fixer.set_pool(scene.views)
    fast = {**FAST, "lr_means_final": 0.01, "sh_degree_interval": 1000}
    cfg = Difix3DPlusConfig(schedule="paper", steps=60, fix_steps=[20000, 40000], shift_distance=5.0, novel_prob=0.5,
                            strategy=StrategyConfig(refine_start=6000, refine_every=6000, grow_grad2d=1e-6), **fast)
    refiner = Difix3DPlus(cfg)
    rep = start_from(gt)
    rounds = []
    refiner.setup(rep, scene, RunContext(device=torch.device("cpu"), seed=0, renderer=renderer, fixer=fixer,
                                         background=torch.tensor(BLACK), log=lambda m: None))
    logs = []
    for s in range(60):
        logs.append(refiner.step(s))
        rounds.append(refiner.rounds)
    assert rounds[19] == 0 and rounds[20] == 1 and rounds[39] == 1 and rounds[40] == 2  # fixes before steps 20 and 40
    assert sum(log["pseudo"] for log in logs[:20]) == 0 and sum(log["pseudo"] for log in logs[20:]) > 5
    # densification on (scaled by 60 / 60000: refine from step 6 every 6) and the means' lr decays over the run
    assert refiner.engine.strategy is not None and refiner.engine.strategy_config.refine_every == 6
    assert len(rep) != 60
    lr = refiner.engine.optimizers["means"].param_groups[0]["lr"]
    assert lr == pytest.approx(refiner.engine.learning_rates()["means"] * 0.01 ** (59 / 60), rel=1e-6)
    with pytest.raises(InputError, match="schedule"):
        Difix3DPlus(Difix3DPlusConfig(schedule="later")).setup(rep, scene, RunContext(
            device=torch.device("cpu"), seed=0, renderer=renderer, fixer=fixer))


@pytest.mark.parametrize("schedule", ["after", "paper"])
def test_resume_is_bit_identical_with_pseudo_views(renderer, tmp_path: Path, schedule: str) -> None:
    scene, gt = scene_with_held_out(renderer, size=12)
    fixer = NearestGTFixer(NearestGTConfig(background=BLACK))
    fixer.set_pool(scene.views)
    # both fix before steps 0, 3 and 6 (paper: 0, 22500, 45000 of 60000 scaled to 8 steps)
    cfg = Difix3DPlusConfig(steps=8, schedule=schedule, fix_every=3, fix_steps=[0, 22500, 45000], shift_distance=0.7,
                            novel_prob=0.5, densify=True, steps_scaler="1",
                            strategy=StrategyConfig(refine_start=1, refine_every=2, refine_stop=10**9, reset_every=10**9, grow_grad2d=1e-6), **FAST)

    straight = start_from(gt)
    _run(Difix3DPlus(cfg), straight, scene, renderer, fixer, range(8))

    first = start_from(gt)
    a = Difix3DPlus(cfg)
    _run(a, first, scene, renderer, fixer, range(4))
    save_checkpoint(tmp_path / "ckpt", {"refiner": a.state_dict()})  # through recon's checkpoint format
    state, raw = load_checkpoint(tmp_path / "ckpt")["refiner"], first.splat_values()
    assert set(state) >= {"engine", "pseudo", "rounds"}
    assert state["pseudo"] is not None and len(state["pseudo"]["images"]) == 3 and state["rounds"] == 2
    assert state["pseudo"]["masks"][0].dtype == torch.bool and state["pseudo"]["masks"][0].any()

    resumed = splat(raw)
    b = Difix3DPlus(cfg)
    b.setup(resumed, scene, RunContext(device=torch.device("cpu"), seed=0, renderer=renderer, fixer=fixer,
                                       background=torch.tensor(BLACK), log=lambda m: None))
    b.load_state_dict(state)
    for s in range(4, 8):
        b.step(s)
    for name in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        assert torch.equal(resumed.splats[name], straight.splats[name]), name
    assert len(straight) != 60  # densification ran, so the optimizer rows were resized across the resume


# ------------------------------------------------------------------------------- pipeline

OBJECT = Path("/work/shared/datasets/object")


@pytest.mark.slow
@pytest.mark.skipif(not OBJECT.is_dir(), reason="needs the shared object dataset")
def test_pipeline_runs_3dgs_train_then_difix3d_plus_with_nearest_gt(tmp_path: Path) -> None:
    """``recon run --repr 3dgs --refiner 3dgs-train,difix3d+ --fixer nearest-gt`` through the pipeline
    (plugin registered directly until its entry point is installed), checkpointing mid-way."""
    import recon_plugins.difix as plugin
    from recon_core.pipeline import Pipeline
    from recon_core.resolve import resolve_run
    from recon_core.registry import Registry
    from recon_core.rundir import RunDir

    registry = Registry()
    if not any(r.name == "difix3d+" for r in registry.rows()):
        registry = Registry(modules=[("difix", plugin)])
    spec = resolve_run(registry, data=OBJECT, representation="3dgs", refiners=["3dgs-train", "difix3d+"],
                       fixer="nearest-gt", evaluators=["psnr"], device="cpu", seed=0,
                       sets=["3dgs.num_points=500", "3dgs-train.steps=6", "difix3d+.steps=4", "difix3d+.fix_every=2",
                             f"nearest-gt.data={OBJECT}", "run.checkpoint_every=2"])
    doc = Pipeline(registry, spec, RunDir.create(tmp_path / "run")).run()
    assert doc["refiners"]["difix3d+"]["rounds"] == 2 and doc["refiners"]["difix3d+"]["pseudo_views"] == 16
    assert doc["metrics"]["psnr"] > 8 and doc["metrics"]["psnr+nearest-gt"] >= 100  # the oracle returns the ground truth


@pytest.mark.slow
@pytest.mark.skipif(not OBJECT.is_dir(), reason="needs the shared object dataset")
def test_pipeline_runs_difix3d_plus_alone_on_the_paper_schedule(tmp_path: Path) -> None:
    """``recon run --repr 3dgs --refiner difix3d+ --fixer nearest-gt --set difix3d+.schedule=paper``:
    difix3d+ is the whole training run, fixing at the scaled fix steps (here before steps 0 and 3)."""
    import recon_plugins.difix as plugin
    from recon_core.pipeline import Pipeline
    from recon_core.resolve import resolve_run
    from recon_core.registry import Registry
    from recon_core.rundir import RunDir

    registry = Registry()
    if not any(r.name == "difix3d+" for r in registry.rows()):
        registry = Registry(modules=[("difix", plugin)])
    spec = resolve_run(registry, data=OBJECT, representation="3dgs", refiners=["difix3d+"],
                       fixer="nearest-gt", evaluators=["psnr"], device="cpu", seed=0,
                       sets=["3dgs.num_points=500", "difix3d+.schedule=paper", "difix3d+.steps=6",
                             "difix3d+.fix_steps=0,30000,90000", f"nearest-gt.data={OBJECT}", "run.checkpoint_every=0"])
    doc = Pipeline(registry, spec, RunDir.create(tmp_path / "run")).run()
    assert doc["refiners"]["difix3d+"]["rounds"] == 2 and doc["refiners"]["difix3d+"]["pseudo_views"] == 16
