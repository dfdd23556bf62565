"""Gaussian exports other tools read besides the INRIA PLY (:mod:`recon_core.ply`).

``.splat`` (antimatter15's WebGL viewer layout, also read by gsplat's viewer, SuperSplat and
PlayCanvas): 32 bytes per Gaussian, little-endian, no header::

    offset  type        value
    0       float32[3]  position x y z
    12      float32[3]  scale (activated: exp of the log-scale)
    24      uint8[4]    R G B from the SH DC term (0.5 + SH_C0 * f_dc), A = sigmoid(opacity), * 255
    28      uint8[4]    rotation quaternion w x y z, normalised, stored as round(q * 128 + 128)

No higher SH bands: colour is view-independent. Gaussians are ordered by decreasing
``prod(scale) * opacity`` (the largest, most opaque first; the order antimatter15's converter
writes, so a viewer that streams the file shows the important Gaussians first). Reading one back
recovers positions and scales exactly (float32), colour and opacity to 1/255, rotations to 1/128.

``ply_compressed`` (SuperSplat's compressed PLY): written through gsplat's exporter
(``gsplat.exporter.export_splats``; the ``cuda`` extra installs gsplat, whose exporter runs on CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from .errors import InputError
from .gaussians import SH_C0
from .io import write_bytes

__all__ = ["SPLAT_RECORD", "write_splat_file", "read_splat_file", "write_ply_compressed"]

SPLAT_RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
"""One Gaussian of a ``.splat`` file (32 bytes)."""


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def splat_records(splats: Mapping[str, Tensor]) -> np.ndarray:
    """The ``.splat`` records [N] of raw ``splats`` (gsplat names), in the file's order."""
    means = splats["means"].detach().cpu().double().numpy()
    scales = np.exp(splats["scales"].detach().cpu().double().numpy())
    opacity = 1.0 / (1.0 + np.exp(-splats["opacities"].detach().cpu().double().numpy().reshape(-1)))
    rgb = 0.5 + SH_C0 * splats["sh0"].detach().cpu().double().numpy().reshape(-1, 3)
    quats = splats["quats"].detach().cpu().double().numpy()
    quats = quats / np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), 1e-12)
    finite = np.isfinite(np.concatenate([means, scales, opacity[:, None], rgb, quats], axis=1)).all(axis=1)
    order = np.argsort(-(scales.prod(axis=1) * opacity), kind="stable")
    order = order[finite[order]]
    out = np.empty(len(order), dtype=SPLAT_RECORD)
    out["position"] = means[order]
    out["scale"] = scales[order]
    out["rgba"] = _to_u8(np.concatenate([rgb[order], opacity[order, None]], axis=1))
    out["rot"] = np.clip(np.round(quats[order] * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return out


def write_splat_file(path: str | Path, splats: Mapping[str, Tensor]) -> Path:
    """Write raw ``splats`` as an antimatter15 ``.splat`` file (atomically); see the module doc."""
    return write_bytes(path, splat_records(splats).tobytes())


def read_splat_file(path: str | Path, sh_degree: int = 0) -> dict[str, Tensor]:
    """A ``.splat`` file as raw splats (gsplat names; ``shN`` zero for ``sh_degree`` bands).

    Opacities of 0 and 255 are read as 0.5/255 and 254.5/255 (a logit needs (0, 1)).
    Raises InputError naming the file when its size is not a multiple of 32 bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(".splat file not found", path)
    raw = path.read_bytes()
    if len(raw) % SPLAT_RECORD.itemsize:
        raise InputError(f"not a .splat file: {len(raw)} bytes is not a multiple of the {SPLAT_RECORD.itemsize}-byte "
                         "record (position, scale, rgba, rotation)", path)
    rec = np.frombuffer(raw, dtype=SPLAT_RECORD)
    if not np.isfinite(rec["position"]).all() or not (np.isfinite(rec["scale"]).all() and (rec["scale"] > 0).all()):
        raise InputError(".splat file holds non-finite positions or non-positive scales", path)
    rgba = rec["rgba"].astype(np.float64) / 255.0
    alpha = np.clip(rgba[:, 3], 0.5 / 255, 254.5 / 255)
    quats = (rec["rot"].astype(np.float64) - 128.0) / 128.0
    quats[np.linalg.norm(quats, axis=1) == 0] = (1.0, 0.0, 0.0, 0.0)
    n = len(rec)
    k = (sh_degree + 1) ** 2 - 1
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return {
        "means": f32(rec["position"]),
        "quats": f32(quats),
        "scales": f32(np.log(rec["scale"].astype(np.float64))),
        "opacities": f32(np.log(alpha / (1.0 - alpha))),
        "sh0": f32((rgba[:, :3] - 0.5) / SH_C0).reshape(n, 1, 3),
        "shN": torch.zeros(n, k, 3),
    }


def write_ply_compressed(path: str | Path, splats: Mapping[str, Tensor]) -> Path:
    """SuperSplat's compressed PLY through gsplat's exporter (InputError naming the extra without gsplat)."""
    try:
        from gsplat.exporter import export_splats
    except ImportError as e:
        raise InputError(f"ply_compressed is written by gsplat's exporter, which cannot be imported ({e}); "
                         "install it with pip install 'recon-toolkit[cuda]' (its exporter runs on the CPU)") from None
    s = {k: v.detach().cpu().float() for k, v in splats.items()}
    data = export_splats(means=s["means"], scales=s["scales"], quats=s["quats"], opacities=s["opacities"].reshape(-1),
                         sh0=s["sh0"].reshape(-1, 1, 3), shN=s["shN"], format="ply_compressed")
    return write_bytes(path, data)
