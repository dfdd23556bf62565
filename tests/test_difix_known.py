"""The ``nearest-gt`` oracle fixer's ``prepare(ctx)``: the pool comes through ``ctx.load``, the
background from the run (no global registry)."""

from __future__ import annotations

import pytest
import torch

from recon_core.components import RunContext
from recon_core.errors import InputError
from recon_core.pipeline import Pipeline
from recon_core.resolve import resolve_run
from recon_core.rundir import RunDir
from recon_plugins.difix.known import NearestGTConfig, NearestGTFixer


def test_prepare_loads_the_pool_through_the_run_context(toy_registry, toy_scene, tmp_path):
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid", sets=["run.background=0,0,1"])
    ctx = Pipeline(toy_registry, spec, RunDir.create(tmp_path / "run")).context()
    fixer = NearestGTFixer(NearestGTConfig(data=str(toy_scene), split="test"))
    fixer.prepare(ctx)
    scene = ctx.load(toy_scene)  # type: ignore[misc]
    assert [v.name for v in fixer.pool] == [v.name for v in scene.eval_views] and fixer.pool
    assert torch.equal(fixer.background, torch.tensor([0.0, 0.0, 1.0]))
    # the pooled ground truth comes back for a view's camera
    view = scene.eval_views[0]
    out = fixer.fix(torch.zeros(1, view.height, view.width, 3), views=[view])
    inside = view.object_mask if view.has("object_mask") else torch.ones(view.height, view.width, dtype=torch.bool)
    assert torch.allclose(out[0][inside], view.image[inside])
    assert torch.allclose(out[0][~inside], torch.tensor([0.0, 0.0, 1.0]).expand(int((~inside).sum()), 3))


def test_explicit_background_wins_and_missing_load_is_an_input_error(toy_scene):
    fixer = NearestGTFixer(NearestGTConfig(background=[0.0, 1.0, 0.0]))
    fixer.prepare(RunContext(torch.device("cpu"), seed=0, background=torch.tensor([0.0, 0.0, 1.0])))
    assert torch.equal(fixer.background, torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(InputError, match="ctx.load"):
        NearestGTFixer(NearestGTConfig(data=str(toy_scene))).prepare(RunContext(torch.device("cpu"), seed=0))
