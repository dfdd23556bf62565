"""Batched pinhole cameras in recon's one convention.

Convention (see docs/conventions.md): OpenCV camera-to-world 4x4 matrices (x right, y down,
z forward); intrinsics K with pixel centres at i + 0.5, so a centred principal point is
cx = W / 2. Renderers take world-to-camera ``viewmats`` (what gsplat calls them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

from .errors import InputError

__all__ = ["Cameras", "opengl_to_opencv", "check_rigid"]

# c2w_cv = c2w_gl @ diag(1, -1, -1, 1): flips the camera's y and z axes.
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def opengl_to_opencv(c2w_gl: Tensor) -> Tensor:
    """Convert OpenGL/nerfstudio camera-to-world matrices [..., 4, 4] to OpenCV ones."""
    return c2w_gl @ _GL_TO_CV.to(c2w_gl)


def check_rigid(c2w: Tensor, source: str | None = None, tol: float = 1e-3) -> None:
    """Raise InputError unless every c2w [..., 4, 4] is finite (also in float32, the precision
    cameras are used in) with a proper rotation."""
    if c2w.shape[-2:] != (4, 4):
        raise InputError(f"camera-to-world matrix has shape {tuple(c2w.shape)}, expected (..., 4, 4)", source)
    if not torch.isfinite(c2w).all():
        raise InputError("camera pose contains NaN or infinite values", source)
    if not torch.isfinite(c2w.to(torch.float32)).all():  # cameras are used in float32
        raise InputError(
            f"camera pose has values too large for float32 (largest magnitude {float(c2w.abs().max()):.3g})", source
        )
    R = c2w[..., :3, :3].double()
    eye = torch.eye(3, dtype=R.dtype)
    ortho_err = (R.transpose(-1, -2) @ R - eye).abs().amax()
    det = torch.linalg.det(R)
    if ortho_err > tol or (det - 1).abs().amax() > tol:
        raise InputError(
            f"camera pose is not rigid (|RᵀR − I| = {float(ortho_err):.3g}, det R = {float(det.flatten()[0]):.4f}): "
            "scaled, sheared or reflected poses are not supported",
            source,
        )


@dataclass(frozen=True)
class Cameras:
    """N pinhole cameras.

    Attributes:
        K: [N, 3, 3] float32 intrinsics, pixel centres at i + 0.5.
        c2w: [N, 4, 4] float32 OpenCV camera-to-world.
        width: [N] int64 image widths in pixels.
        height: [N] int64 image heights in pixels.
        distortion: [N, D] float32 OpenCV distortion (k1, k2, p1, p2[, k3, k4]) or None.
        times: [N] float32 timestamps in seconds (4D scenes) or None.
        w2c: [N, 4, 4] the world-to-camera matrices these poses were made from, or None. A
            source that predicts world-to-camera poses (a network) keeps them here so that
            renderers draw from exactly those, not from a float32 inverse of ``c2w`` (which
            differs by up to an ulp of the translation, enough to move edge pixels by 1e-5).
            It must be the inverse of ``c2w``; :meth:`with_c2w` drops it.
    """

    K: Tensor
    c2w: Tensor
    width: Tensor
    height: Tensor
    distortion: Tensor | None = None
    times: Tensor | None = None
    w2c: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.K.shape[0]
        assert self.K.shape == (n, 3, 3), f"K must be [N, 3, 3], got {tuple(self.K.shape)}"
        assert self.c2w.shape == (n, 4, 4), f"c2w must be [N, 4, 4], got {tuple(self.c2w.shape)}"
        assert self.width.shape == (n,) and self.height.shape == (n,), "width/height must be [N]"
        assert self.distortion is None or self.distortion.shape[0] == n
        assert self.times is None or self.times.shape == (n,)
        assert self.w2c is None or self.w2c.shape == (n, 4, 4), "w2c must be [N, 4, 4]"

    @staticmethod
    def create(
        K: Tensor | Sequence,
        c2w: Tensor | Sequence,
        width: int | Sequence[int] | Tensor,
        height: int | Sequence[int] | Tensor,
        distortion: Tensor | Sequence | None = None,
        times: Tensor | Sequence[float] | float | None = None,
    ) -> "Cameras":
        """Build cameras from single or batched values (adds the batch dimension when missing)."""
        K = torch.as_tensor(K, dtype=torch.float32)
        c2w = torch.as_tensor(c2w, dtype=torch.float32)
        if K.ndim == 2:
            K = K[None]
        if c2w.ndim == 2:
            c2w = c2w[None]
        n = c2w.shape[0]
        if K.shape[0] == 1 and n > 1:
            K = K.expand(n, 3, 3).clone()
        w = torch.as_tensor(width, dtype=torch.int64).reshape(-1).expand(n).clone()
        h = torch.as_tensor(height, dtype=torch.int64).reshape(-1).expand(n).clone()
        d = None
        if distortion is not None:
            d = torch.as_tensor(distortion, dtype=torch.float32)
            d = d[None] if d.ndim == 1 else d
            d = d.expand(n, d.shape[-1]).clone()
        t = None
        if times is not None:
            t = torch.as_tensor(times, dtype=torch.float32).reshape(-1).expand(n).clone()
        return Cameras(K=K, c2w=c2w, width=w, height=h, distortion=d, times=t)

    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> "Cameras":
        if isinstance(index, int):
            index = [index]
        pick = lambda x: None if x is None else x[index]  # noqa: E731
        return Cameras(
            K=self.K[index],
            c2w=self.c2w[index],
            width=self.width[index],
            height=self.height[index],
            distortion=pick(self.distortion),
            times=pick(self.times),
            w2c=pick(self.w2c),
        )

    @staticmethod
    def cat(cameras: Sequence["Cameras"]) -> "Cameras":
        """Concatenate batches; distortion/times are kept only when every batch has them."""
        if not cameras:
            raise ValueError("no cameras to concatenate")

        def join(attr: str) -> Tensor | None:
            parts = [getattr(c, attr) for c in cameras]
            if any(p is None for p in parts):
                return None
            if attr == "distortion":  # pad to the longest set of coefficients
                d = max(p.shape[1] for p in parts)
                parts = [torch.nn.functional.pad(p, (0, d - p.shape[1])) for p in parts]
            return torch.cat(parts)

        return Cameras(
            K=torch.cat([c.K for c in cameras]),
            c2w=torch.cat([c.c2w for c in cameras]),
            width=torch.cat([c.width for c in cameras]),
            height=torch.cat([c.height for c in cameras]),
            distortion=join("distortion"),
            times=join("times"),
            w2c=join("w2c"),
        )

    def to(self, device: torch.device | str) -> "Cameras":
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return Cameras(
            K=self.K.to(device),
            c2w=self.c2w.to(device),
            width=self.width.to(device),
            height=self.height.to(device),
            distortion=move(self.distortion),
            times=move(self.times),
            w2c=move(self.w2c),
        )

    def with_c2w(self, c2w: Tensor) -> "Cameras":
        """The same cameras moved to new poses (e.g. refined ones)."""
        return replace(self, c2w=c2w, w2c=None)

    @property
    def device(self) -> torch.device:
        return self.K.device

    @property
    def viewmats(self) -> Tensor:
        """[N, 4, 4] world-to-camera matrices (OpenCV): ``w2c`` when given, else the inverse of
        ``c2w`` (differentiable w.r.t. c2w)."""
        return self.w2c if self.w2c is not None else torch.linalg.inv(self.c2w)

    @property
    def centers(self) -> Tensor:
        """[N, 3] camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    def size(self, i: int = 0) -> tuple[int, int]:
        """(height, width) of camera i."""
        return int(self.height[i]), int(self.width[i])

    def scaled(self, factor: float) -> "Cameras":
        """Cameras for images resized by ``factor`` (pixel-centre convention preserved)."""
        K = self.K.clone()
        K[:, :2, :] *= factor  # fx, fy, cx, cy scale; with centres at i+0.5 no offset is needed
        w = torch.round(self.width.double() * factor).long()
        h = torch.round(self.height.double() * factor).long()
        return replace(self, K=K, width=w, height=h)
