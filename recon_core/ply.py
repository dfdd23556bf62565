"""3D Gaussian splats ↔ PLY files in the INRIA layout (the one every splat viewer reads).

Layout of the ``vertex`` element, one row per Gaussian, every property float32, binary
little-endian::

    x y z [nx ny nz] f_dc_0 f_dc_1 f_dc_2 f_rest_0 … f_rest_{3((d+1)^2-1)-1} opacity
    scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3

Values are the *raw* parameters: log-scales, logit opacity, quaternion wxyz (rot_0 = w), SH
DC coefficients (rgb = f_dc * SH_C0 + 0.5) and the higher SH bands ``f_rest`` stored
channel-major: the (d+1)^2-1 rest coefficients of R, then those of G, then those of B. In
tensor terms ``f_rest = shN.transpose(1, 2).reshape(N, -1)`` for ``shN`` [N, K-1, 3].

The writer emits zero normals (nx ny nz) like the INRIA code; the reader accepts files with or
without them (gsplat's and nerfstudio's exporters omit them) and any SH degree 0..MAX_SH_DEGREE.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from torch import Tensor

from .errors import InputError
from .gaussians import SPLAT_KEYS
from .io import atomic_path

__all__ = ["read_splat_ply", "write_splat_ply", "check_splats", "ply_property_names", "MAX_SH_DEGREE"]

MAX_SH_DEGREE = 4
"""Highest SH degree the reader accepts (3 is what 3DGS uses; 4 is read for completeness)."""


def check_splats(splats: Mapping[str, Tensor]) -> int:
    """Check the shapes of raw splats (the keys of :data:`~recon_core.gaussians.SPLAT_KEYS`);
    return the SH degree their ``shN`` holds."""
    n = splats["means"].shape[0]
    shapes = {k: tuple(splats[k].shape) for k in SPLAT_KEYS}
    ok = shapes["means"] == (n, 3) and shapes["quats"] == (n, 4) and shapes["scales"] == (n, 3)
    ok = ok and shapes["opacities"] == (n,) and shapes["sh0"] == (n, 1, 3)
    ok = ok and len(shapes["shN"]) == 3 and shapes["shN"][0] == n and shapes["shN"][2] == 3
    if not ok or math.isqrt(shapes["shN"][1] + 1) ** 2 != shapes["shN"][1] + 1:
        raise ValueError(f"splats have inconsistent shapes: {shapes}")
    return math.isqrt(shapes["shN"][1] + 1) - 1


def ply_property_names(sh_degree: int, normals: bool = True) -> list[str]:
    """The vertex property names, in file order, for ``sh_degree`` (INRIA layout)."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    names = ["x", "y", "z"]
    if normals:
        names += ["nx", "ny", "nz"]
    names += [f"f_dc_{i}" for i in range(3)]
    names += [f"f_rest_{i}" for i in range(n_rest)]
    names += ["opacity"]
    names += [f"scale_{i}" for i in range(3)]
    names += [f"rot_{i}" for i in range(4)]
    return names


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def write_splat_ply(path: str | Path, splats: Mapping[str, Tensor], normals: bool = True) -> Path:
    """Write raw ``splats`` (gsplat names, see :data:`~recon_core.gaussians.SPLAT_KEYS`; other
    keys are ignored) to ``path`` (binary little-endian float32, INRIA layout) atomically."""
    path = Path(path)
    degree = check_splats(splats)
    n = splats["means"].shape[0]
    shN = splats["shN"].detach().cpu()
    f_rest = shN.transpose(1, 2).reshape(n, 3 * shN.shape[1])  # channel-major: R bands, G bands, B bands
    columns = [splats["means"]]
    if normals:
        columns.append(torch.zeros(n, 3))
    columns += [splats["sh0"].reshape(n, 3), f_rest, splats["opacities"].reshape(n, 1), splats["scales"], splats["quats"]]
    data = np.concatenate([_np(c) for c in columns], axis=1)
    names = ply_property_names(degree, normals)
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    with atomic_path(path, suffix=".ply") as tmp:
        ply.write(str(tmp))
    return path


def read_splat_ply(path: str | Path) -> dict[str, Tensor]:
    """Read a 3DGS PLY (INRIA layout, with or without normals, SH degree 0..4) into raw splats
    with gsplat's names (``means``, ``quats``, ``scales`` log, ``opacities`` logit, ``sh0``, ``shN``).

    Rows with any non-finite value are dropped with a warning. Raises InputError naming the
    file when it is not a PLY, has no ``vertex`` element, lacks a required property or has an
    ``f_rest`` count that matches no SH degree.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("PLY file not found", path)
    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # plyfile raises several types (PlyParseError, ValueError, …)
        raise InputError(f"not a readable PLY file ({type(e).__name__}: {e})", path) from None
    if "vertex" not in [el.name for el in ply.elements]:
        raise InputError("PLY has no 'vertex' element, so it holds no Gaussians", path)
    vertex = ply["vertex"]
    names = {p.name for p in vertex.properties}
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"]
    required += ["rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [r for r in required if r not in names]
    if missing:
        raise InputError(
            f"PLY vertex element lacks the 3D Gaussian properties {', '.join(missing)} "
            "(expected the INRIA 3DGS layout: x y z f_dc_* f_rest_* opacity scale_* rot_*)",
            path,
        )
    rest_names = [p.name for p in vertex.properties if p.name.startswith("f_rest_")]
    n_rest = len(rest_names)
    bands = n_rest // 3 + 1
    degree = math.isqrt(bands) - 1
    if n_rest % 3 or (degree + 1) ** 2 != bands or degree > MAX_SH_DEGREE:
        raise InputError(
            f"PLY has {n_rest} f_rest_* properties; a spherical-harmonics degree d needs 3*((d+1)^2-1) "
            f"(0, 9, 24, 45 or 72)",
            path,
        )
    expected_rest = {f"f_rest_{i}" for i in range(n_rest)}
    if set(rest_names) != expected_rest:
        raise InputError(f"PLY f_rest_* properties are not numbered 0..{n_rest - 1}", path)

    def cols(keys: list[str]) -> np.ndarray:
        n = len(vertex.data)
        if not keys:
            return np.zeros((n, 0), np.float32)
        return np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], axis=1)

    try:
        means = cols(["x", "y", "z"])
        dc = cols([f"f_dc_{i}" for i in range(3)])
        rest = cols([f"f_rest_{i}" for i in range(n_rest)])
        opacity = cols(["opacity"])[:, 0]
        scales = cols([f"scale_{i}" for i in range(3)])
        quats = cols([f"rot_{i}" for i in range(4)])
    except (ValueError, TypeError) as e:  # e.g. list-typed properties
        raise InputError(f"PLY vertex properties cannot be read as numbers ({e})", path) from None
    n = means.shape[0]
    finite = np.isfinite(np.concatenate([means, dc, rest, opacity[:, None], scales, quats], axis=1)).all(axis=1)
    dropped = int(n - finite.sum())
    if n and not dropped < n:
        raise InputError(f"PLY has no usable Gaussian: all {n} rows hold non-finite values", path)
    if dropped:
        warnings.warn(f"{path}: dropped {dropped} of {n} Gaussians with non-finite values", stacklevel=2)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a[finite]))  # noqa: E731
    k_rest = n_rest // 3
    shN = t(rest).reshape(int(finite.sum()), 3, k_rest).transpose(1, 2).contiguous()  # back from channel-major
    return {
        "means": t(means),
        "quats": t(quats),
        "scales": t(scales),
        "opacities": t(opacity),
        "sh0": t(dc).reshape(-1, 1, 3),
        "shN": shN,
    }
