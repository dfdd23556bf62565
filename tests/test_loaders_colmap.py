"""COLMAP sparse-model loader (recon_plugins.loaders.colmap), round-tripped through pycolmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from loaders_support import gradient_image, ring_poses, write_png

from recon_core import InputError
from recon_plugins.loaders import undistort
from recon_plugins.loaders.colmap import ColmapConfig, ColmapLoader, camera_to_opencv

CAMERAS = [
    ("PINHOLE", 24, 18, [30.0, 31.0, 12.5, 8.7]),
    ("OPENCV", 20, 16, [25.0, 26.0, 10.2, 7.9, 0.05, -0.01, 0.001, -0.002]),
]


def write_model(root: Path, binary: bool) -> dict:
    """A model with two cameras, three posed images (PNG files) and coloured points."""
    rec = pycolmap.Reconstruction()
    for cid, (model, w, h, params) in enumerate(CAMERAS, start=1):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model=model, width=w, height=h, params=params, camera_id=cid))
    poses = ring_poses(3, radius=4.0)
    for iid, c2w in enumerate(poses, start=1):
        cid = 1 if iid < 3 else 2
        w2c = np.linalg.inv(c2w)
        image = pycolmap.Image(name=f"img_{iid}.png", camera_id=cid, image_id=iid)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3]))
        _, w, h, _ = CAMERAS[cid - 1]
        write_png(root / "images" / f"img_{iid}.png", gradient_image(h, w, iid))
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 3))
    colors = rng.integers(0, 256, (30, 3)).astype(np.uint8)
    for p, c in zip(points, colors):
        rec.add_point3D(p, pycolmap.Track(), c)
    model_dir = root / "sparse" / "0"
    model_dir.mkdir(parents=True)
    (rec.write if binary else rec.write_text)(str(model_dir))
    return {"poses": poses, "points": points, "colors": colors}


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_round_trip_recovers_cameras_and_points(tmp_path: Path, binary: bool) -> None:
    truth = write_model(tmp_path, binary)
    suffix = ".bin" if binary else ".txt"
    assert (tmp_path / "sparse" / "0" / f"cameras{suffix}").is_file()
    loader = ColmapLoader(ColmapConfig(test_every=0))
    assert loader.detect(tmp_path) == 10
    scene = loader.load(tmp_path)
    assert [v.name for v in scene.views] == ["img_1", "img_2", "img_3"]
    cams = scene.cameras()
    assert torch.allclose(cams.c2w.double(), torch.from_numpy(np.stack(truth["poses"])), atol=1e-5)
    fx, fy, cx, cy = CAMERAS[0][3]
    assert torch.allclose(cams.K[0], torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]))
    fx, fy, cx, cy, *dist = CAMERAS[1][3]
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    # the OPENCV camera is undistorted at load: its views get the new pinhole K, no coefficients
    assert cams.distortion is None
    assert np.allclose(cams.K[2].double().numpy(), undistort.plan(K, np.array(dist), "opencv", (16, 20)).new_K_array, atol=1e-5)
    assert not np.allclose(cams.K[2].double().numpy(), K, atol=1e-3)
    assert cams.width.tolist() == [24, 24, 20] and cams.height.tolist() == [18, 18, 16]
    pc = scene.point_cloud
    assert pc is not None and len(pc) == 30
    order = np.lexsort(truth["points"].T)
    got = np.lexsort(pc.points.double().numpy().T)
    assert np.allclose(pc.points.double().numpy()[got], truth["points"][order], atol=1e-6)
    assert np.allclose(pc.colors.numpy()[got] * 255, truth["colors"][order], atol=1e-3)
    assert scene.views[2].image.shape == (16, 20, 3)


def test_model_folder_given_directly_and_test_split(tmp_path: Path) -> None:
    write_model(tmp_path, True)
    scene = ColmapLoader(ColmapConfig(test_every=3)).load(tmp_path / "sparse" / "0")
    assert [v.split for v in scene.views] == ["train", "train", "test"]


@pytest.mark.parametrize(
    "model, params, K, dist",
    [
        ("SIMPLE_PINHOLE", [10, 4, 3], [[10, 0, 4], [0, 10, 3], [0, 0, 1]], None),
        ("PINHOLE", [10, 11, 4, 3], [[10, 0, 4], [0, 11, 3], [0, 0, 1]], None),
        ("SIMPLE_RADIAL", [10, 4, 3, 0.1], [[10, 0, 4], [0, 10, 3], [0, 0, 1]], [0.1, 0, 0, 0]),
        ("RADIAL", [10, 4, 3, 0.1, 0.2], [[10, 0, 4], [0, 10, 3], [0, 0, 1]], [0.1, 0.2, 0, 0]),
        ("OPENCV", [10, 11, 4, 3, 0.1, 0.2, 0.3, 0.4], [[10, 0, 4], [0, 11, 3], [0, 0, 1]], [0.1, 0.2, 0.3, 0.4]),
    ],
)
def test_camera_models(model: str, params: list, K: list, dist: list | None) -> None:
    k, d = camera_to_opencv(model, np.asarray(params, dtype=float), Path("cameras.bin"))
    assert np.allclose(k, K)
    assert (d is None and dist is None) or np.allclose(d, dist)


def test_unsupported_camera_model(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not supported"):
        camera_to_opencv("FOV", np.array([1.0, 2, 3, 4, 5]), tmp_path)


def test_bad_models_raise_input_error(tmp_path: Path) -> None:
    write_model(tmp_path, True)
    (tmp_path / "images" / "img_2.png").unlink()
    with pytest.raises(InputError, match="missing") as e:
        ColmapLoader(ColmapConfig(strict=True)).load(tmp_path)
    assert e.value.path == tmp_path / "images" / "img_2.png"
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 frames .*img_2\.png") as record:
        scene = ColmapLoader(ColmapConfig(test_every=2)).load(tmp_path)
    assert len(record) == 1 and [v.name for v in scene.views] == ["img_1", "img_3"]
    assert [v.split for v in scene.views] == ["train", "test"]  # the hold-out counts loaded images
    (tmp_path / "sparse" / "0" / "cameras.bin").write_bytes(b"\x01\x02garbage")
    with pytest.raises(InputError, match="cannot be read"):
        ColmapLoader().load(tmp_path)
    with pytest.raises(InputError, match="no COLMAP model"):
        ColmapLoader().load(tmp_path / "images")
    assert ColmapLoader().detect(tmp_path / "images") == 0


@pytest.mark.parametrize("cameras_txt", ["1 PINHOLE abc\n", "1 PINHOLE 10 10 5 5\n", "1 NOT_A_MODEL 10 10 5 5 1\n", "x\n", "1 FOV 10 10 5 5 5 0.1\n"])
def test_malformed_text_models_raise_input_error(tmp_path: Path, cameras_txt: str) -> None:
    write_model(tmp_path, binary=False)
    model = tmp_path / "sparse" / "0"
    for extra in ("rigs.txt", "frames.txt"):  # legacy layout: cameras, images, points3D only
        (model / extra).unlink()
    (model / "cameras.txt").write_text(cameras_txt)
    (model / "images.txt").write_text("")
    with pytest.raises(InputError) as e:
        ColmapLoader().load(tmp_path)
    assert e.value.path is not None and e.value.path.is_relative_to(model)


def test_legacy_text_model_without_rigs_and_frames(tmp_path: Path) -> None:
    """Models written by COLMAP < 3.12 have no rigs.txt / frames.txt; pycolmap infers trivial ones."""
    truth = write_model(tmp_path, binary=False)
    for extra in ("rigs.txt", "frames.txt"):
        (tmp_path / "sparse" / "0" / extra).unlink()
    scene = ColmapLoader(ColmapConfig(test_every=0)).load(tmp_path)
    assert torch.allclose(scene.cameras().c2w.double(), torch.from_numpy(np.stack(truth["poses"])), atol=1e-5)
