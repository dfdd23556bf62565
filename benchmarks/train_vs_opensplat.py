"""3DGS training on ``object``: recon's ``3dgs-train`` against OpenSplat's trainer (issue 24).

Both systems train from the same initial points with the same densification settings, one CPU
thread each, for the same number of iterations; both outputs are scored by recon's evaluator.

1. recon's initial Gaussians (``3dgs`` with ``init=depth``, ``num_points``, seed 0: built through
   the same ``Pipeline`` as ``recon run``) are written as a coloured point PLY.
2. A nerfstudio dataset for OpenSplat is written to ``WORK/opensplat-data``: the 48 *training*
   views only, each RGBA image composited on OpenSplat's fixed background colour (0.613, 0.0101,
   0.3984: OpenSplat renders that colour behind the Gaussians and does not train it), the scene's
   cameras (``transforms.json``, OpenGL camera-to-world as in the scene) and those points as
   ``ply_file_path``.
3. ``opensplat DATA -n STEPS --num-downscales 0 --keep-crs --save-every SNAP`` and
   ``recon run --data object --repr 3dgs ...`` run as child processes with
   ``OMP_NUM_THREADS=1`` (recon also ``run.threads=1``). recon is set to OpenSplat's schedule:
   gsplat's step counts as written (``steps_scaler=1``: SH degree +1 every 1000 steps, refine from
   500 every 100, opacity reset every 3000), refinement stops at STEPS / 2 (OpenSplat stops
   splitting there), no cap on the number of Gaussians, prune below opacity 0.1 and (after the
   first reset) above scale 0.5 (OpenSplat's cull thresholds; the reset value 2 x 0.1 is the same),
   and the scene scale OpenSplat normalises by (the largest camera coordinate about the cameras'
   mean), so that the size thresholds and the means' learning rate coincide.
4. Each child is timed with ``os.wait4`` (wall, user + system CPU, peak RSS). While it runs, a
   watcher copies every snapshot (OpenSplat's ``splat_N.ply``, recon's checkpoints every SNAP
   steps) and notes the child's CPU seconds at that moment (from ``/proc``).
5. Every snapshot and final output is scored by recon's evaluator on the 16 test views with the
   scene's white background: OpenSplat's PLYs through ``recon run --repr 3dgs --set 3dgs.init=ply
   --refiner none``, recon's checkpoints through ``recon eval``. "Time to 30 dB" is the CPU time at
   the first snapshot whose full-image test PSNR reaches 30 dB.

OpenSplat is built outside this repository (see docs/benchmarks.md, "3DGS training against
OpenSplat (issue 24)", for the commit and the patches a CPU build needs). recon's C++ extensions
are built (``recon doctor --build``) before anything is timed::

    python benchmarks/train_vs_opensplat.py --opensplat /tmp/opensplat/build/opensplat \\
        --steps 2000 --work /tmp/os-bench/work2k --json /tmp/os-bench/2k.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OBJECT = Path("/work/shared/datasets/object")
OPENSPLAT_BACKGROUND = (0.6130, 0.0101, 0.3984)  # model.hpp: "Nerf Studio default", fixed in its trainer
PSNR_GOAL = 30.0


@dataclass
class Snapshot:
    step: int
    wall_s: float
    cpu_s: float
    path: str
    psnr: float | None = None
    psnr_masked: float | None = None
    ssim: float | None = None


@dataclass
class Result:
    system: str
    steps: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    gaussians: int = 0
    psnr: float | None = None
    psnr_masked: float | None = None
    ssim: float | None = None
    ssim_masked: float | None = None
    returncode: int = 0
    snapshots: list[Snapshot] = field(default_factory=list)
    to_goal_cpu_s: float | None = None
    to_goal_wall_s: float | None = None
    to_goal_step: int | None = None


def recon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "recon_cli.main", "-q", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------ inputs


def opensplat_scene_scale(transforms: dict[str, Any]) -> float:
    """1 / OpenSplat's normalisation factor: the largest |coordinate| of the training cameras'
    origins about their mean (``autoScaleAndCenterPoses``)."""
    origins = np.array([f["transform_matrix"] for f in transforms["frames"] if f.get("split") == "train"])[:, :3, 3]
    return float(np.abs(origins - origins.mean(0)).max())


def initial_points(data: Path, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """recon's initial Gaussians for this run (means, colours in [0, 1]), built as ``recon run`` builds them."""
    import tempfile

    from recon_core.gaussians import SH_C0
    from recon_core.pipeline import Pipeline
    from recon_core.registry import get_registry
    from recon_core.resolve import resolve_run
    from recon_core.rundir import RunDir

    reg = get_registry()
    spec = resolve_run(reg, data=data, representation="3dgs", device="cpu",
                       sets=[f"3dgs.num_points={num_points}", "3dgs.init=depth"])
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(reg, spec, RunDir.create(Path(tmp) / "run"))
        rep = pipeline.build(pipeline.load_data())
    splats = rep.splats  # type: ignore[attr-defined]
    colours = (splats["sh0"].detach().reshape(-1, 3) * SH_C0 + 0.5).clamp(0, 1)
    return splats["means"].detach().double().numpy(), colours.double().numpy()


def write_point_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary PLY with float x y z and uchar red green blue (what OpenSplat's reader takes)."""
    vertex = np.zeros(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = xyz.T
    c = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    vertex["red"], vertex["green"], vertex["blue"] = c.T
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(xyz)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path.write_bytes(header.encode() + vertex.tobytes())


def export_opensplat_data(data: Path, out: Path, xyz: np.ndarray, rgb: np.ndarray) -> dict[str, Any]:
    """The scene's training views as a nerfstudio dataset on OpenSplat's background."""
    from PIL import Image

    transforms = json.loads((data / "transforms.json").read_text())
    (out / "images").mkdir(parents=True, exist_ok=True)
    bg = np.array(OPENSPLAT_BACKGROUND, dtype=np.float64)
    frames = []
    for f in transforms["frames"]:
        if f.get("split") != "train":
            continue
        rgba = np.asarray(Image.open(data / f["file_path"]).convert("RGBA"), dtype=np.float64) / 255.0
        rgb_img = rgba[..., :3] * rgba[..., 3:] + bg * (1.0 - rgba[..., 3:])
        name = Path(f["file_path"]).name
        Image.fromarray(np.clip(np.round(rgb_img * 255.0), 0, 255).astype(np.uint8)).save(out / "images" / name)
        frames.append({"file_path": f"images/{name}", "transform_matrix": f["transform_matrix"]})
    write_point_ply(out / "points.ply", xyz, rgb)
    keys = ("camera_model", "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "p1", "p2")
    doc = {**{k: transforms[k] for k in keys if k in transforms}, "frames": frames, "ply_file_path": "points.ply"}
    (out / "transforms.json").write_text(json.dumps(doc, indent=1))
    return transforms


# ------------------------------------------------------------------------------ running


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process and its waited-for children (``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks  # utime stime cutime cstime


def run_timed(cmd: list[str], log: Path, watch: Any = None, cwd: Path | None = None) -> tuple[int, float, float, float]:
    """Run ``cmd``; (returncode, wall s, CPU s, peak RSS MB) from ``wait4``. ``watch(pid, t0)``
    is called every 0.2 s while it runs."""
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=cwd)
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.2):
                if watch is not None:
                    watch(proc.pid, t0)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        thread.join()
        if watch is not None:
            watch(None, t0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def opensplat_run(binary: Path, data: Path, work: Path, steps: int, snap: int) -> Result:
    out = work / "opensplat"
    shutil.rmtree(out, ignore_errors=True)
    (out / "snapshots").mkdir(parents=True)
    result = Result("opensplat", steps)
    seen: set[Path] = set()

    def watch(pid: int | None, t0: float) -> None:
        for p in sorted(out.glob("splat_*.ply")):
            if p in seen:
                continue
            cpu = proc_cpu_s(pid) if pid is not None else None
            time.sleep(0.5)  # let the writer finish the file (it is not written atomically)
            dest = out / "snapshots" / p.name
            shutil.move(str(p), dest)
            seen.add(p)
            result.snapshots.append(Snapshot(int(p.stem.split("_")[1]), time.perf_counter() - t0, cpu if cpu is not None else math.nan, str(dest)))

    cmd = [str(binary), str(data), "-n", str(steps), "-o", str(out / "splat.ply"), "--cpu", "--keep-crs",
           "--num-downscales", "0", "--save-every", str(snap),
           "--sh-degree", "3", "--sh-degree-interval", "1000", "--refine-every", "100", "--warmup-length", "500",
           "--reset-alpha-every", "30", "--densify-grad-thresh", "0.0002", "--densify-size-thresh", "0.01", "--ssim-weight", "0.2"]
    result.returncode, result.wall_s, result.cpu_s, result.peak_rss_mb = run_timed(cmd, out / "log.txt", watch)
    return result


def recon_sets(steps: int, scene_scale: float, num_points: int) -> list[str]:
    sets = {
        "3dgs.num_points": num_points, "3dgs.init": "depth",
        "3dgs-train.steps": steps, "3dgs-train.steps_scaler": 1, "3dgs-train.ssim_weight": 0.2,
        "3dgs-train.strategy.refine_start": 500, "3dgs-train.strategy.refine_every": 100,
        "3dgs-train.strategy.reset_every": 3000, "3dgs-train.strategy.refine_stop": steps // 2,
        "3dgs-train.strategy.max_gaussians": 0, "3dgs-train.strategy.grow_grad2d": 0.0002,
        "3dgs-train.strategy.grow_scale3d": 0.01, "3dgs-train.strategy.prune_opa": 0.1,
        "3dgs-train.strategy.prune_scale3d": 0.5, "3dgs-train.scene_scale": f"{scene_scale:.6g}",
        "run.threads": 1,
    }
    return [f"{k}={v}" for k, v in sets.items()]


def recon_run(data: Path, work: Path, steps: int, snap: int, scene_scale: float, num_points: int) -> Result:
    out = work / "recon"
    shutil.rmtree(out, ignore_errors=True)
    (out / "snapshots").mkdir(parents=True)
    run = out / "run"
    result = Result("recon", steps)
    last = [""]

    def watch(pid: int | None, t0: float) -> None:
        pointer = run / "checkpoints" / "latest.json"
        try:
            folder = json.loads(pointer.read_text())["folder"]
        except (OSError, ValueError, KeyError):
            return
        if folder == last[0] or "-refiner" not in folder:
            return
        refiner, step = folder.split("-refiner", 1)[1].split("-step")  # "000004-refiner0-step750"
        step = int(step) if int(refiner) == 0 else steps  # "refiner1-step0": the end of 3dgs-train
        cpu = proc_cpu_s(pid) if pid is not None else None
        dest = out / "snapshots" / f"step{step}"
        try:  # a copy of the run folder holding just this checkpoint, for `recon eval`
            (dest / "checkpoints").mkdir(parents=True, exist_ok=True)
            config = json.loads((run / "config.json").read_text())
            config["run"]["save_renders"] = False  # scores only
            (dest / "config.json").write_text(json.dumps(config))
            shutil.copytree(run / "checkpoints" / folder, dest / "checkpoints" / folder, dirs_exist_ok=True)
            (dest / "checkpoints" / "latest.json").write_text(json.dumps({"seq": 1, "folder": folder}))
        except OSError:
            shutil.rmtree(dest, ignore_errors=True)  # pruned under us: the next one will do
            return
        last[0] = folder
        result.snapshots.append(Snapshot(step, time.perf_counter() - t0, cpu if cpu is not None else math.nan, str(dest)))

    cmd = recon_cmd("run", "--data", str(data), "--repr", "3dgs", "--out", str(run), "--eval", "psnr,ssim",
                    "--set", f"run.checkpoint_every={snap}", *[a for s in recon_sets(steps, scene_scale, num_points) for a in ("--set", s)])
    result.returncode, result.wall_s, result.cpu_s, result.peak_rss_mb = run_timed(cmd, out / "log.txt", watch)
    return result


# ------------------------------------------------------------------------------ scoring


def _metrics(doc: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in doc["metrics"].items() if isinstance(v, (int, float))}


def score_ply(ply: Path, data: Path, out: Path) -> tuple[dict[str, float], int]:
    """recon's evaluator on a 3DGS PLY (the scene's test views and background)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = recon_cmd("run", "--data", str(data), "--repr", "3dgs", "--set", "3dgs.init=ply", "--set", f"3dgs.ply_path={ply}",
                    "--refiner", "none", "--eval", "psnr,ssim", "--out", str(out), "--set", "run.save_renders=false", "--json")
    doc = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=child_env()).stdout)
    from recon_core.ply import read_splat_ply

    return _metrics(doc), int(read_splat_ply(ply)["means"].shape[0])


def score_checkpoint(run_copy: Path) -> dict[str, float]:
    cmd = recon_cmd("eval", str(run_copy), "--eval", "psnr,ssim", "--json")
    return _metrics(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=child_env()).stdout))


def score_snapshot(system: str, snap: Snapshot, data: Path, work: Path) -> None:
    m = score_ply(Path(snap.path), data, work / "score" / f"{system}-{snap.step}")[0] if system == "opensplat" \
        else score_checkpoint(Path(snap.path))
    snap.psnr, snap.psnr_masked, snap.ssim = m.get("psnr"), m.get("psnr_masked"), m.get("ssim")


def score(result: Result, data: Path, work: Path) -> None:
    for snap in result.snapshots:
        if snap.psnr is None:
            score_snapshot(result.system, snap, data, work)
    final = work / result.system / ("splat.ply" if result.system == "opensplat" else "run/point_cloud.ply")
    m, result.gaussians = score_ply(final, data, work / "score" / f"{result.system}-final")
    result.psnr, result.psnr_masked = m.get("psnr"), m.get("psnr_masked")
    result.ssim, result.ssim_masked = m.get("ssim"), m.get("ssim_masked")
    reached = [s for s in sorted(result.snapshots, key=lambda s: s.step) if s.psnr is not None and s.psnr >= PSNR_GOAL]
    if reached:
        result.to_goal_cpu_s, result.to_goal_wall_s, result.to_goal_step = reached[0].cpu_s, reached[0].wall_s, reached[0].step


def table(results: list[Result]) -> str:
    rows = ["| system | steps | wall | CPU (user+sys) | peak RSS | Gaussians | test PSNR (masked) | test SSIM (masked) | to 30 dB: step, CPU |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        goal = f"{r.to_goal_step}, {r.to_goal_cpu_s:.0f} s" if r.to_goal_step is not None else "not reached"
        rows.append(f"| {r.system} | {r.steps} | {r.wall_s:.0f} s | {r.cpu_s:.0f} s | {r.peak_rss_mb:.0f} MB | {r.gaussians} | "
                    f"{r.psnr:.2f} dB ({r.psnr_masked:.2f}) | {r.ssim:.4f} ({r.ssim_masked:.4f}) | {goal} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--opensplat", type=Path, default=Path("opensplat"), help="the opensplat binary (built outside this repository)")
    ap.add_argument("--data", type=Path, default=OBJECT)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--snapshot-every", type=int, default=250, help="steps between snapshots (time to 30 dB)")
    ap.add_argument("--num-points", type=int, default=10000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/train_vs_opensplat"))
    ap.add_argument("--systems", default="recon,opensplat")
    ap.add_argument("--sequential", action="store_true", help="one system after the other (default: both at once)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--print-recon-sets", action="store_true",
                    help="print the --set options of recon's run (and run.checkpoint_every) and exit")
    args = ap.parse_args()
    if args.print_recon_sets:
        scale = opensplat_scene_scale(json.loads((args.data / "transforms.json").read_text()))
        sets = [f"run.checkpoint_every={args.snapshot_every}", *recon_sets(args.steps, scale, args.num_points)]
        print(" ".join(f"--set {s}" for s in sets))
        return
    if not args.opensplat.is_file():
        sys.exit(f"error: {args.opensplat} is not the opensplat binary")
    args.work.mkdir(parents=True, exist_ok=True)
    # build recon's C++ extensions first: a first-use build inside the timed child would add the
    # compiler's CPU time and its peak RSS (1.6 GB, docs/benchmarks.md) to recon's figures
    subprocess.run(recon_cmd("doctor", "--build"), env=child_env(), check=False)
    xyz, rgb = initial_points(args.data, args.num_points)
    transforms = export_opensplat_data(args.data, args.work / "opensplat-data", xyz, rgb)
    scale = opensplat_scene_scale(transforms)
    print(f"{len(xyz)} initial points; OpenSplat's scene scale {scale:.4f}; load average {os.getloadavg()}", flush=True)
    jobs = {
        "recon": lambda: recon_run(args.data, args.work, args.steps, args.snapshot_every, scale, args.num_points),
        "opensplat": lambda: opensplat_run(args.opensplat, args.work / "opensplat-data", args.work, args.steps, args.snapshot_every),
    }
    chosen = [s for s in args.systems.split(",") if s]
    results: dict[str, Result] = {}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if args.sequential:
        for s in chosen:
            results[s] = jobs[s]()
    else:
        threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, jobs[s]())) for s in chosen]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for s in chosen:
        if results[s].returncode != 0:
            sys.exit(f"error: {s} failed (exit {results[s].returncode}); see {args.work / s / 'log.txt'}")
        score(results[s], args.data, args.work)
    ordered = [results[s] for s in chosen]
    print(f"{started} – {finished}, load average now {os.getloadavg()}, {'sequential' if args.sequential else 'concurrent'}")
    print(table(ordered))
    for r in ordered:
        print(r.system, "snapshots:", ", ".join(f"{s.step}: {s.psnr:.2f} dB @ {s.cpu_s:.0f} CPU-s" for s in r.snapshots if s.psnr is not None))
    if args.json:
        args.json.write_text(json.dumps({"started": started, "finished": finished, "scene_scale": scale,
                                         "results": [asdict(r) for r in ordered]}, indent=1))


if __name__ == "__main__":
    main()
