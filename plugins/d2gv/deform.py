"""Deformation field of one GoP: one MLP shared by all its Gaussians (D2GV).

Input: positional encodings of the canonical position xy ∈ [-1, 1]² (``xy_freqs`` = 10
frequencies) and of the frame time t = (i + 1) / F within the GoP (``t_freqs`` = 6), two hidden
ReLU layers of width 156, and heads for Δxy (added to the *pre-tanh* position) and Δcolour.

Two layouts (``DeformSettings``):

* ``branches=False`` (our CPU default): one linear head of 5 outputs after the second hidden
  layer (34 k parameters at width 156); encoding ``[x, sin(2^k π x), cos(2^k π x)]``
  (``embedder="nerf"``); heads start at zero, so fitting starts from the static Gaussians.
* ``branches=True`` with ``embedder="deform3dgs"`` (``d2gv.preset=paper``): as the original
  D2GV's ``DeformNetwork``, each output has its own branch ``Linear(W, W) + ReLU + Linear(W, k)``
  (83 k parameters at width 156; the original also has a third, opacity branch whose output it
  never uses, which would bring it to 107 k: it is left out here), and the encoding of
  Deformable-3DGS's embedder: no π factor, ordered ``[x, sin(x), cos(x), sin(2x), cos(2x), …]``
  frequency by frequency. Every layer, heads included, gets PyTorch's default initialisation.

The first layer is linear in the concatenated encodings, so it is evaluated as
``W_xy · γ(xy)`` once per Gaussian plus ``W_t · γ(t)`` once per frame, broadcast to [F, N, width];
rendering F frames therefore never builds an [F, N, 55] input tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["DeformSettings", "EMBEDDERS", "positional_encoding", "DeformationMLP", "gop_times"]

EMBEDDERS = ("nerf", "deform3dgs")


@dataclass(frozen=True)
class DeformSettings:
    """Shape of the deformation MLP (part of a saved model, so it travels with checkpoints)."""

    xy_freqs: int = 10
    t_freqs: int = 6
    width: int = 156
    embedder: str = "nerf"
    branches: bool = False


def positional_encoding(x: Tensor, num_freqs: int, embedder: str = "nerf") -> Tensor:
    """Positional encoding of ``x`` [..., D] → [..., D · (1 + 2 · num_freqs)].

    ``nerf``: ``[x, sin(2^k π x) for all k and dims, cos(2^k π x) …]``;
    ``deform3dgs``: ``[x, sin(2^0 x), cos(2^0 x), sin(2^1 x), cos(2^1 x), …]`` (each term over all
    D dims), the embedder of Deformable-3DGS that D2GV uses.
    """
    freqs = 2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)
    if embedder == "deform3dgs":
        xf = x[..., None, :] * freqs[:, None]  # [..., L, D]
        return torch.cat([x, torch.stack([torch.sin(xf), torch.cos(xf)], dim=-2).flatten(-3)], dim=-1)
    if embedder != "nerf":
        raise ValueError(f"unknown embedder {embedder!r}; choose one of {', '.join(EMBEDDERS)}")
    xf = (x[..., None] * (freqs * math.pi)).flatten(-2)  # [..., D * L]
    return torch.cat([x, torch.sin(xf), torch.cos(xf)], dim=-1)


def gop_times(num_frames: int, device: torch.device | str = "cpu") -> Tensor:
    """[F] times t = (i + 1) / F of the frames of a GoP of F frames (D2GV's convention)."""
    return torch.arange(1, num_frames + 1, dtype=torch.float32, device=device) / num_frames


def _torch_default_init(layer: nn.Linear, generator: torch.Generator | None) -> None:
    """PyTorch's default ``nn.Linear`` init (weight and bias ~ U(±1/√fan_in)) from ``generator``."""
    bound = 1.0 / math.sqrt(layer.in_features)
    layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
    if layer.bias is not None:
        layer.bias.copy_(torch.rand(layer.bias.shape, generator=generator) * 2 * bound - bound)


class DeformationMLP(nn.Module):
    """Per-frame offsets of every Gaussian of a GoP.

    ``forward(xy, t)`` with xy [N, 2] canonical positions in [-1, 1] and t [F] GoP times returns
    (dxy [F, N, 2], dcolor [F, N, 3]).
    """

    def __init__(self, settings: DeformSettings = DeformSettings()) -> None:
        super().__init__()
        self.settings = settings
        s = settings
        self.in_xy = nn.Linear(2 * (1 + 2 * s.xy_freqs), s.width)
        self.in_t = nn.Linear(1 + 2 * s.t_freqs, s.width, bias=False)
        self.hidden = nn.Linear(s.width, s.width)
        if s.branches:
            self.branch_xy = nn.Linear(s.width, s.width)
            self.head_xy = nn.Linear(s.width, 2)
            self.branch_color = nn.Linear(s.width, s.width)
            self.head_color = nn.Linear(s.width, 3)
        else:
            self.head = nn.Linear(s.width, 5)  # Δx, Δy, Δr, Δg, Δb
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Every layer ~ U(±1/√fan_in) (PyTorch's default) from ``generator``; the single head of
        the default layout at zero (the branched layout keeps the original's random heads)."""
        for layer in self.children():
            if layer is not getattr(self, "head", None):
                _torch_default_init(layer, generator)  # type: ignore[arg-type]
        if not self.settings.branches:
            self.head.weight.zero_()
            self.head.bias.zero_()

    def features(self, xy: Tensor, t: Tensor) -> Tensor:
        """[F, N, width] output of the two shared hidden layers."""
        s = self.settings
        h_xy = self.in_xy(positional_encoding(xy, s.xy_freqs, s.embedder))  # [N, width]
        h_t = self.in_t(positional_encoding(t[:, None], s.t_freqs, s.embedder))  # [F, width]
        h = torch.relu(h_xy[None] + h_t[:, None])  # [F, N, width]
        return torch.relu(self.hidden(h))

    def forward(self, xy: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(xy, t)
        if self.settings.branches:
            return self.head_xy(torch.relu(self.branch_xy(h))), self.head_color(torch.relu(self.branch_color(h)))
        out = self.head(h)
        return out[..., :2], out[..., 2:]

    @torch.no_grad()
    def decode_layers(self) -> list[tuple[Tensor, Tensor, bool]]:
        """The layers after the first as (weight, bias, relu) for inference, giving [.., 5]
        (Δxy, Δcolour) from the first layer's ReLU output. The two branches are fused into one
        layer of 2W outputs and a block-diagonal head: the same numbers, two matrix products."""
        layers = [(self.hidden.weight, self.hidden.bias, True)]
        if not self.settings.branches:
            return layers + [(self.head.weight, self.head.bias, False)]
        w = self.settings.width
        branch_w = torch.cat([self.branch_xy.weight, self.branch_color.weight])
        branch_b = torch.cat([self.branch_xy.bias, self.branch_color.bias])
        head_w = self.head_xy.weight.new_zeros(5, 2 * w)
        head_w[:2, :w] = self.head_xy.weight
        head_w[2:, w:] = self.head_color.weight
        head_b = torch.cat([self.head_xy.bias, self.head_color.bias])
        return layers + [(branch_w, branch_b, True), (head_w, head_b, False)]
