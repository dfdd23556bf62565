"""Mesh extraction from an SDF by marching cubes (scikit-image), written as PLY (trimesh)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

from recon_core.io import atomic_path

if TYPE_CHECKING:  # imported where used: at registry load trimesh and scipy add ~60 MB to every run's memory
    import trimesh

__all__ = ["drop_enclosed_voids", "extract_mesh", "sdf_grid", "write_mesh"]


@torch.no_grad()
def sdf_grid(sdf: Callable[[Tensor], Tensor], resolution: int, lo: Tensor, hi: Tensor, chunk: int = 65536) -> np.ndarray:
    """Evaluate ``sdf`` (points [P, 3] → [P]) on a resolution³ grid spanning [lo, hi] (inclusive), indexed [i, j, k] = (x, y, z)."""
    axes = [torch.linspace(float(lo[d]), float(hi[d]), resolution) for d in range(3)]
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    out = torch.cat([sdf(p).float().cpu() for p in pts.split(chunk)])
    return out.reshape(resolution, resolution, resolution).numpy()


def extract_mesh(
    sdf: Callable[[Tensor], Tensor],
    resolution: int,
    lo: Tensor | tuple[float, float, float] = (-1.0, -1.0, -1.0),
    hi: Tensor | tuple[float, float, float] = (1.0, 1.0, 1.0),
    level: float = 0.0,
    chunk: int = 65536,
    drop_voids: bool = False,
) -> trimesh.Trimesh:
    """Zero level set of ``sdf`` (positive outside) in the box [lo, hi] as a mesh with outward normals.

    Grid spacing is ``(hi − lo) / (resolution − 1)``. ``drop_voids`` removes the surfaces of enclosed
    voids (:func:`drop_enclosed_voids`). Raises ValueError when the level set is empty.
    """
    from skimage.measure import marching_cubes

    lo_t, hi_t = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    grid = sdf_grid(sdf, resolution, lo_t, hi_t, chunk)
    if not (grid.min() < level < grid.max()):
        raise ValueError(f"the SDF has no zero crossing in the box (range {grid.min():.3g}..{grid.max():.3g})")
    spacing = ((hi_t - lo_t) / (resolution - 1)).numpy()
    verts, faces, _, _ = marching_cubes(grid, level=level, spacing=tuple(spacing))
    verts = verts + lo_t.numpy()
    # skimage's winding with the default gradient direction makes faces face up the SDF: outwards
    import trimesh

    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
    return drop_enclosed_voids(mesh) if drop_voids else mesh


def drop_enclosed_voids(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """``mesh`` without the closed components that bound a void inside the solid.

    With outward normals, a closed component around a pocket of positive SDF (empty space enclosed by
    the object) has negative signed volume. No camera outside the object can see such a surface, so
    photometric training leaves whatever the SDF happened to hold there; evaluating or exporting it
    adds geometry nobody observed. Open components (cut by the box) and solid parts are kept.
    """
    parts = mesh.split(only_watertight=False)
    keep = [c for c in parts if not (c.is_watertight and c.volume < 0)]
    # nothing to drop, or only voids (then the outer surface was cut by the box): leave the mesh alone
    if not keep or len(keep) == len(parts):
        return mesh
    import trimesh

    return trimesh.util.concatenate(keep)


def write_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` as binary PLY atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".ply") as tmp:
        mesh.export(tmp, file_type="ply")
    return path
