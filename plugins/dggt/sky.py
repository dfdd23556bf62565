"""DGGT's sky model: a hemisphere of Gaussians coloured by a small MLP from image samples.

``resolution²`` points on a Fibonacci half-sphere of ``radius`` around the world origin (the
first camera), covering y ≤ 0, i.e. above the horizon in OpenCV axes. Each point is projected
into the input views; the mean sampled RGB goes through a 3→64→6 MLP (ReLU, tanh) whose first
three outputs are the point's colour. The Gaussians are opaque, isotropic with the log-mean
distance to their 3 nearest neighbours as log-scale.

Buffers (``bg_pcd``, ``bg_scales``, ``bg_opacity``, ``bg_quat``) are persistent, as in the
checkpoint. On the meta device they are allocated without computing anything, so the full
model can be inspected for free.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon_core import CameraRenderer, Cameras, Gaussians3D, Representation
from recon_core.geometry import knn_distances, project_points

__all__ = ["SkyModel", "SkyLayer", "fibonacci_hemisphere"]


def fibonacci_hemisphere(n: int, radius: float) -> Tensor:
    """[n, 3] float32 points: y = i/(n-1) − 1 ∈ [−1, 0], golden-angle azimuth, times ``radius``."""
    i = torch.arange(n, dtype=torch.float64)
    y = i / max(n - 1, 1) - 1.0
    r = torch.sqrt((1 - y * y).clamp_min(0))
    theta = math.pi * (3.0 - math.sqrt(5.0)) * i
    return (torch.stack([torch.cos(theta) * r, y, torch.sin(theta) * r], dim=-1) * radius).float()


class _SkyMLP(nn.Module):
    """``layers.0``: 3→64, ReLU, ``layers.1``: 64→6, tanh (checkpoint key names)."""

    def __init__(self, hidden: int = 64, out: int = 6) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(3, hidden), nn.Linear(hidden, out)])

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.layers[1](F.relu(self.layers[0](x))))


class SkyModel(nn.Module):
    """The sky hemisphere; ``bg_field`` is its colour MLP."""

    def __init__(self, resolution: int = 300, radius: float = 50.0) -> None:
        """``resolution``² points (0 gives an empty placeholder to load a state into)."""
        super().__init__()
        n = resolution**2
        self.radius = radius
        self.bg_field = _SkyMLP()
        if torch.empty(0).device.type == "meta" or n < 4:
            pcd, scales = torch.zeros(n, 3), torch.zeros(n, 3)
        else:
            pcd = fibonacci_hemisphere(n, radius)
            scales = knn_distances(pcd, 3).log()[:, None].repeat(1, 3)
        self.register_buffer("bg_scales", scales)
        self.register_buffer("bg_pcd", pcd)
        self.register_buffer("bg_opacity", torch.ones(n, 1))
        self.register_buffer("bg_quat", torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1))

    def sample(self, images: Tensor, viewmats: Tensor, Ks: Tensor) -> tuple[Tensor, Tensor]:
        """Mean colour of each hemisphere point over the input views that see it.

        As DGGT's ``Projector.compute``: a point projecting to (u, v) counts in a view when it is in
        front and 0 ≤ u ≤ W − 1, 0 ≤ v ≤ H − 1; its colour is read with ``grid_sample`` at
        (2u / (W − 1) − 1, 2v / (H − 1) − 1), ``align_corners=False``, zero padding (the
        original's pairing of the two conventions, kept so the published sky MLP sees what it saw).

        Args:
            images: [S, 3, H, W] in [0, 1]; viewmats [S, 4, 4] world→camera; Ks [S, 3, 3].
        Returns:
            samples [M, 3] for the M points inside at least one view, and the mask [n] selecting them.
        """
        S, _, H, W = images.shape
        uv, z = project_points(self.bg_pcd, Ks.to(self.bg_pcd), viewmats.to(self.bg_pcd))
        uv = uv.clamp(-1e6, 1e6)
        inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= W - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= H - 1)
        grid = torch.stack([2 * uv[..., 0] / (W - 1) - 1, 2 * uv[..., 1] / (H - 1) - 1], dim=-1)[:, None]  # [S, 1, P, 2]
        rgb = F.grid_sample(images, grid.to(images.dtype), align_corners=False)[:, :, 0]  # [S, 3, P]
        w = inside.to(rgb.dtype)
        mean = (rgb * w[:, None]).sum(0).T / w.sum(0).clamp_min(1)[:, None]  # [P, 3]
        visible = inside.any(0)
        return mean[visible], visible

    def colors(self, samples: Tensor) -> Tensor:
        """Sky colours [M, 3] from sampled image colours [M, 3]: the MLP's first three tanh
        outputs (range [−1, 1], used as is, as in DGGT's training)."""
        return self.bg_field(samples)[:, :3]

    def render(self, colors: Tensor, visible: Tensor, cameras: Cameras, renderer: CameraRenderer) -> Tensor:
        """Render the coloured hemisphere into same-sized ``cameras`` with the run's ``renderer``
        → [V, H, W, 3]; like DGGT, alpha-composited over black where no sky Gaussian covers.

        Args:
            colors: [M, 3] from :meth:`colors`; visible: [n] mask from :meth:`sample`.
        """
        layer = SkyLayer(Gaussians3D(
            means=self.bg_pcd[visible], quats=self.bg_quat[visible], scales=self.bg_scales[visible].exp(),
            opacities=self.bg_opacity[visible, 0], colors=colors,
        ))
        black = torch.zeros(3, dtype=colors.dtype, device=colors.device)
        return renderer.render(layer, cameras.to(colors.device), background=black).rgb


class SkyLayer(Representation):
    """The sky's Gaussians as something a Gaussian renderer can draw (never registered)."""

    name = "dggt-sky"
    provides = frozenset({"gaussians-3d"})

    def __init__(self, gaussians: Gaussians3D) -> None:
        super().__init__()
        self._gaussians = gaussians

    def gaussians(self, time: float | None = None) -> Gaussians3D:
        return self._gaussians
