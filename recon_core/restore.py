"""Rebuilding a finished (or interrupted) run for ``recon eval/render/export``, and the cameras
those commands render from (orbits, camera files)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .cameras import Cameras, check_rigid
from .components import Renderer, Representation, RunContext
from .errors import InputError
from .evaluate import render_items
from .io import Mp4Writer, write_png
from .pipeline import Pipeline
from .progress import progress_bar
from .refine import restore_cameras
from .registry import Registry
from .resolve import resolve_run
from .rundir import RunDir, read_json
from .scene import Scene, Video, View
from .spec import RunSpec

__all__ = ["RestoredRun", "restore_run", "render_to_folder", "orbit_cameras", "read_cameras_file", "write_transforms_json"]


@dataclass
class RestoredRun:
    """A run folder's representation rebuilt from its latest checkpoint, with the run's
    :class:`Pipeline` (its context: renderer, background, fixer when evaluating)."""

    pipeline: Pipeline
    data: Scene | Video
    rep: Representation
    checkpoint: dict[str, Any]

    @property
    def spec(self) -> RunSpec:
        return self.pipeline.spec

    @property
    def run_dir(self) -> RunDir:
        return self.pipeline.run_dir

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def ctx(self) -> RunContext:
        return self.pipeline.context()

    @property
    def renderer(self) -> Renderer:
        renderer = self.ctx.renderer
        assert renderer is not None
        return renderer

    def evaluate(self) -> dict[str, Any]:
        """:meth:`Pipeline.evaluate` of the restored representation (metrics document, not written)."""
        return self.pipeline.evaluate(self.rep, self.data)


def restore_run(registry: Registry, run_dir: RunDir, device: str | None = None, evaluators: Sequence[str] | None = None) -> RestoredRun:
    """Re-resolve the run's config, reload its data and its latest representation state."""
    spec = resolve_run(registry, base=run_dir.read_config(), device=device, evaluators=evaluators)
    pipeline = Pipeline(registry, spec, run_dir)
    checkpoint = run_dir.load_checkpoint()
    data = pipeline.load_data()
    rep = pipeline.build(data)
    rep.load_state_dict_resizing(checkpoint["representation"])
    restore_cameras(data, checkpoint)  # e.g. poses a refiner corrected
    return RestoredRun(pipeline, data, rep, checkpoint)


def render_to_folder(
    restored: RestoredRun,
    out_dir: Path,
    *,
    cameras: Cameras | None = None,
    views: Sequence[View] | None = None,
    names: Sequence[str] | None = None,
    fps: float = 10.0,
) -> list[Path]:
    """Render ``cameras`` or ``views`` (or every video frame) to PNGs + renders.mp4 in ``out_dir``."""
    r = restored
    count = len(cameras) if cameras is not None else len(views) if views is not None else r.data.num_frames  # type: ignore[union-attr]
    writer = Mp4Writer(out_dir / "renders.mp4", fps) if count >= 2 else None
    written: list[Path] = []
    ok = False
    try:
        with progress_bar("render", total=count) as advance:
            items = render_items(r.rep, r.data, r.renderer, r.device, background=r.ctx.background, views=views,
                                 cameras=cameras, names=names, chunk=r.spec.options.render_chunk)
            for item in items:
                written.append(write_png(out_dir / f"{item.name}.png", item.pred))
                if writer:
                    writer.add(item.pred)
                advance(1)
        ok = True
    finally:
        if writer:
            writer.close(keep=ok)
    if writer:
        written.append(out_dir / "renders.mp4")
    return written


def orbit_cameras(scene: Scene, n: int = 60) -> Cameras:
    """``n`` cameras on a circle around the scene, looking at the centre of its bounds.

    The circle lies in the plane perpendicular to the cameras' mean "up" (−y in OpenCV), at their
    mean height and mean horizontal distance from the centre; intrinsics are the first view's.
    """
    if n < 1:
        raise InputError("orbit needs at least one frame")
    cams = scene.cameras()
    center = scene.bounds.center.double()
    c2w = cams.c2w.double()
    up = -c2w[:, :3, 1].mean(0)
    up = up / up.norm().clamp_min(1e-12)
    offsets = c2w[:, :3, 3] - center
    height = float((offsets @ up).mean())
    horizontal = offsets - (offsets @ up)[:, None] * up
    radius = float(horizontal.norm(dim=-1).mean())
    if radius < 1e-6:
        radius = 2.0 * scene.bounds.radius
    # an orthonormal basis (a, b) of the orbit plane
    a = horizontal[0] if horizontal[0].norm() > 1e-6 else torch.linalg.svd(up[None])[2][1]
    a = a / a.norm()
    b = torch.linalg.cross(up, a)
    poses = []
    for k in range(n):
        theta = 2 * math.pi * k / n
        pos = center + height * up + radius * (math.cos(theta) * a + math.sin(theta) * b)
        forward = center - pos
        forward = forward / forward.norm()
        right = torch.linalg.cross(forward, up)
        right = right / right.norm().clamp_min(1e-12)
        down = torch.linalg.cross(forward, right)
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, pos
        poses.append(pose)
    first = cams[0]
    return Cameras.create(first.K[0], torch.stack(poses).float(), int(first.width[0]), int(first.height[0]))


def read_cameras_file(path: Path) -> tuple[Cameras, list[str]]:
    """Cameras from a JSON like ``cameras_opencv.json``: ``K``, ``w``, ``h`` (top level or per
    frame) and per frame an OpenCV camera-to-world ``c2w``; names from ``file_path`` stems."""
    doc = read_json(path, "cameras")
    frames = doc.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError("cameras file has no 'frames' list", path)
    Ks, c2ws, ws, hs, names = [], [], [], [], []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise InputError(f"frame {i} is not an object", path)
        try:
            K = torch.tensor(fr.get("K", doc.get("K")), dtype=torch.float64)
            c2w = torch.tensor(fr["c2w"], dtype=torch.float64)
            w = int(fr.get("w", fr.get("width", doc.get("w", doc.get("width")))))
            h = int(fr.get("h", fr.get("height", doc.get("h", doc.get("height")))))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"frame {i} needs K, c2w, w and h ({type(e).__name__}: {e})", path) from None
        if K.shape != (3, 3):
            raise InputError(f"frame {i}: K must be 3x3, got {tuple(K.shape)}", path)
        check_rigid(c2w, f"{path} frame {i}")
        Ks.append(K)
        c2ws.append(c2w)
        ws.append(w)
        hs.append(h)
        names.append(Path(fr["file_path"]).stem if isinstance(fr.get("file_path"), str) else f"{i:05d}")
    return Cameras.create(torch.stack(Ks), torch.stack(c2ws), ws, hs), names


def write_transforms_json(path: Path, scene: Scene) -> Path:
    """The scene's view cameras (as the run left them: ``ttr`` refines poses) as a nerfstudio
    ``transforms.json``: per frame its OpenGL camera-to-world, intrinsics, size, split and image.

    Image paths are the views' own (absolute), so the file next to the run opens with the original
    images in nerfstudio and in ``recon run --data``. Distortion, when a view has any, is written
    as OpenCV ``k1 k2 p1 p2 [k3 k4]``.
    """
    from .cameras import _GL_TO_CV
    from .io import write_json

    frames = []
    for view in scene.views:
        cam = view.camera
        K = cam.K[0].detach().cpu().double()
        c2w_gl = cam.c2w[0].detach().cpu().double() @ _GL_TO_CV.double()  # diag(1,-1,-1,1) is its own inverse
        frame: dict[str, Any] = {
            "file_path": str(view.path) if view.path is not None else view.name,
            "transform_matrix": c2w_gl.tolist(),
            "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "w": int(cam.width), "h": int(cam.height),
            "split": view.split,
            "name": view.name,
        }
        if cam.distortion is not None:
            frame.update(zip(("k1", "k2", "p1", "p2", "k3", "k4"), map(float, cam.distortion[0].tolist())))
        frames.append(frame)
    return write_json(path, {"camera_model": "OPENCV", "frames": frames})
