"""IDR/DTU loader and its RQ decomposition (recon_plugins.loaders.idr)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loaders_support import OBJECT, write_idr
from scipy.spatial.transform import Rotation

from recon_core import InputError
from recon_plugins.loaders.idr import IdrConfig, IdrLoader, decompose_projection, rq3, true_cameras
from recon_plugins.loaders.nerfstudio import NerfstudioLoader


def test_object_three_conventions_describe_the_same_cameras() -> None:
    """transforms.json (nerfstudio), cameras.npz + masks/ (IDR) and cameras_opencv.json agree."""
    meta = json.loads((OBJECT / "cameras_opencv.json").read_text())
    K_ref = torch.tensor(meta["K"], dtype=torch.float64)
    c2w_ref = torch.tensor([f["c2w"] for f in meta["frames"]], dtype=torch.float64)
    ns = NerfstudioLoader().load(OBJECT)
    idr = IdrLoader(IdrConfig(pixel_offset=0.0)).load(OBJECT)  # object's cameras.npz: centres at i + 0.5
    assert [v.name for v in ns.views] == [v.name for v in idr.views] == [Path(f["file_path"]).stem for f in meta["frames"]]
    for scene in (ns, idr):
        cams = scene.cameras()
        rel = ((cams.K.double() - K_ref).abs() / K_ref.abs().clamp_min(1.0)).max()
        assert rel < 1e-4
        assert (cams.c2w.double() - c2w_ref).abs().max() < 1e-5
        assert cams.width.tolist() == [meta["w"]] * 64 and cams.height.tolist() == [meta["h"]] * 64
    # the IDR masks (masks/ folder) and the nerfstudio mask_path are the same files
    assert torch.equal(ns.views[5].object_mask, idr.views[5].object_mask)
    assert idr.bounds.radius == 1.0 and idr.gt_mesh_path == OBJECT / "gt_mesh.ply"
    assert IdrLoader().detect(OBJECT) < NerfstudioLoader().detect(OBJECT)
    # IDR's convention puts the same file's pixel centres half a pixel further
    assert torch.allclose(IdrLoader(IdrConfig(pixel_offset=0.5)).load(OBJECT).cameras().K[:, :2, 2], idr.cameras().K[:, :2, 2] + 0.5)
    # unset, the offset comes from object's transforms.json (same principal point as cameras.npz: 0)
    assert torch.equal(IdrLoader().load(OBJECT).cameras().K, idr.cameras().K)


@settings(max_examples=100, deadline=None)
@given(
    st.floats(50, 2000), st.floats(0.5, 2.0), st.floats(-5, 5), st.floats(-500, 500), st.floats(-500, 500),
    st.integers(0, 2**31 - 1), st.floats(-10, 10), st.floats(1e-3, 1e3), st.booleans(),
)
def test_decompose_projection_recovers_k_and_pose(f, aspect, skew, cx, cy, seed, t, scale, negate) -> None:  # noqa: ANN001
    K = np.array([[f, skew, cx], [0.0, f * aspect, cy], [0.0, 0.0, 1.0]])
    R = Rotation.random(random_state=seed).as_matrix()
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R, np.random.default_rng(seed).normal(size=3) * t
    P = K @ np.linalg.inv(c2w)[:3] * (scale * (-1 if negate else 1))
    K2, c2w2 = decompose_projection(P)
    assert np.allclose(K2, K, rtol=1e-7, atol=1e-6 * f)
    assert np.allclose(c2w2, c2w, atol=1e-6 * max(1.0, abs(t)))
    assert np.linalg.det(c2w2[:3, :3]) == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=9, max_size=9))
def test_rq3_properties(values: list[float]) -> None:
    M = np.array(values).reshape(3, 3)
    U, Q = rq3(M)
    assert np.allclose(U @ Q, M, atol=1e-8 * max(1.0, np.abs(M).max()))
    assert np.allclose(np.tril(U, -1), 0.0) and (np.diag(U) >= 0).all()
    assert np.allclose(Q @ Q.T, np.eye(3), atol=1e-9)


def test_scale_mat_normalised_frame_masks_and_linear_init(tmp_path: Path) -> None:
    truth = write_idr(tmp_path, n=3, scale=5.0, linear_noise=0.05)
    assert IdrLoader().detect(tmp_path) == 10
    scene = IdrLoader(IdrConfig(pixel_offset=0.0)).load(tmp_path)  # write_idr writes K for centres at i + 0.5
    cams = scene.cameras()
    assert torch.allclose(cams.K.double(), torch.from_numpy(truth["K"]).expand(3, 3, 3), rtol=1e-5)
    assert torch.allclose(cams.c2w.double(), torch.from_numpy(truth["c2w"]), atol=1e-5)
    mask = scene.views[0].object_mask
    assert mask[:, :8].all() and not mask[:, 8:].any()  # grey 128 is object, 127 is not
    noisy = IdrLoader(IdrConfig(init_cameras="linear", pixel_offset=0.0)).load(tmp_path)
    d = (noisy.cameras().centers - cams.centers).norm(dim=-1)
    assert (d > 1e-4).all() and (d < 0.5).all()
    assert torch.allclose(true_cameras(tmp_path).c2w, cams.c2w)
    shifted = IdrLoader(IdrConfig(downscale=2)).load(tmp_path).cameras()  # default: IDR's integer centres
    assert torch.allclose(shifted.K[0, 0, 2].double(), torch.tensor((truth["K"][0, 2] + 0.5) / 2), atol=1e-5)


def _idr_npz(tmp_path: Path, **override) -> Path:  # noqa: ANN003
    write_idr(tmp_path, n=2)
    cams = dict(np.load(tmp_path / "cameras.npz"))
    for k, v in override.items():
        if v is None:
            cams.pop(k, None)
        else:
            cams[k] = v
    np.savez(tmp_path / "cameras.npz", **cams)
    return tmp_path


BAD_NPZ = {
    "missing world_mat": {"world_mat_1": None},
    "nan": {"world_mat_0": np.full((4, 4), np.nan)},
    "singular": {"world_mat_0": np.zeros((4, 4))},
    "wrong shape": {"world_mat_0": np.eye(3)},
    "text matrix": {"world_mat_0": np.array(["a", "b"])},
    "bad scale_mat": {"scale_mat_0": np.eye(3)},
    "inf scale_mat": {"scale_mat_1": np.full((4, 4), np.inf)},
}


@pytest.mark.parametrize("name", list(BAD_NPZ))
def test_malformed_cameras_npz(tmp_path: Path, name: str) -> None:
    _idr_npz(tmp_path, **BAD_NPZ[name])
    with pytest.raises(InputError) as e:
        IdrLoader().load(tmp_path)
    assert e.value.path == tmp_path / "cameras.npz"


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 broken zip", b"\x93NUMPY garbage"])
def test_unreadable_npz(tmp_path: Path, content: bytes) -> None:
    write_idr(tmp_path, n=2)
    (tmp_path / "cameras.npz").write_bytes(content)
    with pytest.raises(InputError, match="npz"):
        IdrLoader().load(tmp_path)


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    write_idr(tmp_path, n=2)
    np.savez(tmp_path / "cameras.npz", world_mat_0=np.array([{"a": 1}], dtype=object), world_mat_1=np.eye(4))
    with pytest.raises(InputError):
        IdrLoader().load(tmp_path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=16, max_size=16), st.sampled_from(["world_mat_0", "scale_mat_1"]))
def test_fuzzed_matrices_only_raise_input_error(tmp_path_factory: pytest.TempPathFactory, values: list[float], key: str) -> None:
    root = _idr_npz(tmp_path_factory.mktemp("idr"), **{key: np.array(values).reshape(4, 4)})
    try:
        scene = IdrLoader().load(root)
    except InputError:
        return
    cams = scene.cameras()
    assert torch.isfinite(cams.K).all() and torch.isfinite(cams.c2w).all() and (cams.K[:, 0, 0] > 0).all()


def test_layout_problems(tmp_path: Path) -> None:
    write_idr(tmp_path, n=3)
    (tmp_path / "mask" / "002.png").unlink()
    with pytest.raises(InputError, match="2 masks for 3 images"):
        IdrLoader().load(tmp_path)
    for p in (tmp_path / "mask").iterdir():
        p.unlink()
    (tmp_path / "mask").rmdir()
    from loaders_support import gradient_image, write_png

    write_png(tmp_path / "image" / "000001.png", gradient_image(20, 16, 1))
    with pytest.raises(InputError, match="mixed sizes"):
        IdrLoader().load(tmp_path)
    empty = tmp_path / "empty"
    (empty / "image").mkdir(parents=True)
    np.savez(empty / "cameras.npz", world_mat_0=np.eye(4))
    with pytest.raises(InputError, match="no images"):
        IdrLoader().load(empty)


def test_split_declared_by_a_sibling_transforms_json(tmp_path: Path) -> None:
    """test_every unset: a transforms.json beside cameras.npz that gives every image a split decides
    (object: 0-47 train, 48-63 test, as the benchmark trains); one that misses an image does not; an
    explicit test_every wins."""
    obj = IdrLoader().load(OBJECT)
    assert [v.name for v in obj.split("test")] == [f"{i:04d}" for i in range(48, 64)] and len(obj.train_views) == 48
    assert len(IdrLoader(IdrConfig(test_every=8)).load(OBJECT).train_views) == 56
    write_idr(tmp_path, n=5)
    frames = [{"file_path": f"image/{i:06d}.png", "split": "test" if i in (1, 3) else "train"} for i in range(5)]
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": frames}))
    assert [v.name for v in IdrLoader().load(tmp_path).split("test")] == ["000001", "000003"]
    assert len(IdrLoader(IdrConfig(test_every=0)).load(tmp_path).split("test")) == 0
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": frames[:4]}))  # 000004 has none: every 8th
    assert {v.split for v in IdrLoader().load(tmp_path).views} == {"train"}


def test_every_eighth_view_is_held_out_by_default_as_in_colmap(tmp_path: Path) -> None:
    write_idr(tmp_path, n=17)
    scene = IdrLoader().load(tmp_path)
    assert [v.name for v in scene.views if v.split == "test"] == ["000007", "000015"]
    assert [v.name for v in scene.eval_views] == ["000007", "000015"]  # evaluation renders only these
    assert len(scene.train_views) == 15
    assert IdrLoader(IdrConfig(test_every=3)).load(tmp_path).split("test")[0].name == "000002"
    everything = IdrLoader(IdrConfig(test_every=0)).load(tmp_path)
    assert {v.split for v in everything.views} == {"train"} and len(everything.eval_views) == 17
    with pytest.raises(InputError, match="idr.test_every must be >= 0"):
        IdrLoader(IdrConfig(test_every=-1)).load(tmp_path)


@pytest.mark.parametrize(("shift", "first", "expected"), [
    (0.0, "000000", 0.0),   # transforms.json has cameras.npz's principal point: written for centres at i + 0.5
    (0.5, "000000", 0.5),   # 0.5 px larger: IDR's integer centres
    (0.2, "000000", 0.5),   # neither: IDR's default
    (0.0, "other", 0.5),    # describes another first image: not used
])
def test_pixel_offset_from_a_sibling_transforms_json(tmp_path: Path, shift: float, first: str, expected: float) -> None:
    truth = write_idr(tmp_path, n=2)
    K = truth["K"]
    frames = [{"file_path": f"image/{first}.png", "transform_matrix": np.eye(4).tolist()}]
    (tmp_path / "transforms.json").write_text(json.dumps({"cx": K[0, 2] + shift, "cy": K[1, 2] + shift, "frames": frames}))
    got = IdrLoader().load(tmp_path).cameras().K[0, :2, 2].double()
    assert torch.allclose(got, torch.tensor(K[:2, 2] + expected), atol=1e-5)
    explicit = IdrLoader(IdrConfig(pixel_offset=0.5)).load(tmp_path).cameras().K[0, :2, 2].double()
    assert torch.allclose(explicit, torch.tensor(K[:2, 2] + 0.5), atol=1e-5)  # an explicit offset wins
