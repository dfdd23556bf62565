"""ReconX-3DGS sparse-view benchmark: (a) plain ``3dgs-train`` vs (b) the ReconX pipeline.

Both runs see the same three input views of ``split_sparse3.json`` and are scored on its 16 test
views (object-masked PSNR / SSIM; LPIPS when its backbone weights are present, else reported as
unavailable). The sparse split is applied the way a loader option would: a ``transforms.json``
holding only the split's frames (absolute paths into the dataset, ``split`` per frame) is written
to a temporary folder, and both runs go through ``recon``'s own pipeline (resolve_run + Pipeline,
what ``recon run`` calls) on it:

    (a) --repr 3dgs   --refiner 3dgs-train  (default options, ``--set 3dgs-train.steps=STEPS``)
    (b) --repr reconx                        (native refiner ``confidence``, ``STEPS`` steps)

Usage (CPU, one command, re-runnable; prints a Markdown table and writes JSON)::

    python benchmarks/reconx_bench.py [--steps 300] [--downscale 2] [--data /work/shared/datasets/object] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from recon_core.pipeline import Pipeline, resolve_run
from recon_core.registry import Registry
from recon_core.rundir import RunDir

DEFAULT_DATA = Path("/work/shared/datasets/object")


def sparse_transforms(data: Path, split_file: Path, out_dir: Path) -> Path:
    """Write ``out_dir/transforms.json``: ``data``'s transforms restricted to the split's frames,
    each with the split's ``split`` and absolute file paths. Returns the folder."""
    meta = json.loads((data / "transforms.json").read_text())
    split = json.loads(split_file.read_text())
    wanted = {name: s for s in ("train", "val", "test") for name in split.get(s, [])}
    frames = []
    for fr in meta["frames"]:
        if fr["file_path"] not in wanted:
            continue
        fr = dict(fr, split=wanted[fr["file_path"]])
        for key in ("file_path", "mask_path", "depth_path", "depth_file_path"):
            if fr.get(key):
                fr[key] = str((data / fr[key]).resolve())
        frames.append(fr)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "transforms.json").write_text(json.dumps({**meta, "frames": frames}, indent=1))
    return out_dir


def registry() -> Registry:
    """Installed plugins, plus ``reconx`` registered directly when its entry point is not installed yet."""
    reg = Registry()
    if not any(r.name == "reconx" and r.kind == "representation" for r in reg.rows()):
        import recon_plugins.reconx as reconx

        reg = Registry(modules=[("reconx", reconx)])
    return reg


def run_one(reg: Registry, data: Path, out: Path, label: str, downscale: float, **kwargs: Any) -> dict[str, Any]:
    sets = ["run.save_renders=false", "run.export=", "run.log_every=25", f"nerfstudio.downscale={downscale}", *kwargs.pop("sets", [])]
    spec = resolve_run(reg, data=data, loader="nerfstudio", device="cpu", seed=0, evaluators=["psnr", "ssim", "lpips"],
                       sets=sets, **kwargs)
    start = time.perf_counter()
    doc = Pipeline(reg, spec, RunDir.create(out / label)).run()
    return {"label": label, "seconds": time.perf_counter() - start, "metrics": doc["metrics"],
            "unavailable": doc["unavailable"], "refiners": doc.get("refiners", {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="split_sparse3.json")
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps of both runs (ReconX paper: 1000)")
    parser.add_argument("--downscale", type=float, default=2.0, help="nerfstudio.downscale of both runs (1: full 200x200)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--only", choices=("baseline", "reconx"), default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for the ReconX run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reg = registry()
    results = []
    with tempfile.TemporaryDirectory(prefix="reconx-bench-") as tmp:
        sparse = sparse_transforms(args.data, args.data / args.split, Path(tmp) / "data")
        if args.only in (None, "baseline"):
            results.append(run_one(reg, sparse, Path(tmp), "(a) 3dgs + 3dgs-train", args.downscale, representation="3dgs",
                                   refiners=["3dgs-train"], sets=[f"3dgs-train.steps={args.steps}"]))
        if args.only in (None, "reconx"):
            label = "(b) reconx (confidence + render-fix)" + "".join(f" --set {x}" for x in args.sets)
            results.append(run_one(reg, sparse, Path(tmp), label, args.downscale, representation="reconx",
                                   sets=[f"confidence.steps={args.steps}", *args.sets]))
    print(f"\n{args.data.name}, {args.split}: 3 input views, 16 test views, downscale {args.downscale:g}, "
          f"{args.steps} steps, CPU\n")
    print("| run | PSNR | SSIM | LPIPS | time (s) |\n|---|---|---|---|---|")
    for r in results:
        m = r["metrics"]
        lp = f"{m['lpips']:.4f}" if m.get("lpips") is not None else "unavailable"
        print(f"| {r['label']} | {m['psnr']:.2f} | {m['ssim']:.4f} | {lp} | {r['seconds']:.0f} |")
    for r in results:
        for name, why in r["unavailable"].items():
            print(f"{r['label']}: {name} unavailable: {why}")
    if len(results) == 2:
        print(f"\nReconX - baseline test PSNR: {results[1]['metrics']['psnr'] - results[0]['metrics']['psnr']:+.2f} dB")
    if args.out:
        args.out.write_text(json.dumps({"steps": args.steps, "downscale": args.downscale, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
