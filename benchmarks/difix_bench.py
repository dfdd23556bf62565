"""Benchmark of the ``difix3d+`` loop's mechanics on a dataset, through the real pipeline.

    python benchmarks/difix_bench.py --data /work/shared/datasets/object --out /tmp/difix_bench

Runs ``recon run`` on CPU (same seed and initialisation) and prints held-out PSNR/SSIM of:

* a: ``3dgs-train`` for ``--train-steps`` (n);
* b: ``3dgs-train`` for n + ``--difix-steps`` (m) (equal steps, densification and lr schedule throughout);
* c: ``3dgs-train`` n, then ``difix3d+`` m with the ``nearest-gt`` oracle fixer (pool: every view
  of ``--data``, test views included), so the result checks the loop's mechanics and is an upper
  bound, not a method result;
* d: as c with ``novel_prob=0`` (the same optimisation without pseudo-views: the ablation);
* e: as c with the novel cameras on the test cameras from the first round;
* p: ``difix3d+`` alone for n + m steps with ``schedule=paper`` (the original's: it trains from
  the initialisation with densification, fixes interleaved at the original's fix steps scaled to
  the run), ``nearest-gt``.

The ``difix`` plugin is registered directly (``Registry(modules=...)``) when its entry point is
not installed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["run_once", "main"]


def run_once(data: Path, out: Path, refiners: list[str], sets: list[str], fixer: str | None) -> tuple[dict[str, Any], float]:
    """One pipeline run into ``out``; returns (metrics document, seconds)."""
    import recon_plugins.difix as plugin
    from recon_core.pipeline import Pipeline
    from recon_core.resolve import resolve_run
    from recon_core.registry import Registry
    from recon_core.rundir import RunDir

    registry = Registry()
    if not any(r.name == "difix3d+" for r in registry.rows()):  # entry point not installed yet
        registry = Registry(modules=[("difix", plugin)])
    spec = resolve_run(registry, data=data, representation="3dgs", refiners=refiners, fixer=fixer,
                       evaluators=["psnr", "ssim"], device="cpu", seed=0, sets=sets)
    start = time.perf_counter()
    doc = Pipeline(registry, spec, RunDir.create(out)).run()
    return doc, time.perf_counter() - start


def split_dataset(data: Path, split_file: Path, out: Path) -> Path:
    """A ``transforms.json`` in ``out`` holding only the frames named in ``split_file``
    (``{"train": [...], "test": [...]}`` of ``file_path`` values), with absolute paths."""
    source = json.loads((data / "transforms.json").read_text())
    split = json.loads(split_file.read_text())
    keep = {path: name for name in ("train", "test") for path in split.get(name, [])}
    frames = []
    for frame in source["frames"]:
        if frame["file_path"] in keep:
            absolute = {k: str((data / v).resolve()) for k, v in frame.items() if k.endswith("_path") and isinstance(v, str)}
            frames.append({**frame, **absolute, "split": keep[frame["file_path"]]})
    out.mkdir(parents=True, exist_ok=True)
    (out / "transforms.json").write_text(json.dumps({**source, "frames": frames}, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/datasets/object"))
    parser.add_argument("--out", type=Path, default=Path("outputs/difix_bench"))
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--difix-steps", type=int, default=300)
    parser.add_argument("--fix-every", type=int, default=100)
    parser.add_argument("--shift", type=float, default=0.5)
    parser.add_argument("--num-points", type=int, default=5000)
    parser.add_argument("--runs", default="abc", help="which runs: a (train n), b (train n+m), c (difix3d+), "
                                                     "d (difix3d+ without pseudo-views), e (difix3d+ snapped at once), "
                                                     "p (difix3d+ alone, schedule=paper)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a loaded 2-core machine)")
    parser.add_argument("--split", type=Path, help="keep only the frames of this split file (e.g. split_sparse3.json)")
    args = parser.parse_args(argv)
    if args.split is not None:
        args.data = split_dataset(args.data, args.split, args.out / "data")
    torch.set_num_threads(args.threads)
    common = [f"3dgs.num_points={args.num_points}", "run.checkpoint_every=0"]
    train = ["3dgs-train.strategy.refine_start=100", "3dgs-train.strategy.refine_every=100"]
    n, m = args.train_steps, args.difix_steps
    progressive = train + [f"3dgs-train.steps={n}", f"difix3d+.steps={m}", f"difix3d+.fix_every={args.fix_every}",
                           f"nearest-gt.data={args.data}"]
    runs = {
        "a": (f"3dgs-train {n}", ["3dgs-train"], train + [f"3dgs-train.steps={n}"], None),
        "b": (f"3dgs-train {n + m}", ["3dgs-train"], train + [f"3dgs-train.steps={n + m}"], None),
        "c": (f"3dgs-train {n} + difix3d+ {m} (nearest-gt, shift {args.shift})", ["3dgs-train", "difix3d+"],
              progressive + [f"difix3d+.shift_distance={args.shift}"], "nearest-gt"),
        "d": (f"3dgs-train {n} + difix3d+ {m} with novel_prob=0 (no pseudo-views: ablation)", ["3dgs-train", "difix3d+"],
              progressive + [f"difix3d+.shift_distance={args.shift}", "difix3d+.novel_prob=0"], "nearest-gt"),
        "e": (f"3dgs-train {n} + difix3d+ {m} (nearest-gt, shift 100: at the test cameras from round 1)",
              ["3dgs-train", "difix3d+"], progressive + ["difix3d+.shift_distance=100"], "nearest-gt"),
        "p": (f"difix3d+ {n + m}, schedule=paper (nearest-gt, shift {args.shift})", ["difix3d+"],
              [f"difix3d+.steps={n + m}", "difix3d+.schedule=paper", f"difix3d+.shift_distance={args.shift}",
               f"nearest-gt.data={args.data}"], "nearest-gt"),
    }
    results = {}
    for key in args.runs:
        label, refiners, sets, fixer = runs[key]
        doc, seconds = run_once(args.data, args.out / f"run-{key}", refiners, common + sets, fixer)
        summary = doc["metrics"]
        results[label] = {"metrics": summary, "seconds": round(seconds, 1), "refiners": doc.get("refiners")}
        print(label, json.dumps(results[label], default=str), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results-{args.runs}.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
