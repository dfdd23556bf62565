"""``recon process-data images DIR --out DATA``: structure-from-motion on unposed photos.

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

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from recon_core import InputError, geometry

from . import imageio

__all__ = ["SfmOptions", "SfmResult", "run_sfm", "register_cli", "umeyama", "compare_poses", "PoseComparison"]

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): stage in "copy", "extract", "match", "map"."""


@dataclass(frozen=True)
class SfmResult:
    """What the reconstruction produced (``registered`` images of ``num_images``)."""

    out_dir: Path
    model_dir: Path
    num_images: int
    registered: int
    num_points: int
    seconds: float


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
    return SfmResult(out, model_dir, n, best.num_reg_images(), best.num_points3D(), time.perf_counter() - t0)


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


STAGE_LABELS = {"copy": "copying images", "extract": "extracting SIFT features", "match": "matching features", "map": "incremental mapping (registered images)"}


def register_cli(cli) -> None:  # noqa: ANN001 - a click.Group
    """Add ``recon process-data images`` to the ``recon`` click group."""
    import click

    group = cli.commands.get("process-data") if hasattr(cli, "commands") else None
    if group is None:

        @cli.group("process-data")
        def process_data() -> None:
            """Turn raw captures (photos) into a dataset recon can load."""

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
            f"registered [bold]{result.registered}/{result.num_images}[/] images, {result.num_points} points "
            f"in {result.seconds:.0f} s → {result.model_dir}\nload it with: recon run --data {result.out_dir}"
        )
