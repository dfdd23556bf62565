"""recon_core.cameras: batched OpenCV pinhole cameras and conversions."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch
from conftest import look_at

from recon_core.cameras import Cameras, check_rigid, opengl_to_opencv
from recon_core.errors import InputError


def _project(cams: Cameras, point: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates [N, 2] of a world point (continuous, pixel centres at i + 0.5)."""
    p = torch.cat([point, torch.ones(1)])
    cam = (cams.viewmats @ p)[:, :3]
    uvw = cams.K @ cam[..., None]
    return uvw[:, :2, 0] / uvw[:, 2:, 0]


def _cams(n: int = 3) -> Cameras:
    poses = torch.stack([torch.tensor(look_at(torch.tensor([3 * math.cos(a), 3 * math.sin(a), 1.0]).numpy()),
                                      dtype=torch.float32) for a in torch.linspace(0, 2, n).tolist()])
    K = torch.tensor([[50.0, 0, 16], [0, 50.0, 12], [0, 0, 1]])
    return Cameras.create(K, poses, 32, 24)


def test_create_broadcasts_and_indexes():
    cams = _cams(3)
    assert cams.K.shape == (3, 3, 3) and cams.width.tolist() == [32] * 3 and cams.times is None
    one = cams[1]
    assert len(one) == 1 and torch.equal(one.c2w[0], cams.c2w[1])
    assert len(cams[torch.tensor([0, 2])]) == 2
    timed = Cameras.create(cams.K, cams.c2w, 32, 24, times=0.5, distortion=[0.1, 0.0, 0.0, 0.0])
    assert timed.times.tolist() == [0.5] * 3 and timed.distortion.shape == (3, 4)


def test_cat_keeps_optional_fields_only_when_all_have_them():
    a = Cameras.create(torch.eye(3), torch.eye(4), 4, 4, distortion=[0.1, 0.2, 0.0, 0.0], times=1.0)
    b = Cameras.create(torch.eye(3), torch.eye(4), 4, 4, distortion=[0.1, 0.2, 0.0, 0.0, 0.3, 0.4], times=2.0)
    both = Cameras.cat([a, b])
    assert both.distortion.shape == (2, 6) and both.distortion[0, 4:].tolist() == [0.0, 0.0]
    assert both.times.tolist() == [1.0, 2.0]
    assert Cameras.cat([a, Cameras.create(torch.eye(3), torch.eye(4), 4, 4)]).times is None


def test_camera_looks_along_plus_z_and_centre_projects_to_principal_point():
    cams = _cams(3)
    uv = _project(cams, torch.zeros(3))  # every camera looks at the origin
    assert torch.allclose(uv, torch.tensor([[16.0, 12.0]]).expand(3, 2), atol=1e-4)
    assert torch.allclose(cams.viewmats @ cams.c2w, torch.eye(4).expand(3, 4, 4), atol=1e-5)
    assert torch.allclose(cams.centers, cams.c2w[:, :3, 3])


def test_scaled_keeps_the_pixel_centre_convention():
    cams = _cams(2)
    point = torch.tensor([0.3, -0.2, 0.1])
    half = cams.scaled(0.5)
    assert half.width.tolist() == [16, 16] and half.height.tolist() == [12, 12]
    # with centres at i + 0.5 a continuous pixel coordinate simply scales
    assert torch.allclose(_project(half, point), _project(cams, point) * 0.5, atol=1e-4)


def test_opengl_to_opencv_flips_y_and_z():
    gl = torch.eye(4, dtype=torch.float64)
    gl[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    cv = opengl_to_opencv(gl)
    assert torch.equal(cv[:3, 0], gl[:3, 0]) and torch.equal(cv[:3, 1], -gl[:3, 1]) and torch.equal(cv[:3, 2], -gl[:3, 2])
    assert torch.equal(cv[:3, 3], gl[:3, 3])
    assert torch.equal(opengl_to_opencv(cv), gl)  # its own inverse


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m: m.__setitem__((0, 0), float("nan")), "NaN"),
        (lambda m: m[:3, :3].mul_(2.0), "not rigid"),
        (lambda m: m[:3, 0].neg_(), "not rigid"),  # a reflection
    ],
    ids=["nan", "scaled", "reflected"],
)
def test_check_rigid_rejects(make, message):
    m = torch.eye(4)
    make(m)
    with pytest.raises(InputError, match=message):
        check_rigid(m, "cams.json")
    check_rigid(_cams(3).c2w)
    with pytest.raises(InputError, match="shape"):
        check_rigid(torch.eye(3))


def test_check_rigid_rejects_poses_that_overflow_float32():
    pose = torch.eye(4, dtype=torch.float64)
    pose[0, 3] = 1e300  # finite in float64, inf in float32
    with pytest.raises(InputError, match="too large for float32"):
        check_rigid(pose, "cams.json")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["frames"][1]["transform_matrix"][0].__setitem__(3, 1e300), "frame 1 has values too large for float32"),
        (lambda m: m.__setitem__("fl_x", 1e300), "fl_x"),
    ],
    ids=["translation", "focal"],
)
def test_loader_rejects_camera_values_that_overflow_float32(tmp_path, edit, message):
    import json

    from loaders_support import write_transforms

    from recon_plugins.loaders.nerfstudio import NerfstudioConfig, NerfstudioLoader

    meta = write_transforms(tmp_path, n=2)["meta"]
    edit(meta)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=message) as info:
        NerfstudioLoader(NerfstudioConfig()).load(tmp_path)
    assert info.value.path is not None


def test_exact_world_to_camera_is_used_kept_and_dropped_with_the_pose():
    c2w = torch.as_tensor(look_at(np.array([1.0, 2.0, 3.0])), dtype=torch.float32)
    w2c = torch.linalg.inv(c2w.double()).float()
    w2c[0, 3] += 1e-3  # distinguishable from any inverse of c2w
    cams = Cameras.create(torch.eye(3), c2w, 4, 4)
    with_exact = Cameras(K=cams.K, c2w=cams.c2w, width=cams.width, height=cams.height, w2c=w2c[None])
    assert torch.equal(with_exact.viewmats, w2c[None]), "the given matrices, not an inverse"
    assert torch.equal(Cameras.cat([with_exact, with_exact])[[1]].viewmats, w2c[None])
    assert torch.equal(with_exact.to("cpu").scaled(2.0).viewmats, w2c[None]), "intrinsics changes keep the pose"
    assert Cameras.cat([with_exact, cams]).w2c is None, "only when every batch has them"
    moved = with_exact.with_c2w(c2w[None] * 1.0)
    assert moved.w2c is None and torch.equal(moved.viewmats, torch.linalg.inv(c2w[None])), "a new pose drops them"
    with pytest.raises(AssertionError):
        Cameras(K=cams.K, c2w=cams.c2w, width=cams.width, height=cams.height, w2c=w2c)
