"""``recon process-data``: turn raw captures into datasets recon loads.

``images DIR --out DATA``
    structure from motion on unposed photos (below).
``video CLIP.mp4 --out DATA``
    frames extracted with PyAV at a chosen rate, the sharpest frame of each window kept (variance
    of the Laplacian), then the same structure from motion; ``DATA/frames.json`` records each
    frame's time and sharpness and the likely cuts of the clip.
``triangulate DATA``
    a point cloud for an already posed nerfstudio dataset (``transforms.json``): features,
    matching and triangulation with the given poses (:func:`recon_core.points.triangulated_points`),
    written as ``DATA/sparse_pc.ply`` and referenced as ``ply_file_path`` in the transforms file.

Structure from motion:

Runs pycolmap's SIFT feature extraction, matching (exhaustive for small sets, sequential for
videos / long sequences) and incremental mapping, then writes a folder the ``colmap`` loader
reads::

    DATA/images/       copies of the input images (names kept)
    DATA/database.db   COLMAP features and matches (kept for re-running the mapper)
    DATA/sparse/0/     the largest reconstructed model, COLMAP binary format

All work is on the CPU here (pycolmap picks CUDA SIFT itself when built with it). The stages
report progress through a callback; the CLI draws it with rich.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from recon_core import InputError, PointCloud, geometry
from recon_core.io import atomic_path, write_json

from . import imageio

__all__ = [
    "SfmOptions",
    "SfmResult",
    "run_sfm",
    "register_cli",
    "umeyama",
    "compare_poses",
    "PoseComparison",
    "laplacian_variance",
    "ExtractedFrames",
    "extract_frames",
    "VideoResult",
    "video_to_dataset",
    "write_points_ply",
    "triangulate_dataset",
]

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): stage in "decode", "copy", "extract", "match", "map"."""


@dataclass(frozen=True)
class SfmResult:
    """What the reconstruction produced (``registered`` images of ``num_images``)."""

    out_dir: Path
    model_dir: Path
    num_images: int
    registered: int
    num_points: int
    seconds: float
    mean_reproj_error: float = math.nan
    """pixels, mean over the model's observations"""
    registered_names: tuple[str, ...] = field(default=())


def _noop(stage: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class SfmOptions:
    """Settings of :func:`run_sfm`.

    matcher: "exhaustive" (all pairs; best below ~300 images) or "sequential" (neighbours in
    name order, for video frames; no loop closure, which would need a vocabulary download).
    camera_model: COLMAP model to estimate (one the ``colmap`` loader reads).
    single_camera: all photos share one camera (same device and zoom).
    max_reproj_error: pixels; observations above it are dropped and absolute-pose RANSAC uses
    twice it. None = COLMAP's defaults (4 px, 12 px) for photos of 1000 px or more, and 2 px
    (4 px) for smaller ones, where the defaults let wrong registrations through (on the
    200x200 ``object`` renders: 40 → 45-48 of 48 cameras within 5°, see docs/benchmarks.md).
    """

    matcher: Literal["exhaustive", "sequential"] = "exhaustive"
    camera_model: str = "SIMPLE_RADIAL"
    single_camera: bool = True
    max_features: int = 8192
    max_image_size: int = 3200
    max_reproj_error: float | None = None
    num_threads: int = -1
    seed: int = 0


def run_sfm(
    images: Path,
    out: Path,
    options: SfmOptions = SfmOptions(),
    *,
    image_names: list[str] | None = None,
    progress: Progress = _noop,
    verbose: bool = False,
) -> SfmResult:
    """Reconstruct cameras and sparse points from the photos in ``images`` into ``out``.

    Args:
        images: folder of photos (png/jpg/...); every image is validated before any work.
        out: output dataset folder (created; an existing ``sparse/0`` or database is replaced).
        options: see :class:`SfmOptions`.
        image_names: only these files of ``images`` (default: all).
        progress: ``progress(stage, done, total)`` after each step.
        verbose: let COLMAP log every step (default: warnings and errors only).
    Returns:
        :class:`SfmResult`; raises InputError when the input is bad or no model could be built.
    """
    import pycolmap

    from .colmap import SUPPORTED_MODELS

    t0 = time.perf_counter()
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise InputError("image folder does not exist", images)
    if options.camera_model not in SUPPORTED_MODELS:
        raise InputError(f"camera model must be one of {', '.join(SUPPORTED_MODELS)}, got {options.camera_model}")
    if options.matcher not in ("exhaustive", "sequential"):
        raise InputError(f"matcher must be exhaustive or sequential, got {options.matcher}")
    if options.max_reproj_error is not None and not options.max_reproj_error > 0:
        raise InputError(f"max_reproj_error must be > 0 pixels, got {options.max_reproj_error}")
    files = imageio.list_images(images)
    if image_names is not None:
        wanted = set(image_names)
        files = [f for f in files if f.name in wanted]
        missing = wanted - {f.name for f in files}
        if missing:
            raise InputError(f"images not found: {', '.join(sorted(missing)[:5])}", images)
    if not files:
        raise InputError("no images (png, jpg, ...) in this folder", images)
    if len(files) < 2:
        raise InputError("structure from motion needs at least 2 images", images)
    largest = max(max(imageio.probe_image(f).size) for f in files)

    out.mkdir(parents=True, exist_ok=True)
    image_dir = out / "images"
    image_dir.mkdir(exist_ok=True)
    for i, f in enumerate(files):
        if f.resolve() != (image_dir / f.name).resolve():
            shutil.copy2(f, image_dir / f.name)
        progress("copy", i + 1, len(files))
    db = out / "database.db"
    if db.exists():
        db.unlink()
    previous_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 0 if verbose else 1
    try:
        return _reconstruct(pycolmap, options, [f.name for f in files], image_dir, db, largest, progress, t0)
    finally:
        pycolmap.logging.minloglevel = previous_level


def _reconstruct(pycolmap, o: SfmOptions, names: list[str], image_dir: Path, db: Path, largest: int,  # noqa: ANN001
                 progress: Progress, t0: float) -> SfmResult:
    """The three pycolmap stages of :func:`run_sfm` (inputs already validated and copied)."""
    out, n = image_dir.parent, len(names)
    pycolmap.set_random_seed(o.seed)
    progress("extract", 0, n)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = o.num_threads
    extraction.max_image_size = o.max_image_size
    extraction.sift.max_num_features = o.max_features
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = o.camera_model
    pycolmap.extract_features(
        db,
        image_dir,
        image_names=names,
        camera_mode=pycolmap.CameraMode.SINGLE if o.single_camera else pycolmap.CameraMode.AUTO,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.auto,
    )
    progress("extract", n, n)

    progress("match", 0, 1)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = o.num_threads
    if o.matcher == "exhaustive":
        pycolmap.match_exhaustive(db, matching_options=matching)
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.loop_detection = False  # needs a vocabulary tree download; recon never downloads
        pycolmap.match_sequential(db, matching_options=matching, pairing_options=pairing)
    progress("match", 1, 1)

    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = o.num_threads
    mapping.random_seed = o.seed
    mapping.multiple_models = False
    reproj = o.max_reproj_error if o.max_reproj_error is not None else (2.0 if largest < 1000 else None)
    if reproj is not None:
        mapping.mapper.filter_max_reproj_error = reproj
        mapping.mapper.abs_pose_max_error = 2.0 * reproj
    registered = [0]

    def next_image() -> None:
        registered[0] += 1
        progress("map", min(registered[0] + 1, n), n)

    progress("map", 0, n)
    with tempfile.TemporaryDirectory(dir=out, prefix=".sfm-") as tmp:
        models = pycolmap.incremental_mapping(db, image_dir, tmp, options=mapping, next_image_callback=next_image)
        if not models:
            raise InputError(
                "structure from motion found no model: too few matching features between the photos "
                "(they need overlapping views of a textured, static scene)",
                image_dir,
            )
        best = max(models.values(), key=lambda r: r.num_reg_images())
        model_dir = out / "sparse" / "0"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        model_dir.mkdir(parents=True)
        best.write(model_dir)
    progress("map", best.num_reg_images(), n)
    names_registered = tuple(sorted(best.images[i].name for i in best.reg_image_ids()))
    return SfmResult(out, model_dir, n, best.num_reg_images(), best.num_points3D(), time.perf_counter() - t0,
                     float(best.compute_mean_reprojection_error()), names_registered)


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising sum |dst_i - (s R src_i + t)|^2: :func:`recon_core.geometry.umeyama`
    on float64 NumPy arrays (src, dst: (N, 3) corresponding points, N >= 3 not collinear)."""
    R, t, s = geometry.umeyama(torch.from_numpy(np.asarray(src, dtype=np.float64)), torch.from_numpy(np.asarray(dst, dtype=np.float64)))
    return float(s), R.numpy(), t.numpy()


@dataclass(frozen=True)
class PoseComparison:
    """Estimated vs true poses after a similarity alignment of the camera centres.

    rotation_deg: per-camera angle of R_trueᵀ·(R_align·R_est); center_error: per-camera
    distance of the aligned centre to the true one, divided by the true centres' RMS radius;
    inliers: cameras the (robust) alignment was fitted on.
    """

    scale: float
    rotation_deg: np.ndarray
    center_error: np.ndarray
    inliers: np.ndarray


def compare_poses(est_c2w: np.ndarray, true_c2w: np.ndarray, *, robust: bool = True, inlier_tol: float = 0.05,
                  trials: int = 2000, seed: int = 0) -> PoseComparison:
    """Align ``est_c2w`` [N, 4, 4] to ``true_c2w`` [N, 4, 4] (OpenCV c2w) and measure errors.

    The similarity comes from Umeyama on the camera centres. With ``robust`` it is fitted by
    RANSAC over 3-camera samples (inliers: aligned centre within ``inlier_tol`` × RMS radius),
    then refitted on the inliers, so a few mis-registered cameras cannot tilt the alignment and
    inflate every other camera's error; errors are still reported for *all* cameras.
    """
    est_c2w, true_c2w = np.asarray(est_c2w, dtype=np.float64), np.asarray(true_c2w, dtype=np.float64)
    n = len(est_c2w)
    if n < 3 or true_c2w.shape != est_c2w.shape:
        raise ValueError(f"need >= 3 matching cameras, got {est_c2w.shape} vs {true_c2w.shape}")
    src, dst = est_c2w[:, :3, 3], true_c2w[:, :3, 3]
    rms = max(float(np.sqrt(((dst - dst.mean(0)) ** 2).sum(-1).mean())), 1e-12)

    def errors(sim: tuple[float, np.ndarray, np.ndarray]) -> np.ndarray:
        s, R, t = sim
        return np.linalg.norm((s * (R @ src.T)).T + t - dst, axis=-1) / rms

    inliers = np.ones(n, dtype=bool)
    if robust and n > 3:
        rng = np.random.default_rng(seed)
        best = inliers & False
        for _ in range(trials):
            pick = rng.choice(n, 3, replace=False)
            try:
                mask = errors(umeyama(src[pick], dst[pick])) < inlier_tol
            except (np.linalg.LinAlgError, torch.linalg.LinAlgError, ZeroDivisionError, FloatingPointError):
                continue
            if mask.sum() > best.sum():
                best = mask
        if best.sum() >= 3:
            inliers = best
    sim = umeyama(src[inliers], dst[inliers])
    s, R, _ = sim
    angle = geometry.rotation_angle(torch.from_numpy(true_c2w[:, :3, :3]), torch.from_numpy(R[None] @ est_c2w[:, :3, :3]))
    return PoseComparison(s, np.degrees(angle.numpy()), errors(sim), inliers)

# ---------------------------------------------------------------------------------------------
# video → frames → SfM


def laplacian_variance(gray: np.ndarray) -> float:
    """Sharpness of a grey image (H, W) in [0, 1]: the variance of its 4-neighbour Laplacian
    (Pech-Pacheco et al. 2000); blur removes high frequencies and lowers it."""
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 2 or min(g.shape) < 3:
        raise ValueError(f"need a 2D image of at least 3x3 pixels, got shape {g.shape}")
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def _gray(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0


def _thumbnail(gray: np.ndarray, size: int = 32) -> np.ndarray:
    """Block-mean thumbnail (size x size) for comparing consecutive frames."""
    h, w = gray.shape
    rows = np.linspace(0, h, size + 1).astype(int)
    cols = np.linspace(0, w, size + 1).astype(int)
    return np.add.reduceat(np.add.reduceat(gray, rows[:-1], axis=0), cols[:-1], axis=1) / np.outer(np.diff(rows), np.diff(cols))


@dataclass(frozen=True)
class ExtractedFrames:
    """What :func:`extract_frames` wrote: ``names`` (in order), their ``times`` (seconds from the
    clip's first frame) and ``sharpness`` (Laplacian variance), the clip's ``decoded`` frame count,
    its ``fps``, and ``cuts``: times where consecutive frames differ like a shot change."""

    names: list[str]
    times: list[float]
    sharpness: list[float]
    decoded: int
    fps: float
    cuts: list[float]


def extract_frames(video: Path, out_dir: Path, *, fps: float = 3.0, max_size: int = 640, start: float = 0.0,
                   end: float | None = None, cut_threshold: float = 0.12, progress: Progress = _noop) -> ExtractedFrames:
    """Decode ``video`` once (PyAV) and keep the sharpest frame of each 1/``fps``-second window.

    Frames are resized so the longer side is at most ``max_size`` (antialiased), scored by
    :func:`laplacian_variance` at that size, and written as ``frame_NNNNN.png`` (NNNNN: the
    frame's index in the clip) to ``out_dir``. A cut is where the mean absolute difference of
    32x32 grey thumbnails of consecutive frames exceeds ``cut_threshold`` and 5x the clip's median
    difference (reported within ``start``..``end`` only). Only frames with ``start <= time <= end``
    (seconds) are kept.
    """
    import av
    from PIL import Image

    video, out_dir = Path(video), Path(out_dir)
    if not video.is_file():
        raise InputError("video file does not exist", video)
    if not fps > 0:
        raise InputError(f"--fps must be > 0, got {fps}")
    if max_size < 16:
        raise InputError(f"--max-size must be at least 16 pixels, got {max_size}")
    if end is not None and end <= start:
        raise InputError(f"--end ({end} s) must be after --start ({start} s)")
    try:
        container = av.open(str(video))
    except Exception as e:  # noqa: BLE001 - av raises many error types
        raise InputError(f"the video decoder cannot open this file ({type(e).__name__}: {e})", video) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    times: list[float] = []
    sharp: list[float] = []
    diffs: list[tuple[float, float]] = []
    best: tuple[float, int, float, np.ndarray] | None = None  # (sharpness, index, time, rgb) of the current window
    window = None
    decoded = 0

    def flush() -> None:
        if best is None:
            return
        score, index, t, rgb = best
        name = f"frame_{index:05d}.png"
        with atomic_path(out_dir / name) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
        names.append(name)
        times.append(round(t, 4))
        sharp.append(score)

    with container:
        if not container.streams.video:
            raise InputError("file has no video stream", video)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        total = int(stream.frames or 0) or int(float(stream.duration * stream.time_base) * rate) if stream.duration else 0
        t0 = None
        previous = None
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded += 1
                progress("decode", decoded, max(total, decoded))
                t_abs = float(frame.time) if frame.time is not None else index / rate
                t0 = t_abs if t0 is None else t0
                t = t_abs - t0
                rgb = frame.to_ndarray(format="rgb24")
                h, w = rgb.shape[:2]
                scale = min(1.0, max_size / max(h, w))
                if scale < 1.0:
                    rgb = np.asarray(Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS))
                gray = _gray(rgb)
                thumb = _thumbnail(gray)
                if previous is not None:
                    diffs.append((t, float(np.abs(thumb - previous).mean())))
                previous = thumb
                if t < start or (end is not None and t > end):
                    continue
                w_index = int(math.floor((t - start) * fps + 1e-9))
                if w_index != window:
                    flush()
                    best, window = None, w_index
                score = laplacian_variance(gray)
                if best is None or score > best[0]:
                    best = (score, index, t, rgb)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001
            raise InputError(f"decoding failed after {decoded} frames ({type(e).__name__}: {e})", video) from None
        flush()
    if decoded == 0:
        raise InputError("video has no frames", video)
    median = float(np.median([d for _, d in diffs])) if diffs else 0.0
    cuts = [round(t, 3) for t, d in diffs if d > cut_threshold and d > 5 * median and start <= t and (end is None or t <= end)]
    return ExtractedFrames(names, times, sharp, decoded, rate, cuts)


@dataclass(frozen=True)
class VideoResult:
    """:func:`video_to_dataset`'s frames and SfM result (None when no model could be built)."""

    frames: ExtractedFrames
    sfm: SfmResult

    def registered_spans(self) -> list[tuple[float, float]]:
        """Time spans (seconds) of consecutive kept frames that were registered."""
        done = set(self.sfm.registered_names)
        spans: list[tuple[float, float]] = []
        run: list[float] = []
        for name, t in zip(self.frames.names, self.frames.times):
            if name in done:
                run.append(t)
            elif run:
                spans.append((run[0], run[-1]))
                run = []
        if run:
            spans.append((run[0], run[-1]))
        return spans


def _describe_cuts(cuts: list[float]) -> str:
    if not cuts:
        return "no cuts detected"
    shown = ", ".join(f"{t:.2f} s" for t in cuts[:8]) + (" …" if len(cuts) > 8 else "")
    return f"{len(cuts)} likely cut(s) at {shown}"


def video_to_dataset(video: Path, out: Path, *, fps: float = 3.0, max_size: int = 640, start: float = 0.0,
                     end: float | None = None, options: SfmOptions = SfmOptions(), matcher: str = "auto",
                     progress: Progress = _noop, verbose: bool = False) -> VideoResult:
    """Frames of ``video`` (:func:`extract_frames`) + :func:`run_sfm` into the new folder ``out``.

    Everything is built in a hidden sibling folder and renamed to ``out`` at the end, so ``out``
    is either a complete dataset or absent. ``out`` must not exist (or be an empty folder).
    ``matcher`` "auto" matches exhaustively up to 80 frames, else sequentially (it overrides
    ``options.matcher``). When no model can be built the InputError says so with the likely cuts
    of the clip.
    """
    video, out = Path(video), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("output folder already exists and is not empty; choose another --out or remove it", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        frames = extract_frames(video, work / "images", fps=fps, max_size=max_size, start=start, end=end, progress=progress)
        if len(frames.names) < 2:
            raise InputError(f"only {len(frames.names)} frame(s) in the chosen time range; structure from motion needs at "
                             "least 2 (raise --fps or widen --start/--end)", video)
        if matcher == "auto":
            matcher = "exhaustive" if len(frames.names) <= 80 else "sequential"
        options = dataclasses.replace(options, matcher=matcher)
        try:
            sfm = run_sfm(work / "images", work, options, progress=progress, verbose=verbose)
        except InputError as e:
            raise InputError(f"{e.problem} — {len(frames.names)} frames kept of {frames.decoded} decoded, "
                             f"{_describe_cuts(frames.cuts)}; a clip needs one continuous shot with camera motion "
                             "(parallax): try a part of it with --start/--end", video) from None
        write_json(work / "frames.json", {
            "source": str(video.resolve()), "fps": fps, "video_fps": frames.fps, "max_size": max_size, "start": start,
            "end": end, "decoded": frames.decoded, "cuts": frames.cuts,
            "frames": [{"file_path": f"images/{n}", "time": t, "sharpness": round(sc, 6), "registered": n in sfm.registered_names}
                       for n, t, sc in zip(frames.names, frames.times, frames.sharpness)],
        })
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    model_dir = out / sfm.model_dir.relative_to(work)
    return VideoResult(frames, SfmResult(out, model_dir, sfm.num_images, sfm.registered, sfm.num_points, sfm.seconds,
                                         sfm.mean_reproj_error, sfm.registered_names))


# ---------------------------------------------------------------------------------------------
# a point cloud for a posed dataset


def write_points_ply(path: Path, pc: PointCloud) -> Path:
    """Atomically write ``pc`` as a binary PLY: float ``x y z`` and uchar ``red green blue``."""
    from plyfile import PlyData, PlyElement

    pts = pc.points.detach().double().cpu().numpy()
    cols = pc.colors.detach().cpu().numpy() if pc.colors is not None else np.full((len(pts), 3), 0.5)
    data = np.empty(len(pts), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, k in enumerate("xyz"):
        data[k] = pts[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        data[k] = np.clip(np.round(cols[:, i] * 255), 0, 255)
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp))
    return Path(path)


@dataclass(frozen=True)
class TriangulateResult:
    ply: Path
    transforms: Path
    num_points: int
    num_views: int
    seconds: float


def triangulate_dataset(data: Path, *, ply_name: str = "sparse_pc.ply", max_points: int = 200_000, seed: int = 0,
                        overwrite: bool = False) -> TriangulateResult:
    """Add a triangulated point cloud to the posed nerfstudio dataset ``data``.

    ``data`` is a folder with ``transforms.json`` or a ``transforms*.json`` file. The training
    views (all views when there is no split) are triangulated with their given cameras
    (:func:`recon_core.points.triangulated_points`); the points, in the frame of the file's poses,
    go to ``ply_name`` beside the transforms file, which then gets ``"ply_file_path"``. Both files
    are replaced atomically, the PLY first. A transforms file that already names a point cloud is
    refused unless ``overwrite``.
    """
    import torch

    from recon_core.points import triangulated_points

    from .common import read_json
    from .nerfstudio import NerfstudioLoader

    t0 = time.perf_counter()
    data = Path(data)
    file = data / "transforms.json" if data.is_dir() else data
    if not file.is_file():
        raise InputError("no transforms.json here: process-data triangulate needs a posed nerfstudio dataset "
                         "(a folder with transforms.json, or the transforms file itself)", file)
    meta = read_json(file)
    if not isinstance(meta, dict):
        raise InputError("top level must be a JSON object", file)
    if meta.get("ply_file_path") and not overwrite:
        raise InputError(f"already has ply_file_path {meta['ply_file_path']!r}; pass --overwrite to replace it", file)
    if Path(ply_name).name != ply_name or not ply_name.endswith(".ply"):
        raise InputError(f"--ply-name must be a plain file name ending in .ply, got {ply_name!r}")
    probe = {k: v for k, v in meta.items() if k != "ply_file_path"}
    # load through the loader (same validation, same cameras) without the point cloud being replaced:
    # a hidden copy beside the file, so relative paths resolve the same
    fd, probe_name = tempfile.mkstemp(prefix=".triangulate-", suffix=".json", dir=file.parent)
    os.close(fd)
    try:
        write_json(probe_name, probe)
        scene = NerfstudioLoader().load(Path(probe_name))
    finally:
        Path(probe_name).unlink(missing_ok=True)
    views = scene.train_views or scene.views
    pc = triangulated_points(views, max_points, torch.Generator().manual_seed(seed))
    ply = write_points_ply(file.parent / ply_name, pc)
    write_json(file, {**meta, "ply_file_path": ply_name})
    return TriangulateResult(ply, file, len(pc), len(views), time.perf_counter() - t0)


STAGE_LABELS = {"decode": "decoding video (sharpest frame per window)", "copy": "copying images", "extract": "extracting SIFT features", "match": "matching features", "map": "incremental mapping (registered images)"}


def register_cli(cli) -> None:  # noqa: ANN001 - a click.Group
    """Add ``recon process-data images|video|triangulate`` to the ``recon`` click group."""
    import click

    group = cli.commands.get("process-data") if hasattr(cli, "commands") else None
    if group is None:

        @cli.group("process-data")
        def process_data() -> None:
            """Turn raw captures (photos, videos) into datasets recon can load."""

        group = process_data

    @group.command("images")
    @click.argument("images", type=click.Path(path_type=Path))
    @click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="output dataset folder")
    @click.option("--matcher", type=click.Choice(["exhaustive", "sequential"]), default="exhaustive", show_default=True,
                  help="exhaustive for small unordered sets, sequential for video frames")
    @click.option("--camera-model", default="SIMPLE_RADIAL", show_default=True, type=click.Choice(["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"]))
    @click.option("--per-image-camera", is_flag=True, help="estimate intrinsics per photo (mixed devices or zoom)")
    @click.option("--max-features", default=8192, show_default=True, type=int)
    @click.option("--max-reproj-error", default=None, type=float,
                  help="pixels (default: 2 for images under 1000 px, else COLMAP's 4)")
    @click.option("--seed", default=0, show_default=True, type=int)
    @click.option("--verbose", is_flag=True, help="show COLMAP's own log")
    def images_cmd(images: Path, out: Path, matcher: str, camera_model: str, per_image_camera: bool, max_features: int,
                   max_reproj_error: float | None, seed: int, verbose: bool) -> None:
        """Estimate camera poses of the photos in IMAGES with COLMAP (pycolmap); write OUT.

        The result loads with ``recon run --data OUT`` (the colmap loader).
        """
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, SpinnerColumn, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        with RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(STAGE_LABELS[stage], total=total)
                bar.update(tasks[stage], completed=done, total=total)

            options = SfmOptions(matcher=matcher, camera_model=camera_model, single_camera=not per_image_camera,  # type: ignore[arg-type]
                                 max_features=max_features, max_reproj_error=max_reproj_error, seed=seed)
            result = run_sfm(images, out, options, progress=progress, verbose=verbose)
        console.print(
            f"registered [bold]{result.registered}/{result.num_images}[/] images, {result.num_points} points, "
            f"mean reprojection error {result.mean_reproj_error:.2f} px in {result.seconds:.0f} s → {result.model_dir}\n"
            f"load it with: recon run --data {result.out_dir}"
        )

    def rich_progress(console):  # noqa: ANN001, ANN202
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, SpinnerColumn, TextColumn, TimeElapsedColumn

        return RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, disable=not console.is_terminal)

    @group.command("video")
    @click.argument("video", type=click.Path(path_type=Path))
    @click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="output dataset folder (new or empty)")
    @click.option("--fps", default=3.0, show_default=True, type=float, help="frames kept per second of video (the sharpest of each window)")
    @click.option("--max-size", default=640, show_default=True, type=int, help="longer image side in pixels (frames are downscaled to it)")
    @click.option("--start", default=0.0, show_default=True, type=float, help="seconds: skip the clip before this")
    @click.option("--end", default=None, type=float, help="seconds: skip the clip after this")
    @click.option("--matcher", type=click.Choice(["auto", "exhaustive", "sequential"]), default="auto", show_default=True,
                  help="auto: exhaustive up to 80 frames, else sequential")
    @click.option("--camera-model", default="SIMPLE_RADIAL", show_default=True, type=click.Choice(["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"]))
    @click.option("--max-reproj-error", default=None, type=float, help="pixels (default: 2 for frames under 1000 px, else COLMAP's 4)")
    @click.option("--seed", default=0, show_default=True, type=int)
    @click.option("--verbose", is_flag=True, help="show COLMAP's own log")
    def video_cmd(video: Path, out: Path, fps: float, max_size: int, start: float, end: float | None, matcher: str,
                  camera_model: str, max_reproj_error: float | None, seed: int, verbose: bool) -> None:
        """Extract the sharpest frame per 1/FPS s of VIDEO (PyAV; variance of the Laplacian), estimate
        their cameras with COLMAP (pycolmap), and write the dataset OUT (the colmap loader reads it).

        OUT/frames.json lists each kept frame's time, sharpness and whether it was registered, and
        the likely cuts of the clip.
        """
        from rich.console import Console

        console = Console(stderr=True)
        with rich_progress(console) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(STAGE_LABELS[stage], total=total)
                bar.update(tasks[stage], completed=done, total=total)

            options = SfmOptions(camera_model=camera_model, max_reproj_error=max_reproj_error, seed=seed)
            result = video_to_dataset(video, out, fps=fps, max_size=max_size, start=start, end=end, options=options,
                                      matcher=matcher, progress=progress, verbose=verbose)
        f, sfm = result.frames, result.sfm
        spans = ", ".join(f"{a:.2f}–{b:.2f} s" for a, b in result.registered_spans()) or "none"
        console.print(
            f"kept [bold]{len(f.names)}[/] of {f.decoded} frames ({_describe_cuts(f.cuts)})\n"
            f"registered [bold]{sfm.registered}/{sfm.num_images}[/] frames ({spans}), {sfm.num_points} points, "
            f"mean reprojection error {sfm.mean_reproj_error:.2f} px → {sfm.model_dir}"
        )
        if sfm.registered < 0.5 * sfm.num_images:
            console.print(
                f"[bold yellow]warning:[/] only {sfm.registered} of {sfm.num_images} frames have a camera: the rest of the clip "
                "did not join the reconstruction (cuts, too little parallax, or motion blur); the registered part is "
                f"{spans}. Re-run with --start/--end on that part for a denser capture."
            )
        console.print(f"load it with: recon run --data {sfm.out_dir}")

    @group.command("triangulate")
    @click.argument("data", type=click.Path(path_type=Path))
    @click.option("--ply-name", default="sparse_pc.ply", show_default=True, help="file name of the point cloud, beside transforms.json")
    @click.option("--max-points", default=200_000, show_default=True, type=int)
    @click.option("--seed", default=0, show_default=True, type=int, help="seed of the subsampling to --max-points")
    @click.option("--overwrite", is_flag=True, help="replace a point cloud the transforms file already names")
    def triangulate_cmd(data: Path, ply_name: str, max_points: int, seed: int, overwrite: bool) -> None:
        """Add a point cloud to the posed nerfstudio dataset DATA (transforms.json): SIFT features,
        matching and triangulation with the given poses (pycolmap), written as DATA/sparse_pc.ply and
        named in transforms.json as ply_file_path (both files replaced atomically)."""
        from rich.console import Console

        console = Console(stderr=True)
        result = triangulate_dataset(data, ply_name=ply_name, max_points=max_points, seed=seed, overwrite=overwrite)
        console.print(f"triangulated [bold]{result.num_points}[/] points from {result.num_views} posed views in "
                      f"{result.seconds:.0f} s → {result.ply}\n{result.transforms} now has ply_file_path; "
                      "init=auto of Gaussian representations starts from these points")
