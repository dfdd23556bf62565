"""recon_core.splatfile: the antimatter15 .splat layout (round trip, order, parity with gsplat's
writer), SuperSplat's compressed PLY through gsplat, and `recon export RUN --format splat|cameras`
loading back into our 3dgs."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from recon_core.errors import InputError
from recon_core.splatfile import SPLAT_RECORD, read_splat_file, splat_records, write_splat_file


def _splats(n: int = 200, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 3,
        "opacities": torch.randn(n, generator=g) * 2,
        "sh0": torch.randn(n, 1, 3, generator=g) * 0.8,
        "shN": torch.randn(n, 3, 3, generator=g),
    }


def _activated(s: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    q = torch.nn.functional.normalize(s["quats"], dim=1)
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)  # q and -q are the same rotation
    return {"means": s["means"].numpy(), "scales": s["scales"].exp().numpy(), "alpha": torch.sigmoid(s["opacities"]).numpy(),
            "rgb": (0.5 + 0.28209479177387814 * s["sh0"].reshape(-1, 3)).clamp(0, 1).numpy(), "quats": q.numpy()}


def test_round_trip_to_the_format_precision(tmp_path):
    splats = _splats()
    path = write_splat_file(tmp_path / "x.splat", splats)
    assert path.stat().st_size == 32 * 200 and SPLAT_RECORD.itemsize == 32
    back = read_splat_file(path, sh_degree=1)
    assert back["shN"].shape == (200, 3, 3) and not back["shN"].any()  # no higher bands in the format
    # the file is ordered by decreasing volume * opacity: match rows by position (exact float32)
    order = [int(np.flatnonzero((splats["means"].numpy() == m).all(1))[0]) for m in back["means"].numpy()]
    truth = _activated({k: v[order] for k, v in splats.items()})
    got = _activated(back)
    volume_alpha = truth["scales"].astype(np.float64).prod(1) * truth["alpha"]
    assert (np.diff(volume_alpha) <= 1e-6 * volume_alpha[:-1]).all()
    assert np.array_equal(got["means"], truth["means"])
    np.testing.assert_allclose(got["scales"], truth["scales"], rtol=1e-6)
    assert np.abs(got["rgb"] - truth["rgb"]).max() <= 0.5 / 255 + 1e-6
    inner = (truth["alpha"] > 1 / 255) & (truth["alpha"] < 254 / 255)
    assert np.abs(got["alpha"][inner] - truth["alpha"][inner]).max() <= 0.5 / 255 + 1e-6
    angle = 2 * np.arccos(np.clip(np.abs((got["quats"] * truth["quats"]).sum(1)), 0, 1))
    assert angle.max() < 0.02  # radians: 1/128 per component


def test_bad_splat_files_are_input_errors(tmp_path):
    (tmp_path / "short.splat").write_bytes(b"\0" * 33)
    with pytest.raises(InputError, match="multiple of the 32-byte"):
        read_splat_file(tmp_path / "short.splat")
    with pytest.raises(InputError, match="not found"):
        read_splat_file(tmp_path / "absent.splat")


def test_same_gaussians_as_gsplats_writer():
    exporter = pytest.importorskip("gsplat.exporter")
    splats = _splats(64, seed=1)
    ours = splat_records(splats)
    theirs = np.frombuffer(exporter.export_splats(**{k: v.clone() for k, v in splats.items()}, format="splat"),
                           dtype=SPLAT_RECORD)
    key = lambda r: np.lexsort(r["position"].T[::-1])  # noqa: E731 - the two files order rows differently
    ours, theirs = ours[key(ours)], theirs[key(theirs)]
    assert np.array_equal(ours["position"], theirs["position"])
    np.testing.assert_allclose(ours["scale"], theirs["scale"], rtol=1e-6)
    # gsplat truncates where we round: at most one step apart
    assert np.abs(ours["rgba"].astype(int) - theirs["rgba"].astype(int)).max() <= 1
    assert np.abs(ours["rot"].astype(int) - theirs["rot"].astype(int)).max() <= 1


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A short real 3dgs run on the generated demo scene (CPU)."""
    from recon_cli.main import make_cli
    from recon_core.registry import Registry

    root = tmp_path_factory.mktemp("splat-run")
    cli = make_cli(Registry())
    runner = CliRunner()
    result = runner.invoke(cli, ["demo-scene", str(root / "scene"), "--train-views", "6", "--test-views", "2", "--size", "24"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["run", "--data", str(root / "scene"), "--repr", "3dgs", "--set", "3dgs-train.steps=20",
                                 "--set", "3dgs.num_points=400", "--eval", "psnr", "--out", str(root / "run"), "--json"])
    assert result.exit_code == 0, result.output
    return cli, root, json.loads(result.stdout)


def test_export_splat_loads_back_into_3dgs(trained_run):
    cli, root, doc = trained_run
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(root / "run"), "--format", "splat"])
    assert result.exit_code == 0, result.output
    splat = root / "run" / "point_cloud.splat"
    assert result.stdout.strip() == str(splat)
    result = runner.invoke(cli, ["run", "--data", str(root / "scene"), "--repr", "3dgs", "--set", "3dgs.init=ply",
                                 "--set", f"3dgs.ply_path={splat}", "--set", "3dgs.sh_degree=0", "--refiner", "none",
                                 "--eval", "psnr", "--out", str(root / "from-splat"), "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    # same Gaussians up to the format's precision (8-bit colour, no SH bands): nearly the same images
    assert abs(again["metrics"]["psnr"] - doc["metrics"]["psnr"]) < 1.0, (again["metrics"], doc["metrics"])
    ply = root / "run" / "point_cloud.ply"
    from recon_core.ply import read_splat_ply

    original = read_splat_ply(ply)
    back = read_splat_file(splat)
    assert len(back["means"]) == len(original["means"])
    assert {tuple(m) for m in back["means"].tolist()} == {tuple(m) for m in original["means"].tolist()}


def test_export_ply_compressed_and_cameras(trained_run):
    cli, root, _ = trained_run
    runner = CliRunner()
    if importlib.util.find_spec("gsplat") is not None:  # the cuda extra
        result = runner.invoke(cli, ["export", str(root / "run"), "--format", "ply_compressed"])
        assert result.exit_code == 0, result.output
        head = (root / "run" / "point_cloud.compressed.ply").read_bytes()[:2000]
        assert head.startswith(b"ply\n") and b"element chunk" in head and b"packed_position" in head
    result = runner.invoke(cli, ["export", str(root / "run"), "--format", "cameras"])
    assert result.exit_code == 0, result.output
    doc = json.loads((root / "run" / "transforms.json").read_text())
    info = json.loads(runner.invoke(cli, ["inspect-data", str(root / "scene"), "--json"]).stdout)
    assert [f["name"] for f in doc["frames"]] == [v["name"] for v in info["views"]]
    for frame, view in zip(doc["frames"], info["views"]):
        c2w_cv = np.array(frame["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])
        np.testing.assert_allclose(c2w_cv, np.array(view["c2w"]), atol=1e-5)
        assert frame["fl_x"] == pytest.approx(view["K"][0][0]) and frame["split"] == view["split"]
    # the exported file is a dataset recon reads (the images are the original ones)
    loaded = json.loads(runner.invoke(cli, ["inspect-data", str(root / "run" / "transforms.json"), "--json"]).stdout)
    assert len(loaded["views"]) == len(info["views"])
