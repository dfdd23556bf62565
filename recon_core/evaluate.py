"""Rendering the evaluated views (or frames, or given cameras) and computing the metrics.

The renderer call is chosen by what the representation declares, never by its type:
``rep.rendered_by == "frames"`` draws video frames by index through
:meth:`FrameRenderer.render_frames`; ``"cameras"`` draws posed cameras through
:meth:`CameraRenderer.render` — a scene's views, given cameras, or, for a video, the
representation's own per-frame cameras (``rep.cameras()``, carrying the frame times).

Metric keys in ``metrics.json``: an image metric ``NAME`` is computed on the raw renders; with a
fixer ``F`` it is also computed on the fixed renders under ``NAME+F`` (e.g. ``psnr+difix``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from .cameras import Cameras
from .components import (
    EvaluationInput,
    Evaluator,
    Fixer,
    GeometryEvaluator,
    ImageEvaluator,
    Renderer,
    Representation,
)
from .errors import InputError
from .io import Mp4Writer, write_png
from .progress import progress_bar
from .registry import Registry
from .rundir import RunDir
from .scene import Scene, Video, View
from .spec import Choice, RunSpec

__all__ = ["RenderedItem", "render_items", "evaluate_run", "plugins_json"]


@dataclass
class RenderedItem:
    """One rendered view or frame, with what evaluation compares it to."""

    name: str
    pred: Tensor
    """(H, W, 3) CPU float32 in [0, 1]."""
    fixed: Tensor | None
    """The fixer's output for ``pred`` (same shape), or None without a fixer."""
    target: Callable[[], Tensor | None]
    mask: Callable[[], Tensor | None]


@dataclass
class _Batch:
    """Up to ``chunk`` items rendered by one renderer call."""

    names: list[str]
    size: tuple[int, int]
    cameras: Cameras | None = None
    frames: Tensor | None = None
    views: list[View] | None = None
    targets: list[Callable[[], Tensor | None]] = dataclasses.field(default_factory=list)
    masks: list[Callable[[], Tensor | None]] = dataclasses.field(default_factory=list)


def _none() -> None:
    return None


def _scene_chunks(views: Sequence[View], chunk: int) -> Iterator[list[View]]:
    """Consecutive views of equal size, at most ``chunk`` at a time (one renderer call each)."""
    batch: list[View] = []
    for v in views:
        if batch and (len(batch) >= chunk or (v.height, v.width) != (batch[0].height, batch[0].width)):
            yield batch
            batch = []
        batch.append(v)
    if batch:
        yield batch


def _frame_cameras(rep: Representation, video: Video) -> Cameras:
    """The representation's camera per video frame, each at its frame's time."""
    cams = rep.cameras()
    if cams is None or len(cams) != video.num_frames:
        held = "none" if cams is None else f"{len(cams)}"
        raise InputError(
            f"representation {rep.name} is rendered from cameras, but holds {held} for the {video.num_frames} "
            "frames of the video (it must hold one camera per frame)"
        )
    if cams.times is None:
        cams = dataclasses.replace(cams, times=video.timestamps.to(cams.K.device, torch.float32))
    return cams


def _batches(rep: Representation, data: Scene | Video, views: Sequence[View] | None, cameras: Cameras | None,
             names: Sequence[str] | None, chunk: int) -> Iterator[_Batch]:
    if rep.rendered_by == "frames":
        if views is not None or cameras is not None or not isinstance(data, Video):
            raise InputError(f"representation {rep.name} renders the frames of the video it encodes; it takes no cameras")
        for start in range(0, data.num_frames, chunk):
            idx = list(range(start, min(start + chunk, data.num_frames)))
            yield _Batch([f"frame-{i:05d}" for i in idx], (data.height, data.width), frames=torch.tensor(idx, dtype=torch.int64),
                         targets=[lambda i=i: data.frame(i) for i in idx], masks=[_none] * len(idx))
        return
    if rep.rendered_by != "cameras":
        raise InputError(f"representation {rep.name} declares rendered_by={rep.rendered_by!r} (expected cameras or frames)")
    if views is not None:
        for batch in _scene_chunks(views, chunk):
            yield _Batch([v.name for v in batch], (batch[0].height, batch[0].width), cameras=Cameras.cat([v.camera for v in batch]),
                         views=batch, targets=[lambda v=v: v.image for v in batch],
                         masks=[lambda v=v: v.object_mask if v.has("object_mask") else None for v in batch])
        return
    labels: list[str] | None = list(names) if names is not None else None
    targets: Callable[[int], Callable[[], Tensor | None]] = lambda i: _none  # noqa: E731
    if cameras is None:  # every frame of a video, from the representation's per-frame cameras
        if not isinstance(data, Video):
            raise InputError("nothing to render: give views or cameras")
        cameras = _frame_cameras(rep, data)
        labels = [f"frame-{i:05d}" for i in range(data.num_frames)]
        targets = lambda i: (lambda: data.frame(i))  # noqa: E731
    labels = labels or [f"{i:05d}" for i in range(len(cameras))]
    for start in range(0, len(cameras), chunk):
        idx = list(range(start, min(start + chunk, len(cameras))))
        cams = cameras[idx]
        yield _Batch([labels[i] for i in idx], cams.size(0), cameras=cams, targets=[targets(i) for i in idx],
                     masks=[_none] * len(idx))


def _nearest_references(scene: Scene, views: Sequence[View]) -> Tensor | None:
    """For each view, the closest training image (by camera centre) of the same size, else None."""
    train = [v for v in scene.train_views if v not in views] or scene.train_views
    if not train:
        return None
    centres = torch.stack([v.camera.centers[0] for v in train])
    refs = []
    for v in views:
        order = torch.argsort((centres - v.camera.centers[0]).norm(dim=-1))
        ref = next((train[int(i)] for i in order if (train[int(i)].height, train[int(i)].width) == (v.height, v.width)), None)
        if ref is None:
            return None
        refs.append(ref.image)
    return torch.stack(refs)


def _check_render(rgb: Tensor, n: int, size: tuple[int, int], renderer: str) -> Tensor:
    if rgb.shape != (n, size[0], size[1], 3):
        raise RuntimeError(f"renderer {renderer} returned rgb of shape {tuple(rgb.shape)}, expected {(n, *size, 3)}")
    return rgb.detach().float().clamp(0, 1).cpu()


def render_items(
    rep: Representation,
    data: Scene | Video,
    renderer: Renderer,
    device: torch.device,
    *,
    background: Tensor | None = None,
    views: Sequence[View] | None = None,
    cameras: Cameras | None = None,
    names: Sequence[str] | None = None,
    fixer: Fixer | None = None,
    chunk: int = 8,
) -> Iterator[RenderedItem]:
    """Render ``views``, or ``cameras`` (labelled by ``names``), or (neither) every video frame,
    chunk by chunk, with ``background`` [3]; see the module docstring for how frames are drawn.

    The fixer, when given, sees each batch with the nearest training images as references
    (scene views only).
    """
    chunk = max(1, chunk)
    bg = None if background is None else background.to(device)
    with torch.no_grad():
        for batch in _batches(rep, data, views, cameras, names, chunk):
            if batch.frames is not None:
                out = renderer.render_frames(rep, batch.frames.to(device), background=bg)  # type: ignore[attr-defined]
            else:  # check_combination made sure the renderer draws what the representation needs
                assert batch.cameras is not None
                out = renderer.render(rep, batch.cameras.to(device), background=bg)  # type: ignore[attr-defined]
            n = len(batch.names)
            rgb = _check_render(out.rgb, n, batch.size, renderer.name)
            fixed = None
            if fixer is not None:
                refs = _nearest_references(data, batch.views) if batch.views is not None and isinstance(data, Scene) else None
                fixed = fixer.fix(rgb.to(device), None if refs is None else refs.to(device), views=batch.views)
                fixed = fixed.detach().float().clamp(0, 1).cpu()
            for j in range(n):
                yield RenderedItem(batch.names[j], rgb[j], None if fixed is None else fixed[j], batch.targets[j], batch.masks[j])


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else None


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def plugins_json(registry: Registry, spec: RunSpec) -> dict[str, Any]:
    """Distribution and version of every component of the run (``metrics.json`` "plugins")."""
    def one(c: Choice) -> dict[str, str]:
        row = registry.info(c.name, c.kind)
        return {"name": c.name, "distribution": row.plugin.distribution, "version": row.plugin.version}

    return {
        "loader": one(spec.loader),
        "representation": one(spec.representation),
        "renderer": one(spec.renderer),
        "encoder": one(spec.encoder) if spec.encoder else None,
        "refiners": [one(c) for c in spec.refiners],
        "fixer": one(spec.fixer) if spec.fixer else None,
        "evaluators": [one(c) for c in spec.evaluators],
        "used": [{"kind": c.kind, **one(c)} for c in spec.used],
    }


def evaluate_run(
    registry: Registry,
    spec: RunSpec,
    run_dir: RunDir,
    rep: Representation,
    data: Scene | Video,
    renderer: Renderer,
    fixer: Fixer | None,
    device: torch.device,
    timings: dict[str, float],
    log: Callable[[str], None] = lambda m: None,
    background: Tensor | None = None,
) -> dict[str, Any]:
    """Render the evaluated views, write renders, compute every evaluator; the metrics document.

    :meth:`recon_core.pipeline.Pipeline.evaluate` calls it with the run's components.
    """
    evaluators = [registry.get(c.kind, c.name)(c.config) for c in spec.evaluators]
    unavailable: dict[str, str] = {}
    image_evals: list[ImageEvaluator] = []
    geometry_evals: list[GeometryEvaluator] = []
    for ev in evaluators:
        assert isinstance(ev, Evaluator)
        reason = ev.unavailable_reason()
        if reason is not None:
            unavailable[ev.name] = reason
        elif isinstance(ev, ImageEvaluator):
            image_evals.append(ev)
        elif isinstance(ev, GeometryEvaluator):
            geometry_evals.append(ev)
    fixer_suffix = f"+{spec.fixer.name}" if spec.fixer else None

    views = data.eval_views if isinstance(data, Scene) else None
    count = len(views) if views is not None else data.num_frames  # type: ignore[union-attr]
    save = spec.options.save_renders
    fps = spec.options.video_fps or (data.fps if isinstance(data, Video) else 10.0)
    writers: dict[str, Mp4Writer] = {}
    if save and count >= 2:
        writers["raw"] = Mp4Writer(run_dir.renders_dir / "renders.mp4", fps)
        if fixer is not None:
            writers["fixed"] = Mp4Writer(run_dir.renders_dir / "renders_fixed.mp4", fps)

    per_view: list[dict[str, Any]] = []
    start = time.perf_counter()
    ok = False
    try:
        with progress_bar("render + evaluate", total=count) as advance:
            items = render_items(rep, data, renderer, device, background=background, views=views, fixer=fixer,
                                 chunk=spec.options.render_chunk)
            for item in items:
                row: dict[str, Any] = {"name": item.name}
                if save:
                    write_png(run_dir.renders_dir / f"{item.name}.png", item.pred)
                    if "raw" in writers:
                        writers["raw"].add(item.pred)
                    if item.fixed is not None:
                        write_png(run_dir.renders_dir / "fixed" / f"{item.name}.png", item.fixed)
                        if "fixed" in writers:
                            writers["fixed"].add(item.fixed)
                if image_evals:
                    target = item.target()
                    mask = item.mask()
                    if target is None:
                        raise RuntimeError(f"view {item.name} has no ground-truth image")
                    target = target.float().cpu()
                    for ev in image_evals:
                        row[ev.name] = _finite(ev.compute(item.pred, target, mask))
                        if item.fixed is not None:
                            row[ev.name + fixer_suffix] = _finite(ev.compute(item.fixed, target, mask))  # type: ignore[operator]
                per_view.append(row)
                advance(1)
        ok = True
    finally:
        for w in writers.values():
            w.close(keep=ok)
    timings["render+evaluate"] = time.perf_counter() - start

    metrics: dict[str, Any] = {}
    keys = [ev.name for ev in image_evals]
    keys += [ev.name + fixer_suffix for ev in image_evals] if fixer is not None else []
    for key in keys:
        metrics[key] = _mean([row[key] for row in per_view if key in row])
    t0 = time.perf_counter()
    for ev in geometry_evals:
        try:
            metrics[ev.name] = _finite(ev.evaluate(EvaluationInput(rep, data, run_dir.path)))
        except InputError as e:  # e.g. the data has no ground-truth mesh
            unavailable[ev.name] = str(e)
    if geometry_evals:
        timings["geometry-evaluate"] = time.perf_counter() - t0
    for name, reason in unavailable.items():
        log(f"evaluator {name} unavailable: {reason}")
    return {
        "metrics": metrics,
        "per_view": per_view,
        "unavailable": unavailable,
        "timings": dict(timings),
        "plugins": plugins_json(registry, spec),
        "fixed_metric_suffix": fixer_suffix,
    }
