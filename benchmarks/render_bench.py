"""Speed and memory of our Gaussian rasterisers and their peers (not a unit test).

A thin wrapper around :mod:`recon_plugins.gaussians.bench` (also ``recon bench render``), which
holds the scene, the measurement and the renderer registry; this script adds the full default
grid, speed-up and scaling summaries and a JSON dump. See that module for what is measured.

Renderers: ``cpp-cpu`` (compiled CPU kernels: fused projection + SH, binning, compositing),
``cpp-unfused`` (the same with the projection, SH and packing as PyTorch ops, the compiled path
before issue 24), ``torch-3dgs`` (pure PyTorch), ``reference``
(brute force, only where it fits), and peers from ``benchmarks/render_peers.py`` given as
``--peer NAME=PATH`` (opensplat, warp, mxbonn; checkouts kept outside this repository).

Usage::

    python benchmarks/render_bench.py                       # full grid, cpp-cpu + torch-3dgs + reference
    python benchmarks/render_bench.py --counts 10000 100000 --sizes 200x200 640x360 --repeats 5 \\
        --renderers cpp-cpu torch-3dgs --peer opensplat=/work/peers/pierotofy+OpenSplat --json rows.json
    python benchmarks/render_bench.py --stages --counts 100000 --sizes 640x360 --threads 1   # where the time goes

``--stages`` times each compiled kernel of ``cpp-cpu`` and ``cpp-unfused`` inside one forward +
backward (CPU seconds, :func:`recon_plugins.gaussians.bench.stage_breakdown`) instead of the grid.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from recon_plugins.gaussians.bench import (
    ROW_KEYS,
    format_stages,
    format_table,
    make_scene,
    parse_sizes,
    run_render_benchmark,
    stage_breakdown,
)

__all__ = ["ROW_KEYS", "make_scene", "run_render_benchmark", "format_table", "scaling_summary", "main"]


def scaling_summary(rows: list[dict[str, Any]], renderer: str = "cpp-cpu") -> str:
    """Log-log slopes of ``renderer``'s time against N (per size) and against pixels (per N)."""
    ours = [r for r in rows if r["renderer"] == renderer and r.get("forward_backward_s")]
    out = []

    def slope(pts: list[tuple[float, float]]) -> float:
        return (math.log(pts[-1][1]) - math.log(pts[0][1])) / (math.log(pts[-1][0]) - math.log(pts[0][0]))

    for key in ("forward_s", "forward_backward_s"):
        for w, h in sorted({(r["width"], r["height"]) for r in ours}):
            pts = sorted((r["n"], r[key]) for r in ours if (r["width"], r["height"]) == (w, h))
            if len(pts) >= 2:
                out.append(f"{renderer} {key} at {w}x{h}: time ~ N^{slope(pts):.2f} (N {pts[0][0]}..{pts[-1][0]})")
        for n in sorted({r["n"] for r in ours}):
            pts = sorted((r["width"] * r["height"], r[key]) for r in ours if r["n"] == n)
            if len(pts) >= 2:
                out.append(f"{renderer} {key} at N={n}: time ~ pixels^{slope(pts):.2f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renderers", nargs="+", default=["cpp-cpu", "torch-3dgs", "reference"])
    parser.add_argument("--counts", nargs="+", type=int, default=[10_000, 100_000, 500_000])
    parser.add_argument("--sizes", nargs="+", default=["200x200", "640x360"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=PATH", help="a peer renderer and its checkout")
    parser.add_argument("--mxbonn", help="shorthand for --peer mxbonn=PATH")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--no-omp-passive", action="store_true", help="do not set OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--stages", action="store_true", help="per-kernel CPU time of cpp-cpu and cpp-unfused instead of the grid")
    args = parser.parse_args(argv)
    if args.stages:
        rows = [
            stage_breakdown(name, n, w, h, args.repeats, args.threads)
            for n in args.counts for w, h in parse_sizes(",".join(args.sizes)) for name in ("cpp-unfused", "cpp-cpu")
        ]
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        print(format_stages(rows))
        return
    peers = dict(item.split("=", 1) for item in args.peer)
    if args.mxbonn:
        peers["mxbonn"] = args.mxbonn
    sizes = parse_sizes(",".join(args.sizes))
    rows = run_render_benchmark(
        args.renderers, args.counts, sizes, args.repeats, args.threads, peers,
        omp_passive=not args.no_omp_passive, log=lambda row: print(json.dumps(row), file=sys.stderr, flush=True),
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(format_table(rows))
    print()
    print(scaling_summary(rows))


if __name__ == "__main__":
    main()
