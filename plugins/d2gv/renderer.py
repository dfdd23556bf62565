"""``torch-2dgs``: summation renderer of image-space 2D Gaussians (CPU or CUDA).

Renders video frames of a representation providing "gaussians-2d" (``d2gv``) by integer frame
index (a :class:`~recon_core.components.FrameRenderer`; ``rep.frame_indices(times)`` turns times
in seconds into indices). The rasteriser is ``rasterize.rasterize_sum``: the compiled
C++/OpenMP kernel for CPU tensors when it builds, its PyTorch twin otherwise (``backend``).
Differentiable when gradients are enabled; under ``torch.no_grad()``/``torch.inference_mode()`` it
decodes through ``decode.Decoder`` (pruned Gaussians dropped, per-GoP constants precomputed),
which gives the same images faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recon_core import FrameRenderer, InputError, RenderOutput, option

from .decode import Decoder
from .rasterize import RasterSettings, project_cholesky, rasterize_sum
from .representation import FrameGaussians

__all__ = ["Torch2DGSConfig", "Torch2DGS", "render_gaussians"]


@dataclass
class Torch2DGSConfig:
    frames_per_batch: int = option(8, "frames rasterised together (memory grows linearly)", min=1)
    chunk_evals: int = option(1 << 22, "max (Gaussian, pixel) evaluations held at once per chunk (torch backend)", min=1)
    backend: str = option("auto", "rasteriser: auto (compiled C++ for CPU tensors when it builds), cpp, torch", choices=("auto", "cpp", "torch"))


def render_gaussians(g: FrameGaussians, height: int, width: int, chunk_evals: int = 1 << 22, backend: str = "auto") -> Tensor:
    """Rasterise the F frames of ``g`` → [F, H, W, 3] in [0, 1] (differentiable)."""
    means, conics, radii = project_cholesky(g.xy, g.chol, height, width)
    settings = RasterSettings(height, width, chunk_evals=chunk_evals, backend=backend)  # type: ignore[arg-type]
    return rasterize_sum(means, conics, g.color, radii, g.weights, settings)


class Torch2DGS(FrameRenderer):
    """Summation rasteriser for 2D Gaussian video representations (no cameras)."""

    name = "torch-2dgs"
    description = "pure-PyTorch accumulated-summation rasteriser of 2D Gaussians (D2GV, GaussianImage)"
    Config = Torch2DGSConfig
    requires = frozenset({"gaussians-2d"})
    devices = ("cpu", "cuda")

    def render_frames(self, rep, frames: Tensor, *, background: Tensor | None = None) -> RenderOutput:
        """Render frames of ``rep``.

        Args:
            rep: a representation with ``frame_indices``/``frame_gaussians`` (``d2gv``).
            frames: [F] int64 frame indices (any order, repeats allowed).
            background: ignored: the summation model has no transparency (alpha is None).
        Returns:
            RenderOutput with rgb [F, H, W, 3] in the order of ``frames``.
        """
        if not hasattr(rep, "frame_gaussians"):
            raise InputError(f"torch-2dgs cannot render '{getattr(rep, 'name', rep)}' (it needs 2D Gaussian frames)")
        frames = torch.as_tensor(frames)
        if frames.is_floating_point():
            raise InputError("torch-2dgs renders frames by integer index (use rep.frame_indices(times) for times in seconds)")
        frames = rep.frame_indices(frames)
        if not torch.is_grad_enabled():
            return RenderOutput(rgb=Decoder(rep, self.config.backend).frames(frames))
        H, W = rep.height, rep.width
        out = torch.empty(frames.numel(), H, W, 3, device=rep.gop_starts.device)
        parts = []
        for pos, g in rep.frame_gaussians(frames, max_frames=self.config.frames_per_batch):
            img = render_gaussians(g, H, W, self.config.chunk_evals, self.config.backend)
            if img.requires_grad:
                parts.append((pos, img))
            else:
                out[pos.to(out.device)] = img
        if parts:  # keep the autograd graph: assemble by index instead of writing into a buffer
            order = torch.cat([p for p, _ in parts]).argsort()
            out = torch.cat([img for _, img in parts])[order.to(out.device)]
        return RenderOutput(rgb=out)
