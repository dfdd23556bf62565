"""Deformation field of one GoP: one MLP shared by all its Gaussians (D2GV).

Input: positional encodings of the canonical position xy ∈ [-1, 1]² (``xy_freqs`` = 10
frequencies) and of the frame time t = (i + 1) / F within the GoP (``t_freqs`` = 6), two hidden
ReLU layers of width 156, and linear heads for Δxy (added to the *pre-tanh* position) and Δcolour.

The first layer is linear in the concatenated encodings, so it is evaluated as
``W_xy · γ(xy)`` once per Gaussian plus ``W_t · γ(t)`` once per frame, broadcast to [F, N, width];
rendering F frames therefore never builds an [F, N, 55] input tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["DeformSettings", "positional_encoding", "DeformationMLP", "gop_times"]


@dataclass(frozen=True)
class DeformSettings:
    """Shape of the deformation MLP (part of a saved model, so it travels with checkpoints)."""

    xy_freqs: int = 10
    t_freqs: int = 6
    width: int = 156


def positional_encoding(x: Tensor, num_freqs: int) -> Tensor:
    """NeRF encoding ``[x, sin(2^k π x), cos(2^k π x)]`` for k < num_freqs.

    Args:
        x: [..., D]
    Returns:
        [..., D · (1 + 2 · num_freqs)]
    """
    freqs = (2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)) * math.pi
    xf = (x[..., None] * freqs).flatten(-2)  # [..., D * L]
    return torch.cat([x, torch.sin(xf), torch.cos(xf)], dim=-1)


def gop_times(num_frames: int, device: torch.device | str = "cpu") -> Tensor:
    """[F] times t = (i + 1) / F of the frames of a GoP of F frames (D2GV's convention)."""
    return torch.arange(1, num_frames + 1, dtype=torch.float32, device=device) / num_frames


class DeformationMLP(nn.Module):
    """Per-frame offsets of every Gaussian of a GoP.

    ``forward(xy, t)`` with xy [N, 2] canonical positions in [-1, 1] and t [F] GoP times returns
    (dxy [F, N, 2], dcolor [F, N, 3]). The heads start at zero, so training begins from the
    canonical (static) Gaussians.
    """

    def __init__(self, settings: DeformSettings = DeformSettings()) -> None:
        super().__init__()
        self.settings = settings
        s = settings
        self.in_xy = nn.Linear(2 * (1 + 2 * s.xy_freqs), s.width)
        self.in_t = nn.Linear(1 + 2 * s.t_freqs, s.width, bias=False)
        self.hidden = nn.Linear(s.width, s.width)
        self.head = nn.Linear(s.width, 5)  # Δx, Δy, Δr, Δg, Δb
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Hidden layers ~ U(±1/√fan_in) (PyTorch's default) from ``generator``; heads at zero."""
        for layer in (self.in_xy, self.in_t, self.hidden):
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
            if layer.bias is not None:
                layer.bias.copy_(torch.rand(layer.bias.shape, generator=generator) * 2 * bound - bound)
        self.head.weight.zero_()
        self.head.bias.zero_()

    def forward(self, xy: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        s = self.settings
        h_xy = self.in_xy(positional_encoding(xy, s.xy_freqs))  # [N, width]
        h_t = self.in_t(positional_encoding(t[:, None], s.t_freqs))  # [F, width]
        h = torch.relu(h_xy[None] + h_t[:, None])  # [F, N, width]
        h = torch.relu(self.hidden(h))
        out = self.head(h)
        return out[..., :2], out[..., 2:]
