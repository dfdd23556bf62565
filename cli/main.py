"""The ``recon`` command: a thin click + rich layer over :mod:`recon_core`.

Exit codes: 0 success; 1 internal error (traceback with ``--debug``); 2 bad usage or bad input
(one paragraph naming the file and the problem); 130 interrupted (with how to resume).

``make_cli(registry)`` builds the command group around a given registry (tests inject one made
of test plugins); ``main()`` uses the installed plugins, imported only when a command needs them:
``recon --help`` and shell completion answer from a cached catalog (:mod:`recon_cli.catalog`).
Nothing is loaded at import time (this module imports neither torch nor a plugin).
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import platform
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

import click
from click.shell_completion import CompletionItem
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from recon_core.errors import InputError, Interrupted, ReconError

if TYPE_CHECKING:  # the registry imports the components (torch): loaded on first use
    from recon_core.registry import Registry

__all__ = ["make_cli", "main", "DISTRIBUTION"]

DISTRIBUTION = "recon-toolkit"
"""The distribution name on the package index (``pip install recon-toolkit``); the command and the
import names stay ``recon``, ``recon_core``, ``recon_cli`` and ``recon_plugins``."""

RegistrySource = "Registry | Callable[[], Registry] | None"

_STATUS_STYLE = {"ok": "green", "failed": "red", "blocked": "yellow", "missing-dependency": "yellow"}


class _State:
    """Per-invocation state on ``ctx.obj``: the registry (built on first use) and the debug flag."""

    def __init__(self, source: RegistrySource) -> None:
        self._source = source
        self._registry: Registry | None = source if source is not None and not callable(source) else None  # type: ignore[assignment]
        self.debug = False
        self.command_errors: list[str] = []
        self.group: ReconGroup | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from recon_core.registry import get_registry

            self._registry = self._source() if callable(self._source) else get_registry()
            if self.group is not None:
                self.group.load_plugin_commands()  # keeps the catalog of help and completion fresh
        return self._registry


def _say_error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def _disk_full(e: BaseException) -> bool:
    """An OSError saying the disk (or the user's quota) is full."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class ReconGroup(click.Group):
    """Turns recon's exceptions into exit codes and one-paragraph messages.

    With ``lazy_plugins`` the plugins' commands are added on first need (a command name that is
    not built in, or any use of the registry); until then help and completion list them from
    the cached catalog (:mod:`recon_cli.catalog`), or load the plugins when there is none.
    """

    state: _State | None = None
    lazy_plugins = False

    def load_plugin_commands(self) -> None:
        """Add the plugins' commands now (once) and refresh the catalog."""
        if not self.lazy_plugins or self.state is None:
            return
        self.lazy_plugins = False
        from .catalog import build_catalog, write_catalog

        registry = self.state.registry
        self.state.command_errors = registry.add_commands(self)
        write_catalog(build_catalog(registry, self))

    def _cached_commands(self) -> dict[str, str] | None:
        """Plugin command name → short help from the catalog (None: plugins loaded, or no catalog)."""
        if not self.lazy_plugins:
            return None
        from .catalog import read_catalog

        catalog = read_catalog()
        return None if catalog is None else {k: v for k, v in catalog["commands"].items() if k not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        cached = self._cached_commands()
        if cached is None:
            self.load_plugin_commands()
            return super().list_commands(ctx)
        return sorted(set(self.commands) | set(cached))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and self.lazy_plugins:
            self.load_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        cached = self._cached_commands()
        if cached is None:
            self.load_plugin_commands()
            return super().format_commands(ctx, formatter)
        limit = formatter.width - 6 - max(len(n) for n in [*self.commands, *cached])
        rows = [(name, self.commands[name].get_short_help_str(limit) if name in self.commands else cached[name])
                for name in sorted(set(self.commands) | set(cached))]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        cached = self._cached_commands()
        if cached is None:
            return super().shell_complete(ctx, incomplete)
        names = {**{n: c.get_short_help_str() for n, c in self.commands.items()}, **cached}
        return [CompletionItem(n, help=h) for n, h in sorted(names.items()) if n.startswith(incomplete)] + \
            click.Command.shell_complete(self, ctx, incomplete)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except InputError as e:
            _say_error(" ".join(str(e).split("\n")))
            ctx.exit(2)
        except Interrupted as e:
            _say_error(str(e))
            ctx.exit(130)
        except KeyboardInterrupt:
            _say_error("interrupted")
            ctx.exit(130)
        except ReconError as e:  # a failure recon explains itself (e.g. a refiner diverged): no traceback hint
            _say_error(" ".join(str(e).split("\n")))
            ctx.exit(1)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            if _disk_full(e):
                _say_error(f"no space left on the device while writing {getattr(e, 'filename', None) or 'the output'}; "
                           f"free some space and run again")
                ctx.exit(2)
            state = ctx.obj if isinstance(ctx.obj, _State) else None
            if (state and state.debug) or os.environ.get("RECON_DEBUG"):
                traceback.print_exc()
            _say_error(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
            ctx.exit(1)


def _console() -> Console:
    """stdout console. Markup is off: names, details and hints come from plugins and users and may
    hold brackets (``pip install 'recon-toolkit[difix]'``); styled parts are :class:`Text` pieces."""
    return Console(soft_wrap=True, markup=False, highlight=False)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _version() -> str:
    import recon_core  # light: recon_core's names load lazily

    return recon_core.__version__


def make_cli(registry: RegistrySource = None, *, plugin_commands: bool = True, lazy: bool = False) -> click.Group:
    """The ``recon`` click group around ``registry`` (a Registry, a factory, or None: installed).

    With ``plugin_commands`` the registry is built now, so plugins can add their commands; with
    ``lazy`` (what ``recon`` itself uses) only once a command needs them (:class:`ReconGroup`).
    """
    state = _State(registry)

    @click.group(cls=ReconGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
    @click.option("-q", "--quiet", "quiet", count=True, help="Only warnings and errors on stderr (no progress, no stage log).")
    @click.option("-v", "--verbose", "verbose", count=True, help="Also debug details on stderr.")
    @click.version_option(version=_version(), prog_name="recon")
    @click.pass_context
    def cli(ctx: click.Context, debug: bool, quiet: int, verbose: int) -> None:
        """recon: plugin-based 3D/4D reconstruction."""
        from recon_core.logs import setup_logging

        ctx.obj = state
        state.debug = debug
        setup_logging(max(-1, min(1, verbose - quiet)))

    _add_builtin_commands(cli)
    assert isinstance(cli, ReconGroup)
    cli.state = state
    if lazy:
        cli.lazy_plugins = True
        state.group = cli
    elif plugin_commands:
        state.command_errors = state.registry.add_commands(cli)
    return cli


def _registry(ctx: click.Context) -> Registry:
    return ctx.find_object(_State).registry  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------- completion
# Shell completion (README "Shell completion") of component names and option keys answers from
# the catalog (recon_cli.catalog) without importing plugins; with no catalog it is built once.


def _completion_catalog(ctx: click.Context) -> dict[str, Any]:
    from .catalog import build_catalog, read_catalog

    group = ctx.find_root().command
    state = ctx.find_object(_State)
    if isinstance(group, ReconGroup) and group.lazy_plugins:
        catalog = read_catalog()
        if catalog is not None:
            return catalog
    if state is None:  # completion runs before the group callback: find the state on the group
        state = group.state if isinstance(group, ReconGroup) else None
    if state is None:
        return {"components": {}, "options": {}, "commands": {}}
    registry = state.registry  # a lazy group adds its plugin commands and writes the catalog here
    return build_catalog(registry, group)


def _complete_names(*kinds: str, commas: bool = False) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    """Completion of component names of ``kinds`` (all kinds when none); with ``commas`` the
    last item of a comma-separated list is completed (``--refiner 3dgs-train,tt<TAB>``)."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        components = _completion_catalog(ctx)["components"]
        names = sorted({n for k, ns in components.items() if not kinds or k in kinds for n in ns})
        head, _, last = incomplete.rpartition(",") if commas else ("", "", incomplete)
        prefix = head + "," if head else ""
        return [CompletionItem(prefix + n) for n in names if n.startswith(last)]

    return complete


def _complete_set(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``--set`` completion: ``NAME.`` first, then ``NAME.KEY=`` from that component's options."""
    options: dict[str, list[str]] = _completion_catalog(ctx)["options"]
    if "=" in incomplete:
        return []
    if "." not in incomplete:
        return [CompletionItem(f"{n}.", type="plain") for n in sorted(options) if n.startswith(incomplete)]
    name, _, key = incomplete.partition(".")
    return [CompletionItem(f"{name}.{k}=") for k in options.get(name, []) if k.startswith(key)]


# ------------------------------------------------------------------------------------ commands


def _add_builtin_commands(cli: click.Group) -> None:
    for command in (list_plugins, plugin_info, inspect_data, run, eval_cmd, render, export, doctor):
        cli.add_command(command)
    cli.add_command(view)


@click.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_plugins(ctx: click.Context, as_json: bool) -> None:
    """List installed components and plugins (including broken ones)."""
    from recon_core.registry import Status

    reg = _registry(ctx)
    rows = reg.rows()
    if as_json:
        _echo_json([r.as_json() for r in rows])
        return
    # Fits 80 columns: components grouped by kind (the kind printed once per group), long text
    # folded in the last column; the distributions in a second, narrow table.
    table = Table(title="recon components", box=box.SIMPLE_HEAD, expand=False, pad_edge=False)
    table.add_column("kind", no_wrap=True, style="bold")
    table.add_column("name", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("description / detail", overflow="fold", ratio=1)
    order = {k: i for i, k in enumerate(_KIND_PRIORITY)}
    previous = None
    for r in sorted(rows, key=lambda r: order.get(r.kind, len(order))):  # stable: plugin order within a kind
        if previous is not None and r.kind != previous:
            table.add_section()
        text = r.detail if r.status != Status.OK else r.description
        table.add_row(r.kind if r.kind != previous else "", r.name, Text(str(r.status), style=_STATUS_STYLE.get(str(r.status), "")), text)
        previous = r.kind
    plugins = Table(title="plugins (entry points)", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("plugin", "distribution", "version", "status"):
        plugins.add_column(col, overflow="fold")
    for p in reg.plugins:
        plugins.add_row(p.name, p.distribution, p.version, Text(str(p.status), style=_STATUS_STYLE.get(str(p.status), "")))
    console = _console()
    console.print(table)
    console.print(plugins)
    for line in ctx.find_object(_State).command_errors:  # type: ignore[union-attr]
        console.print(Text.assemble(("warning:", "yellow"), f" {line}"))


_KIND_PRIORITY = ("representation", "refiner", "renderer", "loader", "encoder", "fixer", "evaluator", "generator", "plugin")


@click.command("plugin-info")
@click.argument("name", shell_complete=_complete_names())
@click.option("--kind", help="Which kind, when a name is used by several (e.g. loader idr / representation idr).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def plugin_info(ctx: click.Context, name: str, kind: str | None, as_json: bool) -> None:
    """Options, defaults, capabilities and weights of one component."""
    from recon_core.config import describe_options

    if name == "run" and kind in (None, "pipeline"):
        return _pipeline_info(as_json)
    reg = _registry(ctx)
    reg.info(name, kind)  # InputError with suggestions when unknown
    rows = [r for r in reg.rows() if r.name == name and (kind is None or r.kind == kind)]
    rows.sort(key=lambda r: _KIND_PRIORITY.index(r.kind) if r.kind in _KIND_PRIORITY else 99)
    row, others = rows[0], [r.kind for r in rows[1:]]
    info: dict[str, Any] = row.as_json()
    info["other_kinds"] = others
    cls = row.cls
    if cls is not None:
        info.update(
            options=describe_options(cls.Config),
            provides=sorted(cls.provides),
            requires=sorted(cls.requires),
            needs_packages=list(cls.needs_packages),
            required_weights=[
                {"description": w.description, "path": str(w.path), "source": w.source, "present": w.present}
                for w in cls.required_weights()
            ],
        )
        try:
            info["uses"] = [{"kind": k, "name": n} for k, n in cls.uses(cls.Config())]
        except Exception:  # noqa: BLE001 - a Config without defaults: nothing to show
            info["uses"] = []
        if row.kind == "representation":
            info.update(default_renderer=dict(cls.default_renderer), native_refiner=cls.native_refiner,
                        export_formats=list(cls.export_formats), rendered_by=cls.rendered_by)
        if row.kind == "renderer":
            info.update(devices=list(cls.devices), renders=cls.renders)
    if as_json:
        _echo_json(info)
        return
    console = _console()
    console.print(Text.assemble((info["name"], "bold"), f" ({info['kind']}) — {info['status']}"
                                + (f": {info['detail']}" if info["detail"] else "")))
    console.print(f"from {info['distribution']} {info['version']}", highlight=False)
    if info["description"]:
        console.print(info["description"], highlight=False)
    if others:
        console.print(f"also a {', '.join(others)} of that name: add --kind", highlight=False)
    if cls is None:
        return
    for label in ("provides", "requires", "needs_packages"):
        if info[label]:
            console.print(f"{label}: {', '.join(info[label])}", highlight=False)
    if info["uses"]:
        console.print("creates (default options): " + ", ".join(f"{u['kind']} {u['name']}" for u in info["uses"])
                      + " (configure with --set NAME.KEY=VALUE)", highlight=False)
    for label in ("default_renderer", "native_refiner", "export_formats", "rendered_by", "devices", "renders"):
        if info.get(label):
            console.print(f"{label}: {info[label]}", highlight=False)
    if info["options"]:
        _print_options(console, info["options"], "NAME")
    for w in info["required_weights"]:
        mark = "present" if w["present"] else "MISSING"
        console.print(f"weights: {w['description']}: {mark} at {w['path']} (from {w['source']})", highlight=False)


def _print_options(console: Console, options: list[dict[str, Any]], owner: str) -> None:
    from recon_core.config import format_value

    table = Table(title=f"options (--set {owner}.KEY=VALUE)")
    for col in ("option", "type", "default", "help"):
        table.add_column(col)
    for o in options:
        help_text = o["help"] + (f" (one of {', '.join(map(str, o['choices']))})" if o["choices"] else "")
        help_text += f" (range {o['range']})" if o.get("range") else ""
        table.add_row(o["name"], o["type"], format_value(o["default"]), help_text)
    console.print(table)


def _pipeline_info(as_json: bool) -> None:
    """``plugin-info run``: the pipeline's own options (``--set run.KEY=VALUE``)."""
    from recon_core.config import describe_options
    from recon_core.spec import RunOptions

    info = {"name": "run", "kind": "pipeline", "status": "ok",
            "description": "options of the pipeline itself (checkpoints, logs, renders, exports, background)",
            "options": describe_options(RunOptions)}
    if as_json:
        _echo_json(info)
        return
    console = _console()
    console.print(Text.assemble(("run", "bold"), " (pipeline) — " + info["description"]))
    _print_options(console, info["options"], "run")


@click.command("inspect-data")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--loader", "loader_name", help="Force a loader instead of detecting one.")
@click.option("--set", "sets", multiple=True, metavar="LOADER.KEY=VALUE", help="Set a loader option (as recon run does).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def inspect_data(ctx: click.Context, path: Path, loader_name: str | None, sets: tuple[str, ...], as_json: bool) -> None:
    """Load PATH with the detected (or given) loader and describe it."""
    from recon_core.resolve import open_data
    from recon_core.scene import Scene

    name, data = open_data(_registry(ctx), path, loader_name, sets)
    if isinstance(data, Scene):
        out: dict[str, Any] = {
            "loader": name,
            "scene": data.name,
            "views": [_view_json(v) for v in data.views],
            "point_cloud": len(data.point_cloud) if data.point_cloud is not None else None,
            "bounds": {"center": data.bounds.center.tolist(), "radius": data.bounds.radius},
            "gt_mesh": str(data.gt_mesh_path) if data.gt_mesh_path else None,
        }
    else:
        out = {"loader": name, "name": data.name, "frames": data.num_frames, "width": data.width,
               "height": data.height, "fps": data.fps}
    if as_json:
        _echo_json(out)
        return
    console = _console()
    if "views" not in out:
        console.print(f"video via {name}: {out['frames']} frames, {out['width']}x{out['height']} at {out['fps']} fps", highlight=False)
        return
    splits: dict[str, int] = {}
    for v in out["views"]:
        splits[v["split"]] = splits.get(v["split"], 0) + 1
    console.print(f"scene {out['scene']} via {name}: {len(out['views'])} views "
                  f"({', '.join(f'{n} {s}' for s, n in splits.items())}), point cloud: {out['point_cloud']}", highlight=False)
    table = Table()
    for col in ("name", "split", "size", "time", "present"):
        table.add_column(col)
    for v in out["views"]:
        present = [k for k in _VIEW_FIELDS if v[k]]
        table.add_row(v["name"], v["split"], f"{v['width']}x{v['height']}", str(v["time"]), ", ".join(present))
    console.print(table)


_VIEW_FIELDS = ("alpha", "object_mask", "sky_mask", "dynamic_mask", "depth", "confidence")


def _view_json(v: Any) -> dict[str, Any]:
    out = {
        "name": v.name,
        "split": v.split,
        "width": v.width,
        "height": v.height,
        "K": v.camera.K[0].tolist(),
        "c2w": v.camera.c2w[0].tolist(),
        "time": v.time,
    }
    out.update({k: v.has(k) for k in _VIEW_FIELDS})
    return out


def _read_run_config(reg: Any, path: Path) -> dict[str, Any]:
    """A config.json, or a file a plugin's config reader maps (naming each key it could not map)."""
    from recon_core.progress import stderr_console
    from recon_core.rundir import read_json

    reader = reg.config_reader(Path(path).suffix)
    if reader is None:
        return read_json(path, "run configuration")
    base, unmapped = reader.read(Path(path))
    console = stderr_console()
    for line in unmapped:
        console.print(Text(f"{path.name}: not mapped: {line}", style="yellow"))
    return base


@click.command("run")
@click.option("--data", type=click.Path(path_type=Path), help="Input data (folder or file).")
@click.option("--loader", help="Loader name (default: detected from the data).", shell_complete=_complete_names("loader"))
@click.option("--repr", "representation", help="Representation name, e.g. 3dgs.",
              shell_complete=_complete_names("representation"))
@click.option("--renderer", help="Renderer name (default: the representation's for the device).",
              shell_complete=_complete_names("renderer"))
@click.option("--encoder", help="Encoder for neural-field representations.", shell_complete=_complete_names("encoder"))
@click.option("--refiner", "refiners", multiple=True, help="Refiner(s), in order; repeat or comma-separate; 'none' for none.",
              shell_complete=_complete_names("refiner", commas=True))
@click.option("--fixer", help="Image fixer applied to renders (metrics reported with and without).",
              shell_complete=_complete_names("fixer"))
@click.option("--eval", "evaluators", multiple=True, help="Evaluators (comma-separated; default psnr,ssim,lpips).",
              shell_complete=_complete_names("evaluator", commas=True))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: auto (CUDA when present).")
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option("--out", type=click.Path(path_type=Path), help="Run folder (default outputs/<data>/<repr>/<timestamp>).")
@click.option("--set", "sets", multiple=True, metavar="PLUGIN.KEY=VALUE", help="Set a component option (run.KEY for the pipeline).",
              shell_complete=_complete_set)
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="A config.json of an earlier run to start from, or a foreign config a plugin reads (IDR's .conf).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), help="Continue an interrupted run folder.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in --out (only once the new run has succeeded; the old one stays until then).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics document (metrics.json, plus run_folder) as JSON.")
@click.pass_context
def run(ctx: click.Context, data: Path | None, loader: str | None, representation: str | None, renderer: str | None,
        encoder: str | None, refiners: tuple[str, ...], fixer: str | None, evaluators: tuple[str, ...],
        device: str | None, seed: int | None, out: Path | None, sets: tuple[str, ...], config_file: Path | None,
        resume_dir: Path | None, overwrite: bool, as_json: bool) -> None:
    """Reconstruct: load → build → refine → render → fix → evaluate → export.

    --out must be new, empty, or (with --overwrite) an earlier run folder; it may not be inside the
    data. A run folder is locked (run.lock) while a run writes it.
    """
    from recon_core.resolve import resolve_run
    from recon_core.rundir import RunDir, RunLock, check_out_path, default_run_path

    reg = _registry(ctx)
    replace = False
    if resume_dir is not None:
        given = [flag for flag, value in (
            ("--data", data), ("--loader", loader), ("--repr", representation), ("--renderer", renderer),
            ("--encoder", encoder), ("--refiner", refiners), ("--fixer", fixer), ("--eval", evaluators),
            ("--device", device), ("--seed", seed), ("--out", out), ("--set", sets), ("--config", config_file),
            ("--overwrite", overwrite or None),
        ) if value not in (None, ())]
        if given:
            raise InputError(f"--resume continues a run exactly as it was configured; drop {', '.join(given)}")
        run_dir = RunDir.open(resume_dir)
        spec = resolve_run(reg, base=run_dir.read_config())
        target = run_dir.path
    else:
        base = _read_run_config(reg, config_file) if config_file is not None else None
        spec = resolve_run(
            reg, data=data, loader=loader, representation=representation, renderer=renderer, encoder=encoder,
            refiners=list(refiners) if refiners else None, fixer=fixer,
            evaluators=list(evaluators) if evaluators else None, device=device, seed=seed, sets=sets, base=base,
        )
        target = out or default_run_path(spec.data.name, spec.representation.name)
        replace = check_out_path(target, spec.data, overwrite=overwrite)
    lock = RunLock(target)
    if replace or resume_dir is not None:
        lock.acquire()  # an existing run: nobody else may be writing it
    try:
        if replace:
            _replace_run(reg, spec, target, lock, as_json=as_json)
            return
        run_dir = RunDir.create(target)
        if not lock.held:
            lock.acquire()
        doc = _run_into(reg, spec, run_dir, resume=resume_dir is not None)
        _report_run(doc, run_dir.path, as_json)
    finally:
        lock.release()


def _run_into(reg: Registry, spec: Any, run_dir: Any, resume: bool, *, quiet: bool = False) -> dict[str, Any]:
    """Run the pipeline into ``run_dir``; turns interrupts into :class:`Interrupted` naming it."""
    from recon_core.pipeline import Pipeline

    pipeline = Pipeline(reg, spec, run_dir)
    try:
        doc = pipeline.run(resume=resume)
    except Interrupted as e:
        raise Interrupted(e.checkpoint, run_dir.path) from None
    except KeyboardInterrupt:
        if run_dir.latest_checkpoint() is not None:
            raise Interrupted(run_dir.latest_checkpoint(), run_dir.path) from None
        raise
    except Exception as e:
        try:
            run_dir.log(f"failed: {type(e).__name__}: {e}")
        except OSError:
            pass  # e.g. the disk is full: report the original error
        if _disk_full(e):
            if quiet:  # --overwrite: the new run is discarded, the old one stays
                raise InputError(f"no space left on the device while writing the run ({e.filename or e}); "
                                 f"free some space and run again", run_dir.path) from None
            how = (f"continue with `recon run --resume {run_dir.path}`" if run_dir.latest_checkpoint() is not None
                   else f"start it again with `recon run --config {run_dir.config_path} --out {run_dir.path} --overwrite`")
            raise InputError(f"no space left on the device while writing the run ({e.filename or e}); its last "
                             f"checkpoint is intact: free some space, then {how}", run_dir.path) from None
        raise
    return doc


def _report_run(doc: dict[str, Any], folder: Path, as_json: bool, note: str = "") -> None:
    """The end of ``recon run``: the metrics table and the folder, or (``--json``) the document."""
    if as_json:
        _echo_json({**doc, "run_folder": str(folder)})
        return
    _print_metrics(doc)
    click.echo(f"run folder: {folder}{note}")


def _replace_run(reg: Registry, spec: Any, target: Path, lock: Any, *, as_json: bool = False) -> None:
    """``--overwrite``: run into a temporary sibling folder; swap it in only when it succeeded."""
    import shutil

    from recon_core.rundir import RunDir, RunLock, swap_in, temporary_sibling

    tmp = temporary_sibling(target, "new")
    if tmp.exists():
        shutil.rmtree(tmp)
    new_lock = RunLock(tmp)
    new_lock.acquire()
    try:
        doc = _run_into(reg, spec, RunDir(tmp), resume=False, quiet=True)
    except BaseException as e:
        new_lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (Interrupted, KeyboardInterrupt)):
            stopped = Interrupted(None)
            stopped.args = (f"interrupted; the new run was discarded and the run in {target} is unchanged",)
            raise stopped from None
        raise
    doc = _moved(doc, str(tmp), str(target))
    RunDir(tmp).write_metrics(doc)
    RunDir(tmp).log(f"replacing the earlier run in {target}")
    swap_in(tmp, target)
    new_lock.folder = target  # the lock file moved with the folder
    new_lock.release()
    lock.held = False  # its file went away with the old run
    _report_run(doc, target, as_json, " (replaced the earlier run)")


def _moved(value: Any, old: str, new: str) -> Any:
    """``value`` with every string path under ``old`` re-rooted at ``new``."""
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + os.sep) else value
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    return value


def _print_metrics(doc: dict[str, Any]) -> None:
    console = _console()
    if doc["metrics"]:
        where = f"{doc['num_views']} {doc['split']} views" if "split" in doc else "evaluated views"
        table = Table(title=f"metrics (mean over {where}" + (f", on {doc['device']})" if doc.get("device") else ")"))
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("unit")
        table.add_column("better")
        table.add_column("region")
        for k, v in doc["metrics"].items():
            about = doc.get("metric_info", {}).get(k, {})
            better = {True: "higher", False: "lower"}.get(about.get("higher_is_better"), "")
            table.add_row(k, "n/a" if v is None else f"{v:.4f}", about.get("unit") or "", better, about.get("region") or "")
        console.print(table)
    from recon_core.logs import verbose_enough

    for k, reason in doc.get("unavailable", {}).items():
        # the run's log already showed the reason (once is enough), unless -q hid it
        console.print(f"{k}: unavailable (" + ("reason above; also in metrics.json" if verbose_enough() else reason) + ")")


@click.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--eval", "evaluators", multiple=True, help="Evaluators (default: the run's).",
              shell_complete=_complete_names("evaluator", commas=True))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics document as JSON.")
@click.pass_context
def eval_cmd(ctx: click.Context, run_dir: Path, evaluators: tuple[str, ...], device: str | None, as_json: bool) -> None:
    """Re-evaluate a run folder from its latest checkpoint (rewrites metrics.json)."""
    from recon_core.restore import restore_run
    from recon_core.rundir import RunDir, read_json
    from recon_core.threads import torch_threads

    folder = RunDir.open(run_dir)
    restored = restore_run(_registry(ctx), folder, device=device, evaluators=list(evaluators) if evaluators else None)
    with torch_threads(restored.spec.options.threads):
        doc = restored.evaluate()
    if folder.metrics_path.exists():
        previous = read_json(folder.metrics_path, "metrics")
        doc["refiners"] = previous.get("refiners", {})
        doc["exports"] = previous.get("exports", [])
    folder.write_metrics(doc)
    if as_json:
        _echo_json(doc)
    else:
        _print_metrics(doc)


@click.command("render")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--cameras", default="test", show_default=True, help="test | train | all | orbit | a cameras JSON file.")
@click.option("--frames", type=int, default=60, show_default=True, help="Number of orbit frames.")
@click.option("--fps", type=float, default=10.0, show_default=True, help="Frame rate of renders.mp4.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default RUN_DIR/renders-<cameras>).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.pass_context
def render(ctx: click.Context, run_dir: Path, cameras: str, frames: int, fps: float, out: Path | None, device: str | None) -> None:
    """Render a run's representation from chosen cameras to PNGs and renders.mp4."""
    from recon_core.restore import restore_run
    from recon_core.rundir import RunDir
    from recon_core.threads import torch_threads

    reg = _registry(ctx)
    folder = RunDir.open(run_dir)
    restored = restore_run(reg, folder, device=device, evaluators=["none"])
    with torch_threads(restored.spec.options.threads):
        _render_cameras(restored, folder, cameras, frames, fps, out)


def _render_cameras(restored: Any, folder: Any, cameras: str, frames: int, fps: float, out: Path | None) -> None:
    from recon_core.restore import orbit_cameras, read_cameras_file, render_to_folder
    from recon_core.scene import Scene

    data = restored.data
    label = Path(cameras).stem if cameras not in ("test", "train", "all", "orbit") else cameras
    target = out or folder.path / f"renders-{label}"
    if not isinstance(data, Scene):
        if cameras != "test":
            raise InputError(f"--cameras {cameras}: a video run renders its frames; it has no cameras")
        written = render_to_folder(restored, target, fps=fps)
    elif cameras in ("test", "train", "all"):
        views = {"test": data.eval_views, "train": data.train_views, "all": data.views}[cameras]
        if not views:
            raise InputError(f"the scene has no {cameras} views")
        written = render_to_folder(restored, target, views=views, fps=fps)
    elif cameras == "orbit":
        written = render_to_folder(restored, target, cameras=orbit_cameras(data, frames), fps=fps)
    else:
        path = Path(cameras)
        if not path.is_file():
            raise InputError("--cameras is not test, train, all, orbit or an existing cameras JSON file", path)
        cams, names = read_cameras_file(path)
        written = render_to_folder(restored, target, cameras=cams, names=names, fps=fps)
    click.echo(f"wrote {len(written)} files to {target}")


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True,
              help="Export format: one of the representation's (plugin-info; e.g. ply, splat, ply_compressed, mesh) "
                   "or 'cameras' (the views' cameras as a nerfstudio transforms.json).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default RUN_DIR).")
@click.pass_context
def export(ctx: click.Context, run_dir: Path, fmt: str, out: Path | None) -> None:
    """Export a run's representation (Representation.export) or its cameras."""
    from recon_core.restore import restore_run, write_transforms_json
    from recon_core.rundir import RunDir
    from recon_core.scene import Scene

    reg = _registry(ctx)
    folder = RunDir.open(run_dir)
    config = folder.read_config()
    rep_name = (config.get("representation") or {}).get("name")
    formats = reg.get("representation", rep_name).export_formats
    if fmt not in formats and fmt != "cameras":
        raise InputError(f"representation {rep_name} cannot export '{fmt}'; formats: {', '.join(formats) or 'none'}, "
                         "and cameras")
    restored = restore_run(reg, folder, device="cpu", evaluators=["none"])
    if fmt == "cameras":
        if not isinstance(restored.data, Scene):
            raise InputError("--format cameras: a video run has no cameras")
        click.echo(str(write_transforms_json((out or folder.path) / "transforms.json", restored.data)))
        return
    for p in restored.rep.export(out or folder.path, fmt):
        click.echo(str(p))


@click.command("view")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.pass_context
def view(ctx: click.Context, target: Path, host: str, port: int, device: str | None) -> None:
    """Show a run folder or a Gaussian file (.ply, .splat) in the browser (extra: viewer).

    Gaussians (or idr's mesh), the cameras coloured by split (click one: our render beside its
    image) and a time slider for dggt and d2gv runs. Runs until Ctrl-C.
    """
    import time

    from recon_core.viewer import SceneViewer, view_file, view_run

    if target.is_file():
        show: Callable[[SceneViewer], str] = lambda viewer: view_file(viewer, target)  # noqa: E731
    else:
        from recon_core.restore import restore_run
        from recon_core.rundir import RunDir

        restored = restore_run(_registry(ctx), RunDir.open(target), device=device, evaluators=["none"])
        show = lambda viewer: view_run(viewer, restored)  # noqa: E731
    viewer = SceneViewer(host, port)
    try:
        what = show(viewer)
    except BaseException:
        viewer.close()
        raise
    click.echo(f"viewer: {viewer.url} ({what}); Ctrl-C to stop")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True)
@click.option("--build", is_flag=True,
              help="Compile the plugins' C++ extensions for this environment now (else the first run does).")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, build: bool) -> None:
    """Check the environment: Python, torch, CUDA, gsplat, tinycudann, LPIPS, plugin weights and
    the compiled extensions (``--build`` compiles those not built yet).

    Exits 1 when something required fails (a plugin that does not load); optional parts
    (CUDA, gsplat, tinycudann, weights, plugins missing an optional package) only report.
    """
    reg = _registry(ctx)
    if build:
        _build_extensions(reg, quiet=as_json)
    report = _doctor_report(reg)
    if as_json:
        _echo_json(report)
        if report["required_failures"]:
            ctx.exit(1)
        return
    console = _console()
    console.print(f"python {report['python']['version']} ({report['python']['executable']})", highlight=False)
    t = report["torch"]
    console.print(f"torch {t['version']}; CUDA: {'yes, ' + ', '.join(t['devices']) if t['cuda'] else 'no'}", highlight=False)
    for key in ("gsplat", "tinycudann", "lpips"):
        entry = report[key]
        mark = ("ok", "green") if entry["usable"] else ("no", "yellow")
        console.print(Text.assemble(f"{key}: ", mark, f" — {entry['detail']}"))
    for w in report["weights"]:
        mark = ("present", "green") if w["present"] else ("missing", "red")
        console.print(Text.assemble(f"{w['kind']} {w['component']}: {w['description']}: ", mark, f" at {w['path']}"
                                    + ("" if w["present"] else f" (get it from {w['source']})")))
    for e in report["extensions"]:
        mark = ("built", "green") if e["built"] else ("not built", "yellow")
        console.print(Text.assemble(f"C++ extension {e['name']}: ", mark, f" in {e['folder']}" if e["built"] else
                                    " (built on first use; `recon doctor --build` builds it now)"))
    p = report["plugins"]
    console.print(f"plugins: {p['ok']} components ok; problems: {len(p['problems'])}")
    for line in p["problems"]:
        console.print(f"  {line}")
    for line in report["required_failures"]:
        console.print(Text.assemble(("required: ", "red"), line))
    if report["required_failures"]:
        ctx.exit(1)


def _doctor_report(reg: Registry) -> dict[str, Any]:
    import importlib.util

    import torch

    from recon_core.registry import Status

    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "torch": {"version": torch.__version__, "cuda": cuda,
                  "cuda_version": torch.version.cuda,
                  "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []},
    }
    if importlib.util.find_spec("gsplat") is None:
        report["gsplat"] = {"usable": False, "detail": "not installed"}
    else:
        from importlib.metadata import version

        usable = cuda
        detail = f"gsplat {version('gsplat')} installed; " + (
            "CUDA present" if cuda else "its CUDA kernels need a GPU (CPU renderers are used instead)")
        report["gsplat"] = {"usable": usable, "detail": detail}
    tcnn = importlib.util.find_spec("tinycudann") is not None
    report["tinycudann"] = {"usable": tcnn and cuda,
                            "detail": ("installed" if tcnn else "not installed (hash grids fall back to torch)")}
    report["lpips"] = _lpips_status(reg)
    weights = []
    for row in reg.rows():
        if row.cls is None:
            continue
        try:
            files = row.cls.required_weights()
        except Exception as e:  # noqa: BLE001 - report, don't crash the doctor
            weights.append({"component": row.name, "kind": row.kind, "description": f"required_weights() failed: {e}",
                            "path": "", "source": "", "present": False})
            continue
        for w in files:
            weights.append({"component": row.name, "kind": row.kind, "description": w.description,
                            "path": str(w.path), "source": w.source, "present": w.present})
    report["weights"] = weights
    report["extensions"] = _extension_status(reg)
    problems = [f"{r.kind} {r.name}: {r.status} ({r.detail})" for r in reg.rows() if r.status != Status.OK]
    report["plugins"] = {"ok": sum(r.status == Status.OK and r.cls is not None for r in reg.rows()), "problems": problems}
    # required: every installed plugin loads (one that needs an optional package, or that the user
    # blocked, is not a failure)
    report["required_failures"] = [f"plugin {p.name} ({p.distribution}) does not load: {p.detail}"
                                   for p in reg.plugins if p.status == Status.FAILED]
    report["required_failures"] += [f"{r.kind} {r.name}: {r.detail}" for r in reg.rows()
                                    if r.status == Status.FAILED and r.kind != "plugin"]
    return report


def _extension_status(reg: Registry) -> list[dict[str, Any]]:
    """The C++ extensions the loaded plugins declare, and whether this environment has a build."""
    from recon_core.cpp_extension import cpp_disabled, declared_extensions

    reg.rows()  # imports every plugin, which declares its extensions
    out = []
    for ext in declared_extensions():
        folder = ext.cached_build()
        out.append({"name": ext.name, "built": folder is not None, "folder": str(folder) if folder else None,
                    "disabled": cpp_disabled()})
    return out


def _build_extensions(reg: Registry, quiet: bool) -> None:
    """``doctor --build``: build every declared extension; a failure is exit 1 naming it."""
    from recon_core.cpp_extension import cpp_disabled, declared_extensions

    reg.rows()
    say = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    if cpp_disabled():
        raise InputError("RECON_NO_CPP is set: unset it to build the C++ extensions")
    failed = []
    for ext in declared_extensions():
        result = ext.build(say=say)
        if result.module is None:
            failed.append(f"{ext.name} ({result.reason})")
            say(f"{ext.name}: could not be built: {result.reason}")
        else:
            say(f"{ext.name}: " + (f"built in {result.seconds:.0f} s" if result.compiled else "already built")
                + f" ({result.folder})")
    if failed:
        raise ReconError(f"{len(failed)} C++ extension(s) could not be built: {'; '.join(failed)}. recon still works "
                         f"with the slower pure-PyTorch paths; RECON_CPP_VERBOSE=1 shows the compiler output")


def _lpips_status(reg: Registry) -> dict[str, Any]:
    """Ask the ``lpips`` evaluator itself, so doctor and evaluation never disagree."""
    try:
        evaluator = reg.get("evaluator", "lpips")()
    except InputError as e:
        return {"usable": False, "detail": str(e)}
    reason = evaluator.unavailable_reason()
    return {"usable": reason is None, "detail": reason or "backbone and linear-layer weights present"}


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends like Ctrl-C: clean exit 130 with how to resume


def _exit_without_teardown(code: Any) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, minus the interpreter's teardown.

    Finalising every module and running libtorch's static destructors makes the process touch
    memory it never used: on the CUDA build of torch 2.14 ``python -c "import torch"`` peaks at
    648 MB resident, 520 MB when it ends with ``os._exit`` (more than a whole 3DGS run's training
    adds; docs/benchmarks.md, issue 24). Other threads are joined, atexit handlers run and the
    standard streams are flushed first, so nothing a command wrote is lost.
    """
    status = 0 if code is None else code if isinstance(code, int) else 1
    if not isinstance(code, (int, type(None))):
        print(code, file=sys.stderr)
    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or a closed pipe: nothing more can be written
                pass
        os._exit(status)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point (``recon``); the process ends here (see :func:`_exit_without_teardown`)."""
    signal.signal(signal.SIGTERM, _terminate)  # the refine stage installs its own handler meanwhile
    try:
        make_cli(lazy=True)(args=list(argv) if argv is not None else None, prog_name="recon")
    except SystemExit as e:  # click ends every command with sys.exit
        _exit_without_teardown(e.code)
    _exit_without_teardown(0)


if __name__ == "__main__":
    main()
