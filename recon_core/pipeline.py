"""One reconstruction run: load → build → refine* → render → fix? → evaluate → export.

:func:`~recon_core.resolve.resolve_run` turns what the user asked for into a checked
:class:`~recon_core.spec.RunSpec`; :class:`Pipeline` executes it into a
:class:`~recon_core.rundir.RunDir`. The pipeline builds ONE :class:`RunContext` per run
(:meth:`Pipeline.context`) and hands it to ``rep.build(data, ctx)``, ``fixer.prepare(ctx)`` and
every refiner. Rendering and metrics live in :mod:`recon_core.evaluate`
(:meth:`Pipeline.evaluate`); rebuilding a finished run for ``recon eval/render/export`` in
:mod:`recon_core.restore`.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .budget import parse_budget
from .components import Component, Encoder, Fixer, Loader, Refiner, Renderer, Representation, RunContext
from .evaluate import evaluate_run
from .io import ChildError
from .logs import logger
from .memory import release_memory
from .refine import StopFlag, run_refiners
from .registry import Registry
from .resolve import load_data, open_data, resolve_device
from .spec import Choice, RunSpec
from .threads import torch_threads
from .rundir import RunDir
from .scalars import CURVES_FILE, ScalarLog, plot_curves, read_scalars
from .scene import Scene, Video

__all__ = ["Pipeline", "seed_everything"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _jsonable(value: Any) -> Any:
    """Refiner reports → JSON (tensors become numbers or lists; NaN/inf become null)."""
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        return _jsonable(value.item() if value.numel() == 1 else value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _reports_json(reports: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in reports:
        key, n = entry["name"], 1
        while key in out:
            n += 1
            key = f"{entry['name']}#{n}"
        out[key] = _jsonable(entry["report"])
    return out


class Pipeline:
    """Executes a :class:`RunSpec` into a run folder.

    ::

        pipeline = Pipeline(registry, spec, run_dir)
        doc = pipeline.run()                 # every stage; metrics.json
        # or stage by stage (what recon eval/render use, see recon_core.restore):
        data = pipeline.load_data()
        rep = pipeline.build(data)           # rep.build(data, pipeline.context())
        doc = pipeline.evaluate(rep, data)   # renders + metrics with the run's renderer and fixer
    """

    def __init__(self, registry: Registry, spec: RunSpec, run_dir: RunDir, *, stop: StopFlag | None = None) -> None:
        self.registry = registry
        self.spec = spec
        self.run_dir = run_dir
        self.stop = stop
        self.device = resolve_device(spec.device)
        self.timings: dict[str, float] = {}
        self._ctx: RunContext | None = None

    def log(self, message: str) -> None:
        """Into the run's log.txt, and to the ``recon`` logger (the console, see recon_core.logs)."""
        self.run_dir.log(message)
        logger().info(message)

    def _timed(self, stage: str) -> "_Timer":
        return _Timer(self, stage)

    # ---------------------------------------------------------------------------- components

    def create(self, choice: Choice) -> Component:
        """The component of ``choice`` with its configured options."""
        return self.registry.get(choice.kind, choice.name)(choice.config)

    def create_by_name(self, kind: str, name: str) -> Component:
        """``ctx.create``: a component of this run with its configured options (``--set``
        included); one that no component declared in ``uses`` gets its defaults."""
        for c in self.spec.choices():
            if c.kind == kind and c.name == name:
                return self.create(c)
        self.log(f"creating {kind} {name} with default options (no component of the run declares it in uses())")
        return self.registry.create(kind, name)

    def context(self) -> RunContext:
        """The run's one :class:`RunContext` (made on first use): device, seed, renderer,
        background, out_dir, log, ``create`` (honouring ``--set``) and ``load``. ``encoder``
        is filled by :meth:`build` and ``fixer`` by :meth:`prepare_fixer`."""
        if self._ctx is None:
            renderer = self.create(self.spec.renderer)
            assert isinstance(renderer, Renderer)
            self._ctx = RunContext(
                device=self.device,
                seed=self.spec.seed,
                renderer=renderer,
                background=torch.tensor(self.spec.options.background, dtype=torch.float32, device=self.device),
                out_dir=self.run_dir.path,
                log=self.log,
                create=self.create_by_name,
                load=lambda path: open_data(self.registry, path)[1],
            )
        return self._ctx

    def prepare_fixer(self) -> Fixer | None:
        """Create the run's fixer and ``prepare(ctx)`` it once (weights problems surface here)."""
        ctx = self.context()
        if self.spec.fixer is not None and ctx.fixer is None:
            fixer = self.create(self.spec.fixer)
            assert isinstance(fixer, Fixer)
            fixer.prepare(ctx)
            ctx.fixer = fixer
        return ctx.fixer

    # ---------------------------------------------------------------------------- stages

    def load_data(self) -> Scene | Video:
        loader = self.create(self.spec.loader)
        assert isinstance(loader, Loader)
        return load_data(loader, self.spec.data)

    def build(self, data: Scene | Video) -> Representation:
        """Seed, create the ``--encoder`` (``ctx.encoder``) and ``rep.build(data, ctx)``."""
        ctx = self.context()
        seed_everything(self.spec.seed)
        encoder = None
        if self.spec.encoder is not None:
            encoder = self.create(self.spec.encoder)
            assert isinstance(encoder, Encoder)
            encoder = encoder.to(self.device)
        ctx.encoder = encoder
        rep = self.create(self.spec.representation)
        assert isinstance(rep, Representation)
        rep.build(data, ctx)
        return rep

    def evaluate(self, rep: Representation, data: Scene | Video) -> dict[str, Any]:
        """Render the evaluated views (or frames) with the run's renderer, background and fixer,
        write the renders and compute every evaluator; the metrics document (not written)."""
        ctx = self.context()
        fixer = self.prepare_fixer()
        return evaluate_run(self.registry, self.spec, self.run_dir, rep, data, ctx.renderer, fixer,  # type: ignore[arg-type]
                            self.device, self.timings, self.log, background=ctx.background)

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Run every stage; with ``resume`` continue from the run folder's latest checkpoint.

        Runs with ``run.threads`` torch threads (restored afterwards). Returns the metrics
        document (also written to ``metrics.json``; its ``timings`` hold each stage's wall
        seconds and, as ``<stage>_cpu``, the CPU seconds of this process's threads).
        Raises:
            Interrupted: Ctrl-C/SIGTERM during refinement (after saving a checkpoint).
        """
        with torch_threads(self.spec.options.threads) as threads:
            return self._run(resume, threads)

    def _run(self, resume: bool, threads: int) -> dict[str, Any]:
        spec = self.spec
        checkpoint = self.run_dir.load_checkpoint() if resume else None
        if not resume:
            self.run_dir.write_config(spec.to_json())
        where = f"{self.device}" + (f" with {threads} CPU thread{'s' * (threads > 1)}" if self.device.type == "cpu" else "")
        self.log(f"{'resuming' if resume else 'starting'} run in {self.run_dir.path} on {where}")
        ctx = self.context()
        self.prepare_fixer()  # weights problems should surface before any long work

        with self._timed("load"):
            data = self.load_data()
        with self._timed("build"):
            rep = self.build(data)
            if checkpoint is not None:
                rep.load_state_dict_resizing(checkpoint["representation"])

        refiners: list[tuple[str, Refiner]] = [(c.name, self.create(c)) for c in spec.refiners]  # type: ignore[misc]
        position = checkpoint["position"] if checkpoint is not None else None
        scalars = ScalarLog(self.run_dir.path).open(
            resume_at=(position["refiner"], position["step"]) if position is not None else None)
        on_step = scalars.write
        viewer = self._live_viewer(rep, data) if spec.options.viewer else None
        if viewer is not None:
            interval = spec.options.viewer_interval

            def on_step(name: str, index: int, step: int, values: dict[str, float]) -> None:
                scalars.write(name, index, step, values)
                viewer.maybe_update(rep.gaussians, interval)  # type: ignore[attr-defined]
        try:
            with self._timed("refine"):
                result = run_refiners(
                    rep, data, refiners, ctx,
                    save=lambda state, label: self.run_dir.save_checkpoint(state, label),
                    checkpoint_every=spec.options.checkpoint_every,
                    log_every=spec.options.log_every,
                    resume=checkpoint,
                    stop=self.stop,
                    log=self.log,
                    scalars=on_step,
                    budget=parse_budget(spec.options.budget),
                )
        finally:
            scalars.close()
            if viewer is not None:
                viewer.close()
        del refiners  # their optimizer moments, strategy state and cached targets are not needed any more
        release_memory()
        doc = self.evaluate(rep, data)
        release_memory()
        doc["refiners"] = _reports_json(result.reports)
        self.run_dir.write_metrics(doc)
        try:
            plot_curves(read_scalars(scalars.path), self.run_dir.path / CURVES_FILE, eval_psnr=doc["metrics"].get("psnr"))
        except (ImportError, ChildError) as e:  # matplotlib is a dependency; a broken install should not lose the run
            self.log(f"{CURVES_FILE} not drawn: {e}")
        with self._timed("export"):
            formats = spec.options.export if spec.options.export is not None else list(type(rep).export_formats[:1])
            exported = [str(p) for fmt in formats for p in rep.export(self.run_dir.path, fmt)]
        doc["exports"] = exported
        doc["timings"] = dict(self.timings)
        self.run_dir.write_metrics(doc)
        self.log("run finished")
        return doc


    def _live_viewer(self, rep: Representation, data: Scene | Video) -> Any:
        """``run.viewer``: a :class:`~recon_core.viewer.SceneViewer` showing the Gaussians as they
        train and the scene's cameras (None, with a log line, for a representation without Gaussians)."""
        from .gaussians import GaussianRepresentation
        from .viewer import SceneViewer

        if not isinstance(rep, GaussianRepresentation):
            self.log(f"run.viewer: {rep.name} has no Gaussians to show while training; use `recon view` on the run")
            return None
        viewer = SceneViewer(port=self.spec.options.viewer_port)
        if isinstance(data, Scene):
            viewer.show_cameras(data.views)
        viewer.show_gaussians(rep.gaussians())
        self.log(f"live viewer: {viewer.url}")
        return viewer


class _Timer:
    def __init__(self, owner: Any, stage: str) -> None:
        self.owner, self.stage = owner, stage

    def __enter__(self) -> None:
        self.start, self.cpu = time.perf_counter(), time.process_time()
        self.owner.log(f"stage {self.stage}")

    def __exit__(self, *exc: Any) -> None:
        timings = self.owner.timings
        timings[self.stage] = timings.get(self.stage, 0.0) + time.perf_counter() - self.start
        cpu = f"{self.stage}_cpu"  # all threads of this process (worker processes not included)
        timings[cpu] = timings.get(cpu, 0.0) + time.process_time() - self.cpu
