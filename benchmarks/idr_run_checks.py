"""Checks on a finished ``recon run --repr idr`` run folder (docs/benchmarks.md, IDR, issue 21 third part).

    python benchmarks/idr_run_checks.py RUN_DIR            # both checks
    python benchmarks/idr_run_checks.py RUN_DIR --mesh     # Chamfer at 128³ / 256³, raw / voids dropped
    python benchmarks/idr_run_checks.py RUN_DIR --min-search

``--mesh``: the run's network (latest checkpoint) meshed at 128³ (benchmarks/idr_bench.py) and 256³
(the ``chamfer`` evaluator and the export), with and without enclosed voids, scored with the same
``chamfer()`` at sampling seeds 0, 1, 2, plus the exported ``mesh.ply``.

``--min-search``: on fixed batches of training rays at α = 1600, the gradient of the weighted mask loss
(``mask_weight · L_mask``) for every parameter with ``idr.trace_min_search=uniform`` (IDR's search) at
two jitter seeds and with ``traced``: how far ``traced`` moves the gradient against the spread of IDR's
own jittered search.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import torch.nn.utils.parametrize as parametrize

from recon_core import RunContext
from recon_core.registry import get_registry
from recon_core.restore import restore_run
from recon_core.rundir import RunDir


def mesh_check(rep, scene, run: Path) -> None:  # noqa: ANN001
    import trimesh

    from recon_plugins.idr.chamfer import chamfer

    gt = trimesh.load(scene.gt_mesh_path, force="mesh", process=False)
    for res in (128, 256):
        for drop in (False, True):
            m = rep.extract_mesh(res, drop_voids=drop)
            c = chamfer(m, gt)
            print(f"{res}^3 voids {'dropped' if drop else 'kept'}: Chamfer {c.chamfer:.5f} accuracy {c.accuracy:.5f} "
                  f"completeness {c.completeness:.5f}", flush=True)
        print(f"  sampling seeds 1, 2: {chamfer(m, gt, seed=1).chamfer:.5f}, {chamfer(m, gt, seed=2).chamfer:.5f}", flush=True)
    if (run / "mesh.ply").exists():
        c = chamfer(trimesh.load(run / "mesh.ply", force="mesh", process=False), gt)
        print(f"exported mesh.ply: Chamfer {c.chamfer:.5f} accuracy {c.accuracy:.5f} completeness {c.completeness:.5f}")


def min_search_check(rep, scene, batches: int = 4, rays: int = 1024, alpha: float = 1600.0) -> None:  # noqa: ANN001
    from recon_plugins.idr import IDRFit, SphereTracingRenderer
    from recon_plugins.idr.representation import pixel_rays

    fit = IDRFit(IDRFit.Config(log_every=0))
    fit.setup(rep, scene, RunContext(device=torch.device("cpu"), seed=0, renderer=SphereTracingRenderer()))
    params = [p for p in rep.parameters() if p.requires_grad]
    d = fit.data
    for b in range(batches):
        g = torch.Generator().manual_seed(100 + b)
        view = torch.randint(len(d.rgb), (rays,), generator=g)
        pix = (torch.rand(rays, generator=g) * d.npix[view]).long().clamp_max(d.npix[view] - 1)
        uv = torch.stack([pix % d.width[view], pix // d.width[view]], dim=-1).float() + 0.5
        o, v = rep.network_rays(*pixel_rays(d.K[view], d.c2w[view], uv))
        grads, hits = {}, {}
        for label, search, jitter in (("uniform", "uniform", 7), ("uniform, other jitter", "uniform", 8), ("traced", "traced", 7)):
            rep.config = dataclasses.replace(rep.config, trace_min_search=search)
            tr = rep.trace(o, v, generator=torch.Generator().manual_seed(jitter))
            fit.generator.manual_seed(11)  # the same random eikonal points
            with parametrize.cached():
                _, _, _, loss_mask, hit, _ = fit._losses(tr, o, v, d.rgb[view, pix], d.mask[view, pix], alpha=alpha)
            gm = torch.autograd.grad(fit.config.mask_weight * loss_mask, params, allow_unused=True, materialize_grads=True)
            grads[label], hits[label] = torch.cat([x.flatten() for x in gm]), int(hit.sum())
        ref = grads["uniform"]
        parts = [f"batch {b}: hits " + " / ".join(str(h) for h in hits.values())]
        for label in ("uniform, other jitter", "traced"):
            other = grads[label]
            rel = float((ref - other).norm() / ref.norm())
            cos = float(ref @ other / (ref.norm() * other.norm()))
            parts.append(f"uniform vs {label}: relative difference {rel:.3g}, cosine {cos:.4f}")
        print("; ".join(parts), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--mesh", action="store_true")
    ap.add_argument("--min-search", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    restored = restore_run(get_registry(), RunDir(args.run))
    rep, scene = restored.rep, restored.data
    rep.eval()
    both = not (args.mesh or args.min_search)
    if args.mesh or both:
        mesh_check(rep, scene, args.run)
    if args.min_search or both:
        min_search_check(rep, scene)


if __name__ == "__main__":
    main()
