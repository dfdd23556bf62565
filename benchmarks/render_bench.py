"""Speed and memory of the ``torch-3dgs`` rasteriser against naive references (not a unit test).

Scene (as in issue 4): N Gaussians uniform in the unit cube centred at (0, 0, 3), scales
U(0.005, 0.03), opacities U(0.1, 0.9), SH degree 0, identity camera with fx = fy = 1.5 H and a
centred principal point. ``forward_s`` is one render under ``torch.no_grad()``;
``forward_backward_s`` is a render plus ``image.sum().backward()`` into every Gaussian
parameter. Each number is the median of ``repeats`` runs after one warm-up, with ``threads``
torch threads. Every configuration runs in a fresh subprocess, so ``peak_rss_mb`` is that
process's peak resident memory (ru_maxrss, interpreter and torch included; an idle process with
torch imported is reported as ``baseline_rss_mb``).

Renderers:
    torch-3dgs   recon_plugins.gaussians.rasterize.rasterize_gaussians
    reference    recon_plugins.gaussians._reference.render_reference (every pixel x every
                 Gaussian, one Gaussian at a time; only where it fits in time and memory)
    mxbonn       Mxbonn/gsplat-pytorch (pure-PyTorch loop over 8x8 tiles: its code needs the
                 image size to be a multiple of the tile), if ``--mxbonn PATH`` points at a
                 checkout of it (kept outside this repository)

Usage::

    python benchmarks/render_bench.py                       # full grid
    python benchmarks/render_bench.py --counts 10000 100000 --sizes 200x200 640x360 --repeats 5 \
        --mxbonn /tmp/mxbonn_gsplat
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROW_KEYS = ("renderer", "n", "width", "height", "forward_s", "forward_backward_s", "peak_rss_mb")

# The naive references are only run where they finish in reasonable time and memory:
# pixel-Gaussian pairs per image for a forward, and for forward + backward (autograd graph).
REFERENCE_FORWARD_MAX_PAIRS = 4.0e8
REFERENCE_BACKWARD_MAX_PAIRS = 2.5e7
MXBONN_MAX_N = 100_000  # its fwd+bwd peak was 11 GB at 100k / 640x360


def make_scene(n: int, width: int, height: int, seed: int = 0) -> dict[str, Any]:
    """The benchmark scene: Gaussians [n], one camera (viewmats [1,4,4], Ks [1,3,3])."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) - 0.5
    means[:, 2] += 3.0
    f = 1.5 * height
    return dict(
        means=means,
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=0.005 + 0.025 * torch.rand(n, 3, generator=g),
        opacities=0.1 + 0.8 * torch.rand(n, generator=g),
        sh=(torch.rand(n, 1, 3, generator=g) - 0.5) / 0.28209479177387814,
        viewmats=torch.eye(4)[None],
        Ks=torch.tensor([[[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]]]),
        width=width,
        height=height,
    )


def _render_fn(renderer: str, mxbonn: str | None) -> Callable[[dict[str, Any]], torch.Tensor]:
    """A function scene -> rgb image for the named renderer."""
    if renderer == "torch-3dgs":
        from recon_plugins.gaussians.rasterize import rasterize_gaussians

        def run(s):
            rgb, _, _ = rasterize_gaussians(
                s["means"], s["quats"], s["scales"], s["opacities"], s["viewmats"], s["Ks"], s["width"], s["height"],
                sh=s["sh"], sh_degree=0,
            )
            return rgb

        return run
    if renderer == "reference":
        from recon_plugins.gaussians._reference import render_reference

        def run(s):
            rgb, _, _ = render_reference(
                s["means"], s["quats"], s["scales"], s["opacities"], s["viewmats"], s["Ks"], s["width"], s["height"],
                sh=s["sh"], sh_degree=0,
            )
            return rgb

        return run
    if renderer == "mxbonn":
        if not mxbonn:
            raise ValueError("--mxbonn PATH is needed for the mxbonn renderer")
        # Mxbonn's package is also called "gsplat": load its two files by path under other names
        import importlib.util

        def load(name: str):
            spec = importlib.util.spec_from_file_location(f"mxbonn_{name}", Path(mxbonn) / "gsplat" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module

        project_gaussians = load("project_gaussians").project_gaussians
        mx_rasterize = load("rasterize").rasterize_gaussians

        def run(s):
            K = s["Ks"][0]
            xys, depths, radii, conics, _, _ = project_gaussians(
                s["means"], s["scales"], 1.0, s["quats"], s["viewmats"][0],
                float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), s["height"], s["width"],
            )
            colors = (s["sh"][:, 0] * 0.28209479177387814 + 0.5).clamp_min(0.0)
            return mx_rasterize(
                xys, depths, radii, conics, colors, s["opacities"], s["height"], s["width"], 8,
                torch.zeros(3),
            )

        return run
    raise ValueError(f"unknown renderer {renderer}")


def measure_one(renderer: str, n: int, width: int, height: int, repeats: int, threads: int, mxbonn: str | None = None) -> dict[str, Any]:
    """Time one configuration in this process (call it in a fresh process for honest peak RSS)."""
    torch.set_num_threads(threads)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    scene = make_scene(n, width, height)
    run = _render_fn(renderer, mxbonn)
    params = [scene[k] for k in ("means", "quats", "scales", "opacities", "sh")]
    pairs = n * width * height
    do_forward = renderer == "torch-3dgs" or (renderer == "reference" and pairs <= REFERENCE_FORWARD_MAX_PAIRS) or (
        renderer == "mxbonn" and n <= MXBONN_MAX_N
    )
    do_backward = renderer in ("torch-3dgs", "mxbonn") and do_forward or (
        renderer == "reference" and pairs <= REFERENCE_BACKWARD_MAX_PAIRS
    )
    if renderer != "torch-3dgs":
        repeats = min(repeats, 3)  # slow references: fewer repeats

    def forward() -> None:
        with torch.no_grad():
            run(scene)

    def forward_backward() -> None:
        for p in params:
            p.grad = None
            p.requires_grad_(True)
        run(scene).sum().backward()

    def timed(fn: Callable[[], None]) -> tuple[float, float]:
        """Median wall-clock and process CPU seconds over ``repeats`` runs after a warm-up."""
        fn()  # warm-up
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return statistics.median(wall), statistics.median(cpu)

    row: dict[str, Any] = dict(renderer=renderer, n=n, width=width, height=height, forward_s=None, forward_backward_s=None)
    if do_forward:
        row["forward_s"], row["forward_cpu_s"] = timed(forward)
    if do_backward:
        row["forward_backward_s"], row["forward_backward_cpu_s"] = timed(forward_backward)
    ran = do_forward or do_backward
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 if ran else None
    row["baseline_rss_mb"] = baseline
    row["repeats"] = repeats
    row["threads"] = threads
    return row


def run_render_benchmark(
    renderers: tuple[str, ...] = ("torch-3dgs", "reference"),
    counts: tuple[int, ...] = (10_000, 100_000, 500_000),
    sizes: tuple[tuple[int, int], ...] = ((200, 200), (640, 360)),
    repeats: int = 5,
    threads: int = 2,
    mxbonn: str | None = None,
    timeout_s: float = 1800.0,
    isolate: bool = True,
    omp_passive: bool = True,
) -> list[dict[str, Any]]:
    """Run the grid; one row per (renderer, n, size) with keys ``ROW_KEYS`` (+ details).

    ``forward_s`` / ``forward_backward_s`` are None where a reference was not run (too slow or
    too big, see the ``*_MAX_PAIRS`` limits) or the subprocess failed (``error`` says why).
    ``isolate=False`` measures in this process (peak RSS then is not per configuration).
    ``omp_passive`` sets ``OMP_WAIT_POLICY=PASSIVE`` in the subprocesses (all renderers alike):
    on a shared, oversubscribed machine spinning OpenMP workers otherwise dominate the time.
    """
    env = dict(os.environ)
    if omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    rows = []
    for n in counts:
        for width, height in sizes:
            for renderer in renderers:
                args = dict(renderer=renderer, n=n, width=width, height=height, repeats=repeats, threads=threads, mxbonn=mxbonn)
                if not isolate:
                    rows.append(measure_one(**args))
                    continue
                cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(args)]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
                    if proc.returncode != 0:
                        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                except (subprocess.TimeoutExpired, RuntimeError) as e:
                    rows.append(dict(renderer=renderer, n=n, width=width, height=height, forward_s=None,
                                     forward_backward_s=None, peak_rss_mb=None, error=str(e)[:200]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table with speed-ups of torch-3dgs over each reference of the same config."""
    fmt = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    ours = {(r["n"], r["width"], r["height"]): r for r in rows if r["renderer"] == "torch-3dgs"}
    lines = [
        "| renderer | N | size | forward s (CPU s) | fwd+bwd s (CPU s) | peak RSS MB | speed-up of torch-3dgs, wall (fwd / fwd+bwd) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("forward_s") is None and r.get("forward_backward_s") is None and not r.get("error"):
            continue  # a reference skipped at this size
        mine = ours.get((r["n"], r["width"], r["height"]))
        ratio = ""
        if r["renderer"] != "torch-3dgs" and mine:
            parts = []
            for key in ("forward_s", "forward_backward_s"):
                parts.append("n/a" if r.get(key) is None or not mine.get(key) else f"{r[key] / mine[key]:.1f}x")
            ratio = " / ".join(parts)
        lines.append(
            f"| {r['renderer']} | {r['n']} | {r['width']}x{r['height']} | {fmt(r.get('forward_s'))} ({fmt(r.get('forward_cpu_s'))}) | "
            f"{fmt(r.get('forward_backward_s'))} ({fmt(r.get('forward_backward_cpu_s'))}) | {fmt(r.get('peak_rss_mb'), 0)} | {ratio} |"
        )
    return "\n".join(lines)


def scaling_summary(rows: list[dict[str, Any]]) -> str:
    """Log-log slopes of torch-3dgs time against N (per size) and against pixels (per N)."""
    ours = [r for r in rows if r["renderer"] == "torch-3dgs" and r.get("forward_backward_s")]
    out = []
    for key in ("forward_s", "forward_backward_s"):
        for (w, h) in sorted({(r["width"], r["height"]) for r in ours}):
            pts = sorted((r["n"], r[key]) for r in ours if (r["width"], r["height"]) == (w, h))
            if len(pts) >= 2:
                slope = (math.log(pts[-1][1]) - math.log(pts[0][1])) / (math.log(pts[-1][0]) - math.log(pts[0][0]))
                out.append(f"{key} at {w}x{h}: time ~ N^{slope:.2f} (N {pts[0][0]}..{pts[-1][0]})")
        for n in sorted({r["n"] for r in ours}):
            pts = sorted((r["width"] * r["height"], r[key]) for r in ours if r["n"] == n)
            if len(pts) >= 2:
                slope = (math.log(pts[-1][1]) - math.log(pts[0][1])) / (math.log(pts[-1][0]) - math.log(pts[0][0]))
                out.append(f"{key} at N={n}: time ~ pixels^{slope:.2f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--renderers", nargs="+", default=["torch-3dgs", "reference"])
    parser.add_argument("--counts", nargs="+", type=int, default=[10_000, 100_000, 500_000])
    parser.add_argument("--sizes", nargs="+", default=["200x200", "640x360"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mxbonn", help="path to a checkout of Mxbonn/gsplat-pytorch (adds the 'mxbonn' renderer)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--no-omp-passive", action="store_true", help="do not set OMP_WAIT_POLICY=PASSIVE")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(**json.loads(args.one))))
        return
    renderers = list(args.renderers)
    if args.mxbonn and "mxbonn" not in renderers:
        renderers.append("mxbonn")
    sizes = tuple(tuple(int(v) for v in s.split("x")) for s in args.sizes)
    rows = run_render_benchmark(
        tuple(renderers), tuple(args.counts), sizes, args.repeats, args.threads, args.mxbonn, omp_passive=not args.no_omp_passive
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(format_table(rows))
    print()
    print(scaling_summary(rows))


if __name__ == "__main__":
    main()
