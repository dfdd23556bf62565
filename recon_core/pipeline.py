"""One reconstruction run: load → build → refine* → render → fix? → evaluate → export.

:func:`resolve_run` turns what the user asked for (names, ``--set`` options, a config file) into
a :class:`RunSpec` and checks, before any work, that the components fit together
(:func:`check_combination`). :class:`Pipeline` then executes the stages into a
:class:`~recon_core.rundir.RunDir`. :func:`restore_run` rebuilds the representation of a finished
(or interrupted) run for ``recon eval/render/export``.

Metric keys in ``metrics.json``: an image metric ``NAME`` is computed on the raw renders; with a
fixer ``F`` it is also computed on the fixed renders under ``NAME+F`` (e.g. ``psnr+difix``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .cameras import Cameras, check_rigid
from .components import (
    KINDS,
    Component,
    Encoder,
    EvaluationInput,
    Evaluator,
    Fixer,
    GeometryEvaluator,
    ImageEvaluator,
    Loader,
    RunContext,
    Refiner,
    Renderer,
    Representation,
)
from .config import config_from_dict, config_to_dict, option, parse_set_option
from .errors import CombinationError, InputError
from .io import write_png
from .progress import progress_bar, stderr_console
from .refine import StopFlag, restore_cameras, run_refiners
from .registry import Registry
from .rundir import RunDir, read_json
from .scene import Scene, Video, View

__all__ = [
    "DEFAULT_EVALUATORS",
    "RunOptions",
    "Choice",
    "RunSpec",
    "resolve_device",
    "check_data_path",
    "detect_loader",
    "check_combination",
    "resolve_run",
    "Pipeline",
    "restore_run",
    "RestoredRun",
    "render_to_folder",
    "orbit_cameras",
    "read_cameras_file",
]

DEFAULT_EVALUATORS = ("psnr", "ssim", "lpips")
"""Evaluated when ``--eval`` is not given (those installed and applicable)."""

CONFIG_FORMAT = 1


@dataclass
class RunOptions:
    """Options of the pipeline itself (``--set run.KEY=VALUE``)."""

    checkpoint_every: int = option(500, "checkpoint every N refiner steps (0: only at the end of each refiner)")
    log_every: int = option(100, "write refiner step logs to log.txt every N steps (0: never)")
    render_chunk: int = option(8, "cameras (or video frames) rendered per renderer call")
    export: list[str] | None = option(None, "export formats (default: every format the representation offers)")
    save_renders: bool = option(True, "write a PNG per evaluated view and renders.mp4")
    video_fps: float = option(0.0, "frame rate of renders.mp4 (0: the video's own, or 10 for scenes)")


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


# ------------------------------------------------------------------------------- choosing parts


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; InputError for an unusable request."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"unknown device '{device}' (use auto, cpu or cuda)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{device}' requested but CUDA is not available on this machine (use --device cpu)")
    return torch.device(device)


def check_data_path(path: Path) -> None:
    """InputError when ``path`` is missing, an empty folder, or unreadable."""
    if not path.exists():
        raise InputError("data path does not exist", path)
    if path.is_dir():
        try:
            empty = not any(path.iterdir())
        except PermissionError:
            raise InputError("data folder cannot be read (permission denied)", path) from None
        if empty:
            raise InputError("data folder is empty", path)
    else:
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise InputError(f"data file cannot be read: {e.strerror or e}", path) from None


def detect_loader(registry: Registry, path: Path) -> str:
    """The usable loader with the highest ``detect`` score for ``path`` (ties: by name)."""
    check_data_path(path)
    scored = []
    for row in registry.components("loader"):
        try:
            score = int(row.cls().detect(path))  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a detect that crashes means "not mine"
            score = 0
        scored.append((score, row.name))
    best = min(scored, key=lambda s: (-s[0], s[1]), default=(0, ""))
    if best[0] <= 0:
        tried = ", ".join(name for _, name in scored) or "none installed"
        raise InputError(f"no installed loader recognises this data (tried: {tried}); name one with --loader", path)
    return best[1]


def _fmt(caps: frozenset[str] | set[str]) -> str:
    return ", ".join(sorted(caps)) or "nothing"


def _alternatives(registry: Registry, kind: str, fits: Callable[[type[Component]], bool]) -> str:
    names = [r.name for r in registry.components(kind) if r.cls is not None and fits(r.cls)]
    return ", ".join(names) or "none installed"


_ADD_PART = {
    "fixer": "add --fixer NAME",
    "encoder": "add --encoder NAME",
    "generator": "name one in an option of the component that creates it (e.g. --set REFINER.generator=NAME)",
}
"""How a user adds a run part that a component requires (the kind names as capabilities)."""


def check_combination(
    registry: Registry,
    device: torch.device,
    loader: type[Loader],
    representation: type[Representation],
    renderer: type[Renderer],
    refiners: Sequence[type[Refiner]] = (),
    encoder: type[Encoder] | None = None,
    fixer: type[Fixer] | None = None,
    evaluators: Sequence[type[Evaluator]] = (),
    used: Sequence[type[Component]] = (),
) -> None:
    """Raise CombinationError (listing what would fit instead) unless the parts fit together.

    A representation's ``requires`` must be met by the loader's ``provides``; every other
    component's ``requires`` by the union of what the loader, representation, renderer, encoder
    and fixer provide, plus the kinds of the run's optional parts ("fixer" with a fixer,
    "encoder" with an encoder, "generator" when a ``used`` component is a generator); the
    renderer must support ``device``; an encoder needs a representation that provides
    "neural-field". ``used`` are the components created through ``ctx.create``.
    """
    problems: list[str] = []
    rep = representation
    missing = rep.requires - loader.provides
    if missing:
        alts = _alternatives(registry, "representation", lambda c: c.requires <= loader.provides)
        problems.append(
            f"representation {rep.name} needs {_fmt(missing)}; loader {loader.name} provides {_fmt(loader.provides)}; "
            f"representations that fit {loader.name}: {alts}"
        )
    # what a renderer may rely on, and (plus the renderer's own) what everything else may
    base_pool = set(loader.provides | rep.provides)
    base_pool |= encoder.provides if encoder else set()
    base_pool |= fixer.provides if fixer else set()
    pool = base_pool | renderer.provides | {c.kind for c in (encoder, fixer, *used) if c is not None}

    def fits_rep(c: type[Component]) -> bool:
        return c.requires <= base_pool and device.type in c.devices  # type: ignore[attr-defined]

    missing = renderer.requires - base_pool
    if missing:
        alts = _alternatives(registry, "renderer", fits_rep)
        problems.append(
            f"renderer {renderer.name} needs {_fmt(missing)}; representation {rep.name} provides {_fmt(rep.provides)}; "
            f"renderers that fit {rep.name}: {alts}"
        )
    elif device.type not in renderer.devices:
        alts = _alternatives(registry, "renderer", fits_rep)
        problems.append(
            f"renderer {renderer.name} runs on {', '.join(renderer.devices)}, not {device.type}; "
            f"renderers for {rep.name} on {device.type}: {alts}"
        )
    if encoder is not None and "neural-field" not in rep.provides:
        alts = _alternatives(registry, "representation", lambda c: "neural-field" in c.provides)
        problems.append(
            f"representation {rep.name} takes no encoder (it does not provide neural-field); "
            f"representations that take --encoder: {alts}"
        )
    others: list[type[Component] | None] = [encoder, *refiners, fixer, *evaluators, *used]
    for cls in others:
        if cls is None:
            continue
        missing = cls.requires - pool
        for part in sorted(missing & set(_ADD_PART)):
            problems.append(
                f"{cls.kind} {cls.name} needs a {part}: {_ADD_PART[part]} "
                f"(installed {part}s: {_alternatives(registry, part, lambda c: True)})"
            )
        missing -= set(_ADD_PART)
        if missing:
            alts = _alternatives(registry, cls.kind, lambda c: c.requires <= pool)
            problems.append(
                f"{cls.kind} {cls.name} needs {_fmt(missing)}; representation {rep.name} provides {_fmt(rep.provides)}; "
                f"{cls.kind}s that fit {rep.name}: {alts}"
            )
    if problems:
        raise CombinationError(". ".join(problems))


def _split_names(values: Sequence[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` → ``["a", "b", "c"]``; None stays None (meaning "not given")."""
    if values is None:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _entry(entry: Any, role: str) -> tuple[str, dict[str, Any]]:
    """One component entry of a config file: ``{"name": ..., "config": {...}}`` or a bare name."""
    if isinstance(entry, str):
        return entry, {}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise InputError(f"config entry '{role}' must be {{\"name\": ..., \"config\": {{...}}}}")
    return entry["name"], dict(entry.get("config") or {})


def _file_choice(base: dict[str, Any], role: str) -> tuple[str | None, dict[str, Any]]:
    entry = base.get(role)
    return (None, {}) if entry is None else _entry(entry, role)


def _file_list(base: dict[str, Any], role: str) -> list[tuple[str, dict[str, Any]]] | None:
    entries = base.get(role)
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise InputError(f"config entry '{role}' must be a list")
    return [_entry(e, role) for e in entries]


def resolve_run(
    registry: Registry,
    *,
    data: str | Path | None = None,
    loader: str | None = None,
    representation: str | None = None,
    renderer: str | None = None,
    encoder: str | None = None,
    refiners: Sequence[str] | None = None,
    fixer: str | None = None,
    evaluators: Sequence[str] | None = None,
    device: str | None = None,
    seed: int | None = None,
    sets: Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> RunSpec:
    """Choose and configure every component; check they fit. Nothing heavy is loaded.

    ``base`` is a config dict (``config.json`` of an earlier run); explicit arguments override
    it, and a component whose name changes loses the options the file gave it. ``refiners``
    and ``evaluators`` accept comma lists; ``["none"]`` means none. ``sets`` are
    ``PLUGIN.KEY=VALUE`` strings (``run.KEY`` for :class:`RunOptions`); they also configure the
    components the chosen ones create through ``ctx.create`` (declared by ``Component.uses``;
    ``RunSpec.used``), and a name the run never creates is an InputError.
    """
    base = dict(base or {})
    if base and base.get("recon_config") != CONFIG_FORMAT:
        raise InputError("not a recon run configuration (missing \"recon_config\": 1)")

    data_value = data if data is not None else base.get("data")
    if data_value is None:
        raise InputError("no data given: pass --data PATH (or --config FILE)")
    data_path = Path(data_value).expanduser().absolute()
    check_data_path(data_path)
    device_name = device or base.get("device") or "auto"
    dev = resolve_device(device_name)
    seed_value = int(seed if seed is not None else base.get("seed", 0))

    def pick(role: str, given: str | None) -> tuple[str | None, dict[str, Any]]:
        file_name, file_config = _file_choice(base, role)
        if given is not None and given != file_name:
            return given, {}
        return file_name, file_config

    loader_name, loader_cfg = pick("loader", loader)
    if loader_name is None:
        loader_name = detect_loader(registry, data_path)
    loader_cls = registry.get("loader", loader_name)

    rep_name, rep_cfg = pick("representation", representation)
    if rep_name is None:
        raise InputError("no representation given: pass --repr NAME (see `recon list-plugins`)")
    rep_cls = registry.get("representation", rep_name)

    renderer_name, renderer_cfg = pick("renderer", renderer)
    if renderer_name is None:
        if not rep_cls.default_renderer:
            raise InputError(f"representation {rep_name} names no default renderer; pass --renderer NAME")
        renderer_name = rep_cls.default_renderer.get(dev.type) or rep_cls.default_renderer.get("cpu")
        if renderer_name is None:
            raise CombinationError(f"representation {rep_name} has no renderer for {dev.type}; pass --renderer NAME")
    renderer_cls = registry.get("renderer", renderer_name)

    encoder_name, encoder_cfg = pick("encoder", encoder)
    if encoder_name == "none":
        encoder_name = None
    encoder_cls = registry.get("encoder", encoder_name) if encoder_name else None

    fixer_name, fixer_cfg = pick("fixer", fixer)
    if fixer_name == "none":
        fixer_name = None
    fixer_cls = registry.get("fixer", fixer_name) if fixer_name else None

    refiner_entries = _list_choices(base, "refiners", _split_names(refiners))
    if refiner_entries is None:
        refiner_entries = [(rep_cls.native_refiner, {})] if rep_cls.native_refiner else []
    refiner_classes = [registry.get("refiner", n) for n, _ in refiner_entries]

    explicit_evals = _list_choices(base, "evaluators", _split_names(evaluators))
    eval_classes = [registry.get("evaluator", n) for n, _ in explicit_evals or []]
    if explicit_evals is None:  # the defaults that are installed, usable and fit
        pool = loader_cls.provides | rep_cls.provides | renderer_cls.provides
        explicit_evals = [
            (r.name, {}) for name in DEFAULT_EVALUATORS for r in registry.components("evaluator")
            if r.name == name and r.cls is not None and r.cls.requires <= pool
        ]

    choices: list[tuple[str, str, type[Component], dict[str, Any]]] = [
        ("loader", loader_name, loader_cls, loader_cfg),
        ("representation", rep_name, rep_cls, rep_cfg),
        ("renderer", renderer_name, renderer_cls, renderer_cfg),
    ]
    if encoder_cls:
        choices.append(("encoder", encoder_name, encoder_cls, encoder_cfg))  # type: ignore[arg-type]
    if fixer_cls:
        choices.append(("fixer", fixer_name, fixer_cls, fixer_cfg))  # type: ignore[arg-type]
    choices += [("refiner", n, registry.get("refiner", n), c) for n, c in refiner_entries]  # type: ignore[misc]
    choices += [("evaluator", n, registry.get("evaluator", n), c) for n, c in explicit_evals]
    run_values: dict[str, Any] = dict(base.get("run") or {})

    overrides = _parse_sets(sets)
    run_values.update(overrides.pop("run", {}))
    configs = [_configure(kind, name, cls, values, overrides) for kind, name, cls, values in choices]
    used = _used_choices(registry, configs, _file_used(base), overrides)
    check_combination(
        registry, dev, loader_cls, rep_cls, renderer_cls, refiner_classes, encoder_cls, fixer_cls, eval_classes,
        used=[registry.get(c.kind, c.name) for c in used],
    )
    _check_overrides(registry, sets, overrides, configs + used)
    options = config_from_dict(RunOptions, run_values, where="run")
    if options.export is not None:
        bad = [f for f in options.export if f not in rep_cls.export_formats]
        if bad:
            raise InputError(
                f"representation {rep_name} cannot export {', '.join(bad)}; it offers {', '.join(rep_cls.export_formats) or 'no export'}"
            )

    by_kind: dict[str, list[Choice]] = {}
    for c in configs:
        by_kind.setdefault(c.kind, []).append(c)
    return RunSpec(
        data=data_path,
        device=device_name,
        seed=seed_value,
        loader=by_kind["loader"][0],
        representation=by_kind["representation"][0],
        renderer=by_kind["renderer"][0],
        encoder=by_kind.get("encoder", [None])[0],
        refiners=by_kind.get("refiner", []),
        fixer=by_kind.get("fixer", [None])[0],
        evaluators=by_kind.get("evaluator", []),
        used=used,
        options=options,
    )


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _list_choices(base: dict[str, Any], role: str, given: list[str] | None) -> list[tuple[str, dict[str, Any]]] | None:
    """Names given on the command line win; the file's options survive for unchanged names."""
    from_file = _file_list(base, role)
    if given is None:
        return from_file
    if given == ["none"]:
        return []
    file_configs = dict(from_file or [])
    return [(n, file_configs.get(n, {})) for n in given]


def _parse_sets(sets: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["a.k=v"]`` → ``{"a": {"k": "v"}}``; InputError for malformed text."""
    out: dict[str, dict[str, str]] = {}
    for text in sets:
        target, key, value = parse_set_option(text)
        out.setdefault(target, {})[key] = value
    return out


def _configure(kind: str, name: str, cls: type[Component], values: dict[str, Any],
               overrides: dict[str, dict[str, str]]) -> Choice:
    """A component's config: ``values`` (from a config file) updated by its ``--set`` options.

    One name may belong to two kinds (loader idr, representation idr): a ``--set`` goes to
    whichever has that option (unknown options are reported by :func:`_check_overrides`).
    """
    fields = _field_names(cls.Config)
    mine = {k: v for k, v in overrides.get(name, {}).items() if k in fields}
    return Choice(kind, name, config_from_dict(cls.Config, {**values, **mine}, where=name))


def _file_used(base: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The ``used`` entries of a config file: ``{(kind, name): options}``."""
    entries = base.get("used") or []
    if not isinstance(entries, list):
        raise InputError("config entry 'used' must be a list")
    out = {}
    for entry in entries:
        name, config = _entry(entry, "used")
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind not in KINDS:
            raise InputError(f"config entry 'used' for {name} needs a \"kind\" (one of {', '.join(KINDS)})")
        out[(kind, name)] = config
    return out


def _used_choices(
    registry: Registry,
    chosen: Sequence[Choice],
    from_file: dict[tuple[str, str], dict[str, Any]],
    overrides: dict[str, dict[str, str]],
) -> list[Choice]:
    """The components that the chosen ones (and, in turn, those) create through ``ctx.create``,
    as their ``uses`` declares, configured from the file's ``used`` entries and ``--set``.
    Components already chosen for the run are not repeated."""
    seen = {(c.kind, c.name) for c in chosen}
    used: list[Choice] = []
    queue = list(chosen)
    while queue:
        owner = queue.pop(0)
        for kind, name in registry.get(owner.kind, owner.name).uses(owner.config):
            if (kind, name) in seen:
                continue
            seen.add((kind, name))
            try:
                cls = registry.get(kind, name)
            except InputError as e:
                raise InputError(f"{owner.kind} {owner.name} uses {kind} '{name}': {e}") from None
            choice = _configure(kind, name, cls, from_file.get((kind, name), {}), overrides)
            used.append(choice)
            queue.append(choice)
    return used


_FLAGS = {"loader": "--loader", "representation": "--repr", "renderer": "--renderer", "refiner": "--refiner",
          "encoder": "--encoder", "fixer": "--fixer", "evaluator": "--eval"}
"""The ``recon run`` option that puts a component of each kind into a run."""


def _default_users(registry: Registry, name: str) -> list[str]:
    """``"KIND NAME"`` of the installed components whose default config uses component ``name``."""
    out = []
    for row in registry.rows():
        if row.cls is None or row.kind not in KINDS:
            continue
        try:
            uses = row.cls.uses(row.cls.Config())
        except Exception:  # noqa: BLE001 - a Config without defaults: no default use to report
            continue
        if any(n == name for _, n in uses):
            out.append(f"{row.kind} {row.name}")
    return out


def _check_overrides(registry: Registry, sets: Sequence[str], overrides: dict[str, dict[str, str]],
                     run: Sequence[Choice]) -> None:
    """InputError for a ``--set`` naming a component this run does not create, or an unknown option."""
    names = ", ".join(dict.fromkeys(c.name for c in run))
    for name, values in overrides.items():
        text = next((t for t in sets if parse_set_option(t)[0] == name), name)
        mine = [c for c in run if c.name == name]
        if not mine:
            kinds = sorted({r.kind for r in registry.rows() if r.name == name and r.kind in KINDS})
            if kinds:
                flags = [f"{_FLAGS[k]} {name}" for k in kinds if k in _FLAGS]
                hints = [f"add it with {' or '.join(flags)}"] if flags else []
                users = _default_users(registry, name)
                hints += [f"components that create it: {', '.join(users)}"] if users else []
                raise InputError(
                    f"--set '{text}': {name} ({'/'.join(kinds)}) is installed but this run never creates it"
                    f"{' (' + '; '.join(hints) + ')' if hints else ''}; its components are: {names}, run"
                )
            raise InputError(f"--set '{text}': no component named '{name}' in this run; its components are: {names}, run")
        known = set().union(*(_field_names(type(c.config)) for c in mine))
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(
                f"--set {name}.{unknown[0]}: {name} has no option '{unknown[0]}'; "
                f"its options: {', '.join(sorted(known)) or 'none'} (see `recon plugin-info {name}`)"
            )


# ------------------------------------------------------------------------------------- running


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _create(registry: Registry, choice: Choice) -> Component:
    return registry.get(choice.kind, choice.name)(choice.config)


def _load_data(registry: Registry, spec: RunSpec) -> Scene | Video:
    loader = _create(registry, spec.loader)
    data = loader.load(spec.data)  # type: ignore[attr-defined]
    if not isinstance(data, (Scene, Video)):
        raise TypeError(f"loader {spec.loader.name} returned {type(data).__name__}, not a Scene or Video")
    if isinstance(data, Scene) and not data.views:
        raise InputError(f"loader {spec.loader.name} found no views", spec.data)
    return data


def _build(registry: Registry, spec: RunSpec, data: Scene | Video, device: torch.device) -> Representation:
    seed_everything(spec.seed)
    encoder = None
    if spec.encoder is not None:
        encoder = registry.get("encoder", spec.encoder.name)(spec.encoder.config, in_dim=3)  # type: ignore[call-arg]
        encoder = encoder.to(device)
    rep = _create(registry, spec.representation)
    assert isinstance(rep, Representation)
    renderer = _create(registry, spec.renderer)
    ctx = RunContext(device=device, seed=spec.seed, renderer=renderer, encoder=encoder, background=torch.ones(3),
                     create=lambda kind, name: registry.create(kind, name))
    rep.build(data, ctx)
    return rep


def _plugins_json(registry: Registry, spec: RunSpec) -> dict[str, Any]:
    def one(c: Choice) -> dict[str, str]:
        row = registry.info(c.name, c.kind)
        return {"name": c.name, "distribution": row.plugin.distribution, "version": row.plugin.version}

    return {
        "loader": one(spec.loader),
        "representation": one(spec.representation),
        "renderer": one(spec.renderer),
        "encoder": one(spec.encoder) if spec.encoder else None,
        "refiners": [one(c) for c in spec.refiners],
        "fixer": one(spec.fixer) if spec.fixer else None,
        "evaluators": [one(c) for c in spec.evaluators],
        "used": [{"kind": c.kind, **one(c)} for c in spec.used],
    }


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
    """Executes a :class:`RunSpec` into a run folder."""

    def __init__(self, registry: Registry, spec: RunSpec, run_dir: RunDir, *, stop: StopFlag | None = None) -> None:
        self.registry = registry
        self.spec = spec
        self.run_dir = run_dir
        self.stop = stop
        self.timings: dict[str, float] = {}
        self.console = stderr_console()

    def log(self, message: str) -> None:
        self.run_dir.log(message)
        self.console.print(f"[dim]{message}[/dim]", highlight=False)

    def _timed(self, stage: str) -> "_Timer":
        return _Timer(self, stage)

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Run every stage; with ``resume`` continue from the run folder's latest checkpoint.

        Returns the metrics document (also written to ``metrics.json``).
        Raises:
            Interrupted: Ctrl-C/SIGTERM during refinement (after saving a checkpoint).
        """
        spec, registry = self.spec, self.registry
        device = resolve_device(spec.device)
        checkpoint = self.run_dir.load_checkpoint() if resume else None
        if not resume:
            self.run_dir.write_config(spec.to_json())
        self.log(f"{'resuming' if resume else 'starting'} run in {self.run_dir.path} on {device}")

        fixer = None
        if spec.fixer is not None:  # weights problems should surface before any long work
            fixer = _create(registry, spec.fixer)
            assert isinstance(fixer, Fixer)
            fixer.prepare(RunContext(device=device, seed=spec.seed))
        renderer = _create(registry, spec.renderer)
        assert isinstance(renderer, Renderer)

        with self._timed("load"):
            data = _load_data(registry, spec)
        with self._timed("build"):
            rep = _build(registry, spec, data, device)
            if checkpoint is not None:
                rep.load_state_dict_resizing(checkpoint["representation"])

        refiners = [(c.name, _create(registry, c)) for c in spec.refiners]
        ctx = RunContext(
            device=device,
            seed=spec.seed,
            renderer=renderer,
            fixer=fixer,
            out_dir=self.run_dir.path,
            log=self.log,
            create=lambda kind, name: self._create_by_name(kind, name),
            background=torch.ones(3),
        )
        with self._timed("refine"):
            result = run_refiners(
                rep, data, refiners, ctx,  # type: ignore[arg-type]
                save=lambda state, label: self.run_dir.save_checkpoint(state, label),
                checkpoint_every=spec.options.checkpoint_every,
                log_every=spec.options.log_every,
                resume=checkpoint,
                stop=self.stop,
                log=self.log,
            )
        doc = evaluate_run(registry, spec, self.run_dir, rep, data, renderer, fixer, device, self.timings, self.log)
        doc["refiners"] = _reports_json(result.reports)
        self.run_dir.write_metrics(doc)
        with self._timed("export"):
            formats = spec.options.export if spec.options.export is not None else list(type(rep).export_formats)
            exported = [str(p) for fmt in formats for p in rep.export(self.run_dir.path, fmt)]
        doc["exports"] = exported
        doc["timings"] = dict(self.timings)
        self.run_dir.write_metrics(doc)
        self.log("run finished")
        return doc

    def _create_by_name(self, kind: str, name: str) -> Component:
        """``ctx.create``: a component of this run with its configured options (``--set``
        included); one that no component declared in ``uses`` gets its defaults."""
        for c in self.spec.choices():
            if c.kind == kind and c.name == name:
                return _create(self.registry, c)
        self.log(f"creating {kind} {name} with default options (no component of the run declares it in uses())")
        return self.registry.create(kind, name)


class _Timer:
    def __init__(self, owner: Any, stage: str) -> None:
        self.owner, self.stage = owner, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()
        self.owner.log(f"stage {self.stage}")

    def __exit__(self, *exc: Any) -> None:
        self.owner.timings[self.stage] = self.owner.timings.get(self.stage, 0.0) + time.perf_counter() - self.start


# ------------------------------------------------------------------------ rendering, evaluating


@dataclass
class _Item:
    """One rendered view or frame, with what evaluation compares it to."""

    name: str
    pred: Tensor  # (H, W, 3) CPU float32 in [0, 1]
    fixed: Tensor | None
    target: Callable[[], Tensor | None]
    mask: Callable[[], Tensor | None]


def _scene_chunks(views: Sequence[View], chunk: int) -> Iterator[list[View]]:
    """Consecutive views of equal size, at most ``chunk`` at a time (one renderer call each)."""
    batch: list[View] = []
    for v in views:
        if batch and (len(batch) >= chunk or (v.height, v.width) != (batch[0].height, batch[0].width)):
            yield batch
            batch = []
        batch.append(v)
    if batch:
        yield batch


def _nearest_references(scene: Scene, views: Sequence[View]) -> Tensor | None:
    """For each view, the closest training image (by camera centre) of the same size, else None."""
    train = [v for v in scene.train_views if v not in views] or scene.train_views
    if not train:
        return None
    centres = torch.stack([v.camera.centers[0] for v in train])
    refs = []
    for v in views:
        order = torch.argsort((centres - v.camera.centers[0]).norm(dim=-1))
        ref = next((train[int(i)] for i in order if (train[int(i)].height, train[int(i)].width) == (v.height, v.width)), None)
        if ref is None:
            return None
        refs.append(ref.image)
    return torch.stack(refs)


def _check_render(rgb: Tensor, n: int, size: tuple[int, int], renderer: str) -> Tensor:
    if rgb.shape != (n, size[0], size[1], 3):
        raise RuntimeError(f"renderer {renderer} returned rgb of shape {tuple(rgb.shape)}, expected {(n, *size, 3)}")
    return rgb.detach().float().clamp(0, 1).cpu()


def render_items(
    rep: Representation,
    data: Scene | Video,
    renderer: Renderer,
    device: torch.device,
    *,
    views: Sequence[View] | None = None,
    cameras: Cameras | None = None,
    names: Sequence[str] | None = None,
    fixer: Fixer | None = None,
    chunk: int = 8,
) -> Iterator[_Item]:
    """Render evaluated views (or given ``cameras``, or every video frame) chunk by chunk.

    Video frame ``i`` is rendered at its time, from the representation's camera ``i`` when it
    holds one per frame (e.g. poses a network predicted from the frames), else without cameras.
    """
    chunk = max(1, chunk)
    with torch.no_grad():
        if isinstance(data, Video):
            frame_cams = rep.cameras()
            if frame_cams is not None and len(frame_cams) != data.num_frames:
                frame_cams = None
            for start in range(0, data.num_frames, chunk):
                idx = list(range(start, min(start + chunk, data.num_frames)))
                if frame_cams is None:
                    out = renderer.render_frames(rep, torch.tensor(idx, device=device))
                else:
                    out = renderer.render(rep, frame_cams[idx].to(device), background=torch.ones(3, device=device))
                rgb = _check_render(out.rgb, len(idx), (data.height, data.width), renderer.name)
                fixed = fixer.fix(rgb.to(device)).detach().float().clamp(0, 1).cpu() if fixer else None
                for j, i in enumerate(idx):
                    yield _Item(f"frame-{i:05d}", rgb[j], None if fixed is None else fixed[j],
                                lambda i=i: data.frame(i), lambda: None)
            return
        if cameras is not None:
            labels = list(names) if names is not None else [f"{i:05d}" for i in range(len(cameras))]
            for start in range(0, len(cameras), chunk):
                cams = cameras[list(range(start, min(start + chunk, len(cameras))))]
                out = renderer.render(rep, cams.to(device), background=torch.ones(3, device=device))
                rgb = _check_render(out.rgb, len(cams), cams.size(0), renderer.name)
                fixed = fixer.fix(rgb.to(device)).detach().float().clamp(0, 1).cpu() if fixer else None
                for j in range(len(cams)):
                    yield _Item(labels[start + j], rgb[j], None if fixed is None else fixed[j], lambda: None, lambda: None)
            return
        assert views is not None
        for batch in _scene_chunks(views, chunk):
            cams = Cameras.cat([v.camera for v in batch]).to(device)
            out = renderer.render(rep, cams, background=torch.ones(3, device=device))
            rgb = _check_render(out.rgb, len(batch), (batch[0].height, batch[0].width), renderer.name)
            fixed = None
            if fixer is not None:
                refs = _nearest_references(data, batch)
                fixed = fixer.fix(rgb.to(device), None if refs is None else refs.to(device), views=batch)
                fixed = fixed.detach().float().clamp(0, 1).cpu()
            for j, v in enumerate(batch):
                yield _Item(v.name, rgb[j], None if fixed is None else fixed[j],
                            lambda v=v: v.image, lambda v=v: v.object_mask if v.has("object_mask") else None)


class Mp4Writer:
    """H.264 video written through PyAV to a temporary file, renamed into place on close."""

    def __init__(self, path: Path, fps: float) -> None:
        import av

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.stem}.partial.mp4")
        self.container = av.open(str(self._tmp), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.pix_fmt = "yuv420p"
        self._size: tuple[int, int] | None = None

    def add(self, image: Tensor) -> None:
        """Append an (H, W, 3) float [0, 1] frame (padded to even size, as yuv420p needs)."""
        import av

        arr = (image.numpy().clip(0, 1) * 255 + 0.5).astype(np.uint8)
        h, w = arr.shape[:2]
        arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._size is None:
            self._size = arr.shape[:2]
            self.stream.height, self.stream.width = self._size
        if arr.shape[:2] != self._size:
            return  # frames of another size cannot go into the same stream
        frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self, keep: bool = True) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
        if keep and self._size is not None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else None


def evaluate_run(
    registry: Registry,
    spec: RunSpec,
    run_dir: RunDir,
    rep: Representation,
    data: Scene | Video,
    renderer: Renderer,
    fixer: Fixer | None,
    device: torch.device,
    timings: dict[str, float],
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Render the evaluated views, write renders, compute every evaluator; the metrics document."""
    evaluators = [_create(registry, c) for c in spec.evaluators]
    unavailable: dict[str, str] = {}
    image_evals: list[ImageEvaluator] = []
    geometry_evals: list[GeometryEvaluator] = []
    for ev in evaluators:
        assert isinstance(ev, Evaluator)
        reason = ev.unavailable_reason()
        if reason is not None:
            unavailable[ev.name] = reason
        elif isinstance(ev, ImageEvaluator):
            image_evals.append(ev)
        elif isinstance(ev, GeometryEvaluator):
            geometry_evals.append(ev)
    fixer_suffix = f"+{spec.fixer.name}" if spec.fixer else None

    views = data.eval_views if isinstance(data, Scene) else None
    count = len(views) if views is not None else data.num_frames  # type: ignore[union-attr]
    save = spec.options.save_renders
    fps = spec.options.video_fps or (data.fps if isinstance(data, Video) else 10.0)
    writers: dict[str, Mp4Writer] = {}
    if save and count >= 2:
        writers["raw"] = Mp4Writer(run_dir.renders_dir / "renders.mp4", fps)
        if fixer is not None:
            writers["fixed"] = Mp4Writer(run_dir.renders_dir / "renders_fixed.mp4", fps)

    per_view: list[dict[str, Any]] = []
    start = time.perf_counter()
    ok = False
    try:
        with progress_bar("render + evaluate", total=count) as advance:
            for item in render_items(rep, data, renderer, device, views=views, fixer=fixer, chunk=spec.options.render_chunk):
                row: dict[str, Any] = {"name": item.name}
                if save:
                    write_png(run_dir.renders_dir / f"{item.name}.png", item.pred)
                    if "raw" in writers:
                        writers["raw"].add(item.pred)
                    if item.fixed is not None:
                        write_png(run_dir.renders_dir / "fixed" / f"{item.name}.png", item.fixed)
                        if "fixed" in writers:
                            writers["fixed"].add(item.fixed)
                if image_evals:
                    target = item.target()
                    mask = item.mask()
                    if target is None:
                        raise RuntimeError(f"view {item.name} has no ground-truth image")
                    target = target.float().cpu()
                    for ev in image_evals:
                        row[ev.name] = _finite(ev.compute(item.pred, target, mask))
                        if item.fixed is not None:
                            row[ev.name + fixer_suffix] = _finite(ev.compute(item.fixed, target, mask))  # type: ignore[operator]
                per_view.append(row)
                advance(1)
        ok = True
    finally:
        for w in writers.values():
            w.close(keep=ok)
    timings["render+evaluate"] = time.perf_counter() - start

    metrics: dict[str, Any] = {}
    keys = [ev.name for ev in image_evals]
    keys += [ev.name + fixer_suffix for ev in image_evals] if fixer is not None else []
    for key in keys:
        metrics[key] = _mean([row[key] for row in per_view if key in row])
    t0 = time.perf_counter()
    for ev in geometry_evals:
        try:
            metrics[ev.name] = _finite(ev.evaluate(EvaluationInput(rep, data, run_dir.path)))
        except InputError as e:  # e.g. the data has no ground-truth mesh
            unavailable[ev.name] = str(e)
    if geometry_evals:
        timings["geometry-evaluate"] = time.perf_counter() - t0
    for name, reason in unavailable.items():
        log(f"evaluator {name} unavailable: {reason}")
    return {
        "metrics": metrics,
        "per_view": per_view,
        "unavailable": unavailable,
        "timings": dict(timings),
        "plugins": _plugins_json(registry, spec),
        "fixed_metric_suffix": fixer_suffix,
    }


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------- restoring a run


@dataclass
class RestoredRun:
    """A run folder's representation rebuilt from its latest checkpoint."""

    spec: RunSpec
    run_dir: RunDir
    data: Scene | Video
    rep: Representation
    renderer: Renderer
    device: torch.device
    checkpoint: dict[str, Any]


def restore_run(registry: Registry, run_dir: RunDir, device: str | None = None, evaluators: Sequence[str] | None = None) -> RestoredRun:
    """Re-resolve the run's config, reload its data and its latest representation state."""
    base = run_dir.read_config()
    spec = resolve_run(registry, base=base, device=device, evaluators=evaluators)
    dev = resolve_device(spec.device)
    checkpoint = run_dir.load_checkpoint()
    data = _load_data(registry, spec)
    rep = _build(registry, spec, data, dev)
    rep.load_state_dict_resizing(checkpoint["representation"])
    restore_cameras(data, checkpoint)  # e.g. poses a refiner corrected
    renderer = _create(registry, spec.renderer)
    assert isinstance(renderer, Renderer)
    return RestoredRun(spec, run_dir, data, rep, renderer, dev, checkpoint)


def render_to_folder(
    restored: RestoredRun,
    out_dir: Path,
    *,
    cameras: Cameras | None = None,
    views: Sequence[View] | None = None,
    names: Sequence[str] | None = None,
    fps: float = 10.0,
) -> list[Path]:
    """Render ``cameras`` or ``views`` (or every video frame) to PNGs + renders.mp4 in ``out_dir``."""
    r = restored
    count = len(cameras) if cameras is not None else len(views) if views is not None else r.data.num_frames  # type: ignore[union-attr]
    writer = Mp4Writer(out_dir / "renders.mp4", fps) if count >= 2 else None
    written: list[Path] = []
    ok = False
    try:
        with progress_bar("render", total=count) as advance:
            items = render_items(r.rep, r.data, r.renderer, r.device, views=views, cameras=cameras, names=names,
                                 chunk=r.spec.options.render_chunk)
            for item in items:
                written.append(write_png(out_dir / f"{item.name}.png", item.pred))
                if writer:
                    writer.add(item.pred)
                advance(1)
        ok = True
    finally:
        if writer:
            writer.close(keep=ok)
    if writer:
        written.append(out_dir / "renders.mp4")
    return written


def orbit_cameras(scene: Scene, n: int = 60) -> Cameras:
    """``n`` cameras on a circle around the scene, looking at the centre of its bounds.

    The circle lies in the plane perpendicular to the cameras' mean "up" (−y in OpenCV), at their
    mean height and mean horizontal distance from the centre; intrinsics are the first view's.
    """
    if n < 1:
        raise InputError("orbit needs at least one frame")
    cams = scene.cameras()
    center = scene.bounds.center.double()
    c2w = cams.c2w.double()
    up = -c2w[:, :3, 1].mean(0)
    up = up / up.norm().clamp_min(1e-12)
    offsets = c2w[:, :3, 3] - center
    height = float((offsets @ up).mean())
    horizontal = offsets - (offsets @ up)[:, None] * up
    radius = float(horizontal.norm(dim=-1).mean())
    if radius < 1e-6:
        radius = 2.0 * scene.bounds.radius
    # an orthonormal basis (a, b) of the orbit plane
    a = horizontal[0] if horizontal[0].norm() > 1e-6 else torch.linalg.svd(up[None])[2][1]
    a = a / a.norm()
    b = torch.linalg.cross(up, a)
    poses = []
    for k in range(n):
        theta = 2 * math.pi * k / n
        pos = center + height * up + radius * (math.cos(theta) * a + math.sin(theta) * b)
        forward = center - pos
        forward = forward / forward.norm()
        right = torch.linalg.cross(forward, up)
        right = right / right.norm().clamp_min(1e-12)
        down = torch.linalg.cross(forward, right)
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, pos
        poses.append(pose)
    first = cams[0]
    return Cameras.create(first.K[0], torch.stack(poses).float(), int(first.width[0]), int(first.height[0]))


def read_cameras_file(path: Path) -> tuple[Cameras, list[str]]:
    """Cameras from a JSON like ``cameras_opencv.json``: ``K``, ``w``, ``h`` (top level or per
    frame) and per frame an OpenCV camera-to-world ``c2w``; names from ``file_path`` stems."""
    doc = read_json(path, "cameras")
    frames = doc.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError("cameras file has no 'frames' list", path)
    Ks, c2ws, ws, hs, names = [], [], [], [], []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise InputError(f"frame {i} is not an object", path)
        try:
            K = torch.tensor(fr.get("K", doc.get("K")), dtype=torch.float64)
            c2w = torch.tensor(fr["c2w"], dtype=torch.float64)
            w = int(fr.get("w", fr.get("width", doc.get("w", doc.get("width")))))
            h = int(fr.get("h", fr.get("height", doc.get("h", doc.get("height")))))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"frame {i} needs K, c2w, w and h ({type(e).__name__}: {e})", path) from None
        if K.shape != (3, 3):
            raise InputError(f"frame {i}: K must be 3x3, got {tuple(K.shape)}", path)
        check_rigid(c2w, f"{path} frame {i}")
        Ks.append(K)
        c2ws.append(c2w)
        ws.append(w)
        hs.append(h)
        names.append(Path(fr["file_path"]).stem if isinstance(fr.get("file_path"), str) else f"{i:05d}")
    return Cameras.create(torch.stack(Ks), torch.stack(c2ws), ws, hs), names
