"""VGGT alternating-attention aggregator (DGGT's backbone).

Each frame is embedded by DINOv2 (patch tokens), prefixed with one camera token and
``num_register_tokens`` register tokens (frame 0 gets its own learned copies, the other frames
share a second copy), then ``depth`` pairs of blocks alternate frame attention (tokens of one
frame) and global attention (tokens of all frames). Both use RoPE and QK-norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .dinov2 import DinoViT
from .layers import Block, RotaryPositionEmbedding2D, patch_positions

__all__ = ["Aggregator", "AggregatorOutput", "ConcatLayers"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ConcatLayers(Sequence[Tensor]):
    """A read-only list whose i-th item is the channel concatenation of the i-th items of
    ``parts`` (built on access, so 24 layers of [B, S, P, 3C] are never held at once)."""

    def __init__(self, *parts: Sequence[Tensor]) -> None:
        assert parts and all(len(p) == len(parts[0]) for p in parts)
        self.parts = parts

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, i: int) -> Tensor:  # type: ignore[override]
        return torch.cat([p[i] for p in self.parts], dim=-1)


@dataclass
class AggregatorOutput:
    """Per-layer tokens; every entry is [B, S, P, C] with P = patch_start + (H/p)(W/p).

    frame / global_: the ``depth`` frame- and global-attention block outputs.
    dino: the matching DINOv2 layer outputs, behind the same camera/register tokens.
    patch_start: index of the first patch token (1 camera + registers).
    """

    frame: list[Tensor]
    global_: list[Tensor]
    dino: list[Tensor]
    patch_start: int

    @property
    def aggregated(self) -> ConcatLayers:
        """frame ‖ global, [B, S, P, 2C] per layer: input of camera/depth/point/track heads."""
        return ConcatLayers(self.frame, self.global_)

    @property
    def with_dino(self) -> ConcatLayers:
        """dino[0] ‖ frame ‖ global, [B, S, P, 3C] per layer: input of the Gaussian head.

        Every layer carries the *first* DINOv2 layer's tokens: DGGT's aggregator indexes the
        DINOv2 list with its inner block index, which is always 0 (``aa_block_size=1``). The
        published weights were trained that way, so it is reproduced here.
        """
        return ConcatLayers([self.dino[0]] * len(self.frame), self.frame, self.global_)


def _special_tokens(tokens: Tensor, batch: int, frames: int) -> Tensor:
    """[1, 2, X, C] learned tokens → [B*S, X, C]: copy 0 for frame 0, copy 1 for the others."""
    first = tokens[:, :1].expand(batch, 1, *tokens.shape[2:])
    rest = tokens[:, 1:].expand(batch, frames - 1, *tokens.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(batch * frames, *tokens.shape[2:])


class Aggregator(nn.Module):
    """Alternating frame/global attention over DINOv2 patch tokens.

    Args:
        img_size, patch_size: DINOv2 training size and patch side (518, 14).
        embed_dim, depth, num_heads: aggregator size (1024, 24, 16); DINOv2 uses the same dim/heads.
        dino_depth: number of DINOv2 blocks (24); its last ``depth`` layers feed the heads.
        num_register_tokens: registers per frame (4), in DINOv2 and in the aggregator.
        rope_base: RoPE base frequency (100).
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        dino_depth: int = 24,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        rope_base: float = 100.0,
    ) -> None:
        super().__init__()
        if dino_depth < depth:
            raise ValueError(f"dino_depth ({dino_depth}) must be >= depth ({depth})")
        self.patch_size = patch_size
        self.depth = depth
        self.patch_embed = DinoViT(
            img_size, patch_size, embed_dim, dino_depth, num_heads, mlp_ratio, num_register_tokens, layer_scale=1.0
        )
        self.rope = RotaryPositionEmbedding2D(rope_base)

        def blocks() -> nn.ModuleList:
            return nn.ModuleList(
                [Block(embed_dim, num_heads, mlp_ratio, layer_scale=0.01, qk_norm=True, rope=self.rope) for _ in range(depth)]
            )

        self.frame_blocks = blocks()
        self.global_blocks = blocks()
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, num_register_tokens, embed_dim))
        if self.camera_token.device.type != "meta":
            nn.init.normal_(self.camera_token, std=1e-6)
            nn.init.normal_(self.register_token, std=1e-6)
        self.patch_start_idx = 1 + num_register_tokens
        self.register_buffer("_resnet_mean", torch.empty(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.empty(1, 1, 3, 1, 1), persistent=False)
        if self._resnet_mean.device.type != "meta":
            self.reset_normalization()

    def reset_normalization(self) -> None:
        """(Re)create the ImageNet mean/std buffers (non-persistent: not in checkpoints), on CPU
        when the module was built on the meta device."""
        device = torch.device("cpu") if self._resnet_mean.is_meta else self._resnet_mean.device
        self._resnet_mean = torch.tensor(_IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1)
        self._resnet_std = torch.tensor(_IMAGENET_STD, device=device).view(1, 1, 3, 1, 1)

    def forward(self, images: Tensor) -> AggregatorOutput:
        """images [B, S, 3, H, W] in [0, 1], H and W multiples of the patch size."""
        B, S, C_in, H, W = images.shape
        if C_in != 3:
            raise ValueError(f"expected 3 input channels, got {C_in}")
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        x = ((images - self._resnet_mean) / self._resnet_std).reshape(B * S, 3, H, W)
        dino_layers = self.patch_embed(x, num_layers=self.depth)
        special = torch.cat(
            [_special_tokens(self.camera_token, B, S), _special_tokens(self.register_token, B, S)], dim=1
        )
        dim = special.shape[-1]
        tokens = torch.cat([special, dino_layers[-1]], dim=1)  # [B*S, P, C]
        P = tokens.shape[1]
        pos = patch_positions(B * S, H // self.patch_size, W // self.patch_size, self.patch_start_idx, images.device)

        frame, global_ = [], []
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens.reshape(B * S, P, dim), pos=pos.reshape(B * S, P, 2))
            frame.append(tokens.reshape(B, S, P, dim))
            tokens = self.global_blocks[i](tokens.reshape(B, S * P, dim), pos=pos.reshape(B, S * P, 2))
            global_.append(tokens.reshape(B, S, P, dim))
        dino = [torch.cat([special, layer], dim=1).reshape(B, S, P, dim) for layer in dino_layers]
        return AggregatorOutput(frame, global_, dino, self.patch_start_idx)
