"""VGGT/DGGT track head: DPT features + an iterative point tracker (CoTracker-style).

It is part of the published checkpoint (``track_head.*``) and runs only when query points are
given; DGGT's inference never passes any. Query points and returned tracks are pixel
coordinates (x, y) in the input images, frame 0 being the query frame.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import DPTHead
from .layers import Mlp

__all__ = ["TrackHead"]


def _sample(fmap: Tensor, xy: Tensor, padding_mode: str = "border") -> Tensor:
    """Bilinear sample fmap [N, C, H, W] at pixel coords xy [N, ..., 2] (align_corners, 0..W-1)."""
    H, W = fmap.shape[-2:]
    scale = torch.tensor([2 / max(W - 1, 1), 2 / max(H - 1, 1)], device=xy.device, dtype=xy.dtype)
    grid = (xy * scale - 1).reshape(xy.shape[0], -1, 1, 2) if xy.ndim == 3 else xy * scale - 1
    return F.grid_sample(fmap, grid.to(fmap.dtype), align_corners=True, padding_mode=padding_mode)


def _sincos_1d(dim: int, pos: Tensor, base: float = 10000.0) -> Tensor:
    omega = 1.0 / base ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0))
    a = pos.reshape(-1).double()[:, None] * omega
    return torch.cat([a.sin(), a.cos()], dim=-1).float()


def _grid_pos_embed(dim: int, h: int, w: int, device: torch.device) -> Tensor:
    """[1, dim, h, w] sin/cos embedding: first half from x (column), second half from y (row)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, xs), _sincos_1d(dim // 2, ys)], dim=-1)
    return emb.reshape(h, w, dim).permute(2, 0, 1)[None]


def _flow_embedding(xy: Tensor, channels: int) -> Tensor:
    """Interleaved sin/cos embedding of 2D offsets [..., 2] → [..., 2*channels]."""
    div = torch.arange(0, channels, 2, device=xy.device, dtype=torch.float32) * (1000.0 / channels)
    out = []
    for k in range(2):
        a = xy[..., k : k + 1] * div
        pe = torch.stack([a.sin(), a.cos()], dim=-1).flatten(-2)
        out.append(pe)
    return torch.cat(out, dim=-1)


class _AttnBlock(nn.Module):
    """Self- or cross-attention block with nn.MultiheadAttention (note: residual after norm1)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, cross: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if cross:
            self.norm_context = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        if cross:
            self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        else:
            self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.cross = cross

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = self.norm1(x)
        if self.cross:
            c = self.norm_context(context)
            x = x + self.cross_attn(x, c, c, need_weights=False)[0]
        else:
            x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class _UpdateFormer(nn.Module):
    """Time attention per track, space attention through ``num_virtual`` virtual tracks."""

    def __init__(self, input_dim: int, hidden: int, output_dim: int, depth: int = 6, num_heads: int = 8, num_virtual: int = 64) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden)
        self.output_norm = nn.LayerNorm(hidden)
        self.flow_head = nn.Linear(hidden, output_dim)
        self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual, 1, hidden))  # (sic) checkpoint key
        self.time_blocks = nn.ModuleList([_AttnBlock(hidden, num_heads, 4.0, cross=False) for _ in range(depth)])
        self.space_virtual_blocks = nn.ModuleList([_AttnBlock(hidden, num_heads, 4.0, cross=False) for _ in range(depth)])
        self.space_point2virtual_blocks = nn.ModuleList([_AttnBlock(hidden, num_heads, 4.0, cross=True) for _ in range(depth)])
        self.space_virtual2point_blocks = nn.ModuleList([_AttnBlock(hidden, num_heads, 4.0, cross=True) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        """x [B, N, S, input_dim] → [B, N, S, output_dim]."""
        tokens = self.input_transform(self.input_norm(x))
        init = tokens
        B, N, S, C = tokens.shape
        V = self.virual_tracks.shape[1]
        tokens = torch.cat([tokens, self.virual_tracks.expand(B, V, S, C)], dim=1)
        for i in range(len(self.time_blocks)):
            tokens = self.time_blocks[i](tokens.reshape(B * (N + V), S, C)).reshape(B, N + V, S, C)
            space = tokens.permute(0, 2, 1, 3).reshape(B * S, N + V, C)
            points, virtual = space[:, :N], space[:, N:]
            virtual = self.space_virtual2point_blocks[i](virtual, points)
            virtual = self.space_virtual_blocks[i](virtual)
            points = self.space_point2virtual_blocks[i](points, virtual)
            tokens = torch.cat([points, virtual], dim=1).reshape(B, S, N + V, C).permute(0, 2, 1, 3)
        return self.flow_head(self.output_norm(tokens[:, :N] + init))


class _Tracker(nn.Module):
    def __init__(self, latent: int = 128, hidden: int = 384, stride: int = 2, levels: int = 7, radius: int = 4, max_scale: float = 518.0) -> None:
        super().__init__()
        self.latent, self.stride, self.levels, self.radius, self.max_scale = latent, stride, levels, radius, max_scale
        self.transformer_dim = 3 * latent + 4
        self.corr_mlp = Mlp(levels * (2 * radius + 1) ** 2, hidden, latent)
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))
        self.updateformer = _UpdateFormer(self.transformer_dim, hidden, latent + 2)
        self.fmap_norm = nn.LayerNorm(latent)
        self.ffeat_norm = nn.GroupNorm(1, latent)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent, latent), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent, 1))

    def _correlations(self, pyramid: list[Tensor], feats: Tensor, coords: Tensor) -> Tensor:
        """Local correlation windows: feats [B, S, N, C], coords [B, S, N, 2] → [B, S, N, L·(2r+1)²]."""
        B, S, N, C = feats.shape
        r = self.radius
        d = torch.linspace(-r, r, 2 * r + 1, device=coords.device, dtype=coords.dtype)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1)  # (dy, dx) as in the reference
        out = []
        for lvl, fmaps in enumerate(pyramid):
            h, w = fmaps.shape[-2:]
            corr = torch.matmul(feats, fmaps.reshape(B, S, C, h * w)) / math.sqrt(C)
            centre = coords.reshape(B * S * N, 1, 1, 2) / 2**lvl
            sampled = _sample(corr.reshape(B * S * N, 1, h, w), centre + delta[None], padding_mode="zeros")
            out.append(sampled.reshape(B, S, N, -1))
        return torch.cat(out, dim=-1)

    def forward(self, query_points: Tensor, fmaps: Tensor, iters: int) -> tuple[list[Tensor], Tensor, Tensor]:
        """query_points [B, N, 2] pixels; fmaps [B, S, C, H/2, W/2] → (tracks per iteration
        [B, S, N, 2] pixels, visibility [B, S, N], confidence [B, S, N])."""
        B, N, _ = query_points.shape
        _, S, C, HH, WW = fmaps.shape
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        coords = (query_points / self.stride)[:, None].repeat(1, S, 1, 1)
        query_feat = _sample(fmaps[:, 0], coords[:, 0]).squeeze(-1).transpose(1, 2)  # [B, N, C]
        feats = query_feat[:, None].repeat(1, S, 1, 1)
        pyramid = [fmaps]
        for _ in range(self.levels - 1):
            p = pyramid[-1]
            pyramid.append(F.avg_pool2d(p.flatten(0, 1), 2, 2).reshape(B, S, C, p.shape[-2] // 2, p.shape[-1] // 2))
        pos = _grid_pos_embed(self.transformer_dim, HH, WW, fmaps.device).expand(B, -1, -1, -1)
        pos = _sample(pos, coords[:, 0]).squeeze(-1).transpose(1, 2).reshape(B * N, 1, -1)
        ref = torch.cat([self.query_ref_token[:, :1], self.query_ref_token[:, 1:].expand(-1, S - 1, -1)], dim=1)
        preds = []
        for _ in range(iters):
            coords = coords.detach()
            corr = self.corr_mlp(self._correlations(pyramid, feats, coords).permute(0, 2, 1, 3).reshape(B * N, S, -1))
            flows = (coords - coords[:, :1]).permute(0, 2, 1, 3).reshape(B * N, S, 2)
            flow_emb = torch.cat([_flow_embedding(flows, self.latent // 2), flows / self.max_scale, flows / self.max_scale], dim=-1)
            feats_ = feats.permute(0, 2, 1, 3).reshape(B * N, S, C)
            x = torch.cat([flow_emb, corr, feats_], dim=-1) + pos + ref
            delta = self.updateformer(x.reshape(B, N, S, -1)).reshape(B * N * S, -1)
            feats_ = self.ffeat_updater(self.ffeat_norm(delta[:, 2:])) + feats_.reshape(B * N * S, C)
            feats = feats_.reshape(B, N, S, C).permute(0, 2, 1, 3)
            coords = coords + delta[:, :2].reshape(B, N, S, 2).permute(0, 2, 1, 3)
            coords[:, 0] = query_points / self.stride
            preds.append(coords * self.stride)
        vis = torch.sigmoid(self.vis_predictor(feats).squeeze(-1))
        conf = torch.sigmoid(self.conf_predictor(feats).squeeze(-1))
        return preds, vis, conf


class TrackHead(nn.Module):
    """Tracks query points of frame 0 through all frames.

    forward(layers, image_hw, patch_start, query_points [B, N, 2]) →
    (tracks per iteration, each [B, S, N, 2] pixels; visibility [B, S, N]; confidence [B, S, N]).
    """

    def __init__(self, dim_in: int, layer_idx: tuple[int, ...] = (4, 11, 17, 23), out_channels: tuple[int, ...] = (256, 512, 1024, 1024), patch_size: int = 14, features: int = 128, iters: int = 4, hidden: int = 384, corr_levels: int = 7) -> None:
        super().__init__()
        self.iters = iters
        self.feature_extractor = DPTHead(
            dim_in, features=features, out_channels=out_channels, layer_idx=layer_idx, pos_embed=False,
            feature_only=True, down_ratio=2, patch_size=patch_size,
        )
        self.tracker = _Tracker(latent=features, hidden=hidden, stride=2, levels=corr_levels)

    def forward(self, layers: Sequence[Tensor], image_hw: tuple[int, int], patch_start: int, query_points: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        fmaps = self.feature_extractor(layers, image_hw, patch_start)
        return self.tracker(query_points, fmaps, self.iters)
