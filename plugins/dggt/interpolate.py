"""DGGT's mode 3 (``inference.py --mode 3``): frames at new times between the input frames.

The network sees every ``interval``-th frame of one camera (the keyframes). What is rendered at
output frame k = b·I + j (keyframe b, 0 ≤ j < I, α = j / I), following the original's
``interp_all`` and the render loop around it:

* **Camera**: world→camera rotation slerped and translation lerped between keyframes b and b+1,
  intrinsics lerped (:func:`interpolate_cameras`; the last keyframe closes the list).
* **Static Gaussians**: those of the keyframes (as mode 2), faded by their lifespans to keyframe
  b's time (not to the new frame's own time: the original uses ``timestamps[k // I]``).
* **Dynamic Gaussians**: keyframe b's non-sky pixels with b's Gaussian attributes, at positions and
  dynamic logits from :func:`interpolate_dynamic`: when frame 0 has more than 500 confidently
  dynamic pixels (sigmoid > 0.95), the dynamic points of every keyframe are density-filtered and
  clustered (DBSCAN), up to 50 points of each cluster of keyframe 0 are tracked through the
  keyframes by a 3D point tracker, each later cluster is matched to the object whose tracked
  centroid is nearest (< 0.5), and at frame k a matched cluster's points move by α times its
  object's centroid motion from b to b+1 with dynamic logit 1; every other pixel keeps b's point
  with dynamic logit 0 (so the whole keyframe re-appears at half opacity as a dynamic layer, as
  the original does). Otherwise each new frame repeats keyframe b's points and logits.
* **Sky**: the sky model's colours from the keyframes, drawn at the new camera, not normalised
  (the original's ``forward_with_new_pose``).

The tracker is an interface (:class:`PointTracker3D`). The original calls TAPIP3D (a separate 3D
point-tracking network with its own checkpoint, ``third_party/TAPIP3D``), which recon does not
port. :class:`TrackHeadTracker` is recon's: DGGT's own track head (``track_head.*`` of the
published checkpoint) tracks the query pixels in 2D through the keyframes and each track is
lifted through that keyframe's predicted point map. Where the original would stop with an
error (frame 0 dynamic but nothing tracked), every cluster stays where it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PointTracker3D", "TrackHeadTracker", "Cluster", "interpolate_cameras", "dense_points", "dbscan",
    "frame_clusters", "interpolate_dynamic", "TRACK_MIN_DYNAMIC_PIXELS",
]

# the original's constants (utils/interplation.py, interp_all)
DYNAMIC_PROBABILITY = 0.95
TRACK_MIN_DYNAMIC_PIXELS = 500
CLUSTER_EPS = 0.015
CLUSTER_MIN_SAMPLES = 10
FILTER_RADIUS = 0.15
FILTER_MIN_NEIGHBORS = 10
FILTER_MIN_TOTAL = 50
SAMPLES_PER_CLUSTER = 50
MATCH_MAX_DISTANCE = 0.5


def interpolate_cameras(w2c: Tensor, K: Tensor, interval: int) -> tuple[Tensor, Tensor]:
    """Cameras of the (S − 1)·I + 1 output frames from S keyframe cameras (one camera).

    w2c [S, 3|4, 4] world→camera, K [S, 3, 3] → (w2c [T, 4, 4], K [T, 3, 3]), float32: between
    keyframes b and b+1 at α = j / I the rotation is slerped (scipy's Slerp), the translation and
    K lerped, with the original's arithmetic."""
    from scipy.spatial.transform import Rotation, Slerp

    # float32 arrays times Python floats stay float32 in NumPy (translations, K, as the original);
    # the slerped rotation is float64 until the final rounding
    E = w2c.detach().cpu().float().numpy()
    Ks = K.detach().cpu().float().numpy()
    S = E.shape[0]
    out_e, out_k = [], []
    for b in range(S - 1):
        slerp = Slerp([0, 1], Rotation.from_matrix(np.stack([E[b, :3, :3], E[b + 1, :3, :3]])))
        for j in range(interval):
            a = j / interval
            e = np.eye(4)
            e[:3, :3] = slerp([a]).as_matrix()[0]
            e[:3, 3] = (1 - a) * E[b, :3, 3] + a * E[b + 1, :3, 3]
            out_e.append(e)
            out_k.append((1 - a) * Ks[b] + a * Ks[b + 1])
    last = np.eye(4, dtype=np.float32)
    last[:3, :] = E[-1, :3, :]
    out_e.append(last)
    out_k.append(Ks[-1])
    return (torch.tensor(np.stack(out_e), dtype=torch.float32, device=w2c.device),
            torch.tensor(np.stack(out_k), dtype=torch.float32, device=w2c.device))


def dense_points(points: np.ndarray, radius: float = FILTER_RADIUS, min_neighbors: int = FILTER_MIN_NEIGHBORS,
                 min_total: int = FILTER_MIN_TOTAL) -> np.ndarray:
    """The finite points [P, 3] with more than ``min_neighbors`` points (themselves included)
    within ``radius``; empty when fewer than ``min_total`` points go in or come out."""
    from scipy.spatial import cKDTree

    empty = np.empty((0, 3))
    if len(points) < min_total:
        return empty
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) < min_total:
        return empty
    tree = cKDTree(points)
    counts = np.array([len(c) for c in tree.query_ball_point(points, r=radius)])
    kept = points[counts > min_neighbors]
    return kept if len(kept) >= min_total else empty


def dbscan(points: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN labels [P] (−1 noise), numbered as scikit-learn's ``DBSCAN(eps, min_samples)``: a
    core point has at least ``min_samples`` points (itself included) within ``eps``; clusters
    are grown depth-first from the lowest-index unlabelled core point, so a border point joins
    the first cluster that reaches it."""
    from scipy.spatial import cKDTree

    P = len(points)
    labels = np.full(P, -1, dtype=np.int64)
    if P == 0:
        return labels
    neighbours = cKDTree(points).query_ball_point(points, r=eps)
    core = np.array([len(n) >= min_samples for n in neighbours])
    label = 0
    for i in range(P):
        if labels[i] != -1 or not core[i]:
            continue
        stack = [i]
        while stack:
            p = stack.pop()
            if labels[p] != -1:
                continue
            labels[p] = label
            if core[p]:
                stack.extend(q for q in neighbours[p] if labels[q] == -1)
        label += 1
    return labels


@dataclass
class Cluster:
    """One DBSCAN cluster of a frame's dynamic points: points [M, 3], centroid [3], pixels [M]
    (flat pixel index r·W + c of each point)."""

    points: np.ndarray
    centroid: np.ndarray
    pixels: np.ndarray


def frame_clusters(points: Tensor, dynamic: Tensor) -> list[Cluster]:
    """Clusters of one frame's dynamic points (points [H, W, 3], dynamic [H, W] bool): the dense
    ones (:func:`dense_points`; all of them when none are dense), clustered by :func:`dbscan`."""
    from scipy.spatial import cKDTree

    W = dynamic.shape[1]
    ys, xs = np.nonzero(dynamic.detach().cpu().numpy())
    if ys.size == 0:
        return []
    pts = points[torch.as_tensor(ys), torch.as_tensor(xs)].detach().cpu().numpy().reshape(-1, 3)
    flat = (ys * W + xs).astype(np.int64)
    dense = dense_points(pts)
    cand = dense if dense.shape[0] > 0 else pts
    if cand.shape[0] == pts.shape[0]:
        pix = flat
    else:
        pix = flat[cKDTree(pts).query(cand, k=1)[1]]
    labels = dbscan(cand, CLUSTER_EPS, CLUSTER_MIN_SAMPLES)
    out = []
    for lab in sorted(set(labels.tolist())):
        if lab == -1:
            continue
        m = labels == lab
        out.append(Cluster(cand[m], cand[m].mean(axis=0), pix[m]))
    return out


class PointTracker3D(Protocol):
    """Tracks 3D points through a clip (the original's TAPIP3D ``inference`` call).

    Args:
        images: [T, 3, H, W] in [0, 1]; depths: [T, H, W]; K: [T, 3, 3]; w2c: [T, 4, 4].
        queries: [N, 4] (query frame, x, y, z) world points; pixels: [N, 2] (column, row) where
            each query point was seen in its query frame.

    Returns: [T, N, 3] world positions of every query point in every frame (NaN: lost).
    """

    def __call__(self, images: Tensor, depths: Tensor, K: Tensor, w2c: Tensor, queries: Tensor, pixels: Tensor) -> Tensor: ...


class TrackHeadTracker:
    """recon's tracker: DGGT's track head follows the query pixels of frame 0 in 2D and each
    track is lifted through the frame's point map (bilinear, pixel (r, c) at (c, r) as the
    network's pixel grid). It runs the network again on the keyframes with the query pixels."""

    def __init__(self, network: torch.nn.Module, images: Tensor, point_map: Tensor) -> None:
        self.network, self.images, self.point_map = network, images, point_map

    def __call__(self, images: Tensor, depths: Tensor, K: Tensor, w2c: Tensor, queries: Tensor, pixels: Tensor) -> Tensor:
        if bool((queries[:, 0] != 0).any()):
            raise ValueError("the track head tracks query points of frame 0 only")
        with torch.no_grad():
            out = self.network(self.images[None], query_points=pixels[None].float(), heads=())
        tracks = out.tracks[0]  # [T, N, 2] pixels
        T, H, W, _ = self.point_map.shape
        grid = torch.stack([tracks[..., 0] / max(W - 1, 1), tracks[..., 1] / max(H - 1, 1)], dim=-1) * 2 - 1
        pm = self.point_map.permute(0, 3, 1, 2)  # [T, 3, H, W]
        lifted = torch.nn.functional.grid_sample(pm, grid[:, :, None].to(pm.dtype), align_corners=True, padding_mode="border")
        return lifted[..., 0].permute(0, 2, 1)  # [T, N, 3]


def interpolate_dynamic(
    point_map: Tensor,
    dynamic_logit: Tensor,
    interval: int,
    tracker: PointTracker3D | None,
    rng: np.random.RandomState,
    images: Tensor | None = None,
    depth: Tensor | None = None,
    K: Tensor | None = None,
    w2c: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Point maps and dynamic logits of the (S − 1)·I + 1 output frames (module doc).

    point_map [S, H, W, 3] and dynamic_logit [S, H, W] of the keyframes → ([T, H, W, 3], [T, H, W]);
    images [S, 3, H, W], depth [S, H, W], K, w2c [S, 4, 4] are handed to the tracker. ``rng``
    draws the tracked sample of each cluster (the original uses NumPy's global generator)."""
    S, H, W, _ = point_map.shape
    T = (S - 1) * interval + 1
    dynamic = torch.sigmoid(dynamic_logit) > DYNAMIC_PROBABILITY
    if int(dynamic[0].count_nonzero()) <= TRACK_MIN_DYNAMIC_PIXELS:
        return point_map.repeat_interleave(interval, dim=0)[:T], dynamic_logit.repeat_interleave(interval, dim=0)[:T]
    clusters = [frame_clusters(point_map[t], dynamic[t]) for t in range(S)]
    motion: dict[int, np.ndarray] = {}  # object (cluster of keyframe 0) → [S - 1, 3] centroid steps
    centroids: dict[int, np.ndarray] = {}
    if tracker is not None and clusters[0]:
        picks, pixels, owners = [], [], []
        for c, cl in enumerate(clusters[0]):
            k = min(SAMPLES_PER_CLUSTER, cl.points.shape[0])
            choice = rng.choice(np.arange(cl.points.shape[0]), k, replace=False)
            picks.append(np.concatenate([np.zeros((k, 1), dtype=np.float32), cl.points[choice].astype(np.float32)], axis=1))
            pix = cl.pixels[choice]
            pixels.append(np.stack([pix % W, pix // W], axis=1))
            owners.append((c, k))
        queries = torch.tensor(np.concatenate(picks), dtype=torch.float32, device=point_map.device)
        qpix = torch.tensor(np.concatenate(pixels), dtype=torch.float32, device=point_map.device)
        coords = tracker(images, depth, K, w2c, queries, qpix).detach().cpu().numpy()
        start = 0
        for c, k in owners:
            cent = coords[:, start : start + k, :].mean(axis=1)
            centroids[c] = cent
            motion[c] = cent[1:] - cent[:-1]
            start += k
    # which object each later cluster belongs to: the nearest predicted centroid, if close enough
    owner: list[dict[int, int]] = [{c: c for c in range(len(clusters[0]))}] + [{} for _ in range(S - 1)]
    for t in range(1, S):
        if not clusters[t]:
            continue
        preds = {o: cent[t] for o, cent in centroids.items() if not np.any(np.isnan(cent[t]))}
        if not preds:
            continue
        ids = list(preds)
        here = np.stack([cl.centroid for cl in clusters[t]])
        cost = np.linalg.norm(np.stack([preds[o] for o in ids])[:, None, :] - here[None, :, :], axis=2)
        for c in range(here.shape[0]):
            best = int(np.argmin(cost[:, c]))
            if cost[best, c] < MATCH_MAX_DISTANCE:
                owner[t][c] = ids[best]
    points_out = point_map.new_full((T, H, W, 3), float("nan"))
    logits_out = dynamic_logit.new_full((T, H, W), float("nan"))
    for t in range(S):
        points_out[t * interval] = point_map[t]
        logits_out[t * interval] = dynamic_logit[t]
        if t == S - 1:
            continue
        src = point_map[t].reshape(-1, 3)
        finite = torch.isfinite(src).all(dim=-1)
        for j in range(1, interval):
            alpha = float(j) / float(interval)
            k = t * interval + j
            frame = points_out[k].reshape(-1, 3)
            frame[finite] = src[finite]
            logits_out[k] = 0.0
            flat_logits = logits_out[k].reshape(-1)
            for c, cl in enumerate(clusters[t]):
                o = owner[t].get(c)
                if o is None or o not in motion:
                    continue
                pix = torch.as_tensor(cl.pixels, device=point_map.device)
                ok = torch.isfinite(src[pix]).all(dim=-1)
                pix = pix[ok]
                mv = torch.tensor(motion[o][t], dtype=src.dtype, device=src.device)
                frame[pix] = src[pix] + alpha * mv
                flat_logits[pix] = 1.0
    return points_out, logits_out
