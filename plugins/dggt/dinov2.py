"""DINOv2 ViT with register tokens, the aggregator's patch embedding (ViT-L/14-reg4 in DGGT).

Key names follow the DINOv2 reference (``cls_token``, ``pos_embed``, ``register_tokens``,
``mask_token``, ``patch_embed.proj``, ``blocks.N``, ``norm``) so the DGGT checkpoint loads
strictly. Token order inside the ViT: [cls, registers..., patches...].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Block, PatchEmbed

__all__ = ["DinoViT"]


class DinoViT(nn.Module):
    """DINOv2 vision transformer (no RoPE, no QK-norm, LayerScale, LayerNorm eps 1e-6).

    Args:
        img_size: the square training size whose patch grid ``pos_embed`` covers (518 → 37x37 + cls).
        patch_size: patch side in pixels (14).
        embed_dim, depth, num_heads, mlp_ratio: ViT size (ViT-L: 1024, 24, 16, 4).
        num_register_tokens: register tokens inserted after cls (4).
        layer_scale: LayerScale init value (1.0 in DGGT's DINOv2 build).
    """

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        layer_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, layer_scale=layer_scale, norm_eps=1e-6) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # Kept for checkpoint compatibility (masked-image pre-training); unused at inference.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        if self.pos_embed.device.type != "meta":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            nn.init.normal_(self.register_tokens, std=1e-6)

    def _pos_embed_for(self, h_patches: int, w_patches: int) -> Tensor:
        """pos_embed resized (bicubic, antialiased) to an h x w patch grid: [1, 1 + h*w, C]."""
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(math.isqrt(patch_pos.shape[1]))
        if (h_patches, w_patches) == (side, side):
            return self.pos_embed
        dim = patch_pos.shape[-1]
        grid = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h_patches, w_patches), mode="bicubic", antialias=True)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h_patches * w_patches, dim).to(self.pos_embed.dtype)
        return torch.cat([cls_pos, grid], dim=1)

    def forward(self, images: Tensor, num_layers: int) -> list[Tensor]:
        """Normalised patch tokens of the last ``num_layers`` blocks.

        Args:
            images: [N, 3, H, W] ImageNet-normalised, H and W multiples of the patch size.
            num_layers: how many of the last blocks to return (DGGT: all 24).

        Returns:
            ``num_layers`` tensors [N, (H/p)(W/p), C], each ``norm(block output)`` without the
            cls and register tokens; the last one is DINOv2's ``x_norm_patchtokens``.
        """
        n, _, h, w = images.shape
        hp, wp = h // self.patch_size, w // self.patch_size
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1) + self._pos_embed_for(hp, wp)
        x = torch.cat([x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]], dim=1)
        first = len(self.blocks) - num_layers
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= first:
                outputs.append(self.norm(x)[:, 1 + self.num_register_tokens :])
        return outputs
