"""The ``render-fix`` generator and its camera path (plugins/reconx/generator.py)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import look_at_torch

from recon_core.cameras import Cameras
from recon_core.components import Fixer, RunContext
from recon_core.scene import Bounds, Scene, View
from recon_plugins.gaussians import GaussianSplat, GaussianSplatConfig, TorchGaussianRenderer
from recon_plugins.reconx.generator import RenderFixConfig, RenderFixGenerator, camera_path, look_at_point


def _ring(n: int, radius: float = 3.0, target: list[float] = (0.0, 0.0, 0.0), size: int = 16) -> Cameras:
    eyes = [[target[0] + radius * math.cos(2 * math.pi * i / n), target[1] + radius * math.sin(2 * math.pi * i / n), target[2] + 1.0]
            for i in range(n)]
    c2w = torch.stack([look_at_torch(eye, target, dtype=torch.float64).float() for eye in eyes])
    K = torch.tensor([[16.0, 0, size / 2], [0, 16.0, size / 2], [0, 0, 1]])
    return Cameras.create(K, c2w, size, size)


def test_look_at_point_is_where_the_optical_axes_meet() -> None:
    cams = _ring(3, target=[0.2, -0.1, 0.3])
    assert torch.allclose(look_at_point(cams.c2w, torch.zeros(3)).float(), torch.tensor([0.2, -0.1, 0.3]), atol=1e-4)
    parallel = cams.c2w[:1].repeat(2, 1, 1)
    assert torch.equal(look_at_point(parallel, torch.ones(3)), torch.ones(3, dtype=torch.float64))


def test_orbit_path_stays_on_the_sphere_between_the_inputs() -> None:
    cams = _ring(3)
    pivot = torch.zeros(3, dtype=torch.float64)
    path = camera_path(cams, 9, pivot, "orbit", closed=True)
    assert len(path) == 9
    radius = float(cams.centers[0].norm())
    for i in range(9):
        c2w = path.c2w[i].double()
        assert abs(float(c2w[:3, 3].norm()) - radius) < 1e-4
        assert torch.allclose(c2w[:3, 2], -c2w[:3, 3] / c2w[:3, 3].norm(), atol=1e-5)  # looks at the pivot
        assert torch.allclose(c2w[:3, :3].T @ c2w[:3, :3], torch.eye(3, dtype=torch.float64), atol=1e-5)
    # 3 evenly spaced inputs, 9 views: 3 per segment, none on an input
    dist = torch.cdist(path.centers.double(), cams.centers.double()).min(dim=1).values
    assert float(dist.min()) > 0.3
    open_path = camera_path(cams, 4, pivot, "orbit", closed=False)
    assert len(open_path) == 4


def _tiny_rep() -> GaussianSplat:
    g = torch.Generator().manual_seed(0)
    n = 60
    rep = GaussianSplat(GaussianSplatConfig(sh_degree=0))
    rep.set_splats({
        "means": (torch.rand(n, 3, generator=g) - 0.5) * 0.8,
        "quats": torch.nn.functional.normalize(torch.rand(n, 4, generator=g), dim=-1),
        "scales": torch.full((n, 3), math.log(0.15)),
        "opacities": torch.full((n,), 2.0),
        "sh0": torch.rand(n, 1, 3, generator=g),
        "shN": torch.zeros(n, 0, 3),
    })
    return rep


WHITE = torch.ones(3)


class _Inverter(Fixer):
    name = "invert"

    def fix(self, images, references=None, *, views=None):  # noqa: ANN001, ANN201
        assert references is not None and references.shape == images.shape
        return 1.0 - images


def _scene_and_ctx(fixer: Fixer | None = None, background: torch.Tensor = WHITE) -> tuple[Scene, RunContext, GaussianSplat]:
    rep = _tiny_rep()
    renderer = TorchGaussianRenderer()
    cams = _ring(3)
    with torch.no_grad():  # inputs are renders of the model itself, on the run's background: everything is consistent
        images = renderer.render(rep, cams, background=background).rgb
    views = [View(f"in{i}", cams[i], images[i].clone()) for i in range(3)]
    ctx = RunContext(device=torch.device("cpu"), seed=0, renderer=renderer, fixer=fixer, background=background)
    return Scene("tiny", views, Bounds(torch.zeros(3), 1.0)), ctx, rep


def test_generated_views_follow_the_contract_and_change_nothing() -> None:
    scene, ctx, rep = _scene_and_ctx()
    before = {k: v.clone() for k, v in rep.state_dict().items()}
    views = RenderFixGenerator(RenderFixConfig(num_views=3, fix="reproject")).generate(rep, scene, ctx)
    assert [v.name for v in views] == ["gen-0000", "gen-0001", "gen-0002"]
    for v in views:
        assert v.split == "train" and len(v.camera) == 1 and (v.height, v.width) == (16, 16)
        assert v.image.shape == (16, 16, 3) and v.confidence.shape == (16, 16)
        assert float(v.confidence.min()) >= 0 and float(v.confidence.max()) <= 1
    assert all(torch.equal(before[k], v) for k, v in rep.state_dict().items())
    # the inputs are renders of this model, so surface pixels seen by an input are fully confident
    conf = torch.stack([v.confidence for v in views])
    assert float((conf == 1.0).float().mean()) > 0.05 and abs(float(conf.min()) - 0.3) < 1e-6
    again = RenderFixGenerator(RenderFixConfig(num_views=3, fix="reproject")).generate(rep, scene, ctx)
    assert all(torch.equal(a.image, b.image) and torch.equal(a.confidence, b.confidence) for a, b in zip(views, again))


def test_the_run_fixer_is_used_and_its_disagreement_lowers_confidence() -> None:
    scene, ctx, rep = _scene_and_ctx(_Inverter())
    plain = RenderFixGenerator(RenderFixConfig(num_views=2, fix="none")).generate(rep, scene, ctx)
    fixed = RenderFixGenerator(RenderFixConfig(num_views=2)).generate(rep, scene, ctx)  # auto: the run's fixer
    assert torch.allclose(fixed[0].image, 1.0 - plain[0].image, atol=1e-6)
    assert float(fixed[0].confidence.mean()) < float(plain[0].confidence.mean())


@pytest.mark.parametrize("background", [WHITE, torch.tensor([0.0, 1.0, 0.0])], ids=["white", "green"])
def test_without_a_fixer_the_render_is_kept_and_known_empty_space_becomes_background(background: torch.Tensor) -> None:
    scene, ctx, rep = _scene_and_ctx(background=background)
    renderer = ctx.renderer
    with torch.no_grad():  # silhouettes of the inputs: where the model is opaque
        alphas = renderer.render(rep, Cameras.cat([v.camera for v in scene.views])).alpha[..., 0]
    masked = Scene("tiny", [View(v.name, v.camera, v.image, object_mask=alphas[i] > 0.5) for i, v in enumerate(scene.views)],
                   scene.bounds)
    plain = RenderFixGenerator(RenderFixConfig(num_views=4, free_space=False)).generate(rep, masked, ctx)
    carved = RenderFixGenerator(RenderFixConfig(num_views=4, carve_resolution=48)).generate(rep, masked, ctx)
    with torch.no_grad():
        renders = renderer.render(rep, Cameras.cat([v.camera for v in plain]), background=background).rgb.clamp(0, 1)
    emptied = 0
    for p, c, r in zip(plain, carved, renders):
        assert torch.allclose(p.image, r, atol=1e-6)  # auto without a fixer: the render itself
        changed = (p.image - c.image).abs().amax(-1) > 0
        # outside the inputs' visual hull: the run's background, fully confident; elsewhere untouched
        assert torch.equal(c.image[changed], background.expand_as(c.image[changed])) and bool((c.confidence[changed] == 1).all())
        same = ~changed & (c.confidence != 1)
        assert torch.equal(c.confidence[same], p.confidence[same])
        emptied += int(changed.sum())
    assert emptied > 0  # the tiny model's translucent fringe outside the hull was removed
