"""nerfstudio transforms.json and Blender loaders (recon_plugins.loaders.nerfstudio)."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loaders_support import GL_TO_CV, OBJECT, gradient_image, write_instant_ngp, write_ply, write_png, write_transforms
from PIL import Image

from recon_core import InputError
from recon_plugins.loaders import imageio
from recon_plugins.loaders.nerfstudio import NerfstudioConfig, NerfstudioLoader, parse_transforms


def load(path: Path, **config: Any):  # noqa: ANN201
    return NerfstudioLoader(NerfstudioConfig(**config)).load(path)


def test_cameras_masks_depth_and_times(tmp_path: Path) -> None:
    truth = write_transforms(tmp_path, n=4, masks=True, depth="npy", times=True)
    scene = load(tmp_path)
    cams = scene.cameras()
    assert len(scene.views) == 4 and scene.is_dynamic
    assert torch.allclose(cams.c2w.double(), torch.from_numpy(truth["c2w_cv"]), atol=1e-6)
    assert torch.allclose(cams.K[0].double(), torch.from_numpy(truth["K"]))
    assert cams.distortion is None
    assert [round(v.time, 6) for v in scene.views] == [0.0, 0.1, 0.2, 0.3]
    v = scene.views[1]
    assert v.image.shape == (12, 16, 3) and v.image.dtype == torch.float32
    assert v.object_mask.dtype == torch.bool and int(v.object_mask.sum()) == (12 - 4) * (16 - 6)
    assert torch.allclose(v.depth, torch.full((12, 16), 3.5))
    assert v.alpha is None


def test_depth_png_uses_scale(tmp_path: Path) -> None:
    write_transforms(tmp_path, n=2, depth="png")
    assert torch.allclose(load(tmp_path).views[1].depth, torch.full((12, 16), 3.5))
    assert torch.allclose(load(tmp_path, depth_scale=0.01).views[1].depth, torch.full((12, 16), 35.0))


def test_rgba_alpha_becomes_mask_and_background(tmp_path: Path) -> None:
    write_transforms(tmp_path, n=2, rgba=True)
    v = load(tmp_path, background=(0.0, 0.0, 1.0)).views[0]
    assert v.alpha is not None and v.object_mask is not None
    assert torch.equal(v.object_mask, v.alpha > 0.5)
    assert torch.allclose(v.image[0, 0], torch.tensor([0.0, 0.0, 1.0]))  # transparent corner → background
    assert not load(tmp_path, alpha_mask=False).views[0].has("object_mask")


def test_downscale_scales_intrinsics_and_masks(tmp_path: Path) -> None:
    truth = write_transforms(tmp_path, n=2, masks=True)
    v = load(tmp_path, downscale=2).views[0]
    assert (v.height, v.width) == (6, 8)
    assert v.image.shape == (6, 8, 3) and v.object_mask.shape == (6, 8)
    assert torch.allclose(v.camera.K[0].double(), torch.from_numpy(truth["K"]) * torch.tensor([[0.5], [0.5], [1.0]]).double())


def test_static_scene_with_one_shared_time_is_not_dynamic(tmp_path: Path) -> None:
    write_transforms(tmp_path, n=2)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    for f in meta["frames"]:
        f["time"] = 0.0
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    assert not load(tmp_path).is_dynamic


def test_splits_from_filenames_and_per_frame_intrinsics(tmp_path: Path) -> None:
    write_transforms(tmp_path, n=4, extra={"train_filenames": ["images/0000.png", "images/0001.png"], "test_filenames": ["images/0002.png"], "val_filenames": ["images/0003.png"]})
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta["frames"][3]["fl_x"] = 40.0
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    scene = load(tmp_path)
    assert [v.split for v in scene.views] == ["train", "train", "test", "val"]
    assert float(scene.views[3].camera.K[0, 0, 0]) == 40.0 and float(scene.views[0].camera.K[0, 0, 0]) == 20.0


def test_ply_point_cloud_and_applied_transform(tmp_path: Path) -> None:
    pts = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    cols = np.random.default_rng(1).integers(0, 256, (50, 3)).astype(np.uint8)
    write_ply(tmp_path / "sparse_pc.ply", pts, cols)
    applied = [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]]
    write_transforms(tmp_path, n=3, extra={"ply_file_path": "sparse_pc.ply", "applied_transform": applied})
    scene = load(tmp_path)
    assert scene.point_cloud is not None and len(scene.point_cloud) == 50
    assert torch.allclose(scene.point_cloud.points, torch.from_numpy(pts))
    assert torch.allclose(scene.point_cloud.colors, torch.from_numpy(cols).float() / 255)
    assert scene.bounds.radius < 4  # from the points (spread ~ N(0, 1)), not the cameras
    assert parse_transforms(tmp_path).applied_transform.shape == (4, 4)


def test_blender_synthetic_layout(tmp_path: Path) -> None:
    angle = 0.6911112070083618
    c2w = np.eye(4)
    c2w[:3, 3] = [0.0, 0.0, 4.0]  # OpenGL: camera at +z looking down -z
    for split, n in (("train", 2), ("test", 1)):
        frames = []
        for i in range(n):
            write_png(tmp_path / split / f"r_{i}.png", gradient_image(10, 10, i, channels=4))
            frames.append({"file_path": f"./{split}/r_{i}", "rotation": 0.0, "transform_matrix": c2w.tolist()})
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    assert NerfstudioLoader().detect(tmp_path) == 10
    scene = load(tmp_path)
    assert [v.split for v in scene.views] == ["train", "train", "test"]
    assert len({v.name for v in scene.views}) == 3  # train/r_0 and test/r_0 stay distinct
    K = scene.views[0].camera.K[0]
    assert float(K[0, 0]) == pytest.approx(0.5 * 10 / math.tan(angle / 2), rel=1e-6)
    assert float(K[0, 2]) == 5.0 and float(K[1, 2]) == 5.0
    assert torch.allclose(scene.views[0].camera.c2w[0].double(), torch.from_numpy(c2w @ GL_TO_CV).double())


def test_object_dataset_loads_with_splits_and_mesh() -> None:
    scene = load(OBJECT)
    assert len(scene.views) == 64 and len(scene.train_views) == 48 and len(scene.split("test")) == 16
    assert scene.gt_mesh_path == OBJECT / "gt_mesh.ply" and not scene.is_dynamic
    v = scene.views[0]
    assert v.object_mask is not None and v.depth is not None and v.alpha is not None


@pytest.mark.skipif(not OBJECT.is_dir(), reason="needs the shared object dataset")
def test_split_file_restricts_the_object_scene_to_its_frames() -> None:
    scene = load(OBJECT, split_file="split_sparse3.json")  # relative: next to the data
    assert [v.name for v in scene.train_views] == ["0000", "0015", "0029"]  # transforms order
    assert [v.name for v in scene.eval_views] == [f"{i:04d}" for i in range(48, 64)]
    assert len(scene.views) == 19
    full = load(OBJECT)
    assert torch.equal(scene.views[1].camera.c2w, full.views[15].camera.c2w)


def test_split_file_errors_name_the_file(tmp_path: Path) -> None:
    write_transforms(tmp_path / "data", n=4)
    split = tmp_path / "split.json"

    def attempt(doc: Any) -> None:
        split.write_text(json.dumps(doc))
        load(tmp_path / "data", split_file=str(split))  # absolute path

    split.write_text(json.dumps({"train": ["images/0002.png", "./images/0000.png"], "val": ["images/0003"]}))
    scene = load(tmp_path / "data", split_file=str(split))
    assert [(v.name, v.split) for v in scene.views] == [("0000", "train"), ("0002", "train"), ("0003", "val")]
    for doc, message in [
        ({"train": ["images/0009.png"]}, "lists 'images/0009.png' under 'train', but no frame"),
        ({"train": ["images/0001.png"], "test": ["images/0001.png"]}, "under both 'train' and 'test'"),
        ({"train": ["images/0001.png"], "holdout": []}, "unknown key(s) holdout"),
        ({"train": "images/0001.png"}, "'train' must be a list of file paths"),
        ({"train": []}, "split file lists no frames"),
    ]:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            attempt(doc)
        assert str(split) in str(info.value)
    with pytest.raises(InputError, match="split file is missing"):
        load(tmp_path / "data", split_file="nope.json")


def test_loading_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_transforms(tmp_path, n=3, masks=True)
    calls = []
    original = imageio.read_pixels
    monkeypatch.setattr(imageio, "read_pixels", lambda p, exif=True: calls.append(p) or original(p, exif))
    scene = load(tmp_path)
    assert calls == []  # only headers were read
    scene.views[2].image
    assert calls and all(Path(c).name == "0002.png" for c in calls)


# ------------------------------------------------------------------------------- bad input


def _base(tmp_path: Path) -> dict[str, Any]:
    return write_transforms(tmp_path, n=2)["meta"]


BAD_EDITS = [
    ("no frames key", lambda m: m.pop("frames"), "frames"),
    ("frames not a list", lambda m: m.__setitem__("frames", {"a": 1}), "frames"),
    ("empty frames", lambda m: m.__setitem__("frames", []), "no frames"),
    ("no intrinsics", lambda m: [m.pop(k) for k in ("fl_x", "fl_y")], "intrinsics"),
    ("no cx", lambda m: m.pop("cx"), "cx"),
    ("negative focal", lambda m: m.__setitem__("fl_x", -3), "fl_x"),
    ("string focal", lambda m: m.__setitem__("fl_x", "20"), "fl_x"),
    ("w without h", lambda m: m.pop("h"), "'w' and 'h'"),
    ("wrong w", lambda m: m.__setitem__("w", 99), "99x12"),
    ("equirectangular", lambda m: m.__setitem__("camera_model", "EQUIRECTANGULAR"), "not supported"),
    ("opencv k4", lambda m: m.__setitem__("k4", 0.01), "k4"),
    ("fisheye p1", lambda m: m.update(camera_model="OPENCV_FISHEYE", p1=0.01), "tangential"),
    ("string k1", lambda m: m.__setitem__("k1", "0.1"), "k1"),
    ("no file_path", lambda m: m["frames"][0].pop("file_path"), "file_path"),
    ("all images missing", lambda m: [f.__setitem__("file_path", f"images/nope{i}.png") for i, f in enumerate(m["frames"])],
     "all 2 frames are missing"),
    ("no transform_matrix", lambda m: m["frames"][0].pop("transform_matrix"), "transform_matrix"),
    ("2x2 matrix", lambda m: m["frames"][0].__setitem__("transform_matrix", [[1, 0], [0, 1]]), "shape"),
    ("nan pose", lambda m: m["frames"][0]["transform_matrix"][0].__setitem__(3, float("nan")), "NaN"),
    ("scaled pose", lambda m: m["frames"][0].__setitem__("transform_matrix", (np.diag([2.0, 2, 2, 1])).tolist()), "rigid"),
    ("reflected pose", lambda m: m["frames"][0].__setitem__("transform_matrix", (np.diag([-1.0, 1, 1, 1])).tolist()), "rigid"),
    ("bad split", lambda m: m["frames"][0].__setitem__("split", "holdout"), "split"),
    ("partial times", lambda m: m["frames"][0].__setitem__("time", 0.5), "time"),
    ("missing mask", lambda m: m["frames"][0].__setitem__("mask_path", "masks/none.png"), "missing"),
    ("missing depth", lambda m: m["frames"][0].__setitem__("depth_file_path", "d/none.npy"), "missing"),
    ("bad applied_transform", lambda m: m.__setitem__("applied_transform", [[1, 2]]), "applied_transform"),
    ("missing ply", lambda m: m.__setitem__("ply_file_path", "none.ply"), "missing"),
]


@pytest.mark.parametrize("label, edit, message", BAD_EDITS, ids=[b[0] for b in BAD_EDITS])
def test_malformed_transforms_raise_input_error(tmp_path: Path, label: str, edit, message: str) -> None:  # noqa: ANN001
    meta = _base(tmp_path)
    edit(meta)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=message) as e:
        load(tmp_path)
    assert e.value.path is not None


def test_invalid_json_and_unreadable_image(tmp_path: Path) -> None:
    _base(tmp_path)
    (tmp_path / "images" / "0001.png").write_bytes(b"garbage")
    with pytest.raises(InputError) as e:
        load(tmp_path)
    assert e.value.path == tmp_path / "images" / "0001.png"
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        load(tmp_path)
    with pytest.raises(InputError):
        load(tmp_path / "empty")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
KEYS = ["fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model", "k1", "camera_angle_x", "frames", "ply_file_path", "applied_transform", "train_filenames"]
FRAME_KEYS = ["file_path", "transform_matrix", "mask_path", "depth_file_path", "time", "split", "fl_x", "w"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_transforms_only_raise_input_error(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    meta = copy.deepcopy(write_transforms(root, n=2)["meta"])
    for _ in range(data.draw(st.integers(1, 3))):
        if data.draw(st.booleans()):
            meta[data.draw(st.sampled_from(KEYS))] = data.draw(json_values)
        elif isinstance(meta.get("frames"), list) and meta["frames"] and isinstance(meta["frames"][0], dict):
            meta["frames"][0][data.draw(st.sampled_from(FRAME_KEYS))] = data.draw(json_values)
    (root / "transforms.json").write_text(json.dumps(meta))
    try:
        scene = load(root)
    except InputError:
        return
    for v in scene.views:  # whatever loaded must be valid
        assert torch.isfinite(v.camera.c2w).all() and torch.isfinite(v.camera.K).all()
        assert v.image.shape == (v.height, v.width, 3)


PLY_CASES = {
    "garbage": b"this is not a ply file",
    "empty": b"",
    "truncated": b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nproperty float y\nproperty float z\nend_header\n\x00\x00",
    "no xyz": b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float a\nend_header\n1\n",
    "no vertex": b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n",
    "nan": b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\nend_header\nnan 0 0\n",
    "zero points": b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\nend_header\n",
    "bad ascii": b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\nend_header\n1 two 3\n",
}


@pytest.mark.parametrize("name", list(PLY_CASES))
def test_malformed_ply_raises_input_error(tmp_path: Path, name: str) -> None:
    (tmp_path / "pc.ply").write_bytes(PLY_CASES[name])
    write_transforms(tmp_path, n=2, extra={"ply_file_path": "pc.ply"})
    with pytest.raises(InputError) as e:
        load(tmp_path)
    assert e.value.path == tmp_path / "pc.ply"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_fuzzed_ply_bytes_only_raise_input_error(tmp_path: Path, blob: bytes) -> None:
    header = b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    (tmp_path / "pc.ply").write_bytes(header + blob)
    write_transforms(tmp_path, n=2, extra={"ply_file_path": "pc.ply"})
    try:
        scene = load(tmp_path)
    except InputError:
        return
    assert scene.point_cloud is not None and torch.isfinite(scene.point_cloud.points).all()


@pytest.mark.parametrize("model, extra, expected, kind", [
    ("OPENCV", {"k1": 0.1, "k2": 0.2, "p1": 0.01, "p2": 0.02, "k3": 0.3}, [0.1, 0.2, 0.01, 0.02, 0.3], "opencv"),
    ("OPENCV", {"k1": 0.1}, [0.1, 0.0, 0.0, 0.0], "opencv"),
    ("OPENCV_FISHEYE", {"k1": 0.1, "k2": 0.2, "k3": 0.3, "k4": 0.4}, [0.1, 0.2, 0.3, 0.4], "fisheye"),
    (None, {"is_fisheye": True, "k1": 0.1}, [0.1, 0.0, 0.0, 0.0], "fisheye"),  # instant-ngp's flag
    (None, {"k1": 0.1, "p1": 0.01}, [0.1, 0.0, 0.01, 0.0], "opencv"),
    ("PINHOLE", {"k1": 0.1}, None, "opencv"),
    ("OPENCV", {"k1": 0.0}, None, "opencv"),
])
def test_camera_models(tmp_path: Path, model: str | None, extra: dict, expected: list | None, kind: str) -> None:
    write_transforms(tmp_path, n=2, extra={"camera_model": model, **extra})
    meta = json.loads((tmp_path / "transforms.json").read_text())
    if model is None:
        meta.pop("camera_model")
        (tmp_path / "transforms.json").write_text(json.dumps(meta))
    for f in parse_transforms(tmp_path).frames:
        assert (f.distortion is None and expected is None) or np.allclose(f.distortion, expected)
        assert f.distortion_model == kind
    assert load(tmp_path).cameras().distortion is None  # undone at load (tests/test_loaders_undistort.py)


def test_distortion_is_read_per_frame_over_the_top_level(tmp_path: Path) -> None:
    write_transforms(tmp_path, n=3, extra={"k1": 0.1, "p2": -0.01})
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta["frames"][1].update(k1=-0.2, k2=0.05)
    meta["frames"][2].update(camera_model="PINHOLE")
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    d = [f.distortion for f in parse_transforms(tmp_path).frames]
    assert np.allclose(d[0], [0.1, 0.0, 0.0, -0.01]) and np.allclose(d[1], [-0.2, 0.05, 0.0, -0.01]) and d[2] is None
    K = load(tmp_path).cameras().K
    assert not torch.allclose(K[0], K[1]) and torch.allclose(K[2], torch.tensor([[20.0, 0, 8], [0, 21.0, 6], [0, 0, 1]]))


# ----------------------------------------------------------------- a real capture (instant-ngp)


def _load_recording(path: Path, **config: Any):  # noqa: ANN202
    """(scene, [warning messages]) with every warning recorded, however often it repeats."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scene = load(path, **config)
    return scene, [str(w.message) for w in record]


def test_instant_ngp_capture_skips_missing_frames_with_one_warning(tmp_path: Path) -> None:
    truth = write_instant_ngp(tmp_path, n=18, missing=(4, 11))
    scene, messages = _load_recording(tmp_path)
    assert len(messages) == 1, messages
    assert "skipped 2 of 18 frames" in messages[0] and all(m in messages[0] for m in truth["missing"])
    assert "nerfstudio.strict=true" in messages[0]
    assert [v.name for v in scene.views] == truth["names"]
    present = [i for i in range(18) if i not in (4, 11)]
    cams = scene.cameras()
    assert torch.allclose(cams.c2w.double(), torch.from_numpy(truth["c2w_cv"][present]), atol=1e-6)  # OpenGL → OpenCV
    assert cams.distortion is None and scene.point_cloud is None
    assert (scene.views[0].width, scene.views[0].height) == (30, 40)


def test_instant_ngp_strict_missing_frame_is_an_input_error(tmp_path: Path) -> None:
    truth = write_instant_ngp(tmp_path, n=6, missing=(2, 4))
    with pytest.raises(InputError, match=r"image of frame 2 \(file_path .*frame_0002.jpg.*\) is missing") as e:
        load(tmp_path, strict=True)
    assert e.value.path == tmp_path / "images" / truth["missing"][0]


def test_strict_through_the_cli_exits_2_and_inspect_data_warns(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from recon_cli.main import make_cli
    from recon_core.registry import Registry

    write_instant_ngp(tmp_path / "data", n=6, missing=(2,))
    cli = make_cli(Registry())
    runner = CliRunner()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ok = runner.invoke(cli, ["inspect-data", str(tmp_path / "data"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert len(json.loads(ok.stdout)["views"]) == 5
    assert sum("skipped 1 of 6 frames" in str(w.message) for w in record) == 1
    bad = runner.invoke(cli, ["run", "--data", str(tmp_path / "data"), "--repr", "3dgs", "--device", "cpu",
                              "--set", "nerfstudio.strict=true", "--out", str(tmp_path / "run")])
    assert bad.exit_code == 2, bad.output
    assert "frame_0002.jpg" in bad.output and "missing" in bad.output


def test_no_split_holds_out_every_eighth_frame_in_name_order(tmp_path: Path) -> None:
    truth = write_instant_ngp(tmp_path, n=18, missing=(4, 11))
    scene, _ = _load_recording(tmp_path)
    names = sorted(truth["names"])
    assert [v.name for v in scene.split("test")] == [names[7], names[15]] == ["frame_0008", "frame_0017"]
    assert len(scene.split("train")) == 14
    scene, _ = _load_recording(tmp_path, test_every=3)
    assert [v.name for v in scene.split("test")] == names[2::3]
    scene, _ = _load_recording(tmp_path, test_every=0)
    assert scene.split("test") == []
    with pytest.raises(InputError, match="nerfstudio.test_every must be >= 0"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load(tmp_path, test_every=-1)


def test_a_split_in_the_data_is_kept(tmp_path: Path) -> None:
    write_transforms(tmp_path, n=10)
    assert [v.name for v in load(tmp_path).split("test")] == ["0007"]  # no split: the hold-out
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta["frames"][0]["split"] = "test"
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    assert [v.name for v in load(tmp_path).split("test")] == ["0000"]
    meta["frames"][0].pop("split")
    meta["test_filenames"] = ["images/0003.png"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    assert [v.name for v in load(tmp_path).split("test")] == ["0003"]


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    truth = write_instant_ngp(tmp_path, n=2, missing=(), distortion={})
    with Image.open(tmp_path / "images" / "frame_0000.jpg") as im:
        assert im.size == (40, 30)  # stored sideways
    image = load(tmp_path).views[0].image
    assert image.shape == (40, 30, 3)
    for r, rows in enumerate((slice(2, 18), slice(22, 38))):
        for c, cols in enumerate((slice(2, 13), slice(17, 28))):
            expected = torch.tensor(truth["upright"][rows, cols].reshape(-1, 3).mean(0) / 255.0, dtype=torch.float32)
            assert torch.allclose(image[rows, cols].reshape(-1, 3).mean(0), expected, atol=0.05), (r, c)


def test_metadata_written_from_stored_pixels_names_the_exif_option(tmp_path: Path) -> None:
    write_instant_ngp(tmp_path, n=2, missing=(), distortion={}, stored_size_in_metadata=True)
    with pytest.raises(InputError, match="EXIF orientation.*nerfstudio.exif_orientation=false"):
        load(tmp_path)
    image = load(tmp_path, exif_orientation=False).views[0].image
    assert image.shape == (30, 40, 3)  # as stored
    assert torch.allclose(image[2:13, 2:18].reshape(-1, 3).mean(0), torch.tensor([0.0, 1.0, 0.0]), atol=0.05)  # green top-left


def test_instant_ngp_distortion_is_undone(tmp_path: Path) -> None:
    truth = write_instant_ngp(tmp_path, n=2, missing=())
    d = parse_transforms(tmp_path).frames[0].distortion
    assert np.allclose(d, [-0.08, 0.01, 0.002, -0.001])  # the top-level k1 k2 p1 p2
    K = load(tmp_path).cameras().K[0].double().numpy()
    assert not np.allclose(K, truth["K"], atol=1e-3)  # the new pinhole K (tests/test_loaders_undistort.py)


def test_large_images_are_downscaled_with_a_note_unless_downscale_is_set(tmp_path: Path) -> None:
    truth = write_transforms(tmp_path, n=2, w=2000, h=10)
    scene, messages = _load_recording(tmp_path)
    assert (scene.views[0].width, scene.views[0].height) == (1600, 8)
    assert len(messages) == 1 and "1600" in messages[0] and "nerfstudio.downscale=1" in messages[0]
    assert torch.allclose(scene.cameras().K[0, 0].double(), torch.tensor([truth["K"][0, 0] * 0.8, 0, truth["K"][0, 2] * 0.8]))
    assert scene.views[0].image.shape == (8, 1600, 3)
    scene, messages = _load_recording(tmp_path, downscale=1)
    assert (scene.views[0].width, messages) == (2000, [])
    scene, messages = _load_recording(tmp_path, downscale=4)
    assert (scene.views[0].width, messages) == (500, [])
    small, messages = _load_recording(tmp_path / "small") if write_transforms(tmp_path / "small", n=2, w=1600, h=12) else None
    assert (small.views[0].width, messages) == (1600, [])
