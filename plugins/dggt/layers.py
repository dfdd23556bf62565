"""Transformer building blocks shared by DINOv2, the VGGT aggregator and the camera head.

Parameter names (``qkv``, ``q_norm``, ``k_norm``, ``proj``, ``ls1.gamma``, ``mlp.fc1`` ...) are
those of the published DGGT/VGGT checkpoints, so a plain ``load_state_dict(strict=True)`` works.
Tokens are laid out as [B, N, C] throughout.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerScale", "Mlp", "Attention", "Block", "RotaryPositionEmbedding2D", "patch_positions", "PatchEmbed"]


class LayerScale(nn.Module):
    """Per-channel residual scaling: x * gamma, gamma [C] initialised to ``init_value``."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 → GELU → fc2 on the last dimension."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RotaryPositionEmbedding2D(nn.Module):
    """2D RoPE (VGGT): the first half of each head's channels rotates with the token's row,
    the second half with its column. Within each half, channel pairs (j, j + d/2) rotate by
    angle ``pos / base^(2j/d)``. Has no parameters.
    """

    def __init__(self, base: float = 100.0) -> None:
        super().__init__()
        self.base = float(base)

    def _rotate_1d(self, x: Tensor, pos: Tensor) -> Tensor:
        # x: [B, heads, N, d]; pos: [B, N] integer positions.
        d = x.shape[-1]
        inv_freq = 1.0 / (self.base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
        angles = pos.to(torch.float32)[..., None] * inv_freq  # [B, N, d/2]
        angles = torch.cat([angles, angles], dim=-1)[:, None].to(x.dtype)  # [B, 1, N, d]
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * angles.cos() + rotated * angles.sin()

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x [B, heads, N, D] (D divisible by 4); pos [B, N, 2] (row, column) → same shape as x."""
        assert pos.ndim == 3 and pos.shape[-1] == 2 and x.shape[-1] % 4 == 0
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat([self._rotate_1d(rows, pos[..., 0]), self._rotate_1d(cols, pos[..., 1])], dim=-1)


def patch_positions(batch: int, h_patches: int, w_patches: int, num_special: int, device: torch.device) -> Tensor:
    """RoPE positions [batch, num_special + h*w, 2] (row, col): special tokens at (0, 0),
    patch (r, c) at (r + 1, c + 1), as in the VGGT aggregator."""
    rows = torch.arange(h_patches, device=device)
    cols = torch.arange(w_patches, device=device)
    grid = torch.cartesian_prod(rows, cols) + 1
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    return torch.cat([special, grid], dim=0)[None].expand(batch, -1, -1)


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head LayerNorm on q and k (QK-norm) and 2D RoPE."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
    ) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        """x [B, N, C]; pos [B, N, 2] RoPE positions (used only when the block has RoPE)."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)); x + ls2(mlp(norm2 x)).

    ``layer_scale=None`` drops LayerScale; ``norm_eps`` is 1e-6 in DINOv2 and 1e-5 elsewhere.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        layer_scale: float | None = None,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, rope=rope)
        self.ls1: Callable[[Tensor], Tensor] = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2: Callable[[Tensor], Tensor] = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: images [B, 3, H, W] → tokens [B, (H/p)(W/p), C]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)
