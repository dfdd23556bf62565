"""Gaussian renderer components: ``torch-3dgs`` (CPU: compiled kernels, else PyTorch) and ``gsplat`` (CUDA).

Both take any representation providing "gaussians-3d" and share the same batching rules
(:func:`render_gaussian_batches`):

* Gaussians come from ``rep.gaussians(time)``. For a representation providing "dynamic",
  camera i is rendered at ``cameras.times[i]``, else at ``time=None``; cameras sharing a time
  share one ``gaussians()`` call. A static representation is asked once, with ``time=None``.
  A representation whose Gaussians depend on the camera itself (dggt: each input image has its
  own dynamic Gaussians, so three cameras at one time differ) defines
  ``gaussians_for_cameras(cameras) -> [(camera indices, Gaussians3D), ...]`` instead.
* Cameras are rendered in groups of equal (time, height, width). When sizes differ inside one
  batch the outputs are zero-padded at the bottom/right to the largest size (alpha = 0 there).
* Background: the representation's ``Gaussians3D.background(cameras)`` image when it has one
  (scene content, e.g. a sky model), otherwise the ``background`` colour [3] (or [N, 3]),
  otherwise black; composited as ``rgb + (1 - alpha) * background``, or by the Gaussians'
  ``composite`` callable when they carry one (dggt: ``alpha * rgb + (1 - alpha) * sky``).
* ``info`` (for densification strategies, gsplat's shape) holds ``means2d`` [C, N, 2] and
  ``radii`` [C, N, 2] of ``rep.splats``' rows, ``width``, ``height``, ``n_cameras`` when the
  cameras form one group and the Gaussians are every row of the splats; else it is empty.
* depth is the expected camera z, ``sum_i w_i z_i / alpha`` where alpha > 0 and 0 elsewhere.

Both follow gsplat's conventions (pixel centres at i + 0.5, world-to-camera ``viewmats`` =
``inverse(c2w)``), so their images agree; ``tests/test_gaussians_renderers.py`` checks it on a
CUDA machine. Poses are differentiable through ``cameras.viewmats`` in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from recon_core import CameraRenderer, Cameras, Gaussians3D, InputError, RenderOutput, Representation, option

from .rasterize import RasterizeSettings, rasterize_gaussians

__all__ = ["TorchGaussianRenderer", "GsplatRenderer", "GsplatSettings", "render_gaussian_batches"]

RasterizeFn = Callable[[Gaussians3D, Cameras, dict], tuple[Tensor, Tensor, Tensor]]
"""(gaussians, same-sized cameras, info to fill) -> rgb [n, H, W, 3] (no background), alpha, depth [n, H, W, 1]."""


def render_gaussian_batches(
    rep: Representation,
    cameras: Cameras | None,
    rasterize: RasterizeFn,
    *,
    background: Tensor | None = None,
    renderer: CameraRenderer | None = None,
) -> RenderOutput:
    """Render every camera with ``rasterize``, grouping by time and image size (see module doc).

    Args:
        rep: a representation providing "gaussians-3d".
        cameras: N cameras.
        rasterize: renders one group of same-sized cameras without background.
        renderer: the renderer calling, handed to a scene background (e.g. a sky of Gaussians).
        background: [3] or [N, 3] colour, used when the Gaussians carry no background callable.

    Returns:
        RenderOutput with rgb [N, H, W, 3], alpha and depth [N, H, W, 1].
    """
    if cameras is None or len(cameras) == 0:
        raise InputError("Gaussian renderers need cameras to render")
    n = len(cameras)
    sources: list[tuple[list[int], Gaussians3D]] = []
    per_camera = getattr(rep, "gaussians_for_cameras", None)
    if callable(per_camera):  # Gaussians that depend on the camera, not only on its time (dggt)
        sources = list(per_camera(cameras))
    else:
        dynamic = "dynamic" in getattr(rep, "provides", frozenset())
        time_of: list[float | None] = [None] * n
        if dynamic and cameras.times is not None:
            time_of = [float(t) for t in cameras.times.reshape(-1).tolist()]
        by_time: dict[float | None, list[int]] = {}
        for i in range(n):
            by_time.setdefault(time_of[i], []).append(i)
        sources = [(index, rep.gaussians(time)) for time, index in by_time.items()]
    groups: list[tuple[list[int], Gaussians3D]] = []
    for index, gauss in sources:
        by_size: dict[tuple[int, int], list[int]] = {}
        for i in index:
            by_size.setdefault((int(cameras.height[i]), int(cameras.width[i])), []).append(i)
        groups += [(sub, gauss) for sub in by_size.values()]

    parts: list[tuple[list[int], Tensor, Tensor, Tensor]] = []
    for index, gauss in groups:
        cams = cameras[index].to(gauss.means.device)
        info: dict = {}
        rgb, alpha, depth = rasterize(gauss, cams, info if len(groups) == 1 and gauss.rows is None else {})
        if gauss.background is not None:
            bg = gauss.background(cams, renderer).to(rgb)
        elif background is not None:
            bg = background.to(rgb)
            bg = bg[index] if bg.ndim == 2 else bg
            bg = bg.reshape(-1, 1, 1, 3)
        else:
            bg = None
        if bg is not None:
            rgb = gauss.composite(rgb, alpha, bg) if gauss.composite is not None else rgb + (1.0 - alpha) * bg
        parts.append((index, rgb, alpha, depth))

    if len(parts) == 1 and parts[0][0] == list(range(n)):
        return RenderOutput(rgb=parts[0][1], alpha=parts[0][2], depth=parts[0][3], info=info)
    height, width = int(cameras.height.max()), int(cameras.width.max())
    ref = parts[0][1]
    rgb_all = ref.new_zeros(n, height, width, 3)
    alpha_all = ref.new_zeros(n, height, width, 1)
    depth_all = ref.new_zeros(n, height, width, 1)
    for index, rgb, alpha, depth in parts:
        h, w = rgb.shape[1:3]
        idx = torch.tensor(index, device=ref.device)
        rgb_all = rgb_all.index_put((idx,), torch.nn.functional.pad(rgb, (0, 0, 0, width - w, 0, height - h)))
        alpha_all = alpha_all.index_put((idx,), torch.nn.functional.pad(alpha, (0, 0, 0, width - w, 0, height - h)))
        depth_all = depth_all.index_put((idx,), torch.nn.functional.pad(depth, (0, 0, 0, width - w, 0, height - h)))
    return RenderOutput(rgb=rgb_all, alpha=alpha_all, depth=depth_all)


class TorchGaussianRenderer(CameraRenderer):
    """``torch-3dgs``: tile rasteriser with gsplat's conventions (CPU or any device).

    On CPU tensors the projection + SH colours and the binning and compositing run in compiled,
    multi-threaded C++ (``rasterize_cpu.cpp``, built on first use); elsewhere, or when it cannot
    be built (one warning), in pure PyTorch. ``backend`` forces either for the compositing
    (``--set torch-3dgs.backend=torch``), ``projection`` for the projection
    (``--set torch-3dgs.projection=torch``: the PyTorch reference).
    Both give the same images and gradients. Differentiable with respect to every Gaussian
    parameter and to the camera poses (c2w). Options are
    :class:`~recon_plugins.gaussians.rasterize.RasterizeSettings`.
    """

    name = "torch-3dgs"
    description = "3D Gaussian splatting on CPU (compiled C++/OpenMP, PyTorch fallback) or any device; gsplat's conventions"
    Config = RasterizeSettings
    requires = frozenset({"gaussians-3d"})
    devices = ("cpu", "cuda")

    def render(self, rep: Representation, cameras: Cameras, *, background: Tensor | None = None) -> RenderOutput:
        return render_gaussian_batches(rep, cameras, self._rasterize, background=background, renderer=self)

    def _rasterize(self, g: Gaussians3D, cams: Cameras, info: dict) -> tuple[Tensor, Tensor, Tensor]:
        return rasterize_gaussians(
            g.means, g.quats, g.scales, g.opacities, cams.viewmats.to(g.means.dtype), cams.K.to(g.means.dtype),
            int(cams.width[0]), int(cams.height[0]),
            colors=g.colors, sh=g.sh, sh_degree=g.sh_degree, settings=self.config, info=info,
        )


@dataclass
class GsplatSettings:
    """Options of the ``gsplat`` renderer (passed to ``gsplat.rasterization``)."""

    tile_size: int = option(16, "gsplat tile size in pixels", min=1)
    eps2d: float = option(0.3, "added to the 2D covariance diagonal (px²)", min=0)
    near_plane: float = option(0.01, "Gaussians with camera z <= this are culled", min=0)
    far_plane: float = option(1e10, "Gaussians with camera z >= this are culled", min=0)
    packed: bool = option(True, "gsplat's packed mode (less memory for large scenes)")


class GsplatRenderer(CameraRenderer):
    """``gsplat``: the same interface through ``gsplat.rasterization`` on CUDA."""

    name = "gsplat"
    description = "3D Gaussian splatting with gsplat's CUDA kernels"
    Config = GsplatSettings
    requires = frozenset({"gaussians-3d"})
    devices = ("cuda",)
    needs_packages = ("gsplat",)
    install_hint = "pip install gsplat (needs a CUDA toolkit matching torch)"

    def render(self, rep: Representation, cameras: Cameras, *, background: Tensor | None = None) -> RenderOutput:
        return render_gaussian_batches(rep, cameras, self._rasterize, background=background, renderer=self)

    def _rasterize(self, g: Gaussians3D, cams: Cameras, info: dict) -> tuple[Tensor, Tensor, Tensor]:
        from gsplat import rasterization

        if g.means.device.type != "cuda":
            raise InputError("the gsplat renderer needs CUDA tensors; use torch-3dgs on CPU")
        cfg: GsplatSettings = self.config
        colors = g.sh if g.sh is not None else g.colors
        out, alpha, meta = rasterization(
            g.means, g.quats, g.scales, g.opacities, colors,
            cams.viewmats.to(g.means.dtype), cams.K.to(g.means.dtype),
            int(cams.width[0]), int(cams.height[0]),
            near_plane=cfg.near_plane, far_plane=cfg.far_plane, eps2d=cfg.eps2d,
            sh_degree=g.sh_degree if g.sh is not None else None,
            packed=cfg.packed, tile_size=cfg.tile_size, render_mode="RGB+ED",
        )
        info.update(meta, packed=cfg.packed)  # gsplat's own info (means2d, radii, ...) and its layout for the strategies
        return out[..., :3], alpha, out[..., 3:]
