"""HashModFFB-IDR benchmark: equal-CPU-time training of ``idr`` with each encoder.

For each encoder, ``idr-fit`` runs for the same CPU-time budget (``--budget wall`` for wall-clock) on the training views of an
IDR-style dataset (cameras.npz + masks + gt_mesh.ply), then we report the Chamfer distance of the
marching-cubes mesh to the ground truth (as extracted, and with the surfaces of enclosed voids dropped,
as ``recon`` exports it) and the PSNR of sphere-traced test views (full image on the
background the images were composited on, and inside the object mask).

    python benchmarks/idr_bench.py --data /work/shared/datasets/object --seconds 600 \
        --encoders fourier hashgrid ffb ffb-stylemod --out outputs/idr_bench

The budget counts this process's CPU time (one torch thread) and only the training loop; meshing and
evaluation come after it. Training is recon's refine loop (:func:`recon_core.refine.run_refiners`) with
the budget, as ``recon run --set run.budget=cpu:SECONDS`` runs it: idr-fit's schedules (mask α
doublings, lr decay, coarse-to-fine grid levels) follow the fraction of the budget used, and the
loop stops the refiner when it is spent. Network preset and hash-table lr are chosen per encoder
(``AUTO_PRESET``); grid tables use their encoder's ``table_lr`` (hashgrid 1e-2, ffb 1e-3) unless
``--encoder-lr`` is given.

Uses the ``idr`` loader when installed, otherwise reads cameras.npz itself (world_mat_i = K·[R|t],
P = world_mat_i · scale_mat_i decomposed by RQ), views 0-47 train and 48-63 test.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import trimesh
from PIL import Image

from recon_core import Bounds, Cameras, RunContext, Scene, View
from recon_core.budget import Budget
from recon_core.refine import run_refiners
from recon_core.imageops import psnr
from recon_core.registry import get_registry
from recon_plugins.encoders import FFBEncoder, FFBStyleModEncoder, FourierEncoder, HashGridEncoder
from recon_plugins.idr import IDRFit, IDRRepresentation, SphereTracingRenderer
from recon_plugins.idr.chamfer import chamfer
from recon_plugins.idr.mesh import drop_enclosed_voids

# FFB: the encoder's defaults (NFFB's SDF grid and Fourier maps: N = 8 growing ×1.3 per level to 30,
# σ₀ = 5 growing ×1.2; the SIREN backbone carries the high frequencies) with a CPU-sized SIREN/table.
FFB_CPU = dict(n_levels=6, hidden_dim=64, out_features=64, log2_hashmap_size=15)

# Encoder settings sized for a 2-core CPU (names → constructors).
ENCODERS = {
    "fourier": lambda: FourierEncoder(FourierEncoder.Config(n_frequencies=6)),
    "hashgrid": lambda: HashGridEncoder(HashGridEncoder.Config(
        n_levels=12, n_features_per_level=2, log2_hashmap_size=15, base_resolution=16, max_resolution=512)),
    "ffb": lambda: FFBEncoder(FFBEncoder.Config(**FFB_CPU)),
    "ffb-stylemod": lambda: FFBStyleModEncoder(FFBStyleModEncoder.Config(**FFB_CPU)),
}

# Network preset per encoder with ``--preset auto``: Fourier features need IDR's deeper MLP (scaled
# down to "small" for the CPU); grid encoders hold the detail in their tables and use a tiny MLP.
AUTO_PRESET = {"fourier": "small", "hashgrid": "grid", "ffb": "grid", "ffb-stylemod": "grid"}


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3×4 projection P = K·[R|t] → (K with K[2,2] = 1 and a positive diagonal, OpenCV c2w 4×4)."""
    K, R = scipy.linalg.rq(P[:3, :3])
    signs = np.diag(np.sign(np.diag(K)))
    K, R = K @ signs, signs @ R
    t = np.linalg.solve(K, P[:3, 3])
    if np.linalg.det(R) < 0:
        R, t = -R, -t
    K = K / K[2, 2]
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return K, c2w


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def read_idr_scene(root: Path, n_train: int = 48, background: float = 1.0) -> Scene:
    """Scene in IDR's normalised frame from cameras.npz + images/ + masks/ (+ gt_mesh.ply)."""
    cams = np.load(root / "cameras.npz")
    n = len([k for k in cams.files if k.startswith("world_mat_")])
    views = []
    for i in range(n):
        P = (cams[f"world_mat_{i}"] @ cams[f"scale_mat_{i}"])[:3]
        K, c2w = decompose_projection(P)
        img = _png(root / "images" / f"{i:04d}.png")
        rgb = img[..., :3].astype(np.float32) / 255.0
        if img.shape[-1] == 4:
            a = img[..., 3:] / 255.0
            rgb = rgb * a + background * (1 - a)  # same compositing as the idr loader (white by default)
        mask = _png(root / "masks" / f"{i:04d}.png") > 127
        h, w = mask.shape
        cam = Cameras.create(K, c2w, w, h)
        views.append(View(f"{i:04d}", cam, torch.from_numpy(rgb.copy()), "train" if i < n_train else "test",
                          object_mask=torch.from_numpy(mask.copy())))
    gt = root / "gt_mesh.ply"
    # the gt mesh is in world coordinates; with identity scale_mat the normalised frame is the world frame
    if not np.allclose(cams["scale_mat_0"], np.eye(4)):
        gt = None
    return Scene(root.name, views, Bounds(torch.zeros(3), 1.0), gt_mesh_path=gt, source=root)


def load_scene(root: Path, n_train: int = 48, background: float = 1.0) -> Scene:
    """The ``idr`` loader's scene when available (else our own reader); views ≥ n_train become test views
    (cameras.npz has no split; the dataset README fixes 0-47 train, 48-63 test)."""
    try:
        from recon_core.registry import get_registry

        from recon_plugins.loaders.idr import IdrConfig

        # the benchmark scenes' cameras.npz put pixel centres at i + 0.5, not at IDR's integers
        scene = get_registry().create("loader", "idr", IdrConfig(pixel_offset=0.0)).load(root)
        if not isinstance(scene, Scene) or scene.gt_mesh_path is None:
            raise ValueError("no ground-truth mesh")
    except Exception as e:  # noqa: BLE001 - the idr loader may not exist yet
        print(f"(idr loader unavailable: {e}; reading cameras.npz directly)")
        scene = read_idr_scene(root, n_train, background)
    for i, v in enumerate(scene.views):
        v.split = "train" if i < n_train else "test"
    return scene


def run_one(name: str, scene: Scene, seconds: float, args: argparse.Namespace, out: Path) -> dict:
    torch.manual_seed(args.seed)
    preset = AUTO_PRESET[name] if args.preset == "auto" else args.preset
    rep = IDRRepresentation(IDRRepresentation.Config(preset=preset, trace_samples=args.samples,
                                                     mesh_resolution=args.mesh_res))
    rep.build(scene, RunContext(device=torch.device("cpu"), seed=args.seed, encoder=ENCODERS[name](), create=get_registry().create))
    fit = IDRFit(IDRFit.Config(steps=args.max_steps, batch_rays=args.batch, lr=args.lr,
                               encoder_lr=args.encoder_lr, **({"lr_milestones": args.lr_milestones} if args.lr_milestones else {}),
                               c2f_start_levels=args.c2f_start, c2f_until=args.c2f_until, log_every=0))
    log: list[str] = []

    def note(message: str) -> None:
        log.append(message)
        print(f"  {name}: {message}", flush=True)

    # CPU time of this process is the fair budget on a shared machine (wall time depends on the others' load)
    budget = Budget(seconds, args.budget)
    ctx = RunContext(device=torch.device("cpu"), seed=args.seed, renderer=SphereTracingRenderer(), log=note)
    w0, load0 = time.perf_counter(), os.getloadavg()[0]
    result = run_refiners(rep, scene, [("idr-fit", fit)], ctx, save=lambda state, label: out, checkpoint_every=0,
                          log_every=50, log=note, budget=budget)  # nothing saved: `save` only names the folder
    report = result.reports[0]["report"]["budget"]
    step = report["stopped_at_step"] or fit.total_steps
    train_time, train_wall = report["used"], time.perf_counter() - w0
    rep.eval()
    gt = trimesh.load(scene.gt_mesh_path, force="mesh", process=False)
    try:
        mesh = rep.extract_mesh(args.mesh_res, drop_voids=False)
        mesh.export(out / f"{name}_mesh.ply")
        cd = chamfer(mesh, gt)
        solid = drop_enclosed_voids(mesh)  # what `recon` exports by default (mesh_drop_voids)
        cd_solid = cd if solid is mesh else chamfer(solid, gt)  # same mesh, same seeded samples
    except ValueError as e:  # a diverged run can lose its surface: record it instead of crashing
        print(f"  {name}: no surface ({e})", flush=True)
        cd = cd_solid = None
    test = scene.split("test")[:: args.test_stride]
    ren = SphereTracingRenderer().render(rep, scene.cameras(test), background=torch.full((3,), args.background))
    target = torch.stack([v.image.float() for v in test])
    masks = torch.stack([v.object_mask for v in test])
    res = {
        "encoder": name, "preset": preset, "steps": step, "load_start": load0, "load_end": os.getloadavg()[0], "train_seconds": round(train_time, 1), "budget": args.budget, "train_wall_seconds": round(train_wall, 1),
        "chamfer": cd.chamfer if cd else float("inf"), "accuracy": cd.accuracy if cd else float("inf"),
        "completeness": cd.completeness if cd else float("inf"),
        "chamfer_voids_dropped": cd_solid.chamfer if cd_solid else float("inf"),
        "void_area": float(mesh.area - solid.area) if cd_solid else 0.0,
        "psnr_full": float(psnr(ren.rgb, target)), "psnr_mask": float(psnr(ren.rgb, target, masks)),
        "mask_iou": float(((ren.alpha[..., 0] > 0.5) & masks).sum() / ((ren.alpha[..., 0] > 0.5) | masks).sum()),
        "encoder_params": sum(p.numel() for p in rep.implicit.encoder.parameters()),
        "log": log,
    }
    print(json.dumps({k: v for k, v in res.items() if k != "log"}), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/object"))
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    ap.add_argument("--seconds", type=float, default=300.0, help="training time budget per encoder")
    ap.add_argument("--budget", choices=("cpu", "wall"), default="cpu", help="count process CPU time or wall time")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--preset", default="auto", help="network preset, or auto: small for fourier, grid for grid encoders")
    ap.add_argument("--c2f-start", type=int, default=4, help="grid levels active at the start (coarse-to-fine)")
    ap.add_argument("--c2f-until", type=float, default=0.5, help="budget fraction at which all grid levels are active (0: off)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=32, help="fallback samples per unconverged ray")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lr-milestones", type=float, nargs="+", default=None,
                    help="budget fractions where every lr halves (default: the encoder's, ffb 0.5 ... 0.9; else IDR's 0.5 0.75)")
    ap.add_argument("--encoder-lr", type=float, default=None, help="hash-table lr (default: the encoder's table_lr)")
    ap.add_argument("--mesh-res", type=int, default=128)
    ap.add_argument("--test-stride", type=int, default=4, help="evaluate every k-th test view")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a contended CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--background", type=float, default=1.0, help="grey level of the background (idr loader: white)")
    ap.add_argument("--out", type=Path, default=Path("outputs/idr_bench"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    scene = load_scene(args.data, background=args.background)
    results = []
    for name in args.encoders:
        results.append(run_one(name, scene, args.seconds, args, args.out))
        (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    print("\n| encoder | steps | Chamfer ↓ | acc | comp | test PSNR (full) | test PSNR (mask) | mask IoU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['encoder']} | {r['steps']} | {r['chamfer']:.4f} | {r['accuracy']:.4f} | {r['completeness']:.4f} | "
              f"{r['psnr_full']:.2f} | {r['psnr_mask']:.2f} | {r['mask_iou']:.3f} |")


if __name__ == "__main__":
    main()
