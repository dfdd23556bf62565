"""IDR / DTU layout: ``image/`` (or ``images/``), ``mask/`` (or ``masks/``), ``cameras.npz``.

``cameras.npz`` holds, for the i-th image in name order, ``world_mat_i`` (K·[R|t] as 3x4 or 4x4,
any overall scale or sign) and ``scale_mat_i`` (normalised → world: the object inside the unit
sphere; identity when absent). The projection P = world_mat @ scale_mat maps IDR's normalised
frame to pixels, so the scene lives in that frame and its bounds are the unit sphere.

P is decomposed with our own RQ decomposition (:func:`decompose_projection`): K upper triangular
with positive focal lengths and K[2,2] = 1, R a proper rotation (det +1), camera centre from the
null space of P. The result is an OpenCV camera-to-world pose.

Pixel centres: by default the loader follows IDR, whose cameras.npz are written for rays through
integer pixel coordinates (IDR's ``uv`` grid: the centre of pixel i is at i): 0.5 is added to cx, cy
to express K in recon's convention (centres at i + 0.5). Files written for centres at i + 0.5 — the
shared benchmark scene ``object`` is one — need ``pixel_offset=0``. With ``pixel_offset`` unset the
folder decides when it can: a ``transforms.json`` beside cameras.npz (nerfstudio's convention,
centres at i + 0.5) whose first frame is the first image and whose principal point equals
cameras.npz's (within 0.05 px) says the file was written for centres at i + 0.5 (offset 0); one
0.5 px larger says IDR's (0.5); anything else, or no such file, gives IDR's 0.5.

Noisy initial cameras: with ``init_cameras="linear"`` the views get the cameras of
``cameras_linear_init.npz`` (IDR's camera-optimisation setting). The true cameras stay available
for scoring through :func:`true_cameras` (same views, same resolution), or by loading again
with the default ``init_cameras="true"``.

Splits: cameras.npz has none. With ``test_every`` unset, a ``transforms.json`` beside cameras.npz
that gives every image a ``split`` (its frames' ``file_path`` names the images) decides, as the
``nerfstudio`` loader would read the same folder (the shared ``object`` scene: views 0–47 train,
48–63 test, the split its README and the IDR benchmark use); without one every 8th image in name
order (indices 7, 15, 23, …) is a ``test`` view (recon's choice, as in the ``colmap`` loader), so
evaluation renders an eighth of the views (IDR renders slowly: about 20 s per view on a CPU).
``test_every=N`` forces every N-th; IDR itself trains on every view: ``test_every=0`` does that
(evaluation then renders them all).

Masks: grey > 127.5 is object. ``Scene.gt_mesh_path`` is set when the folder has ``gt_mesh.ply``,
``mesh.ply`` or a DTU ``stl*_total.ply``; that mesh is in the *world* frame, which is the scene
frame only when scale_mat is the identity. A DTU ``stl*_total.ply`` is a point cloud in millimetres:
evaluate against it with ``dtu-chamfer`` (DTU's protocol: scale_mat, ObsMask, plane), not ``chamfer``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon_core import Bounds, Cameras, InputError, Loader, Scene, option

from . import imageio
from .common import FrameSpec, build_views, hold_out_every

__all__ = ["IDR_PIXEL_OFFSET", "IdrLoader", "decompose_projection", "rq3", "read_idr_cameras", "sibling_pixel_offset",
           "sibling_split", "true_cameras"]


def rq3(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RQ decomposition of a 3x3 matrix: M = U @ Q, U upper triangular with diag(U) >= 0, Q orthogonal.

    Built from numpy's QR of the row-reversed transpose (reversing rows and columns turns
    an upper triangular factor into a lower one and back).
    """
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ M).T)
    U = flip @ r.T @ flip
    Q = flip @ q.T
    signs = np.sign(np.diag(U))
    signs[signs == 0] = 1.0
    D = np.diag(signs)
    return U @ D, D @ Q  # D @ D = I, so U @ Q is unchanged


def decompose_projection(P: np.ndarray, where: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """P (3x4 or 4x4, any non-zero scale and sign) → (K (3, 3) with K[2,2] = 1, OpenCV c2w (4, 4)).

    Raises InputError when P is not finite or its left 3x3 block is singular.
    """
    P = np.asarray(P, dtype=np.float64)
    if P.shape not in ((3, 4), (4, 4)):
        raise InputError(f"projection matrix has shape {P.shape}, expected 3x4 or 4x4", where)
    P = P[:3]
    if not np.isfinite(P).all():
        raise InputError("projection matrix contains NaN or infinite values", where)
    M = P[:, :3]
    scale = np.abs(M).max()
    if scale == 0 or abs(np.linalg.det(M / scale)) < 1e-12:
        raise InputError("projection matrix is singular (its left 3x3 block has no inverse)", where)
    if np.linalg.det(M) < 0:  # P is defined up to scale: pick the sign that makes R proper
        P, M = -P, -M
    U, R = rq3(M)
    K = U / U[2, 2]
    center = -np.linalg.solve(M, P[:, 3])
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = center
    return K, c2w


def _npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError("camera file is missing", path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise InputError(f"not a readable .npz file ({type(e).__name__}: {e})", path) from None


def read_idr_cameras(path: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(K, c2w) of the first ``count`` cameras of an IDR ``cameras.npz`` (normalised frame)."""
    z = _npz(path)
    out = []
    for i in range(count):
        if f"world_mat_{i}" not in z:
            raise InputError(f"world_mat_{i} is missing ({count} images need world_mat_0..{count - 1})", path)
        world = np.asarray(z[f"world_mat_{i}"], dtype=np.float64) if np.issubdtype(z[f"world_mat_{i}"].dtype, np.number) else None
        if world is None or world.shape not in ((3, 4), (4, 4)):
            raise InputError(f"world_mat_{i} must be a numeric 3x4 or 4x4 matrix", path)
        if not np.isfinite(world).all():
            raise InputError(f"world_mat_{i} contains NaN or infinite values", path)
        if world.shape == (3, 4):
            world = np.vstack([world, [0.0, 0.0, 0.0, 1.0]])
        scale = z.get(f"scale_mat_{i}")
        if scale is None:
            scale = np.eye(4)
        elif not np.issubdtype(scale.dtype, np.number) or scale.shape != (4, 4) or not np.isfinite(scale).all():
            raise InputError(f"scale_mat_{i} must be a finite numeric 4x4 matrix", path)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as non-finite P below
            P = world @ scale.astype(np.float64)
        out.append(decompose_projection(P, path))
    return out


IDR_PIXEL_OFFSET = 0.5
"""IDR's cameras.npz put pixel centres at integer coordinates: +0.5 on cx, cy gives recon's i + 0.5."""


def sibling_pixel_offset(path: Path, first_image: Path, K: np.ndarray, tol: float = 0.05) -> float | None:
    """The pixel offset that cameras.npz's ``K`` (of ``first_image``) needs, read from a
    ``transforms.json`` in ``path`` (nerfstudio: centres at i + 0.5) describing the same first image:
    0 when its principal point equals K's, 0.5 when it is 0.5 px larger, else (or without one) None."""
    file = path / "transforms.json"
    if not file.is_file():
        return None
    try:
        meta = json.loads(file.read_text())
        frame = meta["frames"][0]
        if Path(str(frame["file_path"])).stem != first_image.stem:
            return None
        cx, cy = float(frame.get("cx", meta.get("cx"))), float(frame.get("cy", meta.get("cy")))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # not a usable nerfstudio file: IDR's convention
    for off in (0.0, IDR_PIXEL_OFFSET):
        if abs(K[0, 2] + off - cx) < tol and abs(K[1, 2] + off - cy) < tol:
            return off
    return None


def sibling_split(path: Path, images: list[Path]) -> dict[str, str] | None:
    """{image stem: "train" | "val" | "test"} from a ``transforms.json`` in ``path`` whose frames give
    every one of ``images`` (matched by file stem) a split; None when there is no such file or it
    leaves an image without one (then the loader's ``test_every`` rule applies)."""
    file = path / "transforms.json"
    if not file.is_file():
        return None
    try:
        frames = json.loads(file.read_text())["frames"]
        declared = {Path(str(f["file_path"])).stem: f.get("split") for f in frames}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    splits = {img.stem: declared.get(img.stem) for img in images}
    if not all(s in ("train", "val", "test") for s in splits.values()):
        return None
    return splits  # type: ignore[return-value]


def _folder(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


@dataclass
class IdrConfig:
    init_cameras: str = option("true", "which cameras the views get: 'true' (cameras.npz) or 'linear' (cameras_linear_init.npz)", choices=("true", "linear"))
    downscale: float | None = option(None, "divide image sizes by this (antialiased; intrinsics scaled to match); "
                                           "unset: automatic, to a long side of at most 1600 pixels (a warning says so)", min=1)
    pixel_offset: float | None = option(None, "added to cx, cy: 0.5 for IDR's convention (pixel centres at integer "
                                             "coordinates, IDR's uv grid); 0 for files written for centres at i + 0.5 "
                                             "(the shared 'object' scene); none: 0.5, or what a transforms.json beside "
                                             "cameras.npz says (its principal point equal to cameras.npz's: 0)")
    background: tuple[float, float, float] = option((1.0, 1.0, 1.0), "RGB in [0, 1] that RGBA images are composited onto", min=0, max=1)
    test_every: int | None = option(None, "every N-th image (in name order) is a test view, as in the colmap loader; "
                                       "0 = all train (IDR's split); none: the split a transforms.json beside "
                                       "cameras.npz gives every image (object: 0-47 train, 48-63 test), else 8", min=0)


class IdrLoader(Loader):
    """IDR/DTU: image/, mask/, cameras.npz (P = world_mat·scale_mat, RQ-decomposed)."""

    name = "idr"
    description = "IDR / DTU folders (image/, mask/, cameras.npz; normalised frame, unit-sphere bounds)"
    Config = IdrConfig
    provides = frozenset({"scene"})

    def detect(self, path: Path) -> int:
        path = Path(path)
        if not (path.is_dir() and (path / "cameras.npz").is_file() and _folder(path, ("image", "images"))):
            return 0
        # A folder that also has transforms.json is better described by it (splits, times).
        return 5 if (path / "transforms.json").is_file() else 10

    def _files(self, path: Path) -> tuple[list[Path], list[Path] | None]:
        image_dir = _folder(path, ("image", "images"))
        if image_dir is None:
            raise InputError("no image/ (or images/) folder", path)
        images = imageio.list_images(image_dir)
        if not images:
            raise InputError("image folder has no images", image_dir)
        mask_dir = _folder(path, ("mask", "masks"))
        masks = None
        if mask_dir is not None:
            masks = imageio.list_images(mask_dir)
            if len(masks) != len(images):
                raise InputError(f"{len(masks)} masks for {len(images)} images (they pair up in name order)", mask_dir)
        return images, masks

    def _cameras(self, path: Path, count: int, which: str, first_image: Path) -> list[tuple[np.ndarray, np.ndarray]]:
        file = path / ("cameras_linear_init.npz" if which == "linear" else "cameras.npz")
        cams = read_idr_cameras(file, count)
        off = self.config.pixel_offset
        if off is None:
            off = sibling_pixel_offset(path, first_image, cams[0][0]) if cams else None
            off = IDR_PIXEL_OFFSET if off is None else off
        if off:
            cams = [(K + np.array([[0, 0, off], [0, 0, off], [0, 0, 0]]), c2w) for K, c2w in cams]
        return cams

    def load(self, path: Path) -> Scene:
        path = Path(path)
        if not path.is_dir():
            raise InputError("an IDR dataset must be a folder", path)
        images, masks = self._files(path)
        cams = self._cameras(path, len(images), self.config.init_cameras, images[0])
        frames = [
            FrameSpec(
                name=img.stem,
                image=img,
                K=K,
                c2w=c2w,
                object_mask=None if masks is None else masks[i],
                source=path / "cameras.npz",
            )
            for i, (img, (K, c2w)) in enumerate(zip(images, cams))
        ]
        declared = sibling_split(path, images) if self.config.test_every is None else None
        if declared is not None:
            for frame, img in zip(frames, images):
                frame.split = declared[img.stem]  # type: ignore[assignment]
        else:
            every = 8 if self.config.test_every is None else self.config.test_every
            hold_out_every(frames, every, f"{self.name}.test_every")
        views = build_views(frames, downscale=self.config.downscale, same_size=True, loader=self.name,
                            background=imageio.parse_background(tuple(self.config.background)))
        gt = next((p for p in [path / "gt_mesh.ply", path / "mesh.ply", *sorted(path.glob("stl*_total.ply"))] if p.is_file()), None)
        return Scene(
            name=path.resolve().name,
            views=views,
            bounds=Bounds(center=torch.zeros(3), radius=1.0),
            gt_mesh_path=gt,
            source=path,
        )


def true_cameras(path: Path, config: IdrConfig | None = None) -> Cameras:
    """The true cameras (``cameras.npz``) of an IDR folder, batched in view order, at the resolution
    the loader produces with ``config`` — what to score refined ``init_cameras="linear"`` poses against."""
    config = config or IdrConfig()
    loader = IdrLoader(IdrConfig(init_cameras="true", downscale=config.downscale, pixel_offset=config.pixel_offset,
                                 test_every=config.test_every))
    return Cameras.cat([v.camera for v in loader.load(Path(path)).views])
