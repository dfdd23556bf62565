"""From DGGT's per-pixel predictions to a 4D Gaussian scene (DGGT ``inference.py``, mode 2).

* Every pixel becomes a Gaussian at its predicted depth, unprojected through its predicted
  camera at pixel coordinate i (not recon's centre i + 0.5), as DGGT's
  ``unproject_depth_map_to_point_map`` does: the published network was trained that way.
* Static Gaussians: non-sky pixels of every frame whose dynamic logit is below ``threshold``
  (DGGT compares the raw logit with 0.5), opacity × (1 − sigmoid(logit)). Their opacity at time
  t is modulated by the lifespan term exp(ln(0.1) · (t − t_i)² / γ²): unchanged at the frame's
  own time t_i, ×0.1 at |t − t_i| = γ (:func:`lifespan_opacity`).
* Dynamic Gaussians: all non-sky pixels of frame i, opacity × sigmoid(logit), visible only at
  frame i's time.
* The sky (sky pixels) is not turned into Gaussians; the sky model is composited behind.

Times inside DGGT are normalised per input window: frame k of S consecutive frames sits at
k/(S−1) · S/4 (DGGT's dataset), and the lifespans γ are in those units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from recon_core.geometry import unproject_depth  # re-exported: callers import it from here

__all__ = [
    "LIFESPAN_LOG_DECAY", "lifespan_opacity", "unproject_depth", "unproject_depth_dggt", "PixelGaussians",
    "compose_pixel_gaussians", "TimeMap",
]

LIFESPAN_LOG_DECAY = math.log(0.1)
"""ln(0.1): a static Gaussian keeps 10 % of its opacity one lifespan away from its frame."""
_LOG_DECAY_F32 = float(torch.log(torch.tensor(0.1)))  # the original takes the log of a float32 0.1


def unproject_depth_dggt(depth: Tensor, extrinsics: Tensor, K: Tensor) -> Tensor:
    """World points [S, H, W, 3] (float32) of depth maps [S, H, W] through world→camera
    ``extrinsics`` [S, 3|4, 4] and ``K`` [S, 3, 3], with DGGT's arithmetic: pixel (r, c) at (c, r);
    camera coordinates (c − cx)·d/fx computed in float64 and rounded to float32; the
    camera→world rotation Rᵀ and translation −Rᵀt (float32) applied in float64; the result rounded
    to float32. This is what ``unproject_depth_map_to_point_map`` computes through NumPy's type
    promotion (an int64 pixel grid and a float64 identity matrix pull the products into float64);
    :func:`unproject_depth` in float32 differs from it by up to a few 1e-7 (relative).
    """
    H, W = depth.shape[-2:]
    R, t = extrinsics[..., :3, :3].float(), extrinsics[..., :3, 3:].float()
    Rt = R.transpose(-1, -2)
    # −Rᵀt in float32, one camera at a time: a batched float32 matmul sums in another order
    # (1 ulp off), an unbatched one agrees with NumPy's on the original's side
    t_c2w = torch.stack([-(a @ b)[:, 0] for a, b in zip(Rt.reshape(-1, 3, 3), t.reshape(-1, 3, 1))]).reshape(t.shape[:-2] + (3,))
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64, device=depth.device),
                          torch.arange(W, dtype=torch.float64, device=depth.device), indexing="ij")
    d = depth.double()
    fx, fy = K[..., 0, 0, None, None].double(), K[..., 1, 1, None, None].double()
    cx, cy = K[..., 0, 2, None, None].double(), K[..., 1, 2, None, None].double()
    cam = torch.stack([(u - cx) * d / fx, (v - cy) * d / fy, d], dim=-1).float()  # [S, H, W, 3]
    world = torch.einsum("...hwj,...ij->...hwi", cam.double(), Rt.double()) + t_c2w.double()[..., None, None, :]
    return world.float()


def lifespan_opacity(opacity: Tensor, t: Tensor | float, t_birth: Tensor, lifespan: Tensor) -> Tensor:
    """opacity · exp(ln(0.1) / (γ² + 1e-6) · (t − t_birth)²), all in DGGT's normalised time (in
    inference.py's order of operations, with its float32 ln 0.1)."""
    sigma = _LOG_DECAY_F32 / (lifespan**2 + 1e-6)
    return opacity * torch.exp(sigma * (t - t_birth) ** 2)


@dataclass
class PixelGaussians:
    """N Gaussians taken from pixels (activated values).

    means [N, 3]; rgb [N, 3] in [0, 1]; opacity [N] (already × (1 − p) or × p);
    scales [N, 3]; quats [N, 4] wxyz unit; lifespan [N] γ; frame [N] int64 source frame;
    dynamic [N] bool (True: only visible at its frame's time).
    """

    means: Tensor
    rgb: Tensor
    opacity: Tensor
    scales: Tensor
    quats: Tensor
    lifespan: Tensor
    frame: Tensor
    dynamic: Tensor


def compose_pixel_gaussians(
    points: Tensor,
    gs_map: Tensor,
    lifespan: Tensor,
    dynamic_logit: Tensor,
    non_sky: Tensor,
    threshold: float = 0.5,
    min_dynamic_opacity: float = 0.0,
) -> PixelGaussians:
    """Split per-pixel predictions of S frames into static and dynamic Gaussians (DGGT rules).

    Args:
        points: [S, H, W, 3] world positions; gs_map: [S, H, W, 11] (rgb, opacity, scale, quat);
        lifespan: [S, H, W] γ; dynamic_logit: [S, H, W]; non_sky: [S, H, W] bool.
        threshold: pixels with logit < threshold are static candidates.
        min_dynamic_opacity: drop dynamic Gaussians whose opacity is below this (0 keeps all,
            as DGGT; 1/255 drops only those no renderer would ever draw).
    """
    S = points.shape[0]
    prob = torch.sigmoid(dynamic_logit)
    frame = torch.arange(S, device=points.device)[:, None, None].expand_as(prob)
    opacity = gs_map[..., 3]
    static = non_sky & (dynamic_logit < threshold)
    dyn_opacity = opacity * prob
    dynamic = non_sky & (dyn_opacity >= min_dynamic_opacity)

    def take(mask: Tensor, opac: Tensor, is_dynamic: bool) -> list[Tensor]:
        return [
            points[mask], gs_map[..., 0:3][mask], opac[mask], gs_map[..., 4:7][mask], gs_map[..., 7:11][mask],
            lifespan[mask], frame[mask], torch.full((int(mask.sum()),), is_dynamic, dtype=torch.bool, device=points.device),
        ]

    parts = zip(take(static, opacity * (1 - prob), False), take(dynamic, dyn_opacity, True))
    return PixelGaussians(*[torch.cat(pair, dim=0) for pair in parts])


@dataclass(frozen=True)
class TimeMap:
    """Scene time (seconds, or frame index when the data has none) ↔ DGGT's normalised time.

    tau(t) = (t − t_first) / (t_last − t_first) · S/4, which puts frame k of S equally spaced
    frames at k/(S−1) · S/4 as in DGGT's training data.
    """

    t_first: float
    t_last: float
    num_frames: int

    def tau(self, t: Tensor | float) -> Tensor | float:
        span = self.t_last - self.t_first
        if self.num_frames < 2 or span <= 0:
            return t * 0.0
        return (t - self.t_first) / span * (self.num_frames / 4.0)
