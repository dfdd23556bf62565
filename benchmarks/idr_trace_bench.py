"""Steps per CPU-second of ``idr-fit`` with the tracer of each version, in one process (issue 21).

    python benchmarks/idr_trace_bench.py --reference-raytrace OLD_RAYTRACE.py [--encoders hashgrid ffb fourier]
    # OLD_RAYTRACE.py: plugins/idr/raytrace.py of the version before issue 21, e.g.
    git show 8b57d27:plugins/idr/raytrace.py > /tmp/raytrace_8b57d27.py

For each encoder (the benchmark's CPU sizes and preset, ``benchmarks/idr_bench.py``: 1024 rays,
32 samples, lr 5e-4, one torch thread) one network is trained; after ``--warm`` steps, rounds of
``--steps`` steps alternate between the variants (rotating their order) on that same network and
data, and each variant's process CPU time is summed:

* ``before``: the tracer of the reference file (IDR's uniform sampling of every unfinished ray),
  the full network forward (SDF + features) for every evaluation and torch's Softplus (denormal
  tail), in tracing and in training: the code before issue 21;
* ``start``: this tree's tracer with ``min_search="coarse-to-fine"`` on the full forward and the
  clamped Softplus: the state before the "traced" search and the SDF-only evaluation;
* ``now``: this tree as it runs (``rep.trace``: ``min_search="traced"``, ``sdf_inference``).

Then, on ``--check`` fixed batches without jitter, the intersections of ``start`` and ``now`` are compared with
``before`` on the same network: rays hit by one and not the other, max |Δt| over the rays both hit,
and on the rays neither hit, how much higher ``now``'s minimal SDF is than ``before``'s (IDR's).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.utils.parametrize as parametrize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import idr_bench as B  # noqa: E402 - the benchmark's scene reader and encoder settings

from recon_core import RunContext  # noqa: E402
from recon_core.registry import get_registry  # noqa: E402
from recon_plugins.idr import IDRFit, IDRRepresentation, SphereTracingRenderer  # noqa: E402
from recon_plugins.idr import raytrace as RT  # noqa: E402
from recon_plugins.idr.representation import pixel_rays  # noqa: E402


def load_module(path: Path):  # noqa: ANN201 - a module object
    spec = importlib.util.spec_from_file_location("reference_raytrace", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def tracers(rep: IDRRepresentation, ref) -> dict:  # noqa: ANN001
    """variant name → (trace(o, v, generator) function, activation module)."""
    now_trace, clamped = rep.trace, rep.implicit.activation
    s = rep.config.trace_settings("cpu")
    old_fields = {f.name for f in dataclasses.fields(ref.TraceSettings)}
    old_settings = ref.TraceSettings(**{k: v for k, v in dataclasses.asdict(s).items() if k in old_fields})
    start_settings = dataclasses.replace(s, min_search="coarse-to-fine")

    def before(o, v, generator=None):  # noqa: ANN001, ANN202
        with parametrize.cached():
            return ref.trace(rep.implicit.sdf, o, v, old_settings, generator)

    def start(o, v, generator=None):  # noqa: ANN001, ANN202
        with parametrize.cached():
            return RT.trace(rep.implicit.sdf, o, v, start_settings, generator)

    softplus = torch.nn.Softplus(beta=clamped.beta)
    return {"before": (before, softplus), "start": (start, clamped), "now": (now_trace, clamped)}


def batch(fit: IDRFit, rep: IDRRepresentation, g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = fit.data
    view = torch.randint(len(d.rgb), (n,), generator=g)
    pix = (torch.rand(n, generator=g) * d.npix[view]).long().clamp_max(d.npix[view] - 1)
    uv = torch.stack([pix % d.width[view], pix // d.width[view]], dim=-1).float() + 0.5
    return rep.network_rays(*pixel_rays(d.K[view], d.c2w[view], uv))


def run(enc: str, scene, args: argparse.Namespace, ref) -> dict:  # noqa: ANN001
    torch.manual_seed(0)
    rep = IDRRepresentation(IDRRepresentation.Config(preset=B.AUTO_PRESET[enc], trace_samples=args.samples))
    rep.build(scene, RunContext(device=torch.device("cpu"), seed=0, encoder=B.ENCODERS[enc](), create=get_registry().create))
    fit = IDRFit(IDRFit.Config(steps=100000, batch_rays=args.batch, lr=5e-4, log_every=0))
    fit.setup(rep, scene, RunContext(device=torch.device("cpu"), seed=0, renderer=SphereTracingRenderer()))
    variants = tracers(rep, ref)
    for s in range(args.warm):
        fit.step(s)
    step = args.warm
    cpu = {k: 0.0 for k in variants}
    trace_cpu = {k: 0.0 for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn, act = variants[name]
            rep.trace, rep.implicit.activation = fn, act

            def timed(*a, _fn=fn, _name=name, **k):  # noqa: ANN002, ANN003, ANN202
                t = time.process_time()
                out = _fn(*a, **k)
                trace_cpu[_name] += time.process_time() - t
                return out

            rep.trace = timed
            t0 = time.process_time()
            for _ in range(args.steps):
                fit.step(step)
                step += 1
            cpu[name] += time.process_time() - t0
    # agreement with ``before`` on fixed batches without jitter, on the network as trained
    g = torch.Generator().manual_seed(7)
    agree = {k: {"hit_differs": 0, "both_hit": 0, "max_abs_dt_both_hit": 0.0, "missed_rays": 0, "df": []} for k in ("start", "now")}
    for _ in range(args.check):
        o, v = batch(fit, rep, g, args.batch)
        rep.implicit.activation = variants["before"][1]
        old = variants["before"][0](o, v)
        for name, a in agree.items():
            rep.implicit.activation = variants[name][1]
            new = variants[name][0](o, v)
            a["hit_differs"] += int((old.hit != new.hit).sum())
            h = old.hit & new.hit
            a["both_hit"] += int(h.sum())
            if h.any():
                a["max_abs_dt_both_hit"] = max(a["max_abs_dt_both_hit"], float((old.t[h] - new.t[h]).abs().max()))
            m = old.in_sphere & ~old.hit & ~new.hit
            a["missed_rays"] += int(m.sum())
            with torch.no_grad(), parametrize.cached():
                f_old = rep.implicit.sdf(o[m] + old.t[m, None] * v[m])
                f_new = rep.implicit.sdf(o[m] + new.t[m, None] * v[m])
            a["df"].append(torch.stack([f_new - f_old, f_old], dim=1))
    for a in agree.values():
        df = torch.cat(a.pop("df"))
        near = df[:, 1] < 0.05  # grazing rays: where the mask loss's sigmoid(-alpha f) is not saturated
        a["sdf_above_before_on_missed"] = {"max": float(df[:, 0].max()), "p99": float(df[:, 0].quantile(0.99)),
                                           "max_where_before_below_0.05": float(df[near, 0].max()) if near.any() else 0.0,
                                           "n_below_0.05": int(near.sum())}
    n = args.rounds * args.steps
    res = {
        "encoder": enc, "preset": B.AUTO_PRESET[enc], "steps_each": n,
        "cpu_s_per_step": {k: round(v / n, 4) for k, v in cpu.items()},
        "trace_cpu_s_per_step": {k: round(v / n, 4) for k, v in trace_cpu.items()},
        "steps_per_cpu_s": {k: round(n / v, 2) for k, v in cpu.items()},
        "speedup_vs_before": round(cpu["before"] / cpu["now"], 2), "speedup_vs_start": round(cpu["start"] / cpu["now"], 2),
        "agreement_with_before": {"rays": args.check * args.batch, **agree},
        "load": os.getloadavg(),
    }
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-raytrace", type=Path, required=True, help="raytrace.py of the version to compare with")
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/object"))
    ap.add_argument("--encoders", nargs="+", default=["hashgrid", "ffb", "fourier"], choices=list(B.ENCODERS))
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--warm", type=int, default=60, help="steps before measuring (current code)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    ap.add_argument("--check", type=int, default=4, help="fixed batches compared without jitter")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref = load_module(args.reference_raytrace)
    scene = B.load_scene(args.data)
    results = [run(enc, scene, args, ref) for enc in args.encoders]
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
