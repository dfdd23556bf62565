"""Parity of recon's ``dggt`` and ``ttr.preset=fork`` with the original code, run side by side.

    python benchmarks/dggt_parity.py --reference /tmp/ref-dggt [--ttr-reference /tmp/ref-ttr] [--write-docs]

``--reference`` is a checkout of xiaomi-research/dggt, ``--ttr-reference`` one of the TTR fork
(Shilin-Zhao/dggt-ttr), both outside this repository (obtain them yourself; nothing of them is
copied here). What runs, for one fixed seed:

1. **Network.** The original ``VGGT`` is built at recon's ``tiny`` size (its constructors take
   the sizes they hard-code from the names patched here at run time: DINOv2 factory, aggregator
   depth/heads, DPT widths, camera trunk, track head, sky resolution), recon's random ``tiny``
   state dict is loaded into it *strictly* (same key names), and every head output (pose
   encoding, depth + confidence, Gaussian map, lifespans, dynamic logits, world points +
   confidence, semantic logits) is compared with recon's ``DGGTNetwork`` on the same frames
   (2 times x 3 cameras, DGGT's (time, camera) order).
2. **Gaussians and frames.** The original's mode-2 split (the lines of ``inference.py`` main(),
   restated with its ``get_split_gs`` / ``unproject_depth_map_to_point_map`` /
   ``pose_encoding_to_extri_intri``) and the fork's ``render_all_frames`` (static + per-image
   dynamic Gaussians, lifespan fading, sky model, min-max sky normalisation,
   ``alpha * rgb + (1 - alpha) * sky``) against recon's ``dggt`` representation rendered by
   recon's renderer: the Gaussians each view gets and the rendered frames.
3. **One TTR step** (``--ttr-reference``): the fork's ``RefinementTrainer.optimize_stage`` for one
   step of its stage 2 (pose at 0.1 x lr, opacity / colour / rotation / scale) against one step of
   recon's ``ttr`` with ``preset=fork``: the loss and the refined Gaussians.

gsplat's ``rasterization`` is CUDA-only; on a CPU both sides draw with recon's ``torch-3dgs``
rasteriser, passed to the original code in place of gsplat's (gsplat's own agreement with it
is tested in tests/test_gaussians_renderers.py on CUDA). Modules the original imports but this
path never calls (open3d, matplotlib, difix, the TAPIP3D tracker) are stubbed. The original
needs kornia and scikit-learn; install them into a throwaway venv
(``python3 -m venv /tmp/venv-dggt --system-site-packages``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import subprocess
import sys
import types
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recon_core import Bounds, Cameras, RunContext, Scene, View  # noqa: E402
from recon_plugins.dggt import DGGTConfig, DGGTRepresentation  # noqa: E402
from recon_plugins.dggt.network import DGGT_SIZES, DGGTNetwork  # noqa: E402
from recon_plugins.gaussians.rasterize import rasterize_gaussians  # noqa: E402
from recon_plugins.gaussians.renderers import TorchGaussianRenderer  # noqa: E402

TIMES, VIEWS, H, W = 2, 3, 28, 56
TOL = 1e-5


def _stub(name: str, **attrs: object) -> None:
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except Exception:  # noqa: BLE001 - absent: stub it
        pass
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent:
        _stub(parent)
        setattr(sys.modules[parent], child, mod)


def cpu_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, render_mode="RGB", **_: object):
    """gsplat.rendering.rasterization's signature over recon's torch-3dgs rasteriser (CPU)."""
    rgb, alpha, depth = rasterize_gaussians(means, quats, scales, opacities, viewmats, Ks, int(width), int(height), colors=colors)
    out = torch.cat([rgb, depth], dim=-1) if render_mode == "RGB+ED" else rgb
    return out, alpha, {}


def load_reference(path: Path, ttr_path: Path | None) -> dict[str, object]:
    """Import the original's modules (and the fork's TTR script) with CPU rasterisation."""
    import gsplat
    import gsplat.rendering

    gsplat.rendering.rasterization = cpu_rasterization
    gsplat.rasterization = cpu_rasterization
    for name in ("open3d", "matplotlib", "matplotlib.pyplot", "matplotlib.cm", "third_party.difix.infer",
                 "third_party.TAPIP3D.utils.inference_utils"):
        _stub(name, process_images_with_difix=None, load_model=None, read_video=None, inference=None,
              get_grid_queries=None, resize_depth_bilinear=None)
    for p in [p for p in (ttr_path, path) if p is not None]:
        sys.path.insert(0, str(p))
    out: dict[str, object] = {
        "vggt": importlib.import_module("dggt.models.vggt"),
        "aggregator": importlib.import_module("dggt.models.aggregator"),
        "vit": importlib.import_module("dggt.layers.vision_transformer"),
        "pose_enc": importlib.import_module("dggt.utils.pose_enc"),
        "geometry": importlib.import_module("dggt.utils.geometry"),
        "gs": importlib.import_module("dggt.utils.gs"),
    }
    try:  # mode 3 (needs scikit-learn, as the original)
        out["interp"] = importlib.import_module("utils.interplation")
    except ImportError as e:
        print(f"mode 3 skipped: the original's utils/interplation.py does not import ({e})", file=sys.stderr)
    if ttr_path is not None:
        spec = importlib.util.spec_from_file_location("inference_refine_mode2", ttr_path / "inference_refine_mode2.py")
        mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        mod.rasterization = cpu_rasterization
        out["ttr"] = mod
    return out


def build_original_tiny(ref: dict[str, object]) -> torch.nn.Module:
    """The original VGGT at recon's tiny size (its constructors' hard-coded sizes patched)."""
    t = DGGT_SIZES["tiny"]
    V, A, VT = ref["vggt"], ref["aggregator"], ref["vit"]
    A.vit_large = lambda patch_size=16, num_register_tokens=0, **kw: VT.DinoVisionTransformer(  # type: ignore[attr-defined]
        patch_size=patch_size, embed_dim=t.embed_dim, depth=t.dino_depth, num_heads=t.num_heads, mlp_ratio=4,
        block_fn=partial(VT.Block, attn_class=VT.MemEffAttention), num_register_tokens=num_register_tokens, **kw)
    dpt = dict(features=t.dpt_features, out_channels=list(t.dpt_out_channels), intermediate_layer_idx=list(t.dpt_layers))
    originals = {n: getattr(V, n) for n in ("Aggregator", "CameraHead", "DPTHead", "GaussianHead", "TrackHead", "SkyGaussian")}
    V.Aggregator = partial(originals["Aggregator"], depth=t.depth, num_heads=t.num_heads)  # type: ignore[attr-defined]
    V.CameraHead = partial(originals["CameraHead"], trunk_depth=t.camera_trunk_depth, num_heads=t.camera_num_heads)  # type: ignore[attr-defined]
    V.DPTHead = partial(originals["DPTHead"], **dpt)  # type: ignore[attr-defined]
    V.GaussianHead = partial(originals["GaussianHead"], **dpt)  # type: ignore[attr-defined]
    V.TrackHead = partial(originals["TrackHead"], features=t.track_features, hidden_size=t.track_hidden,  # type: ignore[attr-defined]
                          corr_levels=t.track_corr_levels)
    V.SkyGaussian = partial(originals["SkyGaussian"], resolution=t.sky_resolution, radius=t.sky_radius)  # type: ignore[attr-defined]
    track = importlib.import_module("dggt.heads.track_head")
    track_dpt = track.DPTHead  # type: ignore[attr-defined]
    track.DPTHead = partial(track_dpt, out_channels=list(t.dpt_out_channels), intermediate_layer_idx=list(t.dpt_layers))  # type: ignore[attr-defined]
    try:
        net = V.VGGT(img_size=t.img_size, patch_size=t.patch_size, embed_dim=t.embed_dim)  # type: ignore[attr-defined]
        pe = net.aggregator.patch_embed
        every = pe.get_intermediate_layers  # the aggregator asks for n=24, every block of ViT-L: here every block
        pe.get_intermediate_layers = lambda x, n=1, **kw: every(x, n=min(n, len(pe.blocks)) if isinstance(n, int) else n, **kw)
        return net
    finally:
        for n, f in originals.items():
            setattr(V, n, f)
        track.DPTHead = track_dpt  # type: ignore[attr-defined]


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != {tuple(b.shape)}")
    return float((a - b).abs().max()) if a.numel() else 0.0


def _spread(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Max, 99.9th percentile and share above TOL of |a - b| (for renders and Adam steps, where a
    few values amplify float noise: an edge pixel, a parameter whose gradient is near Adam's eps)."""
    d = (a.detach().float() - b.detach().float()).abs().flatten()
    return {"max": float(d.max()), "p99.9": float(torch.quantile(d[: 2**24], 0.999)), "share_above_tol": float((d > TOL).float().mean())}


def _frames(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T*V, H, W, 3] smooth random frames in DGGT's (time, camera) order, and sky masks (top rows)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(TIMES * VIEWS, 3, 4, 7, generator=g)
    img = torch.nn.functional.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    img = (img + 0.05 * torch.rand(img.shape, generator=g)).clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    sky = torch.zeros(TIMES * VIEWS, H, W, dtype=torch.bool)
    sky[:, :5] = True
    return img, sky


def compare_network(ref: dict[str, object], ours: DGGTNetwork, orig: torch.nn.Module, images: torch.Tensor) -> tuple[dict, dict]:
    x = images.permute(0, 3, 1, 2)[None]
    with torch.no_grad():
        theirs = orig(x)
        mine = ours(x, heads=("depth", "point", "gs", "instance", "semantic"))
    gs = theirs["gs_map"]
    pairs = {
        "pose_enc": (mine.pose_enc, theirs["pose_enc"]),
        "depth": (mine.depth, theirs["depth"]),
        "depth_conf": (mine.depth_conf, theirs["depth_conf"]),
        "gs_map": (mine.gs_map, gs),
        "lifespan (gs_conf)": (mine.lifespan, theirs["gs_conf"]),
        "dynamic_logit": (mine.dynamic_logit, theirs["dynamic_conf"][..., 0]),
        "world_points": (mine.world_points, theirs["world_points"]),
        "world_points_conf": (mine.world_points_conf, theirs["world_points_conf"]),
        "semantic_logits": (mine.semantic_logits, theirs["semantic_logits"]),
    }
    return {k: _maxdiff(a, b) for k, (a, b) in pairs.items()}, theirs


def original_mode2(ref: dict[str, object], theirs: dict, images: torch.Tensor, sky: torch.Tensor) -> dict[str, object]:
    """inference.py main(), mode 2, from the predictions to the per-image Gaussians (its own functions)."""
    pe, geo, gsu = ref["pose_enc"], ref["geometry"], ref["gs"]
    ext, intr = pe.pose_encoding_to_extri_intri(theirs["pose_enc"], (H, W))  # type: ignore[attr-defined]
    extrinsic = torch.cat([ext[0], torch.tensor([0.0, 0, 0, 1]).view(1, 1, 4).expand(ext.shape[1], 1, 4)], dim=1)
    intrinsic = intr[0]
    point_map = torch.from_numpy(geo.unproject_depth_map_to_point_map(theirs["depth"][0], ext[0], intr[0])[None]).float()  # type: ignore[attr-defined]
    gs_map, gs_conf, dy_map = theirs["gs_map"], theirs["gs_conf"], theirs["dynamic_conf"].squeeze(-1)
    if dy_map.ndim == 5:  # instance head: 2 channels; inference.py squeezes a size-1 last axis only
        dy_map = dy_map[..., 0]
    bg_mask = ~sky[None]
    idx = torch.arange(TIMES)
    timestamps = (idx / idx[-1] * (TIMES / 4)).repeat_interleave(VIEWS).float()
    static_mask = bg_mask & (dy_map < 0.5)
    rgbs, opac, scales, rots = gsu.get_split_gs(gs_map, static_mask)  # type: ignore[attr-defined]
    static = {"points": point_map[static_mask].reshape(-1, 3), "rgbs": rgbs, "opacity": opac * (1 - dy_map[static_mask].sigmoid()),
              "scales": scales, "rotations": rots, "gs_conf": gs_conf[static_mask]}
    gs_timestamps = timestamps[torch.nonzero(static_mask, as_tuple=False)[:, 1]]
    dynamic = []
    for i in range(dy_map.shape[1]):
        m = bg_mask[:, i]
        r, o, s, q = gsu.get_split_gs(gs_map[:, i], m)  # type: ignore[attr-defined]
        dynamic.append({"points": point_map[:, i][m].reshape(-1, 3), "rgbs": r, "opacity": o * dy_map[:, i][m].sigmoid(),
                        "scales": s, "rotations": q})
    return {"static": static, "dynamic": dynamic, "timestamps": timestamps, "gs_timestamps": gs_timestamps,
            "extrinsic": extrinsic, "intrinsic": intrinsic}


def _sorted_rows(means: torch.Tensor, *cols: torch.Tensor) -> list[torch.Tensor]:
    """Rows as they are: both sides list static Gaussians in (image, row, column) mask order, then
    the image's dynamic ones (recon keeps the original's order, so no matching is needed)."""
    return [means, *cols]


def _render_with_viewmats(rep: DGGTRepresentation, cams: Cameras, viewmats: torch.Tensor, renderer: TorchGaussianRenderer) -> torch.Tensor:
    """recon's per-camera Gaussians and sky composited as the renderer does, rasterised from the
    given world-to-camera matrices instead of ``inv(c2w)``."""
    from recon_core.gaussians import sh_to_rgb

    out = torch.zeros(len(cams), H, W, 3)
    for index, g in rep.gaussians_for_cameras(cams):
        for i in index:
            rgb, alpha, _ = rasterize_gaussians(g.means, g.quats, g.scales, g.opacities, viewmats[i : i + 1], cams.K[i : i + 1],
                                                W, H, colors=sh_to_rgb(g.sh[:, 0]))
            out[i] = g.composite(rgb, alpha, g.background(cams[[i]], renderer))[0]
    return out


def _mode3_inputs(seed: int) -> dict[str, torch.Tensor]:
    """Keyframe predictions with two moving objects (frame 0 has 2 x 600 confidently dynamic
    pixels on 5 mm grids, so the original clusters and tracks them) on a static plane."""
    g = torch.Generator().manual_seed(seed)
    S, h, w = 3, 40, 80
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    points = torch.stack([(xs - w / 2) * 0.05, (ys - h / 2) * 0.05, torch.full_like(xs, 4.0)], dim=-1).repeat(S, 1, 1, 1)
    logits = torch.randn(S, h, w, generator=g) - 3.0
    for t in range(S):
        for (r0, c0), v in (((5, 5), (0.10, 0.0, 0.02)), ((15, 35), (-0.05, 0.04, 0.0))):
            r, c = slice(r0, r0 + 20), slice(c0 + 2 * t, c0 + 2 * t + 30)
            yy, xx = ys[r, c] - r0, xs[r, c] - c0 - 2 * t
            base = torch.tensor([c0 * 0.05, r0 * 0.05, 3.0]) + t * torch.tensor(v)
            points[t, r, c] = base + torch.stack([xx * 0.005, yy * 0.005, torch.zeros_like(xx)], dim=-1)
            logits[t, r, c] = 4.0 + torch.rand(20, 30, generator=g)
    points = points + 1e-4 * torch.randn(points.shape, generator=g)
    angles = torch.tensor([0.0, 0.05, 0.12])
    w2c = torch.eye(4).repeat(S, 1, 1)
    w2c[:, 0, 0], w2c[:, 0, 2], w2c[:, 2, 0], w2c[:, 2, 2] = angles.cos(), angles.sin(), -angles.sin(), angles.cos()
    w2c[:, :3, 3] = torch.tensor([[0.0, 0, 0], [0.1, 0.0, -0.3], [0.25, 0.02, -0.55]])
    K = torch.tensor([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]]).repeat(S, 1, 1)
    K[1, 0, 0] = 52.0
    return {"points": points, "logits": logits, "w2c": w2c, "K": K, "depth": points[..., 2].clone(),
            "images": torch.rand(S, 3, h, w, generator=g)}


def _fake_tracker_coords(queries: torch.Tensor, frames: int) -> torch.Tensor:
    """A stand-in for the 3D tracker, given to both sides: each query point moves with the object
    it lies on (x < 1 m: the first, else the second), plus a little deterministic wobble."""
    v = torch.where((queries[:, 1:2] < 1.0), torch.tensor([[0.10, 0.0, 0.02]]), torch.tensor([[-0.05, 0.04, 0.0]]))
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    return queries[None, :, 1:] + t * v[None] + 1e-3 * torch.sin(t * queries[None, :, 1:2] * 7.0)


def compare_mode3(ref: dict[str, object], seed: int, interval: int = 3) -> dict[str, float]:
    """The original's ``interp_all`` (cameras, point maps, dynamic logits of the new frames) vs
    recon's :mod:`recon_plugins.dggt.interpolate`, on the same keyframe predictions and the same
    stand-in tracker (TAPIP3D is not ported; see docs)."""
    import numpy as np

    from recon_plugins.dggt.interpolate import interpolate_cameras, interpolate_dynamic

    mod = ref["interp"]
    d = _mode3_inputs(seed)
    S, h, w = d["logits"].shape
    calls: list[int] = []

    def their_inference(*, model, video, depths, intrinsics, extrinsics, query_point, **_: object):  # noqa: ANN001
        calls.append(int(query_point.shape[0]))
        return _fake_tracker_coords(query_point, video.shape[0]), None

    mod.inference = their_inference  # type: ignore[attr-defined]
    np.random.seed(seed)
    t_ext, t_K, t_points, _, t_logits, *_ = mod.interp_all(  # type: ignore[attr-defined]
        d["w2c"], d["K"], d["points"][None], torch.zeros(1, S, h, w, 14), d["logits"][None], torch.ones(1, S, h, w),
        torch.ones(1, S, h, w, dtype=torch.bool), d["images"][None], d["images"][None], d["depth"][None, ..., None][None],
        object(), interval, 1)

    def our_tracker(images, depths, K, w2c, queries, pixels):  # noqa: ANN001
        return _fake_tracker_coords(queries, images.shape[0])

    o_ext, o_K = interpolate_cameras(d["w2c"], d["K"], interval)
    o_points, o_logits = interpolate_dynamic(d["points"], d["logits"], interval, our_tracker, np.random.RandomState(seed),
                                             images=d["images"], depth=d["depth"], K=d["K"], w2c=d["w2c"])
    moved = int(((o_logits == 1.0).sum()))
    return {"w2c": _maxdiff(o_ext, t_ext), "K": _maxdiff(o_K, t_K), "point_maps": _maxdiff(o_points, t_points[0]),
            "dynamic_logits": _maxdiff(o_logits, t_logits[0]), "tracked_points": float(sum(calls)),
            "moved_pixels": float(moved), "frames": float(o_points.shape[0])}


def _alpha_t(t: torch.Tensor, t0: torch.Tensor, alpha: torch.Tensor, gamma0: torch.Tensor, gamma1: float = 0.1) -> torch.Tensor:
    """inference.py's lifespan fading, its arithmetic (a float32 log of gamma1)."""
    sigma = torch.log(torch.tensor(gamma1)) / (gamma0**2 + 1e-6)
    return (alpha * torch.exp(sigma * (t0 - t) ** 2)).float()


def original_mode3_frames(ref: dict[str, object], orig: torch.nn.Module, images: torch.Tensor, sky: torch.Tensor,
                          interval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """inference.py main(), mode 3 (one camera), restated with its own functions: the network on
    the keyframes, ``interp_all``, static Gaussians of the keyframes faded to ``timestamps[k // I]``,
    each frame's dynamic Gaussians, the sky from ``forward_with_new_pose`` (not normalised),
    ``alpha * rgb + (1 - alpha) * sky``. Returns (frames [T, H, W, 3], world-to-camera [T, 4, 4])."""
    pe, geo, gsu, V = ref["pose_enc"], ref["geometry"], ref["gs"], ref["interp"]
    x = images.permute(0, 3, 1, 2)[None]
    with torch.no_grad():
        pred = orig(x)
        S = x.shape[1]
        ext, intr = pe.pose_encoding_to_extri_intri(pred["pose_enc"], (H, W))  # type: ignore[attr-defined]
        extrinsic = torch.cat([ext[0], torch.tensor([0.0, 0, 0, 1]).view(1, 1, 4).expand(S, 1, 4)], dim=1)
        intrinsic = intr[0]
        depth_map = pred["depth"][0]
        point_map = torch.from_numpy(geo.unproject_depth_map_to_point_map(depth_map, ext[0], intr[0])[None]).float()  # type: ignore[attr-defined]
        gs_map, gs_conf, dy_map = pred["gs_map"], pred["gs_conf"], pred["dynamic_conf"].squeeze(-1)
        if dy_map.ndim == 5:
            dy_map = dy_map[..., 0]
        bg_mask = ~sky[None]
        idx = torch.arange(S)
        timestamps = (idx / idx[-1] * (S / 4)).float()
        (extrinsic_i, intrinsic_i, point_map, gs_map, dy_map, gs_conf, bg_mask, _, _, _, _) = V.interp_all(  # type: ignore[attr-defined]
            extrinsic, intrinsic, point_map, gs_map, dy_map, gs_conf, bg_mask, x, x, depth_map.unsqueeze(0), object(), interval, 1)
        I = interval
        static_mask = bg_mask[:, ::I] & (dy_map[:, ::I] < 0.5)
        st_conf = gs_conf[:, ::I][static_mask]
        st_points = point_map[:, ::I][static_mask].reshape(-1, 3)
        st_rgb, st_op, st_scale, st_rot = gsu.get_split_gs(gs_map[:, ::I], static_mask)  # type: ignore[attr-defined]
        st_time = timestamps[torch.nonzero(static_mask, as_tuple=False)[:, 1]]
        st_op = st_op * (1 - dy_map[:, ::I][static_mask].sigmoid())
        frames = []
        for k in range(dy_map.shape[1]):
            m = bg_mask[:, k]
            d_rgb, d_op, d_scale, d_rot = gsu.get_split_gs(gs_map[:, k], m)  # type: ignore[attr-defined]
            d_op = d_op * dy_map[:, k][m].sigmoid()
            op = _alpha_t(st_time, timestamps[k // I], st_op, st_conf)
            means, rgb, opac, scales, rot = gsu.concat_list(  # type: ignore[attr-defined]
                [st_points, st_rgb, op, st_scale, st_rot], [point_map[:, k][m].reshape(-1, 3), d_rgb, d_op, d_scale, d_rot])
            out, alpha, _ = cpu_rasterization(means, rot, scales, opac, rgb, extrinsic_i[k : k + 1], intrinsic_i[k : k + 1], W, H, "RGB+ED")
            frames.append((out[..., :3], alpha))
        bg = orig.sky_model.forward_with_new_pose(x, extrinsic, intrinsic, extrinsic_i, intrinsic_i)
        rgb = torch.cat([f[0] for f in frames])
        alpha = torch.cat([f[1] for f in frames])
        return alpha * rgb + (1 - alpha) * bg, extrinsic_i


def compare_mode3_frames(ref: dict[str, object], orig: torch.nn.Module, ckpt: Path, images: torch.Tensor, sky: torch.Tensor,
                         seed: int, interval: int = 2) -> dict[str, object]:
    """Mode 3 end to end: the original's frames (:func:`original_mode3_frames`) vs recon's
    ``dggt.mode=interpolate`` on a scene of (S - 1)·I + 1 views of one camera whose every I-th view
    holds the keyframe images; recon renders the views between at its interpolated cameras."""
    S = images.shape[0]
    theirs, w2c = original_mode3_frames(ref, orig, images, sky, interval)
    K0 = torch.tensor([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]])
    views = [View(f"{k:03d}", Cameras.create(K0, torch.eye(4), W, H, times=0.1 * k), images[k // interval], "train",
                  sky_mask=sky[k // interval]) for k in range((S - 1) * interval + 1)]
    scene = Scene("parity-mode3", views, Bounds(torch.zeros(3), 10.0))
    renderer = TorchGaussianRenderer()
    ctx = RunContext(device=torch.device("cpu"), seed=seed, renderer=renderer, background=torch.zeros(3), log=lambda m: None)
    rep = DGGTRepresentation(DGGTConfig(checkpoint=str(ckpt), size="tiny", width=W, min_dynamic_opacity=0.0,
                                        mode="interpolate", intervals=interval))
    rep.build(scene, ctx)
    between = [k for k in range(len(views)) if k % interval]
    cams = Cameras.cat([views[k].camera for k in between])
    with torch.no_grad():
        mine = renderer.render(rep, cams).rgb
        exact = _render_with_viewmats(rep, cams, w2c[between], renderer)
    want = theirs[between]
    return {"new_frames": float(len(between)), "world_to_camera": _maxdiff(cams.viewmats, w2c[between]),
            "world_to_camera_inverted_c2w": _maxdiff(torch.linalg.inv(cams.c2w), w2c[between]),
            "frames": _spread(mine, want), "frames_with_original_viewmats": _spread(exact, want)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, required=True, help="checkout of xiaomi-research/dggt")
    ap.add_argument("--ttr-reference", type=Path, help="checkout of Shilin-Zhao/dggt-ttr (for the TTR step and render_all_frames)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for p in [args.reference] + ([args.ttr_reference] if args.ttr_reference else []):
        if not (p / "dggt" / "models" / "vggt.py").is_file():
            print(f"error: {p} is not a DGGT checkout (no dggt/models/vggt.py)", file=sys.stderr)
            return 2
    ref = load_reference(args.reference.resolve(), args.ttr_reference.resolve() if args.ttr_reference else None)
    report: dict[str, object] = {"commits": {}}
    for name, p in (("dggt", args.reference), ("dggt-ttr", args.ttr_reference)):
        if p is not None:
            rev = subprocess.run(["git", "-C", str(p), "rev-parse", "HEAD"], capture_output=True, text=True)
            report["commits"][name] = rev.stdout.strip() or "(not a git checkout)"  # type: ignore[index]

    # 1. network
    torch.manual_seed(args.seed)
    ours = DGGTNetwork("tiny").eval()
    with torch.no_grad():  # fields of view pinned to ~1 rad: ReLU'd random ones may be 0 (as tests/conftest.py does)
        ours.camera_head.pose_branch.fc2.weight[7:] = 0.0
        ours.camera_head.pose_branch.fc2.bias[7:] = 1.0 / ours.camera_head.iterations
    orig = build_original_tiny(ref).eval()
    missing = orig.load_state_dict(ours.state_dict(), strict=True)
    report["state_dict"] = {"keys": len(ours.state_dict()), "load": str(missing)}
    images, sky = _frames(args.seed)
    heads, theirs = compare_network(ref, ours, orig, images)
    report["heads_max_abs_diff"] = heads

    # 2. Gaussians and frames: the original's split + the fork's render_all_frames vs recon's dggt
    o = original_mode2(ref, theirs, images, sky)
    ckpt = Path("/tmp") / f"dggt_parity_tiny_{args.seed}.pt"
    torch.save(ours.state_dict(), ckpt)
    K0 = torch.tensor([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]])
    views = [View(f"{k:03d}_{c}", Cameras.create(K0, torch.eye(4), W, H, times=0.1 * k), images[k * VIEWS + c], "train",
                  sky_mask=sky[k * VIEWS + c]) for c in range(VIEWS) for k in range(TIMES)]  # camera-major, as the loader
    scene = Scene("parity", views, Bounds(torch.zeros(3), 10.0))
    renderer = TorchGaussianRenderer()
    ctx = RunContext(device=torch.device("cpu"), seed=args.seed, renderer=renderer, background=torch.zeros(3), log=lambda m: None)
    rep = DGGTRepresentation(DGGTConfig(checkpoint=str(ckpt), size="tiny", width=W, min_dynamic_opacity=0.0))
    rep.build(scene, ctx)
    cams = rep.cameras()
    w2c = cams.viewmats  # what the renderer draws from (the network's own world-to-camera, Cameras.w2c)
    report["cameras_max_abs_diff"] = {"world_to_camera": _maxdiff(w2c, o["extrinsic"]), "K": _maxdiff(cams.K, o["intrinsic"]),
                                      "world_to_camera_inverted_c2w": _maxdiff(torch.linalg.inv(cams.c2w), o["extrinsic"])}
    st, ts = o["static"], o["timestamps"]
    g_diff = {"count": 0.0, "means": 0.0, "opacities": 0.0, "colors": 0.0, "scales": 0.0}
    for index, g in rep.gaussians_for_cameras(cams):
        [i] = index
        from recon_core.gaussians import sh_to_rgb

        op = ref["ttr"].alpha_t(o["gs_timestamps"], ts[i], st["opacity"], gamma0=st["gs_conf"]) if "ttr" in ref else None  # type: ignore[attr-defined]
        if op is None:
            sigma = math.log(0.1) / (st["gs_conf"] ** 2 + 1e-6)
            op = st["opacity"] * torch.exp(sigma * (ts[i] - o["gs_timestamps"]) ** 2)
        d = o["dynamic"][i]
        want = _sorted_rows(torch.cat([st["points"], d["points"]]), torch.cat([op, d["opacity"]]), torch.cat([st["rgbs"], d["rgbs"]]),
                            torch.cat([st["scales"], d["scales"]]))
        got = _sorted_rows(g.means.detach(), g.opacities.detach(), sh_to_rgb(g.sh[:, 0].detach()), g.scales.detach())
        g_diff["count"] = max(g_diff["count"], abs(len(g) - len(want[0])))
        if len(g) == len(want[0]):
            for k, a, b in zip(("means", "opacities", "colors", "scales"), got, want):
                g_diff[k] = max(g_diff[k], _maxdiff(a, b))
    report["gaussians_max_abs_diff"] = g_diff
    if "interp" in ref:
        report["mode3_max_abs_diff"] = compare_mode3(ref, args.seed)
    if "interp" in ref:
        key = torch.arange(0, TIMES * VIEWS, VIEWS)  # camera 0's frames: one camera, as mode 3 takes
        frames6 = torch.cat([images[key], images[key + 1], images[key + 2]])  # 6 keyframes of one camera
        sky6 = torch.cat([sky[key], sky[key + 1], sky[key + 2]])
        report["mode3_frames"] = compare_mode3_frames(ref, orig, ckpt, frames6, sky6, args.seed)
    with torch.no_grad():
        mine = renderer.render(rep, cams).rgb
    if "ttr" in ref:
        with torch.no_grad():
            theirs_img, _, _ = ref["ttr"].render_all_frames(  # type: ignore[attr-defined]
                st, o["dynamic"], ts, o["gs_timestamps"], o["extrinsic"], o["intrinsic"], H, W, orig.sky_model,
                images.permute(0, 3, 1, 2)[None])
        report["frames_max_abs_diff"] = _maxdiff(mine, theirs_img.permute(0, 2, 3, 1))
        report["frames_abs_diff"] = _spread(mine, theirs_img.permute(0, 2, 3, 1))
        # the same frames drawn from the original's world-to-camera matrices: recon holds cameras
        # as camera-to-world, and the renderer's float32 inverse differs from the network's
        # world-to-camera by up to 1 ulp of the translation, which edge pixels amplify
        with torch.no_grad():
            exact = _render_with_viewmats(rep, cams, o["extrinsic"], renderer)
        report["frames_with_original_viewmats_abs_diff"] = _spread(exact, theirs_img.permute(0, 2, 3, 1))

        # 3. one TTR step: the fork's stage 2 (pose at 0.1 x lr + Gaussians) vs recon's ttr preset=fork
        report["ttr_step"] = compare_ttr_step(ref, o, orig, images, sky, rep, scene, ctx)
    worst = max([v for v in heads.values()] + [v for v in report["cameras_max_abs_diff"].values()]  # type: ignore[union-attr]
                + [v for k, v in g_diff.items()] + [report.get("frames_max_abs_diff", 0.0)]  # type: ignore[list-item]
                + [v for k, v in report.get("mode3_max_abs_diff", {}).items() if k in ("w2c", "K", "point_maps", "dynamic_logits")]  # type: ignore[union-attr]
                + ([report["mode3_frames"]["frames"]["max"], report["mode3_frames"]["world_to_camera"]] if "mode3_frames" in report else [])  # type: ignore[index]
                + [v for k, v in report.get("ttr_step", {}).items() if k.endswith("diff") and "after_step" not in k])  # type: ignore[union-attr]
    report["worst"] = worst
    report["pass"] = worst <= TOL
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["pass"] else 1


def compare_ttr_step(ref: dict[str, object], o: dict, orig: torch.nn.Module, images: torch.Tensor, sky: torch.Tensor,
                     rep: DGGTRepresentation, scene: Scene, ctx: RunContext) -> dict[str, float]:
    from recon_core.gaussians import sh_to_rgb
    from recon_plugins.ttr import TestTimeRefiner, TTRConfig

    mod = ref["ttr"]
    args = argparse.Namespace(enable_refinement=True, refine_pose=True, refine_gs=True, refine_xyz=False, refine_steps=1,
                              refine_steps_pose=1, refine_steps_gs=1, refine_lr_pose=1e-4, refine_lr_opacity=0.05,
                              refine_lr_color=0.003, refine_lr_rot=0.001, refine_lr_scales=1e-5, refine_lr_xyz=1e-4,
                              pose_lr_factor_gs=0.1)
    import logging

    trainer = mod.RefinementTrainer(args, logging.getLogger("parity"), device="cpu")  # type: ignore[attr-defined]
    losses: list[float] = []
    compute = trainer.compute_loss

    def spy(*a: object, **k: object) -> object:
        out = compute(*a, **k)
        losses.append(float(out[0]))
        return out

    trainer.compute_loss = spy
    with torch.enable_grad():
        _, best = trainer.optimize_stage(
            images.permute(0, 3, 1, 2), o["static"], [dict(d) for d in o["dynamic"]], o["timestamps"], o["gs_timestamps"],
            o["extrinsic"], o["intrinsic"], H, W, orig.sky_model, images.permute(0, 3, 1, 2)[None],
            refine_pose_flag=True, refine_gs_flag=True, lr_pose_override=1e-4 * 0.1, num_steps=1,
            loss_mask=(~sky).float())
    ttr = TestTimeRefiner(TTRConfig(preset="fork", steps_pose=0, steps_gs=1, lpips=False))
    ttr.setup(rep, scene, ctx)
    logs = ttr.step(0)
    sp = rep.splats
    static = ~sp["dynamic"]
    got = _sorted_rows(sp["means"].detach()[static], torch.sigmoid(sp["opacities"].detach()[static]),
                       sh_to_rgb(sp["sh0"].detach()[static, 0]), torch.exp(sp["scales"].detach()[static]),
                       torch.nn.functional.normalize(sp["quats"].detach()[static], dim=-1))
    want = _sorted_rows(best["points"], best["opacity"], best["rgbs"], best["scales"], torch.nn.functional.normalize(best["rotations"], dim=-1))
    out = {"loss_ours": float(logs["loss"]), "loss_fork": losses[0], "loss_diff": abs(float(logs["loss"]) - losses[0])}
    for k, a, b in zip(("means", "opacities", "colors", "scales", "quats"), got, want):
        out[f"{k}_after_step_diff"] = _maxdiff(a, b)
        out[f"{k}_after_step_spread"] = _spread(a, b)  # type: ignore[assignment]
    return out


if __name__ == "__main__":
    sys.exit(main())
