"""Where a ``recon run`` reaches its peak resident memory (issue 24).

Runs ``recon run ARGS --out RUN`` as a child process (``OMP_NUM_THREADS=1``), samples its
``VmRSS`` / ``VmHWM`` (``/proc/PID/status``) every ``--interval`` seconds and tags each sample
with the run's latest ``log.txt`` line (the stage: ``stage load``, ``stage build``, the
refiner's progress lines, ``refiner ... finished`` = evaluation, ``stage export``). Prints the
highest sample per stage, the first sample at the final high-water mark, the peak RSS from
``wait4`` and the CPU time; ``--json`` keeps every sample::

    python benchmarks/memory_profile.py --out /tmp/memrun -- --data /work/shared/datasets/object \\
        --repr 3dgs --eval psnr,ssim --set 3dgs-train.steps=2000 ...

(``benchmarks/train_vs_opensplat.py --print-recon-sets`` prints the ``--set`` options of its
recon run.) A transient shorter than the interval shows in ``VmHWM`` but not in ``VmRSS``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) // 1024
    except OSError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the run folder (replaced)")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--json", type=Path)
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then recon run's arguments")
    args = ap.parse_args()
    run_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    shutil.rmtree(args.out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "recon_cli.main", "-q", "run", *run_args, "--out", str(args.out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    samples: list[tuple[float, int, int, str]] = []
    offset, line = 0, "start"
    log = args.out / "log.txt"
    while True:
        pid, code, usage = os.wait4(proc.pid, os.WNOHANG)  # (not poll(): it would reap the child's rusage)
        if pid:
            break
        if log.exists():
            with open(log) as f:
                f.seek(offset)
                new = f.read()
                offset = f.tell()
            lines = [t[20:] for t in new.splitlines() if t.strip()]  # drop the time stamp
            line = lines[-1] if lines else line
        s = status(proc.pid)
        if "VmRSS" in s:
            samples.append((time.perf_counter() - t0, s["VmRSS"], s["VmHWM"], line))
        time.sleep(args.interval)
    peaks: dict[str, tuple[int, float]] = {}
    for t, rss, _, tag in samples:
        stage = tag.split(":")[0] if " step " in tag else tag  # one row per progress line
        if stage not in peaks or rss > peaks[stage][0]:
            peaks[stage] = (rss, t)
    print(f"exit {os.waitstatus_to_exitcode(code)}; peak RSS (wait4) {usage.ru_maxrss / 1024:.0f} MB; "
          f"CPU {usage.ru_utime + usage.ru_stime:.1f} s; wall {time.perf_counter() - t0:.0f} s; load {os.getloadavg()}")
    for stage, (rss, t) in peaks.items():
        print(f"{rss:6d} MB at {t:7.1f} s  {stage[:90]}")
    if samples:
        top = max(s[2] for s in samples)
        first = next(s for s in samples if s[2] == top)
        print(f"high-water mark {top} MB first seen at {first[0]:.1f} s during: {first[3][:90]}")
    if args.json:
        args.json.write_text(json.dumps(samples))


if __name__ == "__main__":
    main()
