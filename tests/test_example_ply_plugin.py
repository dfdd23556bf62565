"""docs/examples/recon-ply-splats: a third-party Gaussian representation works, unmodified, with the
four Gaussian refiners (``3dgs-train``, ``ttr``, ``confidence``, ``difix3d+``).

The example package is registered from its source folder (not installed) next to the installed
plugins, exactly as ``recon run`` sees an installed plugin. The data is a tiny synthetic
scene: ground-truth Gaussians rendered at 32x32 from a ring of cameras (a nerfstudio folder). The
PLY the representation reads is those Gaussians spoiled (colours, opacities and positions
perturbed, written without normals as gsplat's exporter does). Each refiner then runs a few
steps through ``recon run`` (the CLI, in process), and the test checks a real property: the exported
``point_cloud.ply`` (read back by the example itself) renders the training views closer to the
ground truth than the PLY it started from, its Gaussians moved and stayed finite.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import look_at
from PIL import Image

from recon_cli.main import make_cli
from recon_core import GaussianRepresentation, InputError, RunContext
from recon_core.cameras import Cameras
from recon_core.gaussians import SH_C0
from recon_core.imageops import psnr
from recon_core.io import write_png
from recon_core.ply import read_splat_ply, write_splat_ply
from recon_core.registry import Registry, Status

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "recon-ply-splats"
MODULE = "recon_ply_splats"
NEEDED = ("gaussians", "ttr", "reconx", "difix", "metrics", "loaders")
"""Installed plugins the runs use (the rest stay unimported: quicker, nothing else involved)."""

SIZE, FOCAL, N_VIEWS, N_GAUSSIANS = 32, 36.0, 8, 160
TEST_VIEWS = (2, 6)


# ------------------------------------------------------------------------------ the plugin


@pytest.fixture(scope="module")
def example() -> Iterator[Any]:
    """The example's module, imported from its source folder (as pip install -e would)."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield importlib.import_module(MODULE)
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in [n for n in sys.modules if n.split(".")[0] == MODULE]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def registry(example: Any) -> Registry:
    eps = [ep for ep in importlib.metadata.entry_points(group="recon.plugins") if ep.name in NEEDED]
    return Registry(entry_points=eps, modules=[("ply-splats", example)], disabled=())


def test_the_example_declares_its_entry_point_and_imports_only_recon_core(example: Any) -> None:
    import ast

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["recon.plugins"] == {"ply-splats": MODULE}
    imported = set()
    for path in (EXAMPLE / MODULE).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
    assert imported <= {"__future__", "dataclasses", "pathlib", "torch", "recon_core"}, imported


def test_registered_as_a_gaussian_representation(registry: Registry, example: Any) -> None:
    row = registry.info("ply-splats", "representation")
    assert row.status == Status.OK, row.detail
    cls = registry.get("representation", "ply-splats")
    assert cls is example.PlySplats and issubclass(cls, GaussianRepresentation)
    assert cls.provides == {"gaussians-3d"} and cls.export_formats == ("ply", "splat", "ply_compressed")


# ------------------------------------------------------------------------------ the data


def _truth() -> dict[str, torch.Tensor]:
    """Raw splats (SH degree 1) of opaque coloured blobs around the origin."""
    g = torch.Generator().manual_seed(0)
    n = N_GAUSSIANS
    rgb = torch.rand(n, 3, generator=g) * 0.8 + 0.1
    return {
        "means": (torch.rand(n, 3, generator=g) * 2 - 1) * 0.8,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
        "scales": torch.log(torch.rand(n, 3, generator=g) * 0.08 + 0.08),
        "opacities": torch.full((n,), 2.0),
        "sh0": ((rgb - 0.5) / SH_C0)[:, None, :],
        "shN": torch.randn(n, 3, 3, generator=g) * 0.1,
    }


def _spoiled(truth: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The truth with wrong colours, opacities and slightly shifted positions."""
    g = torch.Generator().manual_seed(1)
    out = dict(truth)
    out["sh0"] = truth["sh0"] + torch.randn(truth["sh0"].shape, generator=g) * 0.6
    out["opacities"] = truth["opacities"] - 1.5 * torch.rand(truth["opacities"].shape, generator=g)
    out["means"] = truth["means"] + torch.randn(truth["means"].shape, generator=g) * 0.03
    return out


def _cameras() -> Cameras:
    K = torch.tensor([[FOCAL, 0.0, SIZE / 2], [0.0, FOCAL, SIZE / 2], [0.0, 0.0, 1.0]])
    c2w = []
    for i in range(N_VIEWS):
        angle = 2 * math.pi * i / N_VIEWS
        c2w.append(torch.from_numpy(look_at(np.array([3 * math.cos(angle), 3 * math.sin(angle), 1.2]))).float())
    return Cameras.create(K, torch.stack(c2w), SIZE, SIZE)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, registry: Registry, example: Any) -> dict[str, Any]:
    """A nerfstudio folder of the true Gaussians' renders (white background) and the spoiled PLY."""
    root = tmp_path_factory.mktemp("ply-scene")
    cams = _cameras()
    truth = _rep(example, _truth())
    renderer = registry.create("renderer", "torch-3dgs")
    with torch.no_grad():
        images = renderer.render(truth, cams, background=torch.ones(3)).rgb.clamp(0, 1)
    frames = []
    for i in range(N_VIEWS):
        write_png(root / f"{i:04d}.png", images[i])
        gl = cams.c2w[i].double() @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))  # OpenCV -> OpenGL
        frames.append({"file_path": f"{i:04d}.png", "transform_matrix": gl.tolist(),
                       "split": "test" if i in TEST_VIEWS else "train"})
    meta = {"camera_model": "PINHOLE", "fl_x": FOCAL, "fl_y": FOCAL, "cx": SIZE / 2, "cy": SIZE / 2,
            "w": SIZE, "h": SIZE, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    ply = write_splat_ply(root / "scene.ply", _spoiled(_truth()), normals=False)  # gsplat-style: no nx ny nz
    train = [i for i in range(N_VIEWS) if i not in TEST_VIEWS]
    # the stored 8-bit images are the targets
    targets = torch.stack([torch.from_numpy(np.array(Image.open(root / f"{i:04d}.png"))) for i in train])
    return {"root": root, "ply": ply, "cameras": cams[train], "targets": targets.float() / 255}


def _rep(example: Any, splats: dict[str, torch.Tensor]) -> GaussianRepresentation:
    rep = example.PlySplats(example.PlySplatsConfig(sh_degree=1))
    rep.set_splats(splats)
    return rep


def _train_psnr(registry: Registry, example: Any, ply: Path, scene: dict[str, Any]) -> float:
    """Mean PSNR over the training views of the Gaussians ``ply`` holds, read by the example."""
    rep = example.PlySplats(example.PlySplatsConfig(path=str(ply)))
    rep.build(None, RunContext(device=torch.device("cpu"), seed=0, log=lambda m: None))  # type: ignore[arg-type]
    with torch.no_grad():
        rgb = registry.create("renderer", "torch-3dgs").render(rep, scene["cameras"], background=torch.ones(3)).rgb
    return float(np.mean([psnr(rgb[i].clamp(0, 1), scene["targets"][i]) for i in range(len(rgb))]))


# ------------------------------------------------------------------------------ the build


def test_build_reads_any_inria_ply_and_names_a_bad_file(example: Any, scene: dict[str, Any], tmp_path: Path) -> None:
    ctx = RunContext(device=torch.device("cpu"), seed=0, log=lambda m: None)
    rep = example.PlySplats(example.PlySplatsConfig(path=str(scene["ply"])))
    rep.build(None, ctx)  # type: ignore[arg-type]
    stored = read_splat_ply(scene["ply"])
    assert len(rep) == N_GAUSSIANS and rep.max_sh_degree == 1 and rep.sh_degree_in_use() == 1
    for key, value in stored.items():
        assert torch.equal(rep.splats[key].detach(), value), key
        assert rep.splats[key].requires_grad  # every entry refinable (the protocol's default)

    capped = example.PlySplats(example.PlySplatsConfig(path=str(scene["ply"]), sh_degree=0))
    capped.build(None, ctx)  # type: ignore[arg-type]
    assert capped.max_sh_degree == 0 and capped.splats["shN"].shape == (N_GAUSSIANS, 0, 3)
    padded = example.PlySplats(example.PlySplatsConfig(path=str(scene["ply"]), sh_degree=3))
    padded.build(None, ctx)  # type: ignore[arg-type]
    assert padded.splats["shN"].shape == (N_GAUSSIANS, 15, 3)
    assert torch.equal(padded.splats["shN"][:, :3].detach(), stored["shN"]) and not padded.splats["shN"][:, 3:].any()

    with pytest.raises(InputError, match="ply-splats.path"):
        example.PlySplats().build(None, ctx)  # type: ignore[arg-type]
    missing = tmp_path / "nowhere.ply"
    with pytest.raises(InputError, match="nowhere.ply"):
        example.PlySplats(example.PlySplatsConfig(path=str(missing))).build(None, ctx)  # type: ignore[arg-type]
    (tmp_path / "bad.ply").write_text("not a ply\n")
    with pytest.raises(InputError, match="bad.ply"):
        example.PlySplats(example.PlySplatsConfig(path=str(tmp_path / "bad.ply"))).build(None, ctx)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ the four refiners

COMMON = ["run.save_renders=false", "run.checkpoint_every=0", "run.log_every=0"]
REFINERS = {
    "3dgs-train": (None, ["3dgs-train.steps=30", "3dgs-train.densify=false"]),
    "ttr": (None, ["ttr.steps_pose=2", "ttr.steps_gs=20", "ttr.lpips=false", "ttr.eval_every=10"]),
    "confidence": (None, ["confidence.steps=30", "confidence.lambda_lpips=0", "confidence.generated_views=2",
                          "render-fix.free_space=false"]),
    "difix3d+": ("nearest-gt", ["difix3d+.steps=30", "difix3d+.fix_every=15", "difix3d+.novel_prob=0.3"]),
}


@pytest.fixture(scope="module")
def before(registry: Registry, example: Any, scene: dict[str, Any]) -> float:
    return _train_psnr(registry, example, scene["ply"], scene)


@pytest.mark.parametrize("refiner", list(REFINERS))
def test_refiner_trains_the_example_unmodified(refiner: str, registry: Registry, example: Any, scene: dict[str, Any],
                                               before: float, tmp_path: Path) -> None:
    """``recon run --repr ply-splats --set ply-splats.path=scene.ply --refiner NAME`` (the README's command)."""
    fixer, sets = REFINERS[refiner]
    out = tmp_path / "run"
    args = ["run", "--data", scene["root"], "--repr", "ply-splats", "--refiner", refiner, "--eval", "psnr",
            "--device", "cpu", "--out", out, "--set", f"ply-splats.path={scene['ply']}"]
    if fixer is not None:
        args += ["--fixer", fixer, "--set", f"{fixer}.data={scene['root']}"]
    for s in [*COMMON, *sets]:
        args += ["--set", s]
    cli = make_cli(registry)
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output + (result.stderr or "")
    config = json.loads((out / "config.json").read_text())
    assert config["renderer"]["name"] == "torch-3dgs"  # the protocol's default renderer on CPU
    doc = json.loads((out / "metrics.json").read_text())

    exported = out / "point_cloud.ply"
    assert doc["exports"] == [str(exported)]
    start, end = read_splat_ply(scene["ply"]), read_splat_ply(exported)
    assert set(end) == set(start) and end["shN"].shape == start["shN"].shape  # same layout, SH degree 1
    assert all(torch.isfinite(v).all() for v in end.values())
    moved = {k for k in start if not torch.allclose(start[k], end[k])}
    assert {"sh0", "opacities"} <= moved, moved  # colour and opacity were refined (the spoiled ones)
    after = _train_psnr(registry, example, exported, scene)
    print(f"{refiner}: train PSNR {before:.2f} -> {after:.2f} dB")
    assert after > before + 1.0, (refiner, before, after)

    report = doc["refiners"][refiner]
    assert math.isfinite(report["final_loss"])
    if refiner == "ttr":
        assert report["train_psnr"]["after"] > report["train_psnr"]["before"] + 0.5
    if refiner == "confidence":
        assert report["generated_views"] == 2
    if refiner == "difix3d+":
        assert report["rounds"] == 2 and doc["metrics"]["psnr+nearest-gt"] >= 100  # the oracle fixer was applied

    # recon export rebuilds the run (ply-splats re-reads its PLY, then the checkpoint replaces it)
    again = CliRunner().invoke(cli, ["export", str(out), "--format", "ply", "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output + (again.stderr or "")
    for key, value in read_splat_ply(tmp_path / "again" / "point_cloud.ply").items():
        assert torch.equal(value, end[key]), key
