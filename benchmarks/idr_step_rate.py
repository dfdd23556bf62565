"""Steps of ``idr-fit`` per CPU-second for several source trees, interleaved in one invocation (issue 21).

    git worktree add /tmp/recon-8b57d27 8b57d27    # or: git archive 8b57d27 | tar -x -C /tmp/recon-8b57d27
    python benchmarks/idr_step_rate.py --trees /tmp/recon-8b57d27 . --encoders hashgrid ffb fourier --rounds 2

Each (round, encoder, tree) runs a worker process with ``PYTHONPATH`` set to that tree (its
``recon_core``; ``recon_plugins`` / ``recon_cli`` from ``<tree>/.pyshim`` when present, else from
``<tree>/plugins`` through a shim made here) and that tree's ``benchmarks/idr_bench.py`` scene reader
and CPU encoder sizes: one torch thread, the benchmark's settings (1024 rays, 32 samples, lr 5e-4,
preset per encoder), ``--warm`` steps (the C++ kernels build there, once per tree, cached under the temp folder's
``idr_step_rate_ext``), then ``--steps`` steps timed in process CPU time. The trees
alternate within each round, so both see the same machine load; the CPU time of a process does not
count the time other processes hold the cores. Prints one JSON line per worker and a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, os, sys, time
from pathlib import Path
import torch
tree = Path(os.environ["IDR_TREE"])
sys.path.insert(0, str(tree / "benchmarks"))
import idr_bench as B
from recon_core import RunContext
from recon_core.registry import get_registry
from recon_plugins.idr import IDRFit, IDRRepresentation, SphereTracingRenderer
torch.set_num_threads(1)
enc, warm, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
scene = B.load_scene(Path(sys.argv[4]))
torch.manual_seed(0)
rep = IDRRepresentation(IDRRepresentation.Config(preset=B.AUTO_PRESET[enc], trace_samples=32))
rep.build(scene, RunContext(device=torch.device("cpu"), seed=0, encoder=B.ENCODERS[enc](), create=get_registry().create))
fit = IDRFit(IDRFit.Config(steps=100000, batch_rays=1024, lr=5e-4, log_every=0))
fit.setup(rep, scene, RunContext(device=torch.device("cpu"), seed=0, renderer=SphereTracingRenderer()))
for s in range(warm):
    fit.step(s)
t0 = time.process_time()
for s in range(warm, warm + steps):
    fit.step(s)
cpu = time.process_time() - t0
print("RESULT " + json.dumps({"encoder": enc, "cpu_s_per_step": cpu / steps, "steps_per_cpu_s": steps / cpu,
                              "hit_iou": fit.last.get("hit_iou"), "load": os.getloadavg()}))
"""


def pythonpath(tree: Path, shim_root: Path) -> str:
    shim = tree / ".pyshim"
    if not shim.is_dir():  # a bare checkout: map the installed package names onto the tree's folders
        shim = shim_root / tree.name
        shim.mkdir(parents=True, exist_ok=True)
        for name, folder in (("recon_plugins", "plugins"), ("recon_cli", "cli")):
            if not (shim / name).exists():
                (shim / name).symlink_to(tree / folder)
    return f"{shim}:{tree}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", nargs="+", type=Path, required=True, help="source trees to compare (first: the reference)")
    ap.add_argument("--encoders", nargs="+", default=["hashgrid", "ffb", "fourier"])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/object"))
    ap.add_argument("--warm", type=int, default=40)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    trees = [t.resolve() for t in args.trees]
    rows = []
    with tempfile.TemporaryDirectory() as shims:
        for r in range(args.rounds):
            for enc in args.encoders:
                order = trees if r % 2 == 0 else trees[::-1]
                for tree in order:
                    # one extension cache per tree (older trees name their builds without a source hash)
                    ext = Path(tempfile.gettempdir()) / "idr_step_rate_ext" / hashlib.sha1(str(tree).encode()).hexdigest()[:12]
                    env = dict(os.environ, IDR_TREE=str(tree), PYTHONPATH=pythonpath(tree, Path(shims)), TORCH_EXTENSIONS_DIR=str(ext))
                    out = subprocess.run([sys.executable, "-c", WORKER, enc, str(args.warm), str(args.steps), str(args.data)],
                                         env=env, capture_output=True, text=True, check=False)
                    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
                    if line is None:
                        sys.exit(f"worker failed for {tree} {enc}:\n{out.stderr[-3000:]}")
                    row = {"round": r, "tree": str(tree), **json.loads(line[7:])}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    summary = {}
    for enc in args.encoders:
        rate = {str(t): statistics.mean(x["steps_per_cpu_s"] for x in rows if x["tree"] == str(t) and x["encoder"] == enc) for t in trees}
        ref = rate[str(trees[0])]
        summary[enc] = {t: {"steps_per_cpu_s": round(v, 2), "ratio_to_first": round(v / ref, 2)} for t, v in rate.items()}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
