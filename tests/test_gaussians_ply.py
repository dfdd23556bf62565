"""PLY import/export of 3D Gaussians in the INRIA layout (recon_core.ply)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from recon_core.errors import InputError
from recon_core.gaussians import SH_C0
from recon_core.ply import check_splats, ply_property_names, read_splat_ply, write_splat_ply


def random_splat(n: int, degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 3,
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g),
    }


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("normals", [True, False])
def test_round_trip_is_exact(tmp_path: Path, degree: int, normals: bool) -> None:
    splat = random_splat(37, degree, seed=degree)
    path = write_splat_ply(tmp_path / "g.ply", splat, normals=normals)
    back = read_splat_ply(path)
    assert check_splats(back) == degree
    assert set(back) == set(splat)
    for name in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        assert torch.equal(back[name], splat[name]), name


def test_plyfile_reads_inria_properties_in_order(tmp_path: Path) -> None:
    splat = random_splat(5, 3)
    path = write_splat_ply(tmp_path / "g.ply", splat)
    ply = PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(45)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    expected += ["rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected == ply_property_names(3)
    assert all(vertex.data.dtype[n] == np.dtype("<f4") for n in names)
    # channel-major f_rest: the 15 rest coefficients of R, then G, then B
    assert np.float32(vertex["f_rest_0"][2]) == splat["shN"][2, 0, 0].item()
    assert np.float32(vertex["f_rest_1"][2]) == splat["shN"][2, 1, 0].item()
    assert np.float32(vertex["f_rest_15"][2]) == splat["shN"][2, 0, 1].item()
    assert np.float32(vertex["f_rest_44"][2]) == splat["shN"][2, 14, 2].item()
    assert np.float32(vertex["rot_0"][1]) == splat["quats"][1, 0].item()  # w first
    assert np.float32(vertex["scale_1"][4]) == splat["scales"][4, 1].item()  # raw log-scales


def write_gsplat_layout(path: Path, n: int, degree: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A PLY as gsplat's exporter writes it: no normals, properties x y z f_dc f_rest opacity scale rot."""
    rng = np.random.default_rng(seed)
    names = ply_property_names(degree, normals=False)
    cols = {name: rng.normal(size=n).astype(np.float32) for name in names}
    arr = np.empty(n, dtype=[(name, "f4") for name in names])
    for name in names:
        arr[name] = cols[name]
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))
    return cols


def test_reads_gsplat_layout_without_normals(tmp_path: Path) -> None:
    cols = write_gsplat_layout(tmp_path / "gsplat.ply", 9, 1)
    splat = read_splat_ply(tmp_path / "gsplat.ply")
    assert splat["means"].shape[0] == 9 and check_splats(splat) == 1
    assert np.array_equal(splat["means"][:, 1].numpy(), cols["y"])
    assert np.array_equal(splat["sh0"][:, 0, 2].numpy(), cols["f_dc_2"])
    assert np.array_equal(splat["shN"][:, 2, 0].numpy(), cols["f_rest_2"])  # R, band 3
    assert np.array_equal(splat["shN"][:, 0, 1].numpy(), cols["f_rest_3"])  # G, band 1
    assert np.array_equal(splat["opacities"].numpy(), cols["opacity"])


def test_reads_ascii_and_big_endian(tmp_path: Path) -> None:
    names = ply_property_names(0, normals=False)
    arr = np.zeros(2, dtype=[(name, ">f4") for name in names])
    arr["x"] = [1.5, -2.0]
    arr["f_dc_0"] = [(0.75 - 0.5) / SH_C0, 0.0]
    for text in (True, False):
        PlyData([PlyElement.describe(arr, "vertex")], text=text, byte_order=">").write(str(tmp_path / "a.ply"))
        splat = read_splat_ply(tmp_path / "a.ply")
        assert splat["means"][:, 0].tolist() == [1.5, -2.0]
        assert abs(float(splat["sh0"][0, 0, 0]) * SH_C0 + 0.5 - 0.75) < 1e-6


def test_non_finite_rows_dropped_with_warning(tmp_path: Path) -> None:
    splat = random_splat(6, 2)
    splat["means"][1, 0] = float("nan")
    splat["shN"][3, 4, 2] = float("inf")
    path = write_splat_ply(tmp_path / "g.ply", splat)
    with pytest.warns(UserWarning, match="dropped 2 of 6"):
        back = read_splat_ply(path)
    keep = [0, 2, 4, 5]
    assert torch.equal(back["means"], splat["means"][keep])
    assert torch.equal(back["shN"], splat["shN"][keep])


def test_finite_file_reads_without_warning(tmp_path: Path) -> None:
    path = write_splat_ply(tmp_path / "g.ply", random_splat(4, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_splat_ply(path)


def test_empty_splat_round_trips(tmp_path: Path) -> None:
    back = read_splat_ply(write_splat_ply(tmp_path / "e.ply", random_splat(0, 3)))
    assert back["means"].shape[0] == 0 and check_splats(back) == 3


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "g.ply"
    write_splat_ply(path, random_splat(3, 0))
    write_splat_ply(path, random_splat(5, 0))
    assert read_splat_ply(path)["means"].shape[0] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.ply"]


def _expect_input_error(path: Path, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        read_splat_ply(path)
    assert info.value.path == path


def test_not_a_ply(tmp_path: Path) -> None:
    path = tmp_path / "junk.ply"
    path.write_bytes(b"this is not a ply file\n")
    _expect_input_error(path, "not a readable PLY")


def test_truncated_ply(tmp_path: Path) -> None:
    path = write_splat_ply(tmp_path / "t.ply", random_splat(50, 3))
    path.write_bytes(path.read_bytes()[:-100])
    _expect_input_error(path, "not a readable PLY")


def test_missing_file(tmp_path: Path) -> None:
    _expect_input_error(tmp_path / "nope.ply", "not found")


def test_no_vertex_element(tmp_path: Path) -> None:
    path = tmp_path / "face.ply"
    arr = np.zeros(3, dtype=[("a", "f4")])
    PlyData([PlyElement.describe(arr, "face")]).write(str(path))
    _expect_input_error(path, "no 'vertex' element")


def test_point_cloud_without_gaussian_properties(tmp_path: Path) -> None:
    path = tmp_path / "points.ply"
    arr = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))
    _expect_input_error(path, "lacks the 3D Gaussian properties f_dc_0")


def test_wrong_f_rest_count(tmp_path: Path) -> None:
    names = ply_property_names(0) + [f"f_rest_{i}" for i in range(5)]
    arr = np.zeros(2, dtype=[(name, "f4") for name in names])
    path = tmp_path / "rest.ply"
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))
    _expect_input_error(path, "5 f_rest_")
