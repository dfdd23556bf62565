"""Driving loader (recon_plugins.loaders.dggt): the street benchmark and the DGGT folder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from loaders_support import STREET, gradient_image, write_png, write_transforms

from recon_core import InputError
from recon_plugins.loaders import register_loaders, undistort
from recon_plugins.loaders.dggt import OPENCV_TO_WAYMO, DggtConfig, DggtLoader, poses_known


def best_loader(path: Path) -> str:
    scores = {cls.name: cls().detect(path) for cls in register_loaders()}
    return max(scores, key=scores.get)


def test_street_benchmark_loads_20_views_with_times_and_sky() -> None:
    assert best_loader(STREET) == "dggt"
    scene = DggtLoader().load(STREET)
    assert len(scene.views) == 20 and scene.is_dynamic and poses_known(scene)
    assert [round(v.time, 4) for v in scene.views] == [round(0.1 * i, 4) for i in range(20)]
    assert all(v.has("sky_mask") for v in scene.views)
    sky = scene.views[0].sky_mask
    assert sky.dtype == torch.bool and sky.shape == (180, 320) and 0.05 < float(sky.float().mean()) < 0.5
    assert [v.split for v in scene.views].count("test") == 4
    assert scene.bounds.radius >= 30.0


def test_street_sky_masks_keep_thin_structures_when_downscaled() -> None:
    """Every column with a non-sky pixel above the horizon row in a 3x3 block stays non-sky."""
    full = DggtLoader().load(STREET).views[0].sky_mask
    for factor in (2, 3):
        small = DggtLoader(DggtConfig(downscale=factor)).load(STREET).views[0].sky_mask
        h, w = small.shape
        for i in range(h):
            for j in range(w):
                block = full[int(i * 180 / h) : int(np.ceil((i + 1) * 180 / h)), int(j * 320 / w) : int(np.ceil((j + 1) * 320 / w))]
                assert bool(small[i, j]) == bool(block.all())


def test_lamp_post_survives_in_a_loaded_sky_mask(tmp_path: Path) -> None:
    write_transforms(tmp_path, n=2, w=36, h=12, sky=True)
    for i in range(2):
        m = np.full((12, 36), 255, np.uint8)
        m[:, 7 + i] = 0  # a 1-pixel lamp post at an odd / even column
        write_png(tmp_path / "sky" / f"{i:04d}.png", m)
    assert DggtLoader().detect(tmp_path) == 20
    for factor in (2, 3):
        for i, v in enumerate(DggtLoader(DggtConfig(downscale=factor)).load(tmp_path).views):
            assert (~v.sky_mask).any(dim=0).nonzero().flatten().tolist() == [(7 + i) // factor]


def write_dggt(root: Path, frames: int = 6, cams: tuple[int, ...] = (0, 1), poses: bool = True, w: int = 24, h: int = 16) -> dict:
    for t in range(frames):
        for c in cams:
            write_png(root / "images" / f"{t:03d}_{c}.jpg", gradient_image(h, w, t + 10 * c))
            sky = np.zeros((h, w), np.uint8)
            sky[:4] = 255
            write_png(root / "sky_masks" / f"{t:03d}_{c}.png", sky)
            dyn = np.zeros((h, w), np.uint8)
            dyn[8:12, 10:14] = 255
            write_png(root / "fine_dynamic_masks" / "all" / f"{t:03d}_{c}.png", dyn)
    ego = {}
    if poses:
        (root / "ego_pose").mkdir()
        (root / "extrinsics").mkdir()
        (root / "intrinsics").mkdir()
        for t in range(frames):
            e = np.eye(4)
            e[:3, 3] = [10.0 + 2.0 * t, 5.0, 0.0]  # driving along world +x
            np.savetxt(root / "ego_pose" / f"{t:03d}.txt", e)
            ego[t] = e
        for c in cams:
            ext = np.eye(4)  # camera c looks along the vehicle x axis, turned by 90° * c about z
            a = np.pi / 2 * c
            ext[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
            ext[:3, 3] = [1.5, 0.0, 1.8]
            np.savetxt(root / "extrinsics" / f"{c}.txt", ext)
            np.savetxt(root / "intrinsics" / f"{c}.txt", [20.0, 21.0, 12.0, 8.0, 0.01, 0, 0, 0, 0])
    return ego


def test_dggt_layout_with_poses(tmp_path: Path) -> None:
    write_dggt(tmp_path)
    assert best_loader(tmp_path) == "dggt"
    scene = DggtLoader(DggtConfig(views=(0, 1), start_idx=1, sequence_length=2, interval=2)).load(tmp_path)
    assert [v.name for v in scene.views] == ["001_0", "003_0", "001_1", "003_1"]
    assert [v.time for v in scene.views] == pytest.approx([0.0, 0.2, 0.0, 0.2])
    assert poses_known(scene)
    c0, c3, side = scene.views[0].camera, scene.views[1].camera, scene.views[2].camera
    # world = vehicle frame of frame 1; camera 0 at (1.5, 0, 1.8) looking along +x (OpenCV z)
    assert torch.allclose(c0.c2w[0, :3, 3], torch.tensor([1.5, 0.0, 1.8]))
    assert torch.allclose(c0.c2w[0, :3, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)  # forward
    assert torch.allclose(c0.c2w[0, :3, 1], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)  # image down = world down
    assert torch.allclose(c3.c2w[0, :3, 3], torch.tensor([5.5, 0.0, 1.8]))  # 2 frames later: 4 m further
    assert torch.allclose(side.c2w[0, :3, 2], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)  # camera 1 looks left (+y)
    # intrinsics/0.txt has k1 = 0.01: undone at load, so the view has the new pinhole K
    K = np.array([[20.0, 0, 12], [0, 21, 8], [0, 0, 1]])
    assert c0.distortion is None
    assert np.allclose(c0.K[0].double().numpy(), undistort.plan(K, np.array([0.01, 0, 0, 0, 0, 0]), "opencv", (16, 24)).new_K_array,
                       atol=1e-5)
    v = scene.views[0]
    assert v.sky_mask[:4].all() and not v.sky_mask[4:].any()
    assert int(v.dynamic_mask.sum()) == 16
    assert np.linalg.det(OPENCV_TO_WAYMO[:3, :3]) == pytest.approx(1.0)


def test_dggt_layout_without_poses(tmp_path: Path) -> None:
    write_dggt(tmp_path, frames=3, cams=(0,), poses=False)
    scene = DggtLoader(DggtConfig(unknown_fov_deg=90.0)).load(tmp_path)
    assert not poses_known(scene) and len(scene.views) == 3
    assert torch.equal(scene.cameras().c2w, torch.eye(4).expand(3, 4, 4))
    assert torch.allclose(scene.views[0].camera.K[0], torch.tensor([[12.0, 0, 12], [0, 12, 8], [0, 0, 1]]))


def test_dggt_selection_and_layout_errors(tmp_path: Path) -> None:
    write_dggt(tmp_path, frames=4, cams=(0,), poses=True)
    with pytest.raises(InputError, match="cameras present"):
        DggtLoader(DggtConfig(views=(2,))).load(tmp_path)
    with pytest.raises(InputError, match="frames end"):
        DggtLoader(DggtConfig(start_idx=2, sequence_length=5)).load(tmp_path)
    with pytest.raises(InputError, match="no frames"):
        DggtLoader(DggtConfig(start_idx=9)).load(tmp_path)
    (tmp_path / "ego_pose" / "002.txt").write_text("1 2 3\n")
    with pytest.raises(InputError, match="16 numbers") as e:
        DggtLoader().load(tmp_path)
    assert e.value.path == tmp_path / "ego_pose" / "002.txt"
    np.savetxt(tmp_path / "ego_pose" / "002.txt", np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(InputError, match="rigid"):
        DggtLoader().load(tmp_path)
    np.savetxt(tmp_path / "ego_pose" / "002.txt", np.eye(4))
    (tmp_path / "sky_masks" / "003_0.png").unlink()
    with pytest.raises(InputError) as e:
        DggtLoader().load(tmp_path)
    assert e.value.path == tmp_path / "sky_masks" / "003_0.png"


def test_dggt_jpg_masks_and_a_data_root_of_scenes(tmp_path: Path) -> None:
    """DGGT reads masks as .jpg as well as .png, and takes a data root of scene folders (000, 001)."""
    from PIL import Image

    root = tmp_path / "data"
    for name in ("000", "001"):
        write_dggt(root / name, frames=3, cams=(0,), poses=False)
    for mask in sorted((root / "001" / "sky_masks").iterdir()):  # 001: JPEG sky masks (lossy around the edge)
        Image.open(mask).convert("L").save(mask.with_suffix(".jpg"), quality=70)
        mask.unlink()
    assert DggtLoader().detect(root) == 20
    with pytest.raises(InputError, match="scene=NAME"):
        DggtLoader().load(root)
    with pytest.raises(InputError, match="no scene '007'"):
        DggtLoader(DggtConfig(scene="007")).load(root)
    png = DggtLoader(DggtConfig(scene="000")).load(root)
    jpg = DggtLoader(DggtConfig(scene="001")).load(root)
    assert jpg.name == "001" and len(jpg.views) == 3
    for a, b in zip(png.views, jpg.views):
        assert torch.equal(a.sky_mask, b.sky_mask), "a JPEG mask thresholds to the same sky as its PNG"
    single = tmp_path / "one"
    write_dggt(single / "000", frames=2, cams=(0,), poses=False)
    assert len(DggtLoader().load(single).views) == 2, "one scene: no need to name it"
