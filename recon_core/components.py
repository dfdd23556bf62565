"""The interfaces every plugin implements.

A component is a class with a ``name`` users type, a ``kind``, a typed ``Config`` dataclass,
and declared capabilities: ``provides`` (what it offers) and ``requires`` (what it needs from
the components it is combined with). The pipeline checks capabilities before doing any work.
Inheritance goes one level deep: a plugin subclasses one of these bases and nothing else.

Capability names used by the built-in plugins (see docs/conventions.md):
    "scene"          a loader yields posed views (Scene)
    "video"          a loader yields frames without cameras (Video)
    "gaussians-3d"   a representation exposes 3D Gaussians through ``gaussians()``
    "gaussians-2d"   a representation made of image-space 2D Gaussians
    "sdf"            a representation is a signed distance field with appearance
    "cameras"        a representation holds (refinable) cameras
    "dynamic"        a representation varies with time
    "neural-field"   a representation that uses an input Encoder
The kind names "fixer", "encoder" and "generator" are capabilities too: the run provides
"fixer" when it has a ``--fixer``, "encoder" with an ``--encoder``, and "generator" when one of
its components creates a generator (see :meth:`Component.uses`). A refiner that cannot work
without a fixer requires "fixer", so ``recon run`` refuses it up front without ``--fixer``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from .budget import BudgetClock
from .cameras import Cameras
from .config import EmptyConfig, component_uses
from .scene import Scene, Video, View

if TYPE_CHECKING:
    from .gaussians import Gaussians3D

__all__ = [
    "Component",
    "Loader",
    "Representation",
    "Renderer",
    "CameraRenderer",
    "FrameRenderer",
    "RenderOutput",
    "Refiner",
    "RunContext",
    "Encoder",
    "Fixer",
    "Evaluator",
    "ImageEvaluator",
    "GeometryEvaluator",
    "EvaluationInput",
    "Generator",
    "KINDS",
    "WeightFile",
    "weights_dir",
]

KINDS = ("loader", "representation", "renderer", "refiner", "encoder", "fixer", "evaluator", "generator")


@dataclass(frozen=True)
class WeightFile:
    """A weights file a learned component needs, and where recon looks for it."""

    description: str
    path: Path
    source: str
    """Where a user gets it (URL or hub repository); recon never downloads it."""

    @property
    def present(self) -> bool:
        return self.path.exists()


def weights_dir() -> Path:
    """Folder for model weights: ``$RECON_WEIGHTS_DIR`` or ``~/.cache/recon/weights``."""
    return Path(os.environ.get("RECON_WEIGHTS_DIR", Path.home() / ".cache" / "recon" / "weights"))


class Component:
    """Base of every plugin component. Subclasses set the class attributes below."""

    name: ClassVar[str]
    """The name users type (``--repr 3dgs``); unique within its kind."""
    kind: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    provides: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[frozenset[str]] = frozenset()
    needs_packages: ClassVar[tuple[str, ...]] = ()
    """Optional import names this component needs (status 'missing-dependency' when absent)."""
    install_hint: ClassVar[str] = ""
    """How to install ``needs_packages``, e.g. ``pip install 'recon-toolkit[difix]'``."""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def required_weights(cls) -> list[WeightFile]:
        """Weights files this component loads (``recon doctor`` reports each as present or not)."""
        return []

    @classmethod
    def uses(cls, config: Any) -> list[tuple[str, str]]:
        """``(kind, name)`` of the components this one creates through ``RunContext.create``
        when configured with ``config``.

        The pipeline resolves them before any work (an unknown name is an input error), checks
        their ``requires``, lets ``--set NAME.KEY=VALUE`` configure them and records their options
        in the run's ``config.json``. The default lists the options declared with
        ``option(..., component=KIND)`` (e.g. ``generator: str = option("render-fix", ...,
        component="generator")``; ``"none"`` or empty: none), nested configs included. Override
        it when a component creates others otherwise.
        """
        return component_uses(config)


# --------------------------------------------------------------------------------------- loader


class Loader(Component):
    """Turns a path into a :class:`Scene` (posed views) or a :class:`Video`."""

    kind = "loader"

    def detect(self, path: Path) -> int:
        """Cheap check (no heavy reading) of how well ``path`` matches this loader's format.

        0 means "not mine"; higher means a more specific match (e.g. a generic transforms.json
        reader returns 10, a reader that also recognises driving-specific files returns 20).
        ``recon run --data PATH`` picks the loader with the highest score.
        """
        raise NotImplementedError

    def load(self, path: Path) -> Scene | Video:
        """Validate everything and return the data; raise InputError naming the bad file."""
        raise NotImplementedError


# ------------------------------------------------------------------------------- representation


class Representation(Component, nn.Module):
    """Parameters of a reconstruction, how they start, and how they are exported.

    ``default_renderer`` maps a device type ("cpu", "cuda") to the renderer used when the user
    names none; ``native_refiner`` is run when the user names no refiner (None: none needed).
    """

    kind = "representation"
    rendered_by: ClassVar[str] = "cameras"
    """Which kind of renderer draws it: "cameras" (a :class:`CameraRenderer`, posed views) or
    "frames" (a :class:`FrameRenderer`, video frames by index, e.g. image-space 2D Gaussians)."""
    default_renderer: ClassVar[Mapping[str, str]] = {}
    native_refiner: ClassVar[str | None] = None
    export_formats: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None) -> None:
        nn.Module.__init__(self)
        Component.__init__(self, config)

    def build(self, data: Scene | Video, ctx: "RunContext") -> None:
        """Create and initialise the parameters from the loaded data on ``ctx.device``.

        ``ctx`` carries the run's seed, renderer, encoder (``--encoder``) and ``create(kind, name)``
        for any other component (configured by ``--set``; declare it in :meth:`Component.uses`).
        """
        raise NotImplementedError

    def cameras(self) -> Cameras | None:
        """The cameras this representation holds (representations providing "cameras", e.g. ones
        predicted by a network), in the order of its input frames, or None.

        For a :class:`Video` input, frame ``i`` is rendered (and evaluated) from camera ``i``
        when there is one camera per frame.
        """
        return None

    def set_cameras(self, cameras: Cameras) -> None:
        """Replace the held cameras (same count and order as :meth:`cameras`), e.g. with poses a
        refiner corrected; the new cameras are saved with the representation's state."""
        raise NotImplementedError(f"{self.name} holds no cameras that can be set")

    def gaussians(self, time: float | None = None) -> "Gaussians3D":
        """Activated 3D Gaussians at ``time`` (representations providing "gaussians-3d")."""
        raise NotImplementedError(f"{self.name} does not provide 3D Gaussians")

    def export(self, out_dir: Path, fmt: str) -> list[Path]:
        """Write the representation in ``fmt`` (one of ``export_formats``) atomically; return the files."""
        raise NotImplementedError(f"{self.name} has no export")

    def load_state_dict_resizing(self, state: Mapping[str, Tensor]) -> None:
        """Load a state dict whose parameter shapes may differ (densified Gaussians).

        Parameters are replaced (not copied into), so optimizers must be created afterwards.
        """
        for key, value in state.items():
            module_path, _, attr = key.rpartition(".")
            module = self.get_submodule(module_path) if module_path else self
            current = getattr(module, attr, None)
            if isinstance(current, nn.Parameter):
                setattr(module, attr, nn.Parameter(value.to(current.device, current.dtype), requires_grad=current.requires_grad))
            elif isinstance(current, Tensor):
                setattr(module, attr, value.to(current.device, current.dtype))
            else:
                raise KeyError(f"unexpected key in checkpoint: {key}")
        missing = set(self.state_dict()) - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks: {', '.join(sorted(missing))}")


# ------------------------------------------------------------------------------------- renderer


@dataclass(frozen=True)
class RenderOutput:
    """What a renderer returns for a batch of N cameras (or frames).

    rgb:   [N, H, W, 3] float32, background composited.
    alpha: [N, H, W, 1] float32 accumulated opacity, or None when the renderer has no notion of it.
    depth: [N, H, W, 1] float32 expected z-depth (normalised by alpha where alpha > 0), or None.
    """

    rgb: Tensor
    alpha: Tensor | None = None
    depth: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    """Intermediate results for optimisation strategies, in gsplat's ``info`` shape: ``means2d``
    [C, N, 2] (gradient retained), ``radii`` [C, N, 2], ``width``, ``height``, ``n_cameras``."""


class Renderer(Component):
    """Common base of the two renderer kinds; plugins subclass :class:`CameraRenderer` or
    :class:`FrameRenderer`. ``renders`` matches :attr:`Representation.rendered_by`."""

    kind = "renderer"
    renders: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")


class CameraRenderer(Renderer):
    """Representation + posed cameras → images. A dynamic representation is drawn at each
    camera's ``cameras.times[i]`` (static ones ignore times)."""

    renders = "cameras"

    def render(self, rep: Representation, cameras: Cameras, *, background: Tensor | None = None) -> RenderOutput:
        """Render every camera; ``background`` [3] (or [N, 3]) is composited where alpha < 1,
        unless the representation draws its own (e.g. a sky model)."""
        raise NotImplementedError


class FrameRenderer(Renderer):
    """Representation + video frame indices → images (representations in image space)."""

    renders = "frames"

    def render_frames(self, rep: Representation, frames: Tensor, *, background: Tensor | None = None) -> RenderOutput:
        """Render the frames with the given indices [N] (int64) of the video the representation encodes."""
        raise NotImplementedError


# -------------------------------------------------------------------------------------- refiner


@dataclass
class RunContext:
    """What the pipeline hands a representation's ``build`` and every refiner: the device, the
    seed, the run's background and the other components of the run. Nothing else in a component
    reaches for global state (the registry, the device)."""

    device: torch.device
    seed: int
    renderer: Renderer | None = None
    encoder: "Encoder | None" = None
    fixer: "Fixer | None" = None
    background: Tensor | None = None
    """[3] RGB the run composites behind what it renders (``--set run.background=R,G,B``);
    targets of views with alpha or object masks are composited on it too."""
    out_dir: Path | None = None
    log: Callable[[str], None] = print
    create: Callable[[str, str], Component] | None = None
    """``create(kind, name)`` builds another component of this run (e.g. a generator) with the
    run's options for it: declare what you create in :meth:`Component.uses`."""
    load: Callable[[Path], Scene | Video] | None = None
    """``load(path)`` reads another dataset with the loader that best recognises it."""

    def background_color(self) -> Tensor:
        """The run's background [3] as float32 on the run's device (white when the run gives none)."""
        bg = self.background if self.background is not None else torch.ones(3)
        return bg.to(self.device, torch.float32)
    options: dict[str, Any] = field(default_factory=dict)
    # For refiners with a custom ``run`` (the step loop handles these itself otherwise):
    should_stop: Callable[[], bool] = lambda: False
    """True once Ctrl-C or SIGTERM asked the run to stop (save, then return promptly)."""
    save_state: Callable[[int], None] | None = None
    """``save_state(next_step)`` checkpoints the representation + ``refiner.state_dict()``."""
    resume_state: dict[str, Any] | None = None
    """The refiner's saved ``state_dict()`` when resuming, else None."""
    start_step: int = 0
    """The step saved with ``resume_state`` (where a resumed ``run`` continues)."""
    log_scalars: Callable[[int, dict[str, float]], None] = lambda step, values: None
    """``log_scalars(step, values)`` records a unit of work's numbers in ``RUN/scalars.jsonl``
    (the step loop does this itself for refiners without a custom ``run``)."""

    budget: BudgetClock | None = None
    """The running refiner's share of ``run.budget`` (:mod:`recon_core.budget`); None without one."""

    def budget_fraction(self) -> float:
        """Fraction of the running refiner's budget share spent (0 without a budget)."""
        return self.budget.fraction() if self.budget is not None else 0.0

    def budget_spent(self) -> bool:
        """True once the running refiner's budget share is spent (never without a budget). The
        step loop checks it itself; a refiner with its own ``run`` checks it between units of
        work, then saves (``save_state``) and returns, as at its normal end."""
        return self.budget is not None and self.budget.spent()

    def progress(self, step: int, total: int) -> float:
        """Where a refiner's schedules stand, in [0, 1]: ``max(step / total, budget fraction)``,
        so that decays and milestones complete within the budget whatever the step rate."""
        return min(max(step / max(int(total), 1), self.budget_fraction()), 1.0)


class Refiner(Component):
    """An optimisation procedure that improves a representation against observed data.

    The pipeline drives it step by step so that progress, checkpoints, Ctrl-C and resume work
    the same for every refiner::

        refiner.setup(rep, data, ctx)            # create optimizers, pick views
        refiner.load_state_dict(saved)           # only when resuming
        for step in range(start, refiner.total_steps):
            logs = refiner.step(step)            # one iteration (forward, backward, update)
        summary = refiner.finish()               # final report (e.g. before/after metrics)

    ``state_dict`` must hold everything needed to continue bit-identically on CPU (optimizer
    state, schedules, private generators); the pipeline saves the representation and global RNG
    states itself. A refiner that needs another loop (e.g. parallel workers) sets ``run``; the
    pipeline then calls ``report = refiner.run(rep, data, ctx)`` instead of setup/step/finish.
    Such a loop checks ``ctx.should_stop()`` between units of work; when it is true it calls
    ``ctx.save_state(next_step)`` and returns (the pipeline then reports the interruption).
    When resuming, ``ctx.resume_state`` holds its saved ``state_dict()`` and ``ctx.start_step``
    the step it saved at; the representation has already been restored.
    """

    kind = "refiner"

    def setup(self, rep: Representation, data: Scene | Video, ctx: RunContext) -> None:
        raise NotImplementedError

    @property
    def total_steps(self) -> int:
        raise NotImplementedError

    def step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def finish(self) -> dict[str, Any]:
        return {}

    run: ClassVar[Callable[..., dict[str, Any]] | None] = None
    """Optional ``run(self, rep, data, ctx) -> report`` replacing the step loop entirely."""


# -------------------------------------------------------------------------------------- encoder


class Encoder(Component, nn.Module):
    """Coordinate encoding for neural fields: [..., in_dim] → [..., out_dim]."""

    kind = "encoder"
    # Optimiser hints that trainers use unless told otherwise (None: the trainer's own choice).
    table_lr: float | None = None
    """Recommended Adam lr of grid feature tables (instant-NGP: 1e-2)."""
    weights_lr: float | None = None
    """Recommended Adam lr of the encoder's other weights (None: the network lr)."""
    lr_milestones: tuple[float, ...] | None = None
    """Recommended fractions of a run at which trainers decay every lr (None: the trainer's schedule)."""
    grad_clip: float | None = None
    """Recommended clip of the gradient's global norm before each optimiser step (None: no clipping)."""
    cpu_options: ClassVar[dict[str, Any]] = {}
    """Option values sized for a CPU (e.g. a smaller hash table), which a representation may apply on
    the CPU when the run left every option at its default (``idr.preset=auto``)."""

    def __init__(self, config: Any = None, in_dim: int = 3) -> None:
        nn.Module.__init__(self)
        Component.__init__(self, config)
        self.in_dim = in_dim

    @property
    def out_dim(self) -> int:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:  # noqa: D401
        raise NotImplementedError

    def table_parameters(self) -> list[nn.Parameter]:
        """Feature-table parameters (e.g. hash grids) that trainers give ``table_lr``; the other
        parameters are weights (``weights_lr``). Default: the tables of encoders inside this one."""
        out: list[nn.Parameter] = []
        for m in self.modules():
            if m is not self and isinstance(m, Encoder):
                out += [p for p in m.table_parameters() if all(p is not q for q in out)]
        return out


# ---------------------------------------------------------------------------------------- fixer


class Fixer(Component):
    """Image-space artifact removal: renders [N, H, W, 3] in [0, 1] → fixed images, same shape.

    ``references`` [N, H, W, 3] are optional clean views (e.g. the nearest training image).
    ``prepare`` loads weights and raises MissingWeightsError when they are absent.
    """

    kind = "fixer"

    def prepare(self, ctx: RunContext) -> None:
        """Load weights (raise MissingWeightsError when absent); ``ctx`` as for build."""

    def fix(self, images: Tensor, references: Tensor | None = None, *, views: Sequence[View] | None = None) -> Tensor:
        raise NotImplementedError


# ------------------------------------------------------------------------------------ evaluator


@dataclass
class EvaluationInput:
    """Everything an evaluator may look at after a run."""

    rep: Representation
    data: Scene | Video
    run_dir: Path | None = None


class Evaluator(Component):
    """A metric. ``unavailable_reason()`` returns why it cannot run here (None when it can)."""

    kind = "evaluator"
    higher_is_better: ClassVar[bool] = True
    unit: ClassVar[str | None] = None
    """The unit of its values (``"dB"`` for PSNR), None when unitless; recorded in metrics.json."""

    def unavailable_reason(self) -> str | None:
        return None


class ImageEvaluator(Evaluator):
    """A per-view image metric; the pipeline averages it over the evaluated views."""

    def compute(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
        """pred/target float32 (H, W, 3) in [0, 1]; mask bool (H, W): only True pixels count."""
        raise NotImplementedError

    def loss_map(self, pred: Tensor, target: Tensor) -> Tensor:
        """A differentiable per-pixel map (H, W) of the metric, lower = closer, for refiners that
        use the metric as a loss term (e.g. LPIPS in ReconX). Metrics without one raise."""
        raise NotImplementedError(f"the {self.name} metric has no differentiable map")


class GeometryEvaluator(Evaluator):
    """A metric over the whole reconstruction (e.g. Chamfer distance to a ground-truth mesh)."""

    part_regions: ClassVar[dict[str, str]] = {}
    """What each reported part (the evaluator's name for its own value) is measured over, recorded as
    ``metric_info``'s ``region``, e.g. ``{"chamfer": "whole surface", "observed": "observed surface"}``."""

    def evaluate(self, inputs: EvaluationInput) -> float | dict[str, float]:
        """The metric's value; or a dict holding it under the evaluator's name plus named parts
        (e.g. accuracy and completeness), reported in metrics.json as ``<name>.<part>``."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------ generator


class Generator(Component):
    """Produces extra (pseudo) views with per-pixel confidence, e.g. along a path between inputs.

    Contract (see docs/plugins.md): given the scene, the current representation and renderer,
    return new :class:`View` objects whose ``split`` is "train" and whose ``confidence`` is set.
    """

    kind = "generator"

    def generate(self, rep: Representation, scene: Scene, ctx: RunContext) -> list[View]:
        raise NotImplementedError
