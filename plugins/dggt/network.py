"""The DGGT feed-forward network (VGGT-1B aggregator + DGGT heads) and its size configs.

``DGGTNetwork(DGGT_SIZES["full"])`` has exactly the parameter and buffer names and shapes of the
published ``model_latest_waymo.pt`` (1,351,616,843 parameters, see
``/work/shared/reference/dggt_state_dict.md``); ``"tiny"`` is the same code at toy width for tests.
Build the full model on the meta device to inspect it without allocating memory::

    with torch.device("meta"):
        net = DGGTNetwork(DGGT_SIZES["full"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import Tensor, nn

from .aggregator import Aggregator
from .heads import CameraHead, DPTHead
from .sky import SkyModel
from .track import TrackHead

__all__ = ["DGGTSize", "DGGT_SIZES", "DGGTNetwork", "DGGTOutput", "DENSE_HEADS"]

DENSE_HEADS = ("depth", "point", "gs", "instance", "semantic")


@dataclass(frozen=True)
class DGGTSize:
    """Architecture hyper-parameters (the checkpoint's are the defaults)."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    dino_depth: int = 24
    num_heads: int = 16
    num_register_tokens: int = 4
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    track_features: int = 128
    track_hidden: int = 384
    track_corr_levels: int = 7
    semantic_classes: int = 10
    sky_resolution: int = 300
    sky_radius: float = 50.0


DGGT_SIZES: dict[str, DGGTSize] = {
    "full": DGGTSize(),
    "tiny": DGGTSize(
        img_size=56, patch_size=14, embed_dim=32, depth=2, dino_depth=2, num_heads=2, camera_trunk_depth=1,
        camera_num_heads=2, dpt_features=16, dpt_out_channels=(8, 16, 32, 32), dpt_layers=(0, 1, 1, 1),
        track_features=16, track_hidden=32, track_corr_levels=2, sky_resolution=16,
    ),
}


@dataclass
class DGGTOutput:
    """Predictions for B sequences of S frames of H x W (channels last).

    pose_enc: [B, S, 9] world→camera encoding, frame 0 the reference (see pose_encoding.py).
    depth: [B, S, H, W, 1] z-depth (exp activation); depth_conf: [B, S, H, W] (sigmoid).
    gs_map: [B, S, H, W, 11] rgb (3, sigmoid), opacity (1, sigmoid), scale (3, 0.1·softplus),
        quaternion (4, normalised, as gsplat's wxyz); lifespan: [B, S, H, W] γ = 1/(relu(c)+1e-6).
    dynamic_logit: [B, S, H, W] per-pixel dynamic logit (instance head channel 0).
    world_points / world_points_conf: [B, S, H, W, 3] / [B, S, H, W] (point head).
    semantic_logits: [B, S, H, W, 10] (untrained in the published checkpoint).
    tracks / track_vis / track_conf: [B, S, N, 2] pixels / [B, S, N] / [B, S, N] with query points.
    Heads that were not run are None.
    """

    pose_enc: Tensor
    depth: Tensor | None = None
    depth_conf: Tensor | None = None
    gs_map: Tensor | None = None
    lifespan: Tensor | None = None
    dynamic_logit: Tensor | None = None
    world_points: Tensor | None = None
    world_points_conf: Tensor | None = None
    semantic_logits: Tensor | None = None
    tracks: Tensor | None = None
    track_vis: Tensor | None = None
    track_conf: Tensor | None = None


class DGGTNetwork(nn.Module):
    """Frames → camera poses, depth, per-pixel Gaussians, lifespans and dynamic logits.

    Submodule names (``aggregator``, ``camera_head``, ``point_head``, ``depth_head``,
    ``track_head``, ``gs_head``, ``instance_head``, ``semantic_head``, ``sky_model``) and their
    registration order match the checkpoint's state dict.
    """

    def __init__(self, size: DGGTSize | str = "full") -> None:
        super().__init__()
        size = DGGT_SIZES[size] if isinstance(size, str) else size
        self.size = size
        C, p = size.embed_dim, size.patch_size
        dpt = dict(features=size.dpt_features, out_channels=size.dpt_out_channels, layer_idx=size.dpt_layers, patch_size=p)
        self.aggregator = Aggregator(
            size.img_size, p, C, size.depth, size.num_heads, size.dino_depth, num_register_tokens=size.num_register_tokens
        )
        self.camera_head = CameraHead(2 * C, size.camera_trunk_depth, size.camera_num_heads)
        self.point_head = DPTHead(2 * C, 4, "inv_log", "expp1", **dpt)
        self.depth_head = DPTHead(2 * C, 2, "exp", "sigmoid", **dpt)
        self.track_head = TrackHead(
            2 * C, layer_idx=size.dpt_layers, out_channels=size.dpt_out_channels, patch_size=p,
            features=size.track_features, hidden=size.track_hidden, corr_levels=size.track_corr_levels,
        )
        self.gs_head = DPTHead(3 * C, 12, "gaussian", "inverse_relu", **dpt)
        self.instance_head = DPTHead(C, 2, "linear", "expp1", **dpt)  # confidence channel unused
        self.semantic_head = DPTHead(C, size.semantic_classes + 1, "linear", "expp1", **dpt)
        self.sky_model = SkyModel(size.sky_resolution, size.sky_radius)

    def forward(self, images: Tensor, query_points: Tensor | None = None, heads: Iterable[str] = DENSE_HEADS) -> DGGTOutput:
        """Run the network.

        Args:
            images: [B, S, 3, H, W] or [S, 3, H, W] in [0, 1]; H, W multiples of the patch size
                (see :func:`recon_plugins.dggt.preprocess.target_size`).
            query_points: optional [B, N, 2] or [N, 2] pixels in frame 0 to track.
            heads: which dense heads to run, a subset of ``DENSE_HEADS`` (the camera head always runs).
        """
        if images.ndim == 4:
            images = images[None]
        if query_points is not None and query_points.ndim == 2:
            query_points = query_points[None]
        heads = set(heads)
        unknown = heads - set(DENSE_HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; choose from {DENSE_HEADS}")
        hw = (images.shape[-2], images.shape[-1])
        tokens = self.aggregator(images)
        start = tokens.patch_start
        aggregated = tokens.aggregated
        out = DGGTOutput(pose_enc=self.camera_head(aggregated[-1])[-1])
        if "depth" in heads:
            out.depth, out.depth_conf = self.depth_head(aggregated, hw, start)
        if "point" in heads:
            out.world_points, out.world_points_conf = self.point_head(aggregated, hw, start)
        if "gs" in heads:
            out.gs_map, out.lifespan = self.gs_head(tokens.with_dino, hw, start)
        if "instance" in heads:
            out.dynamic_logit = self.instance_head(tokens.dino, hw, start)[0][..., 0]
        if "semantic" in heads:
            out.semantic_logits = self.semantic_head(tokens.dino, hw, start)[0]
        if query_points is not None:
            track_list, out.track_vis, out.track_conf = self.track_head(aggregated, hw, start, query_points)
            out.tracks = track_list[-1]
        return out
