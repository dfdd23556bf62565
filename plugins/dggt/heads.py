"""DGGT prediction heads: the camera head and one configurable DPT head.

The same :class:`DPTHead` class serves every dense head of the checkpoint, configured by its
input width, output channels and activations:

=============== ======== ====== ============ =============== ==================================
head            dim_in   out    activation   conf activation outputs
=============== ======== ====== ============ =============== ==================================
depth_head      2C       2      exp          sigmoid         depth [..,1], conf
point_head      2C       4      inv_log      expp1           world points [..,3], conf
gs_head         3C       12     gaussian     inverse_relu    rgb, opacity, scale, quat; lifespan
instance_head   C        2      linear       (discarded)     dynamic logit
semantic_head   C        11     linear       (discarded)     10 class logits
track features  2C       128    (features only, down_ratio 2, no positional embedding)
=============== ======== ====== ============ =============== ==================================

Dense outputs are channels-last: preds [B, S, H, W, out-1], conf [B, S, H, W].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Block, Mlp

__all__ = ["CameraHead", "DPTHead", "activate_dense", "inverse_log_transform", "GAUSSIAN_CHANNELS"]

GAUSSIAN_CHANNELS = {"rgb": slice(0, 3), "opacity": slice(3, 4), "scale": slice(4, 7), "quat": slice(7, 11)}
"""Layout of the activated Gaussian map [..., 11]; the 12th raw channel becomes the lifespan."""


# ------------------------------------------------------------------------------------ camera


class CameraHead(nn.Module):
    """Iteratively refined 9-d pose encoding from the camera tokens of the last layer.

    Each iteration embeds the current encoding (a learned empty one at first), turns it into
    adaLN shift/scale/gate for the normalised camera tokens, runs a ``trunk_depth``-block
    transformer across frames and adds a predicted delta. Activations: translation and
    quaternion linear, fields of view ReLU. Output [B, S, 9] = (t xyz, quat xyzw, fov_h, fov_w)
    of the world-to-camera transform (see :mod:`.pose_encoding`).
    """

    def __init__(self, dim_in: int, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0, iterations: int = 4) -> None:
        super().__init__()
        self.target_dim = 9
        self.iterations = iterations
        self.trunk = nn.Sequential(*[Block(dim_in, num_heads, mlp_ratio, layer_scale=0.01) for _ in range(trunk_depth)])
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, self.target_dim)

    def forward(self, last_layer_tokens: Tensor) -> list[Tensor]:
        """last_layer_tokens [B, S, P, dim_in] → the activated encoding of every iteration, each [B, S, 9]."""
        tokens = self.token_norm(last_layer_tokens[:, :, 0])
        B, S, _ = tokens.shape
        encoding: Tensor | None = None
        outputs = []
        for _ in range(self.iterations):
            source = self.empty_pose_tokens.expand(B, S, -1) if encoding is None else encoding.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(source)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            encoding = delta if encoding is None else encoding + delta
            outputs.append(torch.cat([encoding[..., :7], F.relu(encoding[..., 7:])], dim=-1))
        return outputs


# --------------------------------------------------------------------------------- DPT head


def inverse_log_transform(y: Tensor) -> Tensor:
    """sign(y) · (exp|y| − 1)."""
    return torch.sign(y) * torch.expm1(y.abs())


def activate_dense(raw: Tensor, activation: str, conf_activation: str) -> tuple[Tensor, Tensor]:
    """Split raw head output [N, C, H, W] into activated preds [N, H, W, C-1] and conf [N, H, W].

    activation: "exp", "inv_log", "linear", "sigmoid" or "gaussian" (sigmoid RGB, sigmoid
    opacity, 0.1·softplus scales, normalised quaternion). conf_activation: "expp1" (1 + e^c),
    "sigmoid", or "inverse_relu" (1 / (relu(c) + 1e-6), DGGT's lifespan γ).
    """
    fmap = raw.permute(0, 2, 3, 1)
    x, c = fmap[..., :-1], fmap[..., -1]
    if activation == "exp":
        preds = torch.exp(x)
    elif activation == "inv_log":
        preds = inverse_log_transform(x)
    elif activation == "linear":
        preds = x
    elif activation == "sigmoid":
        preds = torch.sigmoid(x)
    elif activation == "gaussian":
        g = GAUSSIAN_CHANNELS
        preds = torch.cat(
            [
                torch.sigmoid(x[..., g["rgb"]]),
                torch.sigmoid(x[..., g["opacity"]]),
                0.1 * F.softplus(x[..., g["scale"]]),
                F.normalize(x[..., g["quat"]], dim=-1),
            ],
            dim=-1,
        )
    else:
        raise ValueError(f"unknown activation {activation!r}")
    if conf_activation == "expp1":
        conf = 1 + c.exp()
    elif conf_activation == "sigmoid":
        conf = torch.sigmoid(c)
    elif conf_activation == "inverse_relu":
        conf = 1.0 / (F.relu(c) + 1e-6)
    else:
        raise ValueError(f"unknown conf_activation {conf_activation!r}")
    return preds, conf


def _uv_embedding(channels: int, h: int, w: int, aspect: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The DPT positional embedding [channels, h, w]: sin/cos (base 100) of a uv grid that spans
    the image diagonal-normalised, x in the first half of the channels, y in the second."""
    diag = math.sqrt(aspect**2 + 1.0)
    span_x, span_y = aspect / diag, 1.0 / diag
    # the grid in the features' dtype, its products with omega in float64, as VGGT's create_uv_grid /
    # make_sincos_pos_embed (a float64 grid differs in the last bit and shifts outputs by ~1e-7)
    xs = torch.linspace(-span_x * (w - 1) / w, span_x * (w - 1) / w, w, device=device, dtype=dtype).double()
    ys = torch.linspace(-span_y * (h - 1) / h, span_y * (h - 1) / h, h, device=device, dtype=dtype).double()
    quarter = channels // 4
    omega = 1.0 / 100.0 ** (torch.arange(quarter, device=device, dtype=torch.float64) / quarter)

    def sincos(p: Tensor) -> Tensor:  # [n] → [n, channels/2]
        a = p[:, None] * omega
        return torch.cat([a.sin(), a.cos()], dim=-1)

    ex = sincos(xs)[None, :, :].expand(h, w, -1)
    ey = sincos(ys)[:, None, :].expand(h, w, -1)
    return torch.cat([ex, ey], dim=-1).permute(2, 0, 1).to(dtype)


class _ResidualConvUnit(nn.Module):
    """relu(x) + conv2(relu(conv1(relu(x)))).

    The skip adds relu(x), not x: the reference applies an in-place ReLU to its input before
    the skip connection, and the published weights were trained with that behaviour.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class _FusionBlock(nn.Module):
    """RefineNet fusion: (x [+ rcu1(skip)]) → rcu2 → bilinear upsample → 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        if has_residual:
            self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: Sequence[int] | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Dense prediction head over four token layers (DPT, Ranftl et al. 2021), VGGT layout.

    Args:
        dim_in: token width of the layers it reads.
        output_dim: raw output channels (the last one is the confidence channel).
        activation / conf_activation: see :func:`activate_dense`.
        features: fusion width (256; 128 for the track feature extractor).
        out_channels: per-layer projection widths (256, 512, 1024, 1024).
        layer_idx: which four token layers to read (4, 11, 17, 23 for a 24-layer backbone).
        pos_embed: add the uv sin/cos embedding (×0.1) after projection and before the output conv.
        feature_only: return the fused features [B, S, features, H/down, W/down] instead.
        down_ratio: output resolution divisor (2 for the track features).
        patch_size: the backbone's patch side.
        frames_chunk: frames processed at once (bounds memory; 8 as in DGGT).
    """

    def __init__(
        self,
        dim_in: int,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        layer_idx: Sequence[int] = (4, 11, 17, 23),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
        patch_size: int = 14,
        frames_chunk: int = 8,
    ) -> None:
        super().__init__()
        assert len(out_channels) == 4 and len(layer_idx) == 4
        self.activation = activation
        self.conf_activation = conf_activation
        self.layer_idx = tuple(layer_idx)
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.patch_size = patch_size
        self.frames_chunk = frames_chunk
        oc = list(out_channels)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, c, 1) for c in oc])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        self.scratch.refinenet1 = _FusionBlock(features)
        self.scratch.refinenet2 = _FusionBlock(features)
        self.scratch.refinenet3 = _FusionBlock(features)
        self.scratch.refinenet4 = _FusionBlock(features, has_residual=False)
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, 3, padding=1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, output_dim, 1)
            )

    def forward(self, layers: Sequence[Tensor], image_hw: tuple[int, int], patch_start: int) -> Tensor | tuple[Tensor, Tensor]:
        """layers: token layers, each [B, S, P, dim_in]; image_hw: (H, W) of the input images.

        Returns (preds [B, S, H, W, output_dim-1], conf [B, S, H, W]), or features when
        ``feature_only``.
        """
        picked = [layers[i][:, :, patch_start:] for i in self.layer_idx]
        S = picked[0].shape[1]
        chunks = [self._forward_frames([p[:, s : s + self.frames_chunk] for p in picked], image_hw) for s in range(0, S, self.frames_chunk)]
        if self.feature_only:
            return torch.cat(chunks, dim=1)  # type: ignore[arg-type]
        return torch.cat([c[0] for c in chunks], dim=1), torch.cat([c[1] for c in chunks], dim=1)

    def _forward_frames(self, picked: list[Tensor], image_hw: tuple[int, int]) -> Tensor | tuple[Tensor, Tensor]:
        H, W = image_hw
        B, S = picked[0].shape[:2]
        ph, pw = H // self.patch_size, W // self.patch_size
        feats = []
        for i, x in enumerate(picked):
            x = self.norm(x.reshape(B * S, ph * pw, -1)).transpose(1, 2).reshape(B * S, -1, ph, pw)
            x = self.projects[i](x)
            if self.pos_embed:
                x = x + 0.1 * _uv_embedding(x.shape[1], ph, pw, W / H, x.device, x.dtype)
            feats.append(self.resize_layers[i](x))
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(feats[0]), s.layer2_rn(feats[1]), s.layer3_rn(feats[2]), s.layer4_rn(feats[3])
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.output_conv1(s.refinenet1(out, l1))
        size = (int(ph * self.patch_size / self.down_ratio), int(pw * self.patch_size / self.down_ratio))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        if self.pos_embed:
            out = out + 0.1 * _uv_embedding(out.shape[1], out.shape[2], out.shape[3], W / H, out.device, out.dtype)
        if self.feature_only:
            return out.reshape(B, S, *out.shape[1:])
        preds, conf = activate_dense(s.output_conv2(out), self.activation, self.conf_activation)
        return preds.reshape(B, S, *preds.shape[1:]), conf.reshape(B, S, *conf.shape[1:])
