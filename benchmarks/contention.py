"""CPU cost under contention: 3dgs training steps and D2GV decoding, idle and beside busy loops.

    python benchmarks/contention.py --data /work/shared/datasets/object \\
        --video /work/shared/datasets/video/bigbuckbunny.mp4 --threads 1,2,auto --repeats 2

For each load (``idle``: nothing started by the benchmark; ``busy``: ``--busy`` processes each
running ``while True: pass`` beside it) and each ``run.threads`` value, a fresh worker process
(so that OpenMP reads the environment at start-up, as ``recon run`` does) measures:

* **3dgs**: the default ``recon run --repr 3dgs`` pipeline on ``--data`` (``Pipeline.run``, the
  code ``recon run`` executes; ``--set 3dgs-train.steps=--steps``, no renders, no exports, no
  evaluators) — CPU seconds of the refine stage per step (``timings.refine_cpu``: every thread
  of the process) and wall seconds per step;
* **d2gv**: decode FPS (wall and CPU) of an unfitted D2GV model with ``--gaussians`` Gaussians
  per GoP on ``--frames`` frames of ``--video`` at 320×180 (``decode.Decoder``, what
  ``torch-2dgs`` uses), one warm-up pass then the median of ``--decode-repeats``.

The machine may be shared: the load average (``/proc/loadavg``) and the share of CPU time the
whole machine spent busy during each measurement (``/proc/stat``) are printed beside each figure.
``--wait`` chooses the OpenMP wait policy of the workers (``default``: recon's, i.e. passive
unless the environment says otherwise; ``active``: OpenMP's spinning default, for comparison).
The ratio ``busy / idle`` of the CPU seconds per step is the issue 25 target (auto ≤ 1.3×).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

HERE = Path(__file__).resolve()


def _proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# ----------------------------------------------------------------------------- workers


def _worker_3dgs(data: str, threads: str, steps: int) -> dict[str, Any]:
    from recon_core.pipeline import Pipeline
    from recon_core.registry import get_registry
    from recon_core.resolve import resolve_run
    from recon_core.rundir import RunDir
    from recon_plugins.gaussians._cpp import extension

    extension()  # build or import the compiled rasteriser before anything is timed
    registry = get_registry()
    sets = [f"3dgs-train.steps={steps}", f"run.threads={threads}", "run.save_renders=false", "run.export=[]",
            "run.checkpoint_every=0", "run.log_every=0"]
    spec = resolve_run(registry, data=data, representation="3dgs", evaluators=["none"], device="cpu", seed=0, sets=sets)
    with tempfile.TemporaryDirectory(prefix="recon-contention-") as tmp:
        doc = Pipeline(registry, spec, RunDir.create(Path(tmp) / "run")).run()
    t = doc["timings"]
    import torch

    return {"cpu_per_step": t["refine_cpu"] / steps, "wall_per_step": t["refine"] / steps,
            "threads_used": _threads_used(threads), "torch_threads_after": torch.get_num_threads()}


def _threads_used(threads: str) -> int:
    from recon_core.threads import resolve_threads

    return resolve_threads(threads)


def _worker_d2gv(video_path: str, threads: str, frames: int, gaussians: int, repeats: int) -> dict[str, Any]:
    import recon_core  # noqa: F401 - first, as in `recon`: it sets the OpenMP wait policy before torch loads
    import av
    import numpy as np
    import torch

    from recon_core import RunContext, Video
    from recon_core.threads import torch_threads
    from recon_plugins.d2gv._cpp import extension
    from recon_plugins.d2gv.decode import Decoder
    from recon_plugins.d2gv.representation import D2GV, D2GVConfig

    extension()
    W, H = 320, 180
    with av.open(video_path) as container:
        stream = container.streams.video[0]
        imgs = []
        for frame in container.decode(stream):
            imgs.append(frame.to_ndarray(format="rgb24", width=W, height=H))
            if len(imgs) >= frames:
                break
    clip = torch.from_numpy(np.stack(imgs)).float() / 255
    video = Video("clip", len(imgs), W, H, 25.0, lambda i: clip[i], gop_length=12)
    rep = D2GV(D2GVConfig(num_gaussians=gaussians))
    rep.build(video, RunContext(torch.device("cpu"), seed=0))
    walls, cpus = [], []
    with torch_threads(threads), torch.no_grad():
        for k in range(repeats + 1):
            t, c = time.perf_counter(), time.process_time()
            Decoder(rep, "auto").frames_uint8()
            if k:  # the first pass warms up
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
    n = len(imgs)
    return {"fps": n / statistics.median(walls), "cpu_ms_per_frame": 1e3 * statistics.median(cpus) / n,
            "threads_used": _threads_used(threads)}


# ----------------------------------------------------------------------------- driver


def _run_worker(args: argparse.Namespace, task: str, threads: str) -> dict[str, Any]:
    env = dict(os.environ)
    if args.wait == "active":
        env.pop("OMP_WAIT_POLICY", None)
        env["RECON_OMP_ACTIVE"] = "1"
    cmd = [sys.executable, str(HERE), "--worker", task, "--worker-threads", threads, "--data", str(args.data),
           "--video", str(args.video), "--steps", str(args.steps), "--frames", str(args.frames),
           "--gaussians", str(args.gaussians), "--decode-repeats", str(args.decode_repeats)]
    load0, (busy0, total0) = _loadavg(), _proc_stat()
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate()
        except BaseException:
            proc.kill()
            raise
    out = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    busy1, total1 = _proc_stat()
    if out.returncode != 0:
        raise SystemExit(f"worker {task} threads={threads} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(load=max(load0, _loadavg()), machine_busy=(busy1 - busy0) / max(1, total1 - total0))
    return result


def _busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("/work/shared/datasets/object"))
    p.add_argument("--video", type=Path, default=Path("/work/shared/datasets/video/bigbuckbunny.mp4"))
    p.add_argument("--threads", default="1,2,auto", help="comma-separated run.threads values")
    p.add_argument("--tasks", default="3dgs,d2gv")
    p.add_argument("--busy", type=int, default=2, help="busy-loop processes started for the 'busy' load")
    p.add_argument("--loads", default="idle,busy")
    p.add_argument("--steps", type=int, default=60, help="3dgs-train steps per measurement")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--gaussians", type=int, default=20000)
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="repeat the whole table (loads alternate within each)")
    p.add_argument("--wait", choices=("default", "active"), default="default")
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-threads", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    signal.signal(signal.SIGTERM, _interrupt)  # unwind, so busy loops and workers are stopped
    if args.worker:
        if args.worker == "3dgs":
            result = _worker_3dgs(str(args.data), args.worker_threads, args.steps)
        else:
            result = _worker_d2gv(str(args.video), args.worker_threads, args.frames, args.gaussians, args.decode_repeats)
        print(json.dumps(result))
        return

    rows: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for task in args.tasks.split(","):
            for threads in args.threads.split(","):
                for load in args.loads.split(","):
                    procs = _busy_loops(args.busy) if load == "busy" else []
                    try:
                        if procs:
                            time.sleep(0.5)  # let the loops take their cores
                        r = _run_worker(args, task, threads)
                    finally:
                        _stop(procs)
                    r.update(task=task, threads=threads, load_kind=load, repeat=rep, wait=args.wait)
                    rows.append(r)
                    figure = (f"{r['cpu_per_step']:.3f} CPU-s/step, {r['wall_per_step']:.3f} s/step" if task == "3dgs"
                              else f"{r['fps']:.1f} FPS, {r['cpu_ms_per_frame']:.2f} CPU-ms/frame")
                    print(f"{task:5s} threads={threads:4s} ({r['threads_used']}) {load:4s}: {figure}  "
                          f"[loadavg {r['load']:.2f}, machine busy {100 * r['machine_busy']:.0f}%]", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    _summary(rows)


def _summary(rows: list[dict[str, Any]]) -> None:
    """Median over repeats per (task, threads, load), and the busy/idle ratio of the CPU cost."""
    print("\nmedians over repeats; ratio = busy / idle of CPU cost per step (3dgs) or per frame (d2gv)")
    keys = sorted({(r["task"], r["threads"]) for r in rows})
    for task, threads in keys:
        cost = "cpu_per_step" if task == "3dgs" else "cpu_ms_per_frame"
        speed = "wall_per_step" if task == "3dgs" else "fps"
        by = {load: [r for r in rows if (r["task"], r["threads"], r["load_kind"]) == (task, threads, load)]
              for load in ("idle", "busy")}
        med = {load: (statistics.median(r[cost] for r in rs), statistics.median(r[speed] for r in rs))
               for load, rs in by.items() if rs}
        text = "  ".join(f"{load}: cost {c:.3f}, {speed} {s:.3f}" for load, (c, s) in med.items())
        ratio = f"  ratio {med['busy'][0] / med['idle'][0]:.2f}" if len(med) == 2 else ""
        print(f"{task:5s} threads={threads:4s} {text}{ratio}")


if __name__ == "__main__":
    main()
