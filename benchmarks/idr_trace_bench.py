"""Sphere-tracing A/B in one process: IDR's uniform search with torch's Softplus (before issue 21) against
the coarse-to-fine search with the clamped Softplus (after), on the training batches of ``idr-fit``.

    python benchmarks/idr_trace_bench.py ENCODER PRESET BATCH SAMPLES WARM_STEPS REPEATS
    python benchmarks/idr_trace_bench.py hashgrid grid 1024 32 40 10

Prints the CPU seconds per step of the warm-up steps (current code), the median tracing time of each
variant on the same batches (alternating order) and how many batches gave identical hits.
"""
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import idr_bench as B  # noqa: E402 - the benchmark's scene reader and encoder settings

from recon_core import RunContext  # noqa: E402
from recon_core.registry import get_registry  # noqa: E402
from recon_plugins.idr import IDRFit, IDRRepresentation, SphereTracingRenderer  # noqa: E402
from recon_plugins.idr.representation import pixel_rays  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    enc, preset, batch, samples, warm, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    scene = B.load_scene(Path("/work/shared/datasets/object"))
    torch.manual_seed(0)
    rep = IDRRepresentation(IDRRepresentation.Config(preset=preset, trace_samples=samples))
    rep.build(scene, RunContext(device=torch.device("cpu"), seed=0, encoder=B.ENCODERS[enc](), create=get_registry().create))
    fit = IDRFit(IDRFit.Config(steps=10000, batch_rays=batch, lr=5e-4, log_every=0))
    fit.setup(rep, scene, RunContext(device=torch.device("cpu"), seed=0, renderer=SphereTracingRenderer()))
    t0 = time.process_time()
    for s in range(warm):
        fit.step(s)
    step_cpu = (time.process_time() - t0) / max(warm, 1)
    d = fit.data
    g = torch.Generator().manual_seed(5)
    new_cfg = rep.config
    old_cfg = dataclasses.replace(rep.config, trace_min_search="uniform")
    new_act, old_act = rep.implicit.activation, torch.nn.Softplus(beta=100.0)
    ratios, ta, tb, hits = [], [], [], []
    for i in range(reps):
        view = torch.randint(len(d.rgb), (batch,), generator=g)
        pix = (torch.rand(batch, generator=g) * d.npix[view]).long().clamp_max(d.npix[view] - 1)
        uv = torch.stack([pix % d.width[view], pix // d.width[view]], dim=-1).float() + 0.5
        o, v = rep.network_rays(*pixel_rays(d.K[view], d.c2w[view], uv))
        res = {}
        for name in (("old", "new") if i % 2 == 0 else ("new", "old")):
            rep.config = old_cfg if name == "old" else new_cfg
            rep.implicit.activation = old_act if name == "old" else new_act
            t = time.process_time()
            tr = rep.trace(o, v, generator=torch.Generator().manual_seed(i))
            res[name] = (time.process_time() - t, tr)
        ta.append(res["old"][0]); tb.append(res["new"][0])
        hits.append(bool(torch.equal(res["old"][1].hit, res["new"][1].hit)))
    rep.config, rep.implicit.activation = new_cfg, new_act
    print(json.dumps({"cfg": sys.argv[1:], "step_cpu_s_after_new_code": step_cpu, "trace_old_ms": 1e3 * statistics.median(ta),
                      "trace_new_ms": 1e3 * statistics.median(tb), "speedup": statistics.median(ta) / statistics.median(tb),
                      "same_hits": sum(hits), "of": len(hits)}), flush=True)


if __name__ == "__main__":
    main()
