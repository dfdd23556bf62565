"""ReconX-3DGS sparse-view benchmark: (a) plain ``3dgs-train`` vs (b) the ReconX pipeline.

Both runs load the same data with the loader's ``split_file`` option (``split_sparse3.json``: three
input views, 16 test views), go through ``recon``'s own pipeline (resolve_run + Pipeline, what
``recon run`` calls) and are scored on the test views by the pipeline's evaluators (PSNR and SSIM
inside the test views' object masks; LPIPS when its backbone weights are present, else reported
as unavailable). The script adds full-image PSNR (the saved 8-bit renders against the images
composited on the same white background), which also counts anything drawn outside the object.

    (a) --repr 3dgs   --refiner 3dgs-train  (default options, ``--set 3dgs-train.steps=STEPS``)
    (b) --repr reconx                        (native refiner ``confidence``, ``STEPS`` steps)

Per run it reports wall time, CPU time of this process (``time.process_time``) and the 1-minute
load average before and after (the machine may be shared). Usage (CPU, re-runnable; prints a
Markdown table and optionally writes JSON)::

    python benchmarks/reconx_bench.py --steps 300 1000 [--downscale 1] [--threads 1] [--out OUT.json]
        [--only baseline|reconx] [--set confidence.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from recon_core.pipeline import Pipeline
from recon_core.resolve import resolve_run
from recon_core.registry import Registry
from recon_core.rundir import RunDir

DEFAULT_DATA = Path("/work/shared/datasets/object")


def run_one(reg: Registry, data: Path, out: Path, label: str, common: list[str], **kwargs: Any) -> dict[str, Any]:
    sets = ["run.save_renders=true", "run.export=", "run.log_every=100", *common, *kwargs.pop("sets", [])]
    spec = resolve_run(reg, data=data, loader="nerfstudio", device="cpu", seed=0, evaluators=["psnr", "ssim", "lpips"],
                       sets=sets, **kwargs)
    run_dir = RunDir.create(out / label.split()[0].strip("()"))
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    doc = Pipeline(reg, spec, run_dir).run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"label": label, "wall_s": wall, "cpu_s": cpu, "load": [load_before, os.getloadavg()[0]],
            "metrics": doc["metrics"], "unavailable": doc["unavailable"], "refiners": doc.get("refiners", {}),
            "renders": str(run_dir.renders_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="split_sparse3.json")
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 1000], help="optimisation steps of both runs (ReconX: 1000)")
    parser.add_argument("--downscale", type=float, default=1.0, help="nerfstudio.downscale of both runs (1: full 200x200)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--only", choices=("baseline", "reconx"), default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for the ReconX run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reg = Registry()
    common = [f"nerfstudio.downscale={args.downscale:g}", f"nerfstudio.split_file={args.split}"]
    results = []
    with tempfile.TemporaryDirectory(prefix="reconx-bench-") as tmp:
        from recon_plugins.loaders.nerfstudio import NerfstudioConfig, NerfstudioLoader

        scene = NerfstudioLoader(NerfstudioConfig(downscale=args.downscale, split_file=args.split)).load(args.data)
        targets = [v.name for v in scene.eval_views]
        for steps in args.steps:
            runs = []
            if args.only in (None, "baseline"):
                runs.append(run_one(reg, args.data, Path(tmp) / f"{steps}", "(a) 3dgs + 3dgs-train", common,
                                    representation="3dgs", refiners=["3dgs-train"], sets=[f"3dgs-train.steps={steps}"]))
            if args.only in (None, "reconx"):
                label = "(b) reconx" + "".join(f" --set {x}" for x in args.sets)
                runs.append(run_one(reg, args.data, Path(tmp) / f"{steps}", label, common, representation="reconx",
                                    sets=[f"confidence.steps={steps}", *args.sets]))
            for r in runs:
                r["steps"] = steps
                r.pop("renders")
            results += runs
    print(f"\n{args.data.name}, {args.split}: {len(scene.train_views)} input views, {len(targets)} test views, "
          f"downscale {args.downscale:g}, CPU, {args.threads} thread(s)\n")
    print("| steps | run | PSNR (masked) | SSIM (masked) | LPIPS (masked) | PSNR (full image) | Gaussians | wall (s) | CPU (s) | load before/after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["metrics"]
        lp = f"{m['lpips_masked']:.4f}" if m.get("lpips_masked") is not None else "unavailable"
        report = next(iter(r["refiners"].values()), {}) if r["refiners"] else {}
        gaussians = report.get("gaussians", "?") if isinstance(report, dict) else "?"
        print(f"| {r['steps']} | {r['label']} | {m['psnr_masked']:.2f} | {m['ssim_masked']:.4f} | {lp} | {m['psnr']:.2f} | {gaussians} | "
              f"{r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    for r in results[:2]:
        for name, why in r["unavailable"].items():
            print(f"{r['label']}: {name} unavailable: {why}")
    for steps in args.steps:
        pair = [r for r in results if r["steps"] == steps]
        if len(pair) == 2:
            print(f"{steps} steps: ReconX - baseline test PSNR {pair[1]['metrics']['psnr_masked'] - pair[0]['metrics']['psnr_masked']:+.2f} dB (masked), "
                  f"{pair[1]['metrics']['psnr'] - pair[0]['metrics']['psnr']:+.2f} dB (full image)")
    if args.out:
        args.out.write_text(json.dumps({"downscale": args.downscale, "split": args.split, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
