"""Tests of the idr representation, the sphere-tracing renderer and the idr-fit refiner on a tiny scene."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import look_at_torch
from torch import nn

import recon_plugins.encoders as encoders_plugin
from recon_core import Bounds, Cameras, InputError, RunContext, Scene, View
from recon_core.registry import Registry, get_registry
from recon_plugins.encoders import FourierEncoder, HashGridEncoder
from recon_plugins.idr import IDRFit, IDRRepresentation, SphereTracingRenderer
from recon_plugins.idr.renderer import pixel_grid
from recon_plugins.idr.representation import pixel_rays, so3_exp

pytestmark = pytest.mark.usefixtures("one_thread")

CENTER, RADIUS = torch.tensor([0.15, 0.0, 0.05]), 0.35
TINY = dict(preset="small", sdf_width=64, sdf_layers=2, skip_in=[1], feature_dim=8, color_width=32, color_layers=1,
            trace_samples=16, chunk=100)


def sphere_hit(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    oc = o - CENTER
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - RADIUS**2)
    return -b - disc.clamp_min(0).sqrt(), disc > 0


def tiny_scene(n_views: int = 6, size: int = 20) -> Scene:
    """A coloured sphere seen from a ring of cameras; images on white, exact masks."""
    K = torch.tensor([[size * 1.2, 0.0, size / 2], [0.0, size * 1.2, size / 2], [0.0, 0.0, 1.0]])
    views = []
    for i in range(n_views):
        a = 2 * math.pi * i / n_views
        c2w = look_at_torch(torch.tensor([2.5 * math.cos(a), 2.5 * math.sin(a), 0.8]))
        uv = pixel_grid(size, size)
        o, d = pixel_rays(K.expand(len(uv), 3, 3), c2w.expand(len(uv), 4, 4), uv)
        t, hit = sphere_hit(o, d)
        n = (o + t[:, None] * d - CENTER) / RADIUS
        rgb = torch.where(hit[:, None], 0.5 + 0.4 * n, torch.ones(3))
        cam = Cameras.create(K, c2w, size, size)
        views.append(View(f"{i}", cam, rgb.reshape(size, size, 3), "train" if i < n_views - 1 else "test",
                          object_mask=hit.reshape(size, size)))
    return Scene("tiny", views, Bounds(torch.zeros(3), 1.0))


def cpu_context(encoder=None) -> RunContext:
    """What the pipeline gives ``build``: ``--encoder`` and ``create`` for the encoders idr declares."""
    registry = Registry(entry_points=[], modules=[("encoders", encoders_plugin)], disabled=())
    return RunContext(device=torch.device("cpu"), seed=0, encoder=encoder, create=registry.create)


def build(scene: Scene, encoder=None, **kw) -> IDRRepresentation:
    torch.manual_seed(0)
    rep = IDRRepresentation(IDRRepresentation.Config(**{**TINY, **kw}))
    rep.build(scene, cpu_context(encoder))
    return rep


def small_hashgrid() -> HashGridEncoder:
    torch.manual_seed(1)
    return HashGridEncoder(HashGridEncoder.Config(n_levels=2, log2_hashmap_size=8, max_resolution=32))


def at_progress(fit: IDRFit, fraction: float) -> None:
    """Give the fit's run a time budget (run.budget) of which ``fraction`` is used."""
    from recon_core.budget import Budget, BudgetClock

    fit.ctx.budget = BudgetClock(Budget(1.0, "cpu"), 1.0, used=fraction)


def make_fit(rep: IDRRepresentation, scene: Scene, steps: int = 50, seed: int = 0, **kw) -> IDRFit:
    fit = IDRFit(IDRFit.Config(steps=steps, batch_rays=128, lr=1e-3, log_every=0, **kw))
    fit.setup(rep, scene, RunContext(device=torch.device("cpu"), seed=seed, renderer=SphereTracingRenderer()))
    return fit


class AnalyticSphere(nn.Module):
    """Stands in for the implicit network: the exact SDF of the test sphere (network frame = world here)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = FourierEncoder()
        self.dummy = nn.Parameter(torch.zeros(8))

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return (x - CENTER).norm(dim=-1) - RADIUS

    sdf_inference = sdf  # what the tracer evaluates

    def sdf_and_gradient(self, x: torch.Tensor, create_graph: bool = True):
        g = (x - CENTER) / (x - CENTER).norm(dim=-1, keepdim=True)
        return self.sdf(x), self.dummy.expand(len(x), 8), g


def test_registered_and_declared() -> None:
    reg = get_registry()
    assert reg.get("representation", "idr") is IDRRepresentation
    assert reg.get("renderer", "sphere-tracing") is SphereTracingRenderer
    assert reg.get("refiner", "idr-fit") is IDRFit
    assert {"sdf", "neural-field"} <= IDRRepresentation.provides and "cameras" not in IDRRepresentation.provides
    assert IDRRepresentation.native_refiner == "idr-fit" and IDRRepresentation.export_formats == ("mesh",)
    assert IDRRepresentation.default_renderer == {"cpu": "sphere-tracing", "cuda": "sphere-tracing"}
    assert "cameras" in IDRRepresentation(IDRRepresentation.Config(refine_cameras=True)).provides


def test_build_defaults_to_fourier_and_idr_sizes() -> None:
    scene = tiny_scene(2, 8)
    rep = IDRRepresentation()
    rep.build(scene, cpu_context())
    assert isinstance(rep.implicit.encoder, FourierEncoder) and rep.implicit.encoder.out_dim == 39
    assert isinstance(rep.rendering.view_encoder, FourierEncoder) and rep.rendering.view_encoder.out_dim == 27
    assert IDRRepresentation.uses(rep.config) == [("encoder", "fourier"), ("encoder", "fourier")]
    # on the CPU, preset auto is the benchmark's: small for fourier, grid for grid encoders; idr on CUDA
    assert rep.config.resolved_preset("cpu", rep.implicit.encoder) == "small" and len(rep.implicit.layers) == 5
    assert rep.config.resolved_preset("cpu", small_hashgrid()) == "grid"
    assert rep.config.resolved_preset("cuda", small_hashgrid()) == "idr"
    ours = IDRRepresentation(IDRRepresentation.Config(preset="idr"))
    ours.build(scene, cpu_context())
    assert len(ours.implicit.layers) == 9 and ours.implicit.feature_dim == 256
    assert ours.rendering.layers[1].weight.shape == (512, 512)
    hg = build(scene, small_hashgrid())
    assert ours.config.sizes()["sdf_width"] == 512 and hg.implicit.d_in == 3 + 4
    assert rep.config.trace_settings("cpu").n_samples == 32 and rep.config.trace_settings("cuda").n_samples == 100
    fit = IDRFit()
    fit.setup(rep, scene, RunContext(device=torch.device("cpu"), seed=0, renderer=SphereTracingRenderer()))
    assert fit.batch_rays == 1024 and fit.optimizer.param_groups[0]["lr"] == 5e-4


def test_sphere_tracing_renderer_matches_analytic_sphere() -> None:
    scene = tiny_scene(3, 16)
    rep = build(scene)
    rep.implicit = AnalyticSphere()
    cams = scene.cameras()
    out = SphereTracingRenderer().render(rep, cams, background=torch.tensor([0.2, 0.3, 0.4]))
    assert out.rgb.shape == (3, 16, 16, 3) and out.alpha.shape == (3, 16, 16, 1) and out.depth.shape == (3, 16, 16, 1)
    masks = torch.stack([v.object_mask for v in scene.views])
    assert torch.equal(out.alpha[..., 0] > 0.5, masks)
    torch.testing.assert_close(out.rgb[~masks], torch.tensor([0.2, 0.3, 0.4]).expand(int((~masks).sum()), 3))
    # z-depth of the exact intersection
    for i in range(3):
        uv = pixel_grid(16, 16)
        o, d = pixel_rays(cams.K[i].expand(len(uv), 3, 3), cams.c2w[i].expand(len(uv), 4, 4), uv)
        t, hit = sphere_hit(o, d)
        z = (t * (d @ cams.c2w[i, :3, 2])).reshape(16, 16)
        m = hit.reshape(16, 16)
        assert (out.depth[i, ..., 0][m] - z[m]).abs().max() < 1e-3
        assert (out.depth[i, ..., 0][~m] == 0).all()


def test_fit_reduces_losses_and_improves_the_silhouette() -> None:
    scene = tiny_scene()
    rep = build(scene)
    renderer = SphereTracingRenderer()
    test_cams = scene.cameras(scene.train_views)
    masks = torch.stack([v.object_mask for v in scene.train_views])

    def iou() -> float:
        a = renderer.render(rep, test_cams).alpha[..., 0] > 0.5
        return float((a & masks).sum() / (a | masks).sum())

    before = iou()
    fit = make_fit(rep, scene, steps=60)
    logs = [fit.step(s) for s in range(fit.total_steps)]
    assert all(math.isfinite(v) for l in logs for v in l.values())
    first = sum(l["loss"] for l in logs[:10]) / 10
    last = sum(l["loss"] for l in logs[-10:]) / 10
    assert last < first
    assert iou() > before + 0.05
    assert fit.finish()["loss"] == logs[-1]["loss"]


def test_alpha_schedule_doubles_at_milestones() -> None:
    fit = IDRFit(IDRFit.Config(steps=1000))
    assert fit.alpha(0) == 50 and fit.alpha(124) == 50 and fit.alpha(125) == 100 and fit.alpha(999) == 50 * 2**5


def test_resume_is_bit_identical() -> None:
    scene = tiny_scene(4, 12)
    rep_a = build(scene, small_hashgrid())
    fit_a = make_fit(rep_a, scene)
    for s in range(3):
        fit_a.step(s)

    rep_b = build(scene, small_hashgrid())
    fit_b = make_fit(rep_b, scene)
    fit_b.step(0)
    saved_rep = {k: v.clone() for k, v in rep_b.state_dict().items()}
    saved_fit = fit_b.state_dict()

    rep_c = build(scene, small_hashgrid())
    rep_c.load_state_dict(saved_rep)
    fit_c = make_fit(rep_c, scene, seed=123)  # a different seed: the state must override it
    fit_c.load_state_dict(saved_fit)
    for s in range(1, 3):
        fit_c.step(s)
    for (k, a), (_, c) in zip(rep_a.state_dict().items(), rep_c.state_dict().items()):
        assert torch.equal(a, c), k


def test_camera_refinement_receives_gradients() -> None:
    scene = tiny_scene(4, 12)
    rep = build(scene, refine_cameras=True)
    fit = make_fit(rep, scene, camera_lr=1e-3)
    fit.step(0)
    assert rep.pose_delta.abs().sum() > 0
    refined = rep.refined_train_cameras(scene.cameras(scene.train_views))
    assert not torch.equal(refined.c2w, scene.cameras(scene.train_views).c2w)
    R = refined.c2w[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand_as(R), atol=1e-5, rtol=0)


def test_so3_exp() -> None:
    w = torch.tensor([[0.0, 0.0, math.pi / 2], [0.0, 0.0, 0.0]])
    R = so3_exp(w)
    torch.testing.assert_close(R[0], torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(R[1], torch.eye(3))


def test_export_mesh(tmp_path: Path) -> None:
    rep = build(tiny_scene(2, 8), mesh_resolution=24)
    files = rep.export(tmp_path, "mesh")
    assert files == [tmp_path / "mesh.ply"] and files[0].stat().st_size > 0
    import trimesh

    mesh = trimesh.load(files[0], force="mesh")
    r = (torch.from_numpy(mesh.vertices).float()).norm(dim=-1)
    assert 0.2 < float(r.mean()) < 0.9  # the geometric-init sphere (radius ≈ 0.6)
    # vertex colours: the appearance network's colour at each vertex seen head-on, to 8 bits
    colors = torch.from_numpy(np.asarray(mesh.visual.vertex_colors)[:, :3]).float() / 255
    vertices = torch.from_numpy(np.asarray(mesh.vertices)).float()[:5]
    x = rep.to_network(vertices)
    with torch.enable_grad():
        _, _, grad = rep.implicit.sdf_and_gradient(x, create_graph=False)
    normals = torch.nn.functional.normalize(grad.detach(), dim=-1)
    expected = rep.shade(x, -normals, create_graph=False).rgb.detach().clamp(0, 1)
    assert torch.allclose(colors[:5], expected, atol=0.5 / 255 + 1e-4)


def test_schedules_follow_the_budget_fraction() -> None:
    """With a time budget (run.budget), the α milestones follow the fraction of it used, not step / steps."""
    from recon_core import RunContext
    from recon_core.budget import Budget, BudgetClock

    fit = IDRFit(IDRFit.Config(steps=100000))
    assert fit.alpha(10) == 50 and fit.fraction(10) == pytest.approx(1e-4)
    fit.ctx = RunContext(device=torch.device("cpu"), seed=0)
    assert fit.fraction(10) == pytest.approx(1e-4)  # no budget: the steps
    fit.ctx.budget = BudgetClock(Budget(100.0, "cpu"), 100.0, used=30.0)  # 30 % used: past the 0.125 and 0.25 milestones
    assert fit.alpha(10) == 200 and fit.fraction(10) == pytest.approx(0.3)
    fit.ctx.budget = BudgetClock(Budget(100.0, "cpu"), 100.0, used=100.0)
    assert fit.alpha(10) == 50 * 2**5


def test_unset_steps_leave_a_budgeted_run_to_its_budget() -> None:
    """steps unset: 20000 without a budget; under run.budget 100000, so that a 60 CPU-min run (~40000
    hashgrid steps) is ended by its budget and its schedules follow the budget alone."""
    from recon_core.budget import Budget, BudgetClock

    fit = IDRFit()
    assert fit.total_steps == IDRFit.DEFAULT_STEPS == 20000
    fit.ctx = RunContext(device=torch.device("cpu"), seed=0)
    assert fit.total_steps == 20000 and fit.fraction(5000) == pytest.approx(0.25)
    fit.ctx.budget = BudgetClock(Budget(3600.0, "cpu"), 3600.0, used=360.0)
    assert fit.total_steps == IDRFit.BUDGET_STEPS == 100000
    assert fit.fraction(30000) == pytest.approx(0.3) and fit.alpha(5000) == 50  # 10 % of the budget: no doubling yet
    assert IDRFit(IDRFit.Config(steps=300)).total_steps == 300  # an explicit number of steps is kept


def test_coarse_to_fine_level_schedule() -> None:
    fit = IDRFit(IDRFit.Config(steps=100, c2f_start_levels=2, c2f_until=0.5))
    levels = [fit.active_levels(s, 6) for s in range(100)]
    assert levels[0] == 2 and levels[9] == 2 and levels[10] == 3 and levels[39] == 5 and levels[40] == 6
    assert levels == sorted(levels) and levels[-1] == 6
    assert fit.active_levels(0, 1) == 1  # never more than the encoder has
    assert IDRFit(IDRFit.Config(steps=100, c2f_until=0.0)).active_levels(0, 6) == 6  # disabled


def test_fit_unlocks_grid_levels_of_the_encoder() -> None:
    scene = tiny_scene(4, 12)
    torch.manual_seed(1)
    enc = HashGridEncoder(HashGridEncoder.Config(n_levels=3, log2_hashmap_size=8, max_resolution=32))
    rep = build(scene, enc, preset="grid", sdf_width=None, sdf_layers=None, skip_in=None, feature_dim=None,
                color_width=None, color_layers=None)
    assert len(rep.implicit.layers) == 3 and rep.implicit.skip_in == ()  # the grid preset: 2 hidden layers, no skip
    fit = make_fit(rep, scene, steps=10, c2f_start_levels=1, c2f_until=0.5)
    fit.step(0)
    assert enc.active_levels == 1
    before = enc.params.detach().clone().view(-1, 2)
    fit.step(1)
    moved = (enc.params.detach().view(-1, 2) - before).abs().sum(-1) > 0
    lay = enc.layout
    assert moved[: lay.sizes[0]].any() and not moved[lay.offsets[1]:].any()  # locked levels get no update
    at_progress(fit, 0.6)  # a time budget 60 % used
    fit.step(2)
    assert enc.active_levels == 3


def test_every_network_weight_receives_gradients() -> None:
    """Regression: a weight-norm cache opened around the (no-grad) trace froze all weights."""
    scene = tiny_scene(4, 12)
    rep = build(scene, small_hashgrid())
    fit = make_fit(rep, scene, steps=10, c2f_until=0.0)
    before = {n: p.detach().clone() for n, p in rep.named_parameters()}
    fit.step(0)
    fit.step(1)  # the encoder-reading weights start at zero: the tables get gradients from step 1
    for n, p in rep.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
        assert not torch.equal(p.detach(), before[n]), n


def test_only_grid_tables_get_the_encoder_lr() -> None:
    from recon_plugins.encoders import FFBEncoder

    scene = tiny_scene(2, 8)
    torch.manual_seed(0)
    enc = FFBEncoder(FFBEncoder.Config(n_levels=2, hidden_dim=16, out_features=8, log2_hashmap_size=8,
                                       max_resolution=32, backend="torch"))
    rep = build(scene, enc)
    fit = make_fit(rep, scene, encoder_lr=2e-2)
    groups = {g["lr"]: {id(p) for p in g["params"]} for g in fit.optimizer.param_groups}
    assert groups[2e-2] == {id(enc.net.grid.params)}  # the hash table only
    # SIREN weights and Fourier maps: the encoder's weights_lr, not the network lr
    assert groups[enc.weights_lr] == {id(p) for p in enc.parameters()} - {id(enc.net.grid.params)}
    assert id(enc.net.fourier_maps) not in groups[1e-3]
    assert sum(len(v) for v in groups.values()) == len(list(rep.parameters()))
    fit = make_fit(rep, scene, encoder_lr=2e-2, encoder_weights_lr=3e-4)
    groups = {g["lr"]: {id(p) for p in g["params"]} for g in fit.optimizer.param_groups}
    assert groups[3e-4] == {id(p) for p in enc.parameters()} - {id(enc.net.grid.params)}
    assert groups[2e-2] == {id(enc.net.grid.params)}
    assert sum(len(v) for v in groups.values()) == len(list(rep.parameters()))


def test_table_lr_defaults_to_the_encoders_recommendation() -> None:
    """Without encoder_lr, hash tables train at their encoder's table_lr (hashgrid 1e-2, ffb 1e-3)."""
    from recon_plugins.encoders import FFBEncoder

    scene = tiny_scene(2, 8)
    ffb = FFBEncoder(FFBEncoder.Config(n_levels=2, hidden_dim=16, out_features=8, log2_hashmap_size=8, backend="torch"))
    for enc, expected in ((small_hashgrid(), 1e-2), (ffb, 1e-3)):
        fit = make_fit(build(scene, enc), scene)
        (group,) = [g for g in fit.optimizer.param_groups if any(p is enc.net.grid.params if hasattr(enc, "net")
                                                                  else p is enc.params for p in g["params"])]
        assert group["lr"] == expected == enc.table_lr


def test_encoder_betas_apply_to_the_encoder_groups_only() -> None:
    """idr-fit.encoder_betas sets Adam's (β1, β2) of the encoder's tables and weights; the networks keep
    IDR's (torch's) 0.9, 0.999, the default of both; a malformed value is an InputError."""
    from recon_plugins.encoders import FFBEncoder

    scene = tiny_scene(2, 8)
    ffb = FFBEncoder(FFBEncoder.Config(n_levels=2, hidden_dim=16, out_features=8, log2_hashmap_size=8, backend="torch"))
    for enc, kw, expected in ((small_hashgrid(), {}, (0.9, 0.999)), (small_hashgrid(), {"encoder_betas": [0.9, 0.99]}, (0.9, 0.99)),
                              (ffb, {"encoder_betas": [0.8, 0.9]}, (0.8, 0.9))):
        rep = build(scene, enc)
        fit = make_fit(rep, scene, **kw)
        enc_ids = {id(p) for p in enc.parameters()}
        for g in fit.optimizer.param_groups:
            in_encoder = {id(p) in enc_ids for p in g["params"]}
            assert len(in_encoder) == 1  # a group is either the encoder's or the networks'
            assert g["betas"] == (expected if in_encoder.pop() else (0.9, 0.999))
    with pytest.raises(InputError, match="encoder_betas"):
        make_fit(build(scene, small_hashgrid()), scene, encoder_betas=[0.9, 1.0])


def test_grad_clip_bounds_the_gradient_adam_sees() -> None:
    """idr-fit.grad_clip rescales the whole gradient to at most that global norm before Adam's step."""
    scene = tiny_scene(4, 12)

    def grad_norm(**kw: float) -> float:
        rep = build(scene, small_hashgrid())
        fit = make_fit(rep, scene, steps=10, c2f_until=0.0, **kw)
        fit.step(0)
        fit.step(1)
        return float(torch.cat([p.grad.flatten() for p in rep.parameters() if p.grad is not None]).norm())

    free = grad_norm(grad_clip=0.0)  # 0: never clip
    assert free > 0.05
    assert grad_norm(grad_clip=0.01) == pytest.approx(0.01, rel=1e-4)
    assert grad_norm(grad_clip=10 * free) == pytest.approx(free, rel=1e-5)  # a loose bound changes nothing
    # unset: the encoder's recommendation (hashgrid, ffb: NFFB's 1.0; Fourier none, as IDR)
    assert HashGridEncoder.grad_clip == 1.0 and FourierEncoder.grad_clip is None
    assert make_fit(build(scene, small_hashgrid()), scene).grad_clip == 1.0
    assert make_fit(build(scene, FourierEncoder(FourierEncoder.Config(n_frequencies=2))), scene).grad_clip == 0.0


def test_lr_schedule_defaults_to_the_encoders_milestones() -> None:
    """Without lr_milestones the encoder's schedule applies (ffb: 5 halvings), else IDR's (2 halvings)."""
    from recon_plugins.encoders import FFBEncoder

    scene = tiny_scene(2, 8)
    ffb = FFBEncoder(FFBEncoder.Config(n_levels=2, hidden_dim=16, out_features=8, log2_hashmap_size=8, backend="torch"))
    for enc, kw, halvings in ((ffb, {}, 5), (small_hashgrid(), {}, 2), (ffb, {"lr_milestones": [0.3]}, 1)):
        fit = make_fit(build(scene, enc), scene, c2f_until=0.0, **kw)
        at_progress(fit, 0.25)
        fit.step(0)
        assert all(g["lr"] == g["base_lr"] for g in fit.optimizer.param_groups)
        at_progress(fit, 0.95)
        fit.step(1)
        for g in fit.optimizer.param_groups:
            assert g["lr"] == pytest.approx(g["base_lr"] * 0.5**halvings)


def test_idr_rgb_range_compares_in_minus_one_to_one() -> None:
    """rgb_range=[-1,1]: tanh output, shading maps back to [0, 1], the loss sees colours in [-1, 1]."""
    scene = tiny_scene()
    rep = build(scene, rgb_range=[-1.0, 1.0])
    assert rep.rendering.output == "tanh"
    pts = torch.randn(7, 3) * 0.3
    sh = rep.shade(pts, torch.nn.functional.normalize(torch.randn(7, 3), dim=-1))
    torch.testing.assert_close(sh.rgb, (sh.rgb_net + 1) / 2)
    torch.testing.assert_close(rep.to_rgb_range(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    fit = make_fit(rep, scene, steps=3)
    for s in range(3):
        logs = fit.step(s)
    assert math.isfinite(logs["loss"])
    with pytest.raises(InputError, match="rgb_range"):
        build(scene, rgb_range=[0.0, 255.0])


def test_auto_preset_sizes_a_default_grid_encoder_for_the_cpu() -> None:
    """preset=auto on the CPU: a hashgrid at its defaults gets its cpu_options (the benchmark's
    sizes); a changed option, or an explicit preset, keeps the encoder as given."""
    scene = tiny_scene(n_views=2, size=8)
    logs: list[str] = []

    def built(enc: HashGridEncoder, preset: str = "auto") -> HashGridEncoder:
        rep = IDRRepresentation(IDRRepresentation.Config(preset=preset))
        rep.build(scene, RunContext(device=torch.device("cpu"), seed=0, encoder=enc, create=get_registry().create, log=logs.append))
        return rep.implicit.encoder

    sized = built(HashGridEncoder())
    assert (sized.config.n_levels, sized.config.log2_hashmap_size, sized.config.max_resolution) == (12, 15, 512)
    assert sized.params.numel() < HashGridEncoder().params.numel() / 10 and any("CPU sizes" in m for m in logs)
    given = HashGridEncoder(HashGridEncoder.Config(n_levels=14))  # an option changed: kept as given
    assert built(given) is given and built(HashGridEncoder(), preset="grid").config == HashGridEncoder.Config()
    # the sized encoder is initialised from the run's seed as if created at those sizes (the first thing
    # the seed initialises): the same model as the sizes spelled out, whatever the default one consumed
    torch.manual_seed(0)
    explicit = HashGridEncoder(HashGridEncoder.Config(**HashGridEncoder.cpu_options))
    torch.manual_seed(5)
    assert torch.equal(built(HashGridEncoder()).params, explicit.params)


def test_merged_network_call_gives_the_separate_calls_gradients() -> None:
    """Without camera refinement the surface and mask points are rows of the eikonal evaluation (one
    network call); the loss and every parameter gradient equal those of separate calls (forced here by
    rays that require grad, the camera-refinement path)."""
    from recon_plugins.idr.representation import pixel_rays as rays

    scene = tiny_scene()
    torch.manual_seed(0)
    rep = IDRRepresentation(IDRRepresentation.Config(preset="small", trace_samples=16))
    rep.build(scene, RunContext(device=torch.device("cpu"), seed=0, encoder=small_hashgrid(), create=get_registry().create))
    fit = make_fit(rep, scene)
    for s in range(3):
        fit.step(s)
    d = fit.data
    g = torch.Generator().manual_seed(3)
    view = torch.randint(len(d.rgb), (128,), generator=g)
    pix = (torch.rand(128, generator=g) * d.npix[view]).long().clamp_max(d.npix[view] - 1)
    uv = torch.stack([pix % d.width[view], pix // d.width[view]], dim=-1).float() + 0.5
    o, v = rep.network_rays(*rays(d.K[view], d.c2w[view], uv))
    tr = rep.trace(o, v)
    params = [p for p in rep.parameters() if p.requires_grad]
    out = []
    for needs_grad in (False, True):
        fit.generator.manual_seed(11)  # the same random eikonal points
        oo = o.clone().requires_grad_(needs_grad)
        loss, *_ = fit._losses(tr, oo, v, d.rgb[view, pix], d.mask[view, pix], alpha=50.0)
        out.append((loss.detach(), torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)))
    assert tr.hit.sum() > 5 and (tr.in_sphere & ~tr.hit).sum() > 5
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-7)
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
