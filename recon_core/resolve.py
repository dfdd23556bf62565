"""Resolving a run: what the user asked for (names, ``--set`` options, a config file) → a
checked :class:`RunSpec`, before any heavy work.

The device (:func:`resolve_device`), the data path check (:func:`check_data_path`) and the
default renderer (:func:`default_renderer`) are each decided here and nowhere else.

``--set PLUGIN.KEY=VALUE``: ``KEY`` may be a dotted path into a nested config
(``3dgs-train.strategy.grow_grad2d=0.0003``) or name a nested config with a selector
(``3dgs-train.strategy=mcmc``), see :mod:`recon_core.config`; ``run.KEY`` sets
:class:`RunOptions`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .combination import check_combination
from .components import KINDS, Component, Loader, Representation
from .config import config_from_dict, option_names, parse_set_option, parse_value
from .errors import CombinationError, InputError
from .registry import Registry
from .scene import Scene, Video
from .spec import CONFIG_FORMAT, DEFAULT_EVALUATORS, Choice, RunOptions, RunSpec

__all__ = [
    "DEFAULT_EVALUATORS",
    "RunOptions",
    "Choice",
    "RunSpec",
    "resolve_device",
    "check_data_path",
    "detect_loader",
    "load_data",
    "open_data",
    "default_renderer",
    "check_combination",
    "resolve_run",
]

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
    """The usable loader with the highest ``detect`` score for ``path`` (ties: by name).

    ``path`` must have passed :func:`check_data_path` (the callers check it once).
    """
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


def load_data(loader: Loader, path: Path) -> Scene | Video:
    """``loader.load(path)``, checked: a Scene or a Video, and a Scene with views."""
    data = loader.load(path)
    if not isinstance(data, (Scene, Video)):
        raise TypeError(f"loader {loader.name} returned {type(data).__name__}, not a Scene or Video")
    if isinstance(data, Scene) and not data.views:
        raise InputError(f"loader {loader.name} found no views", path)
    return data


def open_data(registry: Registry, path: str | Path, loader: str | None = None,
              sets: Sequence[str] = ()) -> tuple[str, Scene | Video]:
    """Check ``path``, pick the loader (``loader`` or the best detected) with its default options
    updated by ``sets`` (``--set LOADER.KEY=VALUE``, parsed as ``recon run`` parses them; options
    of other components are an InputError), and load it: ``(loader name, data)``.
    ``recon inspect-data`` and ``RunContext.load`` use it."""
    path = Path(path).expanduser().absolute()
    check_data_path(path)
    name = loader or detect_loader(registry, path)
    overrides = _parse_sets(sets)
    others = sorted(set(overrides) - {name})
    if others:
        text = next(t for t in sets if parse_set_option(t)[0] == others[0])
        raise InputError(f"--set '{text}': only options of the loader ({name}) apply here")
    choice = _configure("loader", name, registry.get("loader", name), {}, overrides)
    _check_overrides(registry, sets, overrides, [choice])
    component = registry.get("loader", name)(choice.config)
    assert isinstance(component, Loader)
    return name, load_data(component, path)


def default_renderer(representation: type[Representation], device: torch.device,
                     usable: Callable[[str], bool] = lambda name: True) -> str:
    """The renderer a representation names for ``device`` (else its CPU one) when the user names none.

    When the device's renderer is not ``usable`` (e.g. ``gsplat`` without the ``cuda`` extra) and
    the CPU one is, the CPU one is taken: the torch renderers run on any device.
    """
    if not representation.default_renderer:
        raise InputError(f"representation {representation.name} names no default renderer; pass --renderer NAME")
    name = representation.default_renderer.get(device.type) or representation.default_renderer.get("cpu")
    if name is None:
        raise CombinationError(f"representation {representation.name} has no renderer for {device.type}; pass --renderer NAME")
    fallback = representation.default_renderer.get("cpu")
    if not usable(name) and fallback is not None and usable(fallback):
        return fallback
    return name


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
    config = entry.get("config")
    if config is not None and not isinstance(config, dict):
        raise InputError(
            f"config entry '{role}' ({entry['name']}): \"config\" must be a mapping of option names to values, "
            f"not {type(config).__name__}"
        )
    return entry["name"], dict(config or {})


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
    if not isinstance(data_value, (str, Path)):
        raise InputError(f"bad value for data: {json.dumps(data_value)} is not a path")
    data_path = Path(data_value).expanduser().absolute()
    check_data_path(data_path)
    device_name = device or base.get("device") or "auto"
    if not isinstance(device_name, str):
        raise InputError(f"bad value for device: {json.dumps(device_name)} is not a device name (use auto, cpu or cuda)")
    dev = resolve_device(device_name)
    seed_value = parse_value(int, seed if seed is not None else base.get("seed", 0), "seed")
    if not -(2**63) <= seed_value < 2**64:
        raise InputError(f"bad value for seed: {seed_value} is out of range (must be in [-2^63, 2^64))")

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
        usable = {r.name for r in registry.components("renderer")}
        renderer_name = default_renderer(rep_cls, dev, usable=usable.__contains__)
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
    run_entry = base.get("run")
    if run_entry is not None and not isinstance(run_entry, dict):
        raise InputError(f"config entry 'run' must be a mapping of option names to values, not {type(run_entry).__name__}")
    run_values: dict[str, Any] = dict(run_entry or {})

    overrides = _parse_sets(sets)
    run_sets = overrides.pop("run", {})
    options = config_from_dict(RunOptions, list(run_values.items()) + list(run_sets.items()), where="run")
    _share_background(loader_cls, loader_name, loader_cfg, overrides, options, "background" in run_sets)
    configs = [_configure(kind, name, cls, values, overrides) for kind, name, cls, values in choices]
    used = _used_choices(registry, configs, _file_used(base), overrides)
    check_combination(
        registry, dev, loader_cls, rep_cls, renderer_cls, refiner_classes, encoder_cls, fixer_cls, eval_classes,
        used=[registry.get(c.kind, c.name) for c in used],
    )
    _check_overrides(registry, sets, overrides, configs + used)
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


def _share_background(loader_cls: type[Component], loader_name: str, loader_cfg: dict[str, Any],
                      overrides: dict[str, dict[str, str]], options: RunOptions, run_set: bool) -> None:
    """Make the loader's ``background`` option (what RGBA targets are composited onto), when it has
    one, and ``run.background`` (what renders are composited onto) the same colour.

    A loader background given by ``--set`` (and no ``run.background``) becomes the run's; else
    the run's is given to the loader. Both set to different colours is an InputError.
    """
    if "background" not in option_names(loader_cls.Config):
        return
    given = overrides.get(loader_name, {}).get("background")
    if given is None:
        loader_cfg["background"] = list(options.background)
        return
    loader_bg = [float(v) for v in config_from_dict(loader_cls.Config, {"background": given}, where=loader_name).background]
    if run_set and [float(v) for v in options.background] != loader_bg:
        raise InputError(
            f"--set {loader_name}.background={given} and run.background={','.join(map(str, options.background))} differ: "
            "renders and their targets must share one background (set run.background only)"
        )
    options.background = loader_bg


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


def _head(key: str) -> str:
    return key.partition(".")[0]


def _configure(kind: str, name: str, cls: type[Component], values: dict[str, Any],
               overrides: dict[str, dict[str, str]]) -> Choice:
    """A component's config: ``values`` (from a config file) updated by its ``--set`` options
    (dotted keys refine the file's nested configs, see :func:`config_from_dict`).

    One name may belong to two kinds (loader idr, representation idr): a ``--set`` goes to
    whichever has that option (unknown options are reported by :func:`_check_overrides`).
    """
    fields = _field_names(cls.Config)
    mine = [(k, v) for k, v in overrides.get(name, {}).items() if _head(k) in fields]
    return Choice(kind, name, config_from_dict(cls.Config, list(values.items()) + mine, where=name))


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


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
        heads = set().union(*(_field_names(type(c.config)) for c in mine))
        unknown = sorted(k for k in values if _head(k) not in heads)
        if unknown:
            known = sorted(set().union(*(option_names(type(c.config)) for c in mine)))
            raise InputError(
                f"--set {name}.{unknown[0]}: {name} has no option '{unknown[0]}'; "
                f"its options: {', '.join(known) or 'none'} (see `recon plugin-info {name}`)"
            )
