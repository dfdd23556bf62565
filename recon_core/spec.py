"""What defines a run: the chosen components with their configs (:class:`RunSpec`), the
pipeline's own options (:class:`RunOptions`), and the ``config.json`` layout (``RunSpec.to_json``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budget import parse_budget
from .config import config_to_dict, option
from .errors import InputError
from .threads import parse_threads

__all__ = ["DEFAULT_EVALUATORS", "CONFIG_FORMAT", "RunOptions", "Choice", "RunSpec"]

DEFAULT_EVALUATORS = ("psnr", "ssim", "lpips")
"""Evaluated when ``--eval`` is not given (those installed and applicable)."""

CONFIG_FORMAT = 1


@dataclass
class RunOptions:
    """Options of the pipeline itself (``--set run.KEY=VALUE``)."""

    checkpoint_every: int = option(500, "checkpoint every N refiner steps (0: only at the end of each refiner)", min=0)
    log_every: int = option(100, "write refiner step logs to log.txt every N steps (0: never)", min=0)
    threads: str = option("auto", "CPU threads of torch and the compiled kernels: 'auto' (the CPUs this process may "
                                  "use: affinity mask and cgroup quota, capped by OMP_NUM_THREADS) or a positive integer")
    render_chunk: int = option(0, "cameras (or video frames) rendered per renderer call (0: auto, 8 on CUDA, 1 on "
                                  "the CPU, where a larger batch is no faster and holds every camera's buffers at once)", min=0)
    export: list[str] | None = option(None, "export formats written at the end of a run (default: the representation's first, e.g. ply; `recon export` writes the others)")
    save_renders: bool = option(True, "write a PNG per evaluated view and renders.mp4")
    video_fps: float = option(0.0, "frame rate of renders.mp4 (0: the video's own, or 10 for scenes)", min=0)
    viewer: bool = option(False, "live browser viewer while refining (extra 'viewer'); its address is logged")
    viewer_port: int = option(8080, "port of the live viewer (0: any free port)", min=0, max=65535)
    viewer_interval: float = option(1.0, "seconds between updates of the live viewer (training never waits for it)", min=0)
    background: list[float] = option(
        factory=lambda: [1.0, 1.0, 1.0],
        help="RGB in [0, 1] behind everything rendered (RunContext.background); a loader with a 'background' "
             "option composites RGBA targets onto the same colour unless that option is set explicitly", min=0, max=1,
    )

    budget: str | None = option(
        None, "time budget of the refine stage: SECONDS of wall clock (600) or cpu:SECONDS of this process's CPU "
              "time (cpu:600); refiners stop when it is spent, their schedules follow the fraction used, and each "
              "refiner gets an even share of what is left when it starts (recon_core.budget)")

    def __post_init__(self) -> None:
        try:
            self.threads = str(parse_threads(self.threads) or "auto")
        except ValueError as e:
            raise InputError(f"bad value for run.threads: {e}") from None
        parse_budget(self.budget)  # InputError (exit 2) for a bad budget, before any work
        bg = self.background
        if len(bg) != 3 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in bg):
            raise InputError(f"run.background must be three numbers in [0, 1] (R,G,B), got {bg}")


@dataclass
class Choice:
    """One chosen component: its kind, name and parsed config."""

    kind: str
    name: str
    config: Any

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "config": config_to_dict(self.config)}


@dataclass
class RunSpec:
    """Everything that defines a run; ``to_json`` is what ``config.json`` holds."""

    data: Path
    device: str
    seed: int
    loader: Choice
    representation: Choice
    renderer: Choice
    encoder: Choice | None = None
    refiners: list[Choice] = field(default_factory=list)
    fixer: Choice | None = None
    evaluators: list[Choice] = field(default_factory=list)
    used: list[Choice] = field(default_factory=list)
    """Components the others create through ``ctx.create`` (declared by their ``uses``)."""
    options: RunOptions = field(default_factory=RunOptions)

    def choices(self) -> list[Choice]:
        single = [self.loader, self.representation, self.renderer, self.encoder, self.fixer]
        return [c for c in single if c is not None] + self.refiners + self.evaluators + self.used

    def to_json(self) -> dict[str, Any]:
        return {
            "recon_config": CONFIG_FORMAT,
            "data": str(self.data),
            "device": self.device,
            "seed": self.seed,
            "loader": self.loader.to_json(),
            "representation": self.representation.to_json(),
            "renderer": self.renderer.to_json(),
            "encoder": self.encoder.to_json() if self.encoder else None,
            "refiners": [c.to_json() for c in self.refiners],
            "fixer": self.fixer.to_json() if self.fixer else None,
            "evaluators": [c.to_json() for c in self.evaluators],
            "used": [{"kind": c.kind, **c.to_json()} for c in self.used],
            "run": config_to_dict(self.options),
        }
