"""Rendering the evaluated views (or frames, or given cameras) and computing the metrics.

The renderer call is chosen by what the representation declares, never by its type:
``rep.rendered_by == "frames"`` draws video frames by index through
:meth:`FrameRenderer.render_frames`; ``"cameras"`` draws posed cameras through
:meth:`CameraRenderer.render` — a scene's views, given cameras, or, for a video, the
representation's own per-frame cameras (``rep.cameras()``, carrying the frame times).

Metric keys in ``metrics.json``: an image metric ``NAME`` is computed over the full image, the
render against the view's image on the run's background (:meth:`View.image_on`), as INRIA's
``metrics.py`` and nerfstudio do; when views have an object mask (or alpha: ``alpha > 0.5``),
it is also computed inside it under ``NAME_masked``; when views have a sky mask (driving scenes),
it is also computed over the pixels that are not sky under ``NAME_nonsky`` (the region test-time
refiners such as ``ttr`` optimise; DGGT and the TTR fork report the full image). With a fixer ``F`` both are computed on the
fixed renders too, under ``NAME+F`` and ``NAME_masked+F`` (e.g. ``psnr+difix``). ``metric_info``
says what each key is: evaluator, region, whether higher is better, unit, views counted.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

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

__all__ = ["RenderedItem", "render_items", "evaluate_run", "plugins_json", "view_mask", "view_nonsky", "MASKED_SUFFIX",
           "NONSKY_SUFFIX", "device_label", "versions_json", "compare_strip", "COMPARE_DIR"]

MASKED_SUFFIX = "_masked"
"""Appended to an image metric's name for its value inside the views' object masks."""

NONSKY_SUFFIX = "_nonsky"
"""Appended to an image metric's name for its value over the views' pixels that are not sky."""


@dataclass
class RenderedItem:
    """One rendered view or frame, with what evaluation compares it to."""

    name: str
    pred: Tensor
    """(H, W, 3) CPU float32 in [0, 1]."""
    fixed: Tensor | None
    """The fixer's output for ``pred`` (same shape), or None without a fixer."""
    target: Callable[[], Tensor | None]
    """The ground truth: a scene view's image on the run's background (:meth:`View.image_on`),
    a video frame, or None (given cameras)."""
    mask: Callable[[], Tensor | None]
    """The object mask (:func:`view_mask`) or None."""
    nonsky: Callable[[], Tensor | None] = lambda: None
    """The pixels that are not sky (:func:`view_nonsky`) or None."""


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
    nonsky: list[Callable[[], Tensor | None]] = dataclasses.field(default_factory=list)


def _none() -> None:
    return None


def view_mask(view: View) -> Tensor | None:
    """What a view's masked metrics count: its ``object_mask``, else its alpha above 0.5 (the
    loaders' ``alpha_mask`` rule), else None (bool (H, W) on the CPU)."""
    if view.has("object_mask"):
        return view.object_mask.to(torch.bool).cpu()
    if view.has("alpha"):
        return (view.alpha.float() > 0.5).cpu()
    return None


def view_nonsky(view: View) -> Tensor | None:
    """The pixels a view's non-sky metrics count: not its ``sky_mask`` (bool (H, W) on the CPU),
    or None without a sky mask."""
    return ~view.sky_mask.to(torch.bool).cpu() if view.has("sky_mask") else None


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
             names: Sequence[str] | None, chunk: int, background: Tensor | None) -> Iterator[_Batch]:
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
                         views=batch, targets=[lambda v=v: _target(v, background) for v in batch],
                         masks=[lambda v=v: view_mask(v) for v in batch], nonsky=[lambda v=v: view_nonsky(v) for v in batch])
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


def _target(view: View, background: Tensor | None) -> Tensor:
    """The view's image on ``background`` (the render's), or as loaded without one."""
    return view.image.float() if background is None else view.image_on(background)


def _nearest_references(scene: Scene, views: Sequence[View], background: Tensor | None) -> Tensor | None:
    """For each view, the closest training image (by camera centre) of the same size on
    ``background``, else None."""
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
        refs.append(_target(ref, background))
    return torch.stack(refs)


def _check_render(rgb: Tensor, n: int, size: tuple[int, int], renderer: str) -> Tensor:
    if rgb.shape != (n, size[0], size[1], 3):
        raise RuntimeError(f"renderer {renderer} returned rgb of shape {tuple(rgb.shape)}, expected {(n, *size, 3)}")
    return rgb.detach().float().clamp(0, 1).cpu()


def _render_chunk(value: int, device: torch.device | str) -> int:
    """``run.render_chunk`` resolved: the number, or (0, auto) 8 cameras per call on CUDA and 1 on
    the CPU (measured on ``object``: the same speed, and 50 MB less peak memory at 10k Gaussians)."""
    if int(value) > 0:
        return int(value)
    return 8 if torch.device(device).type == "cuda" else 1


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
    chunk: int = 0,
) -> Iterator[RenderedItem]:
    """Render ``views``, or ``cameras`` (labelled by ``names``), or (neither) every video frame,
    chunk by chunk (``chunk`` cameras or frames per renderer call; 0: ``run.render_chunk``'s auto),
    with ``background`` [3]; see the module docstring for how frames are drawn.

    The fixer, when given, sees each batch with the nearest training images as references
    (scene views only).
    """
    chunk = _render_chunk(chunk, device)
    bg = None if background is None else background.to(device)
    target_bg = None if background is None else background.detach().float().cpu()
    with torch.no_grad():
        for batch in _batches(rep, data, views, cameras, names, chunk, target_bg):
            if batch.frames is not None:
                out = renderer.render_frames(rep, batch.frames.to(device), background=bg)  # type: ignore[attr-defined]
            else:  # check_combination made sure the renderer draws what the representation needs
                assert batch.cameras is not None
                out = renderer.render(rep, batch.cameras.to(device), background=bg)  # type: ignore[attr-defined]
            n = len(batch.names)
            rgb = _check_render(out.rgb, n, batch.size, renderer.name)
            del out  # its info (projected Gaussians, tile lists of the whole chunk) is not needed while the chunk is consumed
            fixed = None
            if fixer is not None:
                refs = _nearest_references(data, batch.views, target_bg) if batch.views is not None and isinstance(data, Scene) else None
                fixed = fixer.fix(rgb.to(device), None if refs is None else refs.to(device), views=batch.views)
                fixed = fixed.detach().float().clamp(0, 1).cpu()
            for j in range(n):
                yield RenderedItem(batch.names[j], rgb[j], None if fixed is None else fixed[j], batch.targets[j], batch.masks[j],
                                   batch.nonsky[j] if batch.nonsky else _none)


COMPARE_DIR = "compare"
"""Per evaluated view: render | ground truth | error (written by :func:`evaluate_run`)."""

ERROR_GAIN = 4.0
"""The error panel shows ``min(1, ERROR_GAIN * mean |render - truth|)``: one fixed scale for every
view, so panels compare across views and runs (white = a mean channel error of 0.25 or more)."""


def compare_strip(pred: Tensor, target: Tensor) -> Tensor:
    """[H, 3W, 3] float image: ``pred`` | ``target`` | grey error, both inputs [H, W, 3] in [0, 1]."""
    pred = pred.detach().float().cpu().clamp(0, 1)
    target = target.detach().float().cpu().clamp(0, 1)
    if pred.shape != target.shape:
        raise ValueError(f"render {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in shape")
    error = ((pred - target).abs().mean(-1, keepdim=True) * ERROR_GAIN).clamp(0, 1).expand_as(pred)
    return torch.cat([pred, target, error], dim=1)


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
                target = item.target() if (save or image_evals) else None
                if save and target is not None:
                    write_png(run_dir.path / COMPARE_DIR / f"{item.name}.png", compare_strip(item.pred, target))
                if image_evals:
                    mask = item.mask()
                    nonsky = item.nonsky()
                    if target is None:
                        raise RuntimeError(f"view {item.name} has no ground-truth image")
                    target = target.float().cpu()
                    renders = [("", item.pred)] + ([(fixer_suffix, item.fixed)] if item.fixed is not None else [])
                    for ev in image_evals:
                        for suffix, pred in renders:
                            row[ev.name + suffix] = _finite(ev.compute(pred, target, None))
                            if mask is not None:
                                row[ev.name + MASKED_SUFFIX + suffix] = _finite(ev.compute(pred, target, mask))
                            if nonsky is not None:
                                row[ev.name + NONSKY_SUFFIX + suffix] = _finite(ev.compute(pred, target, nonsky))
                per_view.append(row)
                advance(1)
        ok = True
    finally:
        for w in writers.values():
            w.close(keep=ok)
    timings["render+evaluate"] = time.perf_counter() - start

    metrics: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for suffix in [""] + ([fixer_suffix] if fixer is not None else []):  # raw renders first, then fixed ones
        for ev in image_evals:
            for region, middle in (("full image", ""), ("object mask", MASKED_SUFFIX), ("not sky", NONSKY_SUFFIX)):
                key = ev.name + middle + suffix  # type: ignore[operator]
                values = [row[key] for row in per_view if key in row]
                if not values and middle:
                    continue  # no view has a mask: no masked variant
                metrics[key] = _mean(values)
                info[key] = _metric_info(ev, region, suffix, sum(v is not None for v in values))
    t0 = time.perf_counter()
    for ev in geometry_evals:
        try:
            value = ev.evaluate(EvaluationInput(rep, data, run_dir.path))
            # a dict: the evaluator's own value under its name, plus parts reported as "<name>.<part>"
            parts = dict(value) if isinstance(value, Mapping) else {ev.name: value}
            for part, v in parts.items():
                key = ev.name if part == ev.name else f"{ev.name}.{part}"
                metrics[key] = _finite(v)
                info[key] = _metric_info(ev, None, "", None)
                region = ev.part_regions.get(part)
                if region is not None:
                    info[key]["region"] = region
        except InputError as e:  # e.g. the data has no ground-truth mesh
            unavailable[ev.name] = str(e)
    if geometry_evals:
        timings["geometry-evaluate"] = time.perf_counter() - t0
    for name, reason in unavailable.items():
        log(f"evaluator {name} unavailable: {reason}")
    return {
        "metrics": metrics,
        "metric_info": info,
        "split": _split_label(data),
        "num_views": count,
        "background": None if background is None else [float(c) for c in background.detach().cpu()],
        "device": device_label(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": versions_json(),
        "per_view": per_view,
        "unavailable": unavailable,
        "timings": dict(timings),
        "plugins": plugins_json(registry, spec),
        "fixed_metric_suffix": fixer_suffix,
        "masked_metric_suffix": MASKED_SUFFIX,
        "nonsky_metric_suffix": NONSKY_SUFFIX,
    }


def _metric_info(ev: Evaluator, region: str | None, fixed_suffix: str | None, views: int | None) -> dict[str, Any]:
    """What one ``metrics`` key is (``metric_info`` in metrics.json)."""
    out: dict[str, Any] = {
        "evaluator": ev.name,
        "higher_is_better": bool(ev.higher_is_better),
        "unit": ev.unit,
    }
    if region is not None:  # an image metric
        out.update(region=region, renders=f"fixed by {fixed_suffix[1:]}" if fixed_suffix else "raw", views=views)
    return out


def _split_label(data: Scene | Video) -> str:
    """The split :attr:`Scene.eval_views` evaluates: "test", or "all" (no test split; every video frame)."""
    if isinstance(data, Scene) and data.split("test"):
        return "test"
    return "all"


def device_label(device: torch.device) -> str:
    """The device actually used: ``cpu``, ``cuda:0`` (an index even when ``cuda`` was asked for)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return str(device)


def versions_json() -> dict[str, Any]:
    """recon's, torch's, Python's and torch's CUDA (None for a CPU build) versions."""
    import platform

    from . import __version__

    return {"recon": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda}
