"""Speed and memory of Gaussian rasterisers on the issue-4/10 benchmark scene (``recon bench render``).

Scene: N Gaussians uniform in the unit cube centred at (0, 0, 3), scales U(0.005, 0.03),
opacities U(0.1, 0.9), SH degree 0 (colours U(0, 1)), one identity camera with
fx = fy = 1.5 H and a centred principal point. ``forward_s`` is one render under
``torch.no_grad()``; ``forward_backward_s`` is a render plus ``image.sum().backward()`` into
means, quats, scales, opacities and SH. Each time is the median of ``repeats`` runs after one
warm-up, with ``threads`` torch threads. Every configuration runs in a fresh subprocess, so
``peak_rss_mb`` is that process's peak resident memory (ru_maxrss, interpreter and torch
included; ``baseline_rss_mb`` is the same process before the scene exists).

Renderers (``RENDERERS``: name -> factory(path) -> render(scene) -> rgb):

    cpp-cpu     :func:`.rasterize.rasterize_gaussians` with the compiled CPU kernels (the default:
                fused projection + SH, binning and compositing, all compiled)
    cpp-unfused the same with ``projection="torch"``: projection, SH and packing as PyTorch ops
                (the compiled path before issue 24)
    torch-3dgs  the same with ``backend="torch"`` (pure PyTorch)
    reference   :func:`._reference.render_reference` (every pixel x every Gaussian; only where
                it finishes in reasonable time and memory)

Peers (other projects' renderers, checked out outside this repository) come from
``benchmarks/render_peers.py`` (``load_peer(name, path)``), named on the command line as
``--peer NAME=PATH``. Another adapter can be added with :func:`register_renderer` in a module
given to :func:`run_render_benchmark` as ``setup_modules`` (it is imported by every child
process before the renderer is built).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from recon_core.errors import InputError

__all__ = [
    "ROW_KEYS",
    "RENDERERS",
    "make_scene",
    "register_renderer",
    "renderer",
    "measure_one",
    "run_render_benchmark",
    "format_table",
    "parse_sizes",
    "KERNELS",
    "KernelTimer",
    "stage_breakdown",
    "format_stages",
]

Scene = Mapping[str, Any]
RenderFn = Callable[[Scene], Tensor]
RendererFactory = Callable[[str | None], RenderFn]

ROW_KEYS = ("renderer", "n", "width", "height", "forward_s", "forward_backward_s", "peak_rss_mb")
"""Keys every row has (the ``--json`` contract); rows carry more details (CPU times, threads)."""

SH_C0 = 0.28209479177387814

# Slow renderers run only where they finish in reasonable time and memory: pixel-Gaussian pairs
# per image for the brute-force reference (forward, and forward + backward through autograd),
# and Gaussians for Mxbonn/gsplat-pytorch (its fwd+bwd peak was 11 GB at 100k / 640x360).
REFERENCE_FORWARD_MAX_PAIRS = 4.0e8
REFERENCE_BACKWARD_MAX_PAIRS = 2.5e7
MXBONN_MAX_N = 100_000
SLOW_RENDERERS = frozenset({"reference", "mxbonn"})  # at most 3 repeats


def make_scene(n: int, width: int, height: int, seed: int = 0) -> dict[str, Any]:
    """The benchmark scene: Gaussians [n] and one camera (viewmats [1, 4, 4], Ks [1, 3, 3])."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) - 0.5
    means[:, 2] += 3.0
    f = 1.5 * height
    return dict(
        means=means,
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=0.005 + 0.025 * torch.rand(n, 3, generator=g),
        opacities=0.1 + 0.8 * torch.rand(n, generator=g),
        sh=(torch.rand(n, 1, 3, generator=g) - 0.5) / SH_C0,
        viewmats=torch.eye(4)[None],
        Ks=torch.tensor([[[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]]]),
        width=width,
        height=height,
    )


def _ours(backend: str, projection: str = "auto") -> RendererFactory:
    def factory(path: str | None) -> RenderFn:
        from .rasterize import RasterizeSettings, rasterize_gaussians

        settings = RasterizeSettings(backend=backend, projection=projection)

        def run(s: Scene) -> Tensor:
            rgb, _, _ = rasterize_gaussians(
                s["means"], s["quats"], s["scales"], s["opacities"], s["viewmats"], s["Ks"], s["width"], s["height"],
                sh=s["sh"], sh_degree=0, settings=settings,
            )
            return rgb

        return run

    return factory


def _reference(path: str | None) -> RenderFn:
    from ._reference import render_reference

    def run(s: Scene) -> Tensor:
        rgb, _, _ = render_reference(
            s["means"], s["quats"], s["scales"], s["opacities"], s["viewmats"], s["Ks"], s["width"], s["height"],
            sh=s["sh"], sh_degree=0,
        )
        return rgb

    return run


RENDERERS: dict[str, RendererFactory] = {
    "cpp-cpu": _ours("cpp"),
    "cpp-unfused": _ours("cpp", "torch"),
    "torch-3dgs": _ours("torch"),
    "reference": _reference,
}


def register_renderer(name: str, factory: RendererFactory) -> None:
    """Add a renderer: ``factory(path)`` returns ``render(scene) -> rgb`` ([H, W, 3] or [1, H, W, 3])."""
    RENDERERS[name] = factory


def _peer_module() -> ModuleType | None:
    """``benchmarks/render_peers.py`` of this checkout (or of the working directory), if present."""
    if "render_peers" in sys.modules:
        return sys.modules["render_peers"]
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        path = root / "benchmarks" / "render_peers.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("render_peers", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["render_peers"] = module  # before exec: its dataclasses look it up
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules["render_peers"]
                raise
            return module
    return None


def renderer(name: str, path: str | None = None) -> tuple[RenderFn, str | None]:
    """``(render(scene) -> rgb, commit)`` for a built-in, registered or peer renderer."""
    if name in RENDERERS:
        return RENDERERS[name](path), None
    peers = _peer_module()
    if peers is None or name not in getattr(peers, "PEER_LOADERS", {}):
        known = sorted(RENDERERS) + sorted(getattr(peers, "PEER_LOADERS", {}) if peers else [])
        raise InputError(f"unknown renderer {name!r}; known: {', '.join(known)}")
    if not path:
        raise InputError(f"{name!r} is a peer renderer: give the path of its checkout with --peer {name}=PATH")
    peer = peers.load_peer(name, path)
    return peer.render, getattr(peer, "commit", None)


def _plan(name: str, n: int, width: int, height: int) -> tuple[bool, bool]:
    """(run the forward, run forward + backward) for this renderer and size."""
    pairs = n * width * height
    if name == "reference":
        return pairs <= REFERENCE_FORWARD_MAX_PAIRS, pairs <= REFERENCE_BACKWARD_MAX_PAIRS
    if name == "mxbonn":
        return n <= MXBONN_MAX_N, n <= MXBONN_MAX_N
    return True, True


def measure_one(
    renderer_name: str,
    n: int,
    width: int,
    height: int,
    repeats: int = 5,
    threads: int = 2,
    path: str | None = None,
    setup_modules: Sequence[str] = (),
) -> dict[str, Any]:
    """Time one configuration in this process (run it in a fresh process for a per-config peak RSS)."""
    for module in setup_modules:
        _import_setup(module)
    torch.set_num_threads(threads)
    baseline = _max_rss_mb()
    run, commit = renderer(renderer_name, path)
    scene = make_scene(n, width, height)
    params = [scene[k] for k in ("means", "quats", "scales", "opacities", "sh")]
    do_forward, do_backward = _plan(renderer_name, n, width, height)
    if renderer_name in SLOW_RENDERERS:
        repeats = min(repeats, 3)

    def forward() -> None:
        with torch.no_grad():
            run(scene)

    def forward_backward() -> None:
        for p in params:
            p.grad = None
            p.requires_grad_(True)
        run(scene).sum().backward()

    def timed(fn: Callable[[], None]) -> tuple[float, float]:
        """Median wall-clock and process CPU seconds of ``repeats`` runs after a warm-up."""
        fn()
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return statistics.median(wall), statistics.median(cpu)

    row: dict[str, Any] = dict(renderer=renderer_name, n=n, width=width, height=height, forward_s=None, forward_backward_s=None)
    if do_forward:
        row["forward_s"], row["forward_cpu_s"] = timed(forward)
    if do_backward:
        row["forward_backward_s"], row["forward_backward_cpu_s"] = timed(forward_backward)
    row["peak_rss_mb"] = _max_rss_mb() if do_forward or do_backward else None
    row.update(baseline_rss_mb=baseline, repeats=repeats, threads=threads)
    if commit:
        row["commit"] = commit
    return row


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _import_setup(module: str) -> None:
    """Import a module (dotted name or .py path) that registers renderers."""
    if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(module).stem, module)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        importlib.import_module(module)


def run_render_benchmark(
    renderers: Sequence[str] = ("cpp-cpu", "torch-3dgs"),
    counts: Sequence[int] = (10_000, 100_000),
    sizes: Sequence[tuple[int, int]] = ((200, 200), (640, 360)),
    repeats: int = 5,
    threads: int = 2,
    peers: Mapping[str, str] | None = None,
    timeout_s: float = 1800.0,
    isolate: bool = True,
    omp_passive: bool = True,
    setup_modules: Sequence[str] = (),
    log: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the grid; one row per (n, size, renderer), with at least the keys :data:`ROW_KEYS`.

    ``forward_s`` / ``forward_backward_s`` are None where a slow renderer was not run at that
    size or the measurement failed (then ``error`` says why). ``peers`` maps peer renderer
    names to checkout paths (each is added to ``renderers`` if missing). ``isolate=False``
    measures in this process (peak RSS is then not per configuration). ``omp_passive`` sets
    ``OMP_WAIT_POLICY=PASSIVE`` in the subprocesses (all renderers alike): on a shared,
    oversubscribed machine, spinning OpenMP workers otherwise dominate the time.
    """
    peers = dict(peers or {})
    names = list(renderers) + [p for p in peers if p not in renderers]
    for name in names:  # fail early, in this process, on unknown names
        if name not in RENDERERS and name not in peers:
            renderer(name, None)
    env = dict(os.environ)
    if omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    rows: list[dict[str, Any]] = []
    for n in counts:
        for width, height in sizes:
            for name in names:
                args = dict(renderer_name=name, n=n, width=width, height=height, repeats=repeats, threads=threads,
                            path=peers.get(name), setup_modules=list(setup_modules))
                if isolate:
                    row = _measure_in_subprocess(args, env, timeout_s)
                else:
                    row = measure_one(**args)
                rows.append(row)
                if log:
                    log(row)
    return rows


def _measure_in_subprocess(args: dict[str, Any], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "recon_plugins.gaussians.bench", json.dumps(args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            err = proc.stderr.strip().splitlines()
            raise RuntimeError(err[-1] if err else f"exit code {proc.returncode}")
        return json.loads(lines[-1])
    except (subprocess.TimeoutExpired, RuntimeError, json.JSONDecodeError) as e:
        return dict(renderer=args["renderer_name"], n=args["n"], width=args["width"], height=args["height"],
                    forward_s=None, forward_backward_s=None, peak_rss_mb=None, error=str(e)[:300])


def format_table(rows: Sequence[Mapping[str, Any]], baseline: str = "cpp-cpu") -> str:
    """Markdown table; the last column is each row's time over ``baseline``'s for the same config."""

    def fmt(v: float | None, digits: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    base = {(r["n"], r["width"], r["height"]): r for r in rows if r["renderer"] == baseline}
    lines = [
        f"| renderer | N | size | forward s (CPU s) | fwd+bwd s (CPU s) | peak RSS MB | time / {baseline} (fwd, fwd+bwd) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = base.get((r["n"], r["width"], r["height"]))
        ratio = ""
        if ref is not None and r["renderer"] != baseline:
            ratio = ", ".join(
                "n/a" if not r.get(k) or not ref.get(k) else f"{r[k] / ref[k]:.1f}x" for k in ("forward_s", "forward_backward_s")
            )
        note = f" ({r['error']})" if r.get("error") else ""
        lines.append(
            f"| {r['renderer']}{note} | {r['n']} | {r['width']}x{r['height']} | "
            f"{fmt(r.get('forward_s'))} ({fmt(r.get('forward_cpu_s'))}) | "
            f"{fmt(r.get('forward_backward_s'))} ({fmt(r.get('forward_backward_cpu_s'))}) | "
            f"{fmt(r.get('peak_rss_mb'), 0)} | {ratio} |"
        )
    return "\n".join(lines)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"200x200,640x360"`` -> [(200, 200), (640, 360)] (width x height)."""
    sizes = []
    for part in text.split(","):
        try:
            w, h = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise InputError(f"bad size {part!r}: expected WIDTHxHEIGHT, e.g. 640x360") from None
        if w < 1 or h < 1:
            raise InputError(f"bad size {part!r}: width and height must be positive")
        sizes.append((w, h))
    return sizes


# ------------------------------------------------------------------ where the time goes

KERNELS = ("project_forward", "bin_gaussians", "composite_forward", "composite_backward", "project_backward")
"""The compiled kernels of ``rasterize_cpu.cpp`` that a torch-3dgs render and its backward call."""


class KernelTimer:
    """While active (``with KernelTimer() as t``), every call into the compiled extension of
    torch-3dgs is timed: ``t.cpu_s[name]`` (process CPU seconds, all threads) and
    ``t.wall_s[name]`` per kernel, ``t.calls[name]``. The kernels themselves are the same; only
    :func:`recon_plugins.gaussians._cpp.extension` hands out a timing proxy meanwhile."""

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = {}
        self.wall_s: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._original: Callable[[], ModuleType | None] | None = None

    def __enter__(self) -> "KernelTimer":
        from . import _cpp

        ext = _cpp.extension()
        if ext is None:
            raise InputError("the compiled CPU rasteriser is unavailable (RECON_NO_CPP or no compiler): nothing to time")
        timer = self

        class _Timed:
            def __getattr__(self, name: str) -> Any:
                fn = getattr(ext, name)
                if not callable(fn):
                    return fn

                def timed(*args: Any) -> Any:
                    t0, c0 = time.perf_counter(), time.process_time()
                    try:
                        return fn(*args)
                    finally:
                        timer.cpu_s[name] = timer.cpu_s.get(name, 0.0) + time.process_time() - c0
                        timer.wall_s[name] = timer.wall_s.get(name, 0.0) + time.perf_counter() - t0
                        timer.calls[name] = timer.calls.get(name, 0) + 1

                return timed

        proxy = _Timed()
        self._original = _cpp.extension
        _cpp.extension = lambda: proxy  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        from . import _cpp

        _cpp.extension = self._original  # type: ignore[assignment]

    def kernel_cpu_s(self) -> float:
        return sum(self.cpu_s.values())


def stage_breakdown(renderer_name: str, n: int, width: int, height: int, repeats: int = 5, threads: int = 2) -> dict[str, Any]:
    """Per-stage CPU time of one forward + backward of ``renderer_name`` (``cpp-cpu`` or
    ``cpp-unfused``) on the benchmark scene, averaged over ``repeats`` runs after a warm-up: each
    compiled kernel (:data:`KERNELS`), and ``outside_kernels`` (everything else: PyTorch ops of
    the unfused projection and their autograd backward, activations, packing, Python)."""
    torch.set_num_threads(threads)
    run, _ = renderer(renderer_name, None)
    scene = make_scene(n, width, height)
    params = [scene[k] for k in ("means", "quats", "scales", "opacities", "sh")]

    def forward_backward() -> None:
        for p in params:
            p.grad = None
            p.requires_grad_(True)
        run(scene).sum().backward()

    forward_backward()
    with KernelTimer() as timer:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            forward_backward()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    row: dict[str, Any] = dict(renderer=renderer_name, n=n, width=width, height=height, threads=threads, repeats=repeats,
                               total_cpu_s=cpu / repeats, total_wall_s=wall / repeats)
    for name in KERNELS:
        row[f"{name}_cpu_s"] = timer.cpu_s.get(name, 0.0) / repeats
    row["outside_kernels_cpu_s"] = (cpu - timer.kernel_cpu_s()) / repeats
    return row


def format_stages(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`stage_breakdown` rows: ms of CPU time per stage and its share."""
    stages = [f"{k}_cpu_s" for k in KERNELS] + ["outside_kernels_cpu_s"]
    head = "| renderer | N | size | " + " | ".join(s.removesuffix("_cpu_s").replace("_", " ") for s in stages) + " | total |"
    lines = [head, "|" + "---|" * (len(stages) + 4)]
    for r in rows:
        cells = [f"{1e3 * r[s]:.1f} ({100 * r[s] / r['total_cpu_s']:.0f} %)" for s in stages]
        lines.append(f"| {r['renderer']} | {r['n']} | {r['width']}x{r['height']} | " + " | ".join(cells)
                     + f" | {1e3 * r['total_cpu_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # child process of run_render_benchmark: one configuration, one JSON line
    # through the package module, so that renderers registered by setup modules are seen
    from recon_plugins.gaussians import bench as _bench

    print(json.dumps(_bench.measure_one(**json.loads(sys.argv[1]))))
