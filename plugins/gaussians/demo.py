"""A generated demo scene, so a fresh install can run the main job without any download.

``recon demo-scene OUT`` renders a small object (a striped sphere beside a cube with coloured
faces, both made of 3D Gaussians) with the ``torch-3dgs`` rasteriser from cameras on a sphere,
and writes it in the nerfstudio layout (RGBA PNGs + ``transforms.json`` with OpenGL c2w and a
per-frame ``split``), which ``recon run --data OUT --repr 3dgs`` then reconstructs. Like a
structure-from-motion result, it comes with a sparse coloured point cloud (``points3D.ply``:
a few thousand surface points with jitter and colour noise) that initialises the Gaussians.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

import numpy as np

from recon_core.io import atomic_path, write_json, write_png

from .rasterize import rasterize_gaussians

__all__ = ["make_demo_scene", "look_at_opencv"]

N_SPARSE_POINTS = 3000
"""Points in the demo's ``points3D.ply``, about what SfM recovers from 48 small views."""


def look_at_opencv(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """OpenCV camera-to-world [4, 4] at ``eye`` looking at ``target`` (x right, y down, z forward)."""
    forward = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=0)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=eye.dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def _demo_gaussians(generator: torch.Generator) -> dict[str, Tensor]:
    """About 12k small Gaussians on a striped sphere and a cube with coloured faces."""
    n_sphere, n_cube = 7000, 5000
    dirs = torch.nn.functional.normalize(torch.randn(n_sphere, 3, generator=generator), dim=1)
    sphere = dirs * 0.45 + torch.tensor([-0.35, 0.0, 0.0])
    stripes = (torch.floor((torch.atan2(dirs[:, 1], dirs[:, 0]) + math.pi) / (math.pi / 4)) % 2)[:, None]
    sphere_rgb = stripes * torch.tensor([0.9, 0.25, 0.2]) + (1 - stripes) * torch.tensor([0.95, 0.9, 0.8])

    face = torch.randint(0, 6, (n_cube,), generator=generator)
    uv = torch.rand(n_cube, 2, generator=generator) * 2 - 1
    axis, sign = face // 2, (face % 2) * 2 - 1
    cube = torch.zeros(n_cube, 3)
    others = torch.tensor([[1, 2], [0, 2], [0, 1]])[axis]
    cube[torch.arange(n_cube), axis] = sign.float()
    cube[torch.arange(n_cube), others[:, 0]] = uv[:, 0]
    cube[torch.arange(n_cube), others[:, 1]] = uv[:, 1]
    cube = cube * 0.25 + torch.tensor([0.4, 0.1, -0.05])
    palette = torch.tensor([[0.2, 0.4, 0.9], [0.2, 0.8, 0.3], [0.95, 0.8, 0.1], [0.6, 0.2, 0.7], [0.1, 0.7, 0.8], [0.9, 0.5, 0.1]])
    cube_rgb = palette[face]

    means = torch.cat([sphere, cube])
    n = means.shape[0]
    return {
        "means": means,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=generator), dim=1),
        "scales": torch.full((n, 3), 0.022) * (0.7 + 0.6 * torch.rand(n, 3, generator=generator)),
        "opacities": torch.full((n,), 0.95),
        "colors": torch.cat([sphere_rgb, cube_rgb]),
    }


def make_demo_scene(out: str | Path, *, n_train: int = 40, n_test: int = 8, size: int = 96, seed: int = 0) -> Path:
    """Render the demo object from ``n_train + n_test`` cameras into ``out``; return the folder."""
    out = Path(out)
    generator = torch.Generator().manual_seed(seed)
    g = _demo_gaussians(generator)
    fov_x = math.radians(40.0)
    focal = 0.5 * size / math.tan(0.5 * fov_x)
    K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    up = torch.tensor([0.0, 0.0, 1.0])
    frames = []
    n = n_train + n_test
    test_ids = {int((k + 0.5) * n / n_test) for k in range(n_test)}  # spread over the elevations
    golden = math.pi * (3.0 - math.sqrt(5.0))
    for i in range(n):
        z = 0.85 - 1.1 * (i + 0.5) / n  # elevations from about +58° down to -15°
        r = math.sqrt(1 - z * z)
        eye = 3.0 * torch.tensor([r * math.cos(golden * i), r * math.sin(golden * i), z])
        c2w = look_at_opencv(eye, torch.zeros(3), up)
        with torch.no_grad():
            rgb, alpha, _ = rasterize_gaussians(
                g["means"], g["quats"], g["scales"], g["opacities"], torch.linalg.inv(c2w)[None], K[None],
                size, size, colors=g["colors"],
            )
        # Un-premultiply so the PNG holds straight alpha, as image files do.
        straight = rgb[0] / alpha[0].clamp_min(1e-6)
        name = f"images/{i:04d}.png"
        write_png(out / name, torch.cat([straight.clamp(0, 1), alpha[0]], dim=-1))
        c2w_gl = c2w @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
        frames.append(
            {"file_path": name, "transform_matrix": c2w_gl.tolist(), "split": "test" if i in test_ids else "train"}
        )
    _write_sparse_points(out / "points3D.ply", g, generator)
    write_json(
        out / "transforms.json",
        {
            "camera_model": "OPENCV", "fl_x": focal, "fl_y": focal, "cx": size / 2, "cy": size / 2, "w": size, "h": size,
            "ply_file_path": "points3D.ply", "frames": frames,
        },
    )
    return out


def _write_sparse_points(path: Path, g: dict[str, Tensor], generator: torch.Generator) -> None:
    """A subset of the Gaussian centres with 1 cm jitter and colour noise, as x y z red green blue."""
    from plyfile import PlyData, PlyElement

    pick = torch.randperm(g["means"].shape[0], generator=generator)[:N_SPARSE_POINTS]
    xyz = g["means"][pick] + 0.01 * torch.randn(len(pick), 3, generator=generator)
    rgb = (g["colors"][pick] + 0.05 * torch.randn(len(pick), 3, generator=generator)).clamp(0, 1)
    vertex = np.empty(len(pick), dtype=[(k, "f4") for k in "xyz"] + [(k, "u1") for k in ("red", "green", "blue")])
    for i, k in enumerate("xyz"):
        vertex[k] = xyz[:, i].numpy()
    for i, k in enumerate(("red", "green", "blue")):
        vertex[k] = (rgb[:, i] * 255).round().numpy().astype(np.uint8)
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")]).write(str(tmp))

