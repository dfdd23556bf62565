"""The ``dggt`` representation: a 4D Gaussian scene predicted in one forward pass by DGGT.

``build`` (``init=network``) runs the network on the input frames (a Scene's training views
in time order, or a Video's frames), turns its per-pixel predictions into static + dynamic
Gaussians (:mod:`.composition`), keeps the sky model, and writes the predicted cameras back
into the scene (OpenCV camera-to-world, frame 0 the world reference; other views, the scene's
point cloud and bounds are moved into that frame by the similarity that maps the given input
poses onto the predicted ones). ``init=fit`` needs no weights: a short static 3dgs fit plus
per-frame dynamic Gaussians from the dynamic masks, with the scene's own cameras (:mod:`.fit`).

A :class:`Video` (``recon run --data clip.mp4 --repr dggt``) has no cameras at all: the network
predicts one per frame, ``cameras()`` returns them (the pipeline renders and evaluates frame i
from camera i at its time), and ``set_cameras`` takes corrected ones (``ttr`` refines them).

It implements recon's Gaussian scene protocol (:class:`recon_core.GaussianRepresentation`): the
``splats`` hold gsplat's six entries plus ``times`` (the scene time of the image a Gaussian was
predicted from), ``frames`` (that input image's index), ``lifespans`` (log γ, DGGT-normalised time
units) and ``dynamic`` (bool, not refinable), so any Gaussian refiner optimises it and any strategy
keeps the rows aligned. The sky colour MLP is ``sky_model.bg_field``.

What a camera sees (as DGGT's inference.py renders input image i): every static Gaussian with
opacity × exp(ln 0.1 · (τ(t) − τ_i)² / γ²) at the camera's time t, plus the dynamic Gaussians of
*its own* input image — with several cameras (Waymo views 0, 1, 2) each image keeps its own, found
by time and then pose (:meth:`DGGTRepresentation.source_images`); renderers ask
:meth:`~DGGTRepresentation.gaussians_for_cameras`. τ is DGGT's normalisation: frame k of a sequence
of S times at k/(S−1) · S/4, S the sequence length (not the number of images). The image is
composed as DGGT trained it, ``α · rgb + (1 − α) · sky`` with the rasteriser's (already
α-weighted) rgb; the sky is min-max normalised as inference.py does (``sky_normalize``).
``mode=interpolate`` is inference.py's mode 3 (:mod:`.interpolate`): the views of one camera by
time, every ``intervals``-th one an input frame, the views between become test views rendered at
the slerped cameras with their own (tracked) dynamic Gaussians, the sky not normalised.
``eval_resolution`` (default ``auto``: ``network`` for init=network, ``source`` for init=fit)
decides where views are rendered and scored: ``network`` resizes every view of the scene to the
network input (518 wide), as DGGT scores, ``source`` keeps the loaded size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from recon_core import (
    Bounds, CameraRenderer, Cameras, GaussianRepresentation, Gaussians3D, InputError, MissingWeightsError, PointCloud,
    RunContext, Scene, Video, View, option,
)
from recon_core.components import WeightFile
from recon_core.gaussians import SPLAT_KEYS, activate, splats_from_activated
from recon_core.geometry import apply_similarity, camera_similarity, transform_c2w
from recon_core.ply import write_splat_ply

from .composition import PixelGaussians, TimeMap, compose_pixel_gaussians, lifespan_opacity, unproject_depth_dggt
from .interpolate import TrackHeadTracker, interpolate_cameras, interpolate_dynamic
from .network import DGGT_SIZES
from .pose_encoding import extrinsics_to_c2w, pose_encoding_to_extri_intri
from .preprocess import ResizePlan, plan_resize, resize_images, resize_masks
from .sky import SkyModel
from .weights import CHECKPOINT_FILENAME, CHECKPOINT_SOURCE, default_checkpoint_path, load_network

__all__ = ["DGGTRepresentation", "DGGTConfig", "align_cameras", "align_points"]


@dataclass
class DGGTConfig:
    checkpoint: str | None = option(None, f"path of {CHECKPOINT_FILENAME} (default: weights_dir()/dggt/{CHECKPOINT_FILENAME})")
    init: str = option("network", "network: predict with the DGGT network; fit: static 3dgs fit + per-frame dynamic Gaussians (no weights needed)", choices=("network", "fit"))
    size: str = option("full", "network size; 'full' matches the published checkpoint, 'tiny' is for tests", choices=tuple(DGGT_SIZES))
    width: int = option(518, "network input width (multiple of 14); the height follows the aspect ratio", min=1)
    max_frames: int = option(48, "refuse more input frames than this (memory grows with frames²)", min=1)
    dynamic_threshold: float = option(0.5, "pixels whose dynamic logit is below this are static (DGGT: 0.5)", min=0, max=1)
    min_dynamic_opacity: float = option(1.0 / 255.0, "drop dynamic Gaussians fainter than this (0 keeps all, as DGGT)", min=0, max=1)
    fit_steps: int = option(500, "init=fit: 3dgs-train steps of the static fit", min=0)
    fit_points: int = option(20_000, "init=fit: at most this many initial static Gaussians", min=1)
    fit_dynamic_stride: int = option(2, "init=fit: one dynamic Gaussian per this many pixels (each way) of a dynamic mask", min=1)
    sky_normalize: bool | None = option(None, "min-max normalise the rendered sky (range over the sky rendered at every "
                                              "input camera); false: the sky MLP's raw output, as train.py; default (null): "
                                              "as inference.py, true for mode=reconstruct, false for mode=interpolate")
    mode: str = option("reconstruct", "reconstruct: inference.py --mode 2 (every training view is an input frame); "
                                      "interpolate: --mode 3 (one camera: every `intervals`-th view by time is an input "
                                      "frame, the views between become test views rendered at interpolated poses and "
                                      "times, with tracked dynamic objects; init=network only)",
                       choices=("reconstruct", "interpolate"))
    intervals: int = option(2, "mode=interpolate: input frames are this many views apart (inference.py --intervals)", min=1)
    eval_resolution: str = option("auto", "where views are rendered and scored: network (DGGT's input size, 518 wide: the "
                                          "scene's views are resized to it), source (the loaded size); auto: network for "
                                          "init=network, source for init=fit", choices=("auto", "network", "source"))


def align_cameras(c2w: Tensor, src_ref: Tensor, dst_ref: Tensor) -> Tensor:
    """Camera poses c2w [N, 4, 4] from the world of ``src_ref`` into that of ``dst_ref`` (the same
    cameras in two frames; :func:`recon_core.geometry.camera_similarity`)."""
    return transform_c2w(c2w, *camera_similarity(src_ref, dst_ref))


def align_points(points: Tensor, src_ref: Tensor, dst_ref: Tensor) -> Tensor:
    """World points [P, 3] from the world of ``src_ref`` into that of ``dst_ref``."""
    return apply_similarity(points, *camera_similarity(src_ref, dst_ref))


class _Built(NamedTuple):
    """What either initialisation produces (tensors on the build device)."""

    gaussians: PixelGaussians
    c2w: Tensor  # [S, 4, 4] input cameras, OpenCV camera-to-world
    K: Tensor  # [S, 3, 3] at the input frames' resolution
    size: tuple[int, int]  # (width, height) of the input frames
    sky_model: SkyModel
    sky_samples: Tensor  # [M, 3]
    sky_visible: Tensor  # [n] bool
    novel: "_Novel | None" = None  # mode=interpolate: the frames between the input frames
    w2c: Tensor | None = None  # [S, 4, 4] the network's world-to-camera matrices (c2w is their inverse)


class _Novel(NamedTuple):
    """mode=interpolate: the output frames between keyframes (M of them)."""

    gaussians: PixelGaussians  # their dynamic Gaussians; ``frame`` counts from 0 over these frames
    c2w: Tensor  # [M, 4, 4] interpolated cameras
    w2c: Tensor  # [M, 4, 4] the same as world-to-camera (what the original renders with)
    K: Tensor  # [M, 3, 3] at the input frames' resolution
    keyframe: Tensor  # [M] the keyframe before each (its Gaussian attributes and static fading time)


class DGGTRepresentation(GaussianRepresentation):
    """DGGT (arXiv 2512.03004): pose-free feed-forward 4D Gaussians for driving scenes."""

    name = "dggt"
    description = "DGGT feed-forward 4D Gaussians from unposed frames (static + dynamic + sky, lifespans)"
    Config = DGGTConfig
    provides = frozenset({"gaussians-3d", "cameras", "dynamic"})
    native_refiner = None
    export_formats = ("ply",)  # one PLY per input frame (the Gaussians of that time)
    refinable = frozenset(SPLAT_KEYS) | {"lifespans"}

    def __init__(self, config: DGGTConfig | None = None) -> None:
        super().__init__(config, sh_degree=0)
        self._set_gaussians(torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3),
                            torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long))
        self.register_buffer("frame_times", torch.zeros(0))
        self.register_buffer("camera_c2w", torch.zeros(0, 4, 4))
        self.register_buffer("camera_w2c", torch.zeros(0, 4, 4))  # exactly what renderers use (Cameras.w2c)
        self.register_buffer("camera_K", torch.zeros(0, 3, 3))
        self.register_buffer("camera_size", torch.zeros(2, dtype=torch.long))
        self.register_buffer("sky_samples", torch.zeros(0, 3))
        self.register_buffer("sky_visible", torch.zeros(0, dtype=torch.bool))
        # mode=interpolate: new frames (dynamic rows with ``frames`` >= num_frames index them)
        self.register_buffer("novel_times", torch.zeros(0))
        self.register_buffer("novel_c2w", torch.zeros(0, 4, 4))
        self.register_buffer("novel_w2c", torch.zeros(0, 4, 4))
        self.register_buffer("novel_K", torch.zeros(0, 3, 3))
        self.register_buffer("novel_keyframe", torch.zeros(0, dtype=torch.long))
        self.sky_model = SkyModel(resolution=0)
        self._sky_range_cache: tuple[tuple, Tensor, Tensor] | None = None

    # --------------------------------------------------------------------------- weights

    @classmethod
    def required_weights(cls) -> list[WeightFile]:
        return [
            WeightFile(
                description="DGGT network trained on Waymo (1.35 B parameters)",
                path=default_checkpoint_path(),
                source=CHECKPOINT_SOURCE,
            )
        ]

    def checkpoint_path(self) -> Path:
        """``checkpoint`` option, else ``weights_dir()/dggt/model_latest_waymo.pt``."""
        return Path(self.config.checkpoint).expanduser() if self.config.checkpoint else default_checkpoint_path()

    def _require_checkpoint(self) -> Path:
        path = self.checkpoint_path()
        if not path.is_file():
            raise MissingWeightsError("dggt", CHECKPOINT_FILENAME, path, f"{CHECKPOINT_SOURCE} (Hugging Face xiaomi-research/dggt)")
        return path

    # ----------------------------------------------------------------------------- build

    def build(self, data: Scene | Video, ctx: RunContext) -> None:
        """Predict the 4D scene from ``data`` (see module doc); init=network needs the checkpoint."""
        cfg, device = self.config, ctx.device
        patch = DGGT_SIZES[cfg.size].patch_size
        if cfg.width < patch or cfg.width % patch:
            raise InputError(f"dggt.width must be a positive multiple of {patch} (518 for the published model), got {cfg.width}")
        if cfg.init == "network":
            self._require_checkpoint()  # before reading any frame
        between: list[View] = []
        if cfg.mode == "interpolate":
            between = _interpolation_split(data, cfg, ctx)
        views, images, sky, times = _input_frames(data, cfg.max_frames)
        built = self._fit(data, views, images, ctx) if cfg.init == "fit" else self._predict(images, sky, device, ctx)
        g = built.gaussians
        times = times.to(device)
        frames, row_times = g.frame, times[g.frame]
        n_in = len(times)
        novel_times = torch.tensor([float(v.time) for v in between], device=device)
        if built.novel is not None:  # append the new frames' dynamic Gaussians
            ng = built.novel.gaussians
            g = PixelGaussians(*[torch.cat([getattr(g, f), getattr(ng, f)]) for f in PixelGaussians.__dataclass_fields__])
            frames = torch.cat([frames, ng.frame + n_in])
            row_times = torch.cat([row_times, novel_times[ng.frame]])
        self._set_gaussians(g.means, g.quats, g.scales, g.opacity, g.rgb, row_times, g.lifespan, g.dynamic, frames)
        self.frame_times = times
        if built.novel is not None:
            self.novel_times, self.novel_keyframe = novel_times, built.novel.keyframe.to(device)
            self.novel_c2w, self.novel_w2c, self.novel_K = built.novel.c2w, built.novel.w2c, built.novel.K
        else:
            self.novel_times, self.novel_keyframe = torch.zeros(0, device=device), torch.zeros(0, dtype=torch.long, device=device)
            self.novel_c2w, self.novel_K = torch.zeros(0, 4, 4, device=device), torch.zeros(0, 3, 3, device=device)
            self.novel_w2c = torch.zeros(0, 4, 4, device=device)
        self.camera_c2w, self.camera_K = built.c2w, built.K
        self.camera_w2c = built.w2c if built.w2c is not None else torch.linalg.inv(built.c2w)
        self.camera_size = torch.tensor(built.size, device=device)
        self.sky_model = built.sky_model
        self.sky_samples, self.sky_visible = built.sky_samples, built.sky_visible
        self._sky_range_cache = None
        if isinstance(data, Scene) and cfg.init == "network":
            self._write_cameras(data, views)
            for m, view in enumerate(between):  # the original renders them at the interpolated poses
                cam = view.camera
                view.camera = Cameras(K=self.novel_K[m : m + 1].cpu(), c2w=self.novel_c2w[m : m + 1].cpu(), width=cam.width,
                                      height=cam.height, times=cam.times, w2c=self.novel_w2c[m : m + 1].cpu())
        if self.network_resolution():
            self._to_network_resolution(data)

    def _predict(self, images: Tensor, sky: Tensor | None, device: torch.device, ctx: RunContext | None = None) -> _Built:
        """Run the network (init=network); mode=interpolate also builds the new frames."""
        cfg = self.config
        path = self._require_checkpoint()
        plan = plan_resize(images.shape[2], images.shape[1], int(cfg.width), DGGT_SIZES[cfg.size].patch_size)
        net = load_network(path, cfg.size, device)
        with torch.no_grad():
            x = resize_images(images, plan).to(device)
            out = net(x[None], heads=("depth", "gs", "instance"))
            ext, K_net = pose_encoding_to_extri_intri(out.pose_enc[0].float(), (plan.height, plan.width))
            c2w = extrinsics_to_c2w(ext)
            # pixel (r, c) lifted at (c, r) as DGGT's unproject_depth_map_to_point_map does (half a
            # pixel from where the renderer draws it; the published network was trained so), with
            # its float64 intermediates
            points = unproject_depth_dggt(out.depth[0, ..., 0], ext, K_net)
            non_sky = ~resize_masks(sky, plan).to(device) if sky is not None else torch.ones_like(out.lifespan[0], dtype=torch.bool)
            g = compose_pixel_gaussians(
                points, out.gs_map[0], out.lifespan[0], out.dynamic_logit[0], non_sky,
                float(cfg.dynamic_threshold), float(cfg.min_dynamic_opacity),
            )
            sky_model = net.sky_model
            w2c = torch.cat([ext, ext.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(len(ext), 1, 4)], dim=1)
            samples, visible = sky_model.sample(x, w2c, K_net)
            novel = None
            if cfg.mode == "interpolate":
                novel = self._novel_frames(net, x, out, points, ext, K_net, non_sky, plan, ctx)
        del net, out
        return _Built(g, c2w, plan.K_to_source(K_net), (plan.src_width, plan.src_height), sky_model, samples, visible, novel, w2c)

    def _novel_frames(self, net: torch.nn.Module, x: Tensor, out: object, points: Tensor, ext: Tensor, K_net: Tensor,
                      non_sky: Tensor, plan: ResizePlan, ctx: RunContext | None) -> _Novel:
        """mode=interpolate (inference.py --mode 3, :mod:`.interpolate`): cameras, point maps and
        dynamic logits of the frames between keyframes, and their dynamic Gaussians."""
        cfg = self.config
        interval = int(cfg.intervals)
        S = points.shape[0]
        w2c = torch.cat([ext, ext.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(S, 1, 4)], dim=1)
        w2c_all, K_all = interpolate_cameras(w2c, K_net, interval)
        logits = out.dynamic_logit[0]
        seed = ctx.seed if ctx is not None and ctx.seed is not None else 0
        tracker = TrackHeadTracker(net, x, points)
        pts_all, logit_all = interpolate_dynamic(points, logits, interval, tracker, np.random.RandomState(seed), images=x,
                                                 depth=out.depth[0, ..., 0], K=K_net, w2c=w2c)
        keep = [k for k in range(len(w2c_all)) if k % interval]
        base = torch.tensor([k // interval for k in keep], dtype=torch.long, device=points.device)
        idx = torch.tensor(keep, dtype=torch.long, device=points.device)
        # dynamic Gaussians of frame k: keyframe k // I's non-sky pixels and attributes at the
        # interpolated points, opacity x sigmoid(interpolated logit) (no static split: all rows dynamic)
        g = compose_pixel_gaussians(pts_all[idx], out.gs_map[0][base], out.lifespan[0][base], logit_all[idx], non_sky[base],
                                    threshold=float("-inf"), min_dynamic_opacity=float(cfg.min_dynamic_opacity))
        return _Novel(g, extrinsics_to_c2w(w2c_all[idx]), w2c_all[idx], plan.K_to_source(K_all[idx]), base)

    def _fit(self, data: Scene | Video, views: list[View], images: Tensor, ctx: RunContext) -> _Built:
        """Fit without weights (init=fit): static fit + per-frame dynamic Gaussians, black sky."""
        from .fit import fit_pixel_gaussians

        cfg, device = self.config, ctx.device
        if not isinstance(data, Scene):
            raise InputError("dggt.init=fit needs posed views (a Scene); a video has no cameras to fit with")
        g = fit_pixel_gaussians(
            data, views, ctx, steps=int(cfg.fit_steps), num_points=int(cfg.fit_points),
            dynamic_stride=int(cfg.fit_dynamic_stride),
        )
        cams = data.cameras(views).to(device)
        sky_model = SkyModel(DGGT_SIZES[cfg.size].sky_resolution, DGGT_SIZES[cfg.size].sky_radius).to(device)
        with torch.no_grad():  # no network, no sky: black, and frozen (so it is not drawn at all)
            sky_model.bg_field.layers[1].weight.zero_()
            sky_model.bg_field.layers[1].bias.zero_()
        sky_model.bg_field.requires_grad_(False)
        samples, visible = sky_model.sample(images.permute(0, 3, 1, 2).to(device), cams.viewmats, cams.K)
        return _Built(g, cams.c2w, cams.K, (int(cams.width[0]), int(cams.height[0])), sky_model, samples, visible)

    def _set_gaussians(self, means: Tensor, quats: Tensor, scales: Tensor, opacity: Tensor, rgb: Tensor,
                       times: Tensor, lifespan: Tensor, dynamic: Tensor, frames: Tensor) -> None:
        """Fill ``splats`` from activated per-pixel Gaussians (scales, opacity in [0, 1], RGB, γ);
        ``frames`` is the input image each Gaussian comes from."""
        raw = splats_from_activated(Gaussians3D(means=means, quats=quats, scales=scales, opacities=opacity, colors=rgb), 0)
        raw.update(times=times.float(), lifespans=torch.log(lifespan.clamp_min(1e-12)), dynamic=dynamic.bool(),
                   frames=frames.long())
        self.set_splats(raw, means.device)

    def _write_cameras(self, scene: Scene, inputs: Sequence[View]) -> None:
        """Replace every view's camera with the predicted one (inputs) or an aligned one (others)."""
        given = torch.cat([v.camera.c2w for v in inputs]).to(self.camera_c2w)
        predicted = self.cameras()
        by_id = {id(v): i for i, v in enumerate(inputs)}
        target = self.camera_c2w.detach()
        for view in scene.views:
            cam = view.camera
            if id(view) in by_id:
                i = by_id[id(view)]
                new = predicted[i]
                view.camera = Cameras(K=new.K.cpu(), c2w=new.c2w.cpu(), width=cam.width, height=cam.height, times=cam.times,
                                      w2c=new.w2c.cpu() if new.w2c is not None else None)
            else:
                view.camera = cam.with_c2w(align_cameras(cam.c2w.to(given), given, target).cpu())
        if scene.point_cloud is not None:
            moved = align_points(scene.point_cloud.points.to(given), given, target).cpu()
            scene.point_cloud = PointCloud(moved, scene.point_cloud.colors)
        scene.bounds = Bounds.from_cameras(scene.cameras())

    def network_resolution(self) -> bool:
        """Whether views are rendered and scored at the network's input size (``eval_resolution``)."""
        mode = self.config.eval_resolution
        return mode == "network" or (mode == "auto" and self.config.init == "network")

    def _to_network_resolution(self, data: Scene | Video) -> None:
        """Bring every view of a Scene (inputs and evaluated ones) and the held cameras to the
        network's input geometry (:func:`.preprocess.plan_resize`: 518 wide, height a multiple of
        14, centre crop), as DGGT renders and scores; images resize bicubically, masks by nearest
        neighbour. A video keeps its frames' size (its frames are not views)."""
        if not isinstance(data, Scene):
            return
        patch = DGGT_SIZES[self.config.size].patch_size
        width = int(self.config.width)
        w0, h0 = (int(v) for v in self.camera_size.tolist())
        plan = plan_resize(w0, h0, width, patch)
        self.camera_K = plan.K_to_network(self.camera_K)
        if len(self.novel_K):
            self.novel_K = plan.K_to_network(self.novel_K)
        self.camera_size = torch.tensor((plan.width, plan.height), device=self.camera_size.device)
        self._sky_range_cache = None
        for view in data.views:
            _resize_view(view, plan_resize(view.width, view.height, width, patch))

    # --------------------------------------------------------------------------- queries

    @property
    def num_frames(self) -> int:
        return int(self.frame_times.shape[0])

    def cameras(self) -> Cameras:
        """The predicted input cameras at the input frames' resolution (OpenCV c2w, frame 0 the reference)."""
        n = self.num_frames
        return Cameras(
            K=self.camera_K, c2w=self.camera_c2w, w2c=self.camera_w2c if len(self.camera_w2c) == n else None,
            width=self.camera_size[0].expand(n).clone(), height=self.camera_size[1].expand(n).clone(),
            times=self.frame_times if n else None,
        )

    def set_cameras(self, cameras: Cameras) -> None:
        """Replace the input cameras (e.g. poses ``ttr`` refined): one per input frame, in order,
        at the input frames' resolution; their times, if any, must be the frames' times."""
        n = self.num_frames
        if len(cameras) != n:
            raise InputError(f"dggt holds {n} input cameras; set_cameras got {len(cameras)}")
        size = self.camera_size.tolist()
        if n and (cameras.width.tolist() != [size[0]] * n or cameras.height.tolist() != [size[1]] * n):
            raise InputError(f"dggt's input cameras are {size[0]}x{size[1]}; set_cameras got other sizes")
        if cameras.times is not None and n and not torch.allclose(cameras.times.to(self.frame_times), self.frame_times, atol=1e-4):
            raise InputError("set_cameras got cameras whose times are not dggt's input frame times")
        self.camera_c2w = cameras.c2w.detach().to(self.camera_c2w.device, torch.float32).clone()
        self.camera_w2c = cameras.viewmats.detach().to(self.camera_c2w.device, torch.float32).clone()
        self.camera_K = cameras.K.detach().to(self.camera_K.device, torch.float32).clone()

    def _time_map(self) -> TimeMap:
        """DGGT's time normalisation: S is the sequence length (distinct frame times), not the
        number of input images (3 cameras x S frames have S times)."""
        t = self.frame_times
        return TimeMap(float(t.min()), float(t.max()), int(torch.unique(t).numel()))

    def _check_built(self) -> None:
        if self.num_frames == 0:
            raise InputError("the dggt representation has not been built yet")

    def _static_opacity(self, time: float) -> Tensor:
        """[N] opacity of every row at ``time``: static rows faded by their lifespans, others unchanged."""
        sp = self.splats
        opacity = torch.sigmoid(sp["opacities"])
        tmap = self._time_map()
        faded = lifespan_opacity(opacity, tmap.tau(float(time)), tmap.tau(sp["times"]), torch.exp(sp["lifespans"]))
        return torch.where(~sp["dynamic"], faded, opacity)

    def _frame_gaussians(self, time: float, images: Sequence[int]) -> Gaussians3D:
        """Static Gaussians faded to ``time`` plus the dynamic Gaussians of input ``images``."""
        sp = self.splats
        opacity = self._static_opacity(time)
        keep = ~sp["dynamic"]
        if len(images):
            keep = keep | (sp["dynamic"] & torch.isin(sp["frames"], torch.tensor(list(images), device=keep.device)))
        rows = torch.nonzero(keep).flatten()
        return activate(sp, 0, rows, opacities=opacity[rows], background=self._sky_background, composite=_dggt_composite)

    def gaussians(self, time: float | None = None) -> Gaussians3D:
        """Activated Gaussians at scene time ``time`` (differentiable w.r.t. every parameter): the
        static ones faded by their lifespans and the dynamic ones of every input image nearest in
        time (all cameras of that time; a renderer asks :meth:`gaussians_for_cameras`, which takes
        one image's per camera, as DGGT renders).

        ``time=None``: the static Gaussians without lifespan fading and no dynamic ones.
        """
        self._check_built()
        sp = self.splats
        if time is None:
            rows = torch.nonzero(~sp["dynamic"]).flatten()
            return activate(sp, 0, rows, background=self._sky_background, composite=_dggt_composite)
        d = (self.frame_times - float(time)).abs()
        images = torch.nonzero(d <= d.min() + 1e-6).flatten().tolist()
        return self._frame_gaussians(float(time), images)

    def source_images(self, cameras: Cameras) -> list[int]:
        """For each camera, the input image whose dynamic Gaussians it sees: among the images
        nearest in time, the one nearest in pose (‖R − R_k‖² + ‖c − c_k‖², rotation and centre).
        An input camera (even after ``ttr`` nudged its pose) finds its own image; another
        camera of a rig finds the image its camera took at the nearest time."""
        self._check_built()
        times = cameras.times if cameras.times is not None else torch.zeros(len(cameras))
        ft = torch.cat([self.frame_times, self.novel_times]).detach().cpu().double()
        all_c2w = torch.cat([self.camera_c2w, self.novel_c2w.to(self.camera_c2w)])
        R = all_c2w[:, :3, :3].detach().cpu().double()
        c = all_c2w[:, :3, 3].detach().cpu().double()
        out = []
        for i in range(len(cameras)):
            d = (ft - float(times[i])).abs()
            cand = torch.nonzero(d <= d.min() + 1e-6).flatten()
            if len(cand) > 1:
                Ri = cameras.c2w[i, :3, :3].detach().cpu().double()
                ci = cameras.c2w[i, :3, 3].detach().cpu().double()
                cost = ((R[cand] - Ri) ** 2).sum((1, 2)) + ((c[cand] - ci) ** 2).sum(1)
                out.append(int(cand[int(torch.argmin(cost))]))
            else:
                out.append(int(cand[0]))
        return out

    def gaussians_for_cameras(self, cameras: Cameras) -> list[tuple[list[int], Gaussians3D]]:
        """What each camera sees, as DGGT renders input image i: every static Gaussian faded to
        the camera's time plus the dynamic Gaussians of its own input image
        (:meth:`source_images`). Cameras without times get the timeless static Gaussians."""
        self._check_built()
        if cameras.times is None:
            return [(list(range(len(cameras))), self.gaussians(None))]
        groups: dict[tuple[float, int], list[int]] = {}
        n = self.num_frames
        for i, j in enumerate(self.source_images(cameras)):
            # a new frame of mode=interpolate fades the static Gaussians to its keyframe's time (as the original)
            t = float(cameras.times[i]) if j < n else float(self.frame_times[self.novel_keyframe[j - n]])
            groups.setdefault((t, j), []).append(i)
        return [(index, self._frame_gaussians(t, [j])) for (t, j), index in groups.items()]

    def _sky_background(self, cameras: Cameras, renderer: CameraRenderer) -> Tensor:
        return self.render_sky(cameras, renderer)

    def render_sky(self, cameras: Cameras, renderer: CameraRenderer) -> Tensor:
        """The sky behind the Gaussians for ``cameras`` → [N, H, W, 3] (same-sized cameras), drawn
        by ``renderer`` (the one rendering the Gaussians); min-max normalised as DGGT's
        inference.py does when ``sky_normalize`` (see :meth:`sky_range`)."""
        colors = self.sky_model.colors(self.sky_samples)
        if not colors.requires_grad and not bool(colors.any()):  # a black sky without gradient: nothing to draw
            n, w, h = len(cameras), int(cameras.width[0]), int(cameras.height[0])
            return colors.new_zeros(n, h, w, 3)
        sky = self.sky_model.render(colors, self.sky_visible, cameras, renderer)
        if not self.sky_normalized():
            return sky
        lo, hi = self.sky_range(renderer, (int(cameras.width[0]), int(cameras.height[0])))
        return (sky - lo) / (hi - lo + 1e-8)

    def sky_normalized(self) -> bool:
        """Whether the sky is min-max normalised (``sky_normalize``; by default as inference.py:
        mode 2 normalises, mode 3 draws the sky at new poses without it)."""
        flag = self.config.sky_normalize
        return (self.config.mode == "reconstruct") if flag is None else bool(flag)

    def sky_range(self, renderer: CameraRenderer, size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """(min, max) of the raw sky rendered at every input camera (at ``size``, default theirs).

        DGGT's inference.py normalises the sky it renders for the S input frames by that batch's
        min and max; taking the range over the input cameras gives every view, rendered alone or
        in any batch, the same sky. Cached until the cameras or the sky MLP change."""
        cams = self.cameras()
        if size is not None and size != tuple(self.camera_size.tolist()):
            sx, sy = size[0] / float(self.camera_size[0]), size[1] / float(self.camera_size[1])
            K = cams.K.clone()
            K[:, 0] *= sx
            K[:, 1] *= sy
            n = len(cams)
            cams = Cameras(K=K, c2w=cams.c2w, width=torch.full((n,), size[0]), height=torch.full((n,), size[1]), times=cams.times)
        params = list(self.sky_model.bg_field.parameters())
        key = (tuple(cams.c2w.flatten().tolist()), tuple(cams.K.flatten().tolist()), size, getattr(renderer, "name", ""),
               tuple((id(p), p._version) for p in params))
        if self._sky_range_cache is None or self._sky_range_cache[0] != key:
            with torch.no_grad():
                sky = self.sky_model.render(self.sky_model.colors(self.sky_samples), self.sky_visible, cams, renderer)
            self._sky_range_cache = (key, sky.min(), sky.max())
        return self._sky_range_cache[1], self._sky_range_cache[2]

    # ---------------------------------------------------------------------------- export

    def export(self, out_dir: Path, fmt: str) -> list[Path]:
        """``ply``: one 3DGS PLY per input image k, ``point_cloud_t{k:03d}.ply``: what image k's
        camera sees (static Gaussians faded to its time, plus image k's own dynamic ones), and with
        mode=interpolate one per new frame m, ``point_cloud_new{m:03d}.ply``. No sky."""
        if fmt != "ply":
            raise InputError(f"dggt cannot export '{fmt}'; formats: {', '.join(self.export_formats)}")
        paths = []
        for k, t in enumerate(self.frame_times.tolist()):
            with torch.no_grad():
                splats = splats_from_activated(self._frame_gaussians(t, [k]))
            paths.append(write_splat_ply(Path(out_dir) / f"point_cloud_t{k:03d}.ply", splats))
        n = self.num_frames
        for m, b in enumerate(self.novel_keyframe.tolist()):  # mode=interpolate: the frames between
            with torch.no_grad():
                splats = splats_from_activated(self._frame_gaussians(float(self.frame_times[b]), [n + m]))
            paths.append(write_splat_ply(Path(out_dir) / f"point_cloud_new{m:03d}.ply", splats))
        return paths


def _dggt_composite(rgb: Tensor, alpha: Tensor, sky: Tensor) -> Tensor:
    """DGGT's compositing (train.py and inference.py): ``alpha * rgb + (1 - alpha) * sky`` with the
    rasteriser's rgb, which is already weighted by alpha (gsplat's output)."""
    return alpha * rgb + (1.0 - alpha) * sky


def _resize_view(view: View, plan: ResizePlan) -> None:
    """Resize one view in place to ``plan`` (image bicubic; masks nearest; depth nearest; other
    per-pixel data dropped, it has no meaning at the new size)."""
    if (plan.width, plan.height) == (view.width, view.height) and plan.crop_top == 0:
        return
    cam = view.camera
    view.camera = Cameras(K=plan.K_to_network(cam.K), c2w=cam.c2w, width=torch.tensor([plan.width]),
                          height=torch.tensor([plan.height]), distortion=cam.distortion, times=cam.times, w2c=cam.w2c)
    image = view._image  # the lazy source: read when needed, like the loaders' views
    view.image = lambda: resize_images(_read(image)[None].float(), plan)[0].permute(1, 2, 0)
    for name in ("sky_mask", "dynamic_mask", "object_mask"):
        if view.has(name):
            src = getattr(view, "_" + name)
            setattr(view, name, (lambda src=src: resize_masks(_read(src)[None].bool(), plan)[0]))
    if view.has("depth"):
        depth = view._depth
        view.depth = lambda: torch.nn.functional.interpolate(
            _read(depth)[None, None].float(), size=(plan.resized_height, plan.width), mode="nearest-exact"
        )[0, 0, plan.crop_top : plan.crop_top + plan.height]
    view.alpha = None
    view.confidence = None


def _read(value: object) -> Tensor:
    return value() if callable(value) else value  # type: ignore[return-value]


def _interpolation_split(data: Scene | Video, cfg: DGGTConfig, ctx: RunContext) -> list[View]:
    """mode=interpolate on a Scene of one camera: its views by time, every ``intervals``-th one an
    input frame (split "train"), the views between them "test" (rendered at new times), any after
    the last input frame "val" (beyond the interpolated range: not rendered). Returns the views
    between, in time order."""
    if cfg.init != "network":
        raise InputError("dggt.mode=interpolate needs dggt.init=network (it interpolates the network's per-pixel predictions)")
    if not isinstance(data, Scene):
        raise InputError("dggt.mode=interpolate takes a Scene of one camera with timed views (a video has no views to render)")
    views = list(data.views)
    if any(v.time is None for v in views):
        raise InputError("dggt.mode=interpolate needs a time on every view")
    views.sort(key=lambda v: v.time)
    if len({float(v.time) for v in views}) != len(views):
        raise InputError("dggt.mode=interpolate takes one camera (one view per time); DGGT's mode 3 is single-view "
                         "(its three-camera path is commented out in the original)")
    interval = int(cfg.intervals)
    S = (len(views) - 1) // interval + 1
    if S < 2:
        raise InputError(f"dggt.mode=interpolate with dggt.intervals={interval} needs at least {interval + 1} views; the scene has {len(views)}")
    last = (S - 1) * interval
    between = []
    for k, view in enumerate(views):
        view.split = "train" if k % interval == 0 and k <= last else ("test" if k < last else "val")
        if view.split == "test":
            between.append(view)
    if last < len(views) - 1:
        ctx.log(f"dggt.mode=interpolate: {len(views) - 1 - last} view(s) after the last input frame are not rendered (split 'val')")
    return between


def _input_frames(data: Scene | Video, max_frames: int) -> tuple[list[View], Tensor, Tensor | None, Tensor]:
    """The network's input: (views, images [S, H, W, 3], sky masks [S, H, W] or None, times [S]).

    Scene: training views ordered by time (or as given when timeless; times = index).
    Video: every frame with its timestamp.
    """
    if isinstance(data, Video):
        n = len(data)
        if n > max_frames:
            raise InputError(f"video has {n} frames; dggt takes at most dggt.max_frames={max_frames} (raise it, or trim the video)")
        images = torch.stack([data.frame(i) for i in range(n)])
        return [], images, None, data.timestamps.float()[:n]
    views = list(data.train_views)
    if not views:
        raise InputError("dggt needs at least one training view")
    if len(views) > max_frames:
        raise InputError(f"scene has {len(views)} training views; dggt takes at most dggt.max_frames={max_frames}")
    timed = all(v.time is not None for v in views)
    if timed:
        views.sort(key=lambda v: v.time)
    sizes = {(v.width, v.height) for v in views}
    if len(sizes) > 1:
        raise InputError(f"dggt needs frames of one size; got {sorted(sizes)}")
    images = torch.stack([v.image for v in views]).float()
    sky = torch.stack([v.sky_mask for v in views]).bool() if all(v.has("sky_mask") for v in views) else None
    times = torch.tensor([v.time for v in views], dtype=torch.float32) if timed else torch.arange(len(views), dtype=torch.float32)
    return views, images, sky, times
