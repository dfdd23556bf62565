"""The ``recon`` command: a thin click + rich layer over :mod:`recon_core`.

Exit codes: 0 success; 1 internal error (traceback with ``--debug``); 2 bad usage or bad input
(one paragraph naming the file and the problem); 130 interrupted (with how to resume).

``make_cli(registry)`` builds the command group around a given registry (tests inject one made
of test plugins); ``main()`` uses the installed plugins. Nothing is loaded at import time.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import click
from rich.console import Console
from rich.table import Table

from recon_core.errors import InputError, Interrupted, ReconError
from recon_core.registry import Registry, Status, get_registry

__all__ = ["make_cli", "main"]

RegistrySource = Registry | Callable[[], Registry] | None

_STATUS_STYLE = {Status.OK: "green", Status.FAILED: "red", Status.BLOCKED: "yellow", Status.MISSING_DEPENDENCY: "yellow"}


class _State:
    """Per-invocation state on ``ctx.obj``: the registry (built on first use) and the debug flag."""

    def __init__(self, source: RegistrySource) -> None:
        self._source = source
        self._registry: Registry | None = source if isinstance(source, Registry) else None
        self.debug = False
        self.command_errors: list[str] = []

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._source() if callable(self._source) else get_registry()
        return self._registry


def _say_error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def _disk_full(e: BaseException) -> bool:
    """An OSError saying the disk (or the user's quota) is full."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class ReconGroup(click.Group):
    """Turns recon's exceptions into exit codes and one-paragraph messages."""

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
    return Console(soft_wrap=True)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def make_cli(registry: RegistrySource = None, *, plugin_commands: bool = True) -> click.Group:
    """The ``recon`` click group around ``registry`` (a Registry, a factory, or None: installed).

    With ``plugin_commands`` the registry is built now, so plugins can add their commands.
    """
    state = _State(registry)

    @click.group(cls=ReconGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
    @click.version_option(package_name="recon", prog_name="recon")
    @click.pass_context
    def cli(ctx: click.Context, debug: bool) -> None:
        """recon: plugin-based 3D/4D reconstruction."""
        ctx.obj = state
        state.debug = debug

    _add_builtin_commands(cli)
    if plugin_commands:
        state.command_errors = state.registry.add_commands(cli)
    return cli


def _registry(ctx: click.Context) -> Registry:
    return ctx.find_object(_State).registry  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ commands


def _add_builtin_commands(cli: click.Group) -> None:
    for command in (list_plugins, plugin_info, inspect_data, run, eval_cmd, render, export, doctor):
        cli.add_command(command)


@click.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_plugins(ctx: click.Context, as_json: bool) -> None:
    """List installed components and plugins (including broken ones)."""
    reg = _registry(ctx)
    rows = reg.rows()
    if as_json:
        _echo_json([r.as_json() for r in rows])
        return
    table = Table(title="recon plugins")
    for col in ("name", "kind", "status", "distribution", "version", "description / detail"):
        table.add_column(col)
    for r in rows:
        style = _STATUS_STYLE.get(r.status, "")
        text = r.detail if r.status != Status.OK else r.description
        table.add_row(r.name, r.kind, f"[{style}]{r.status}[/{style}]", r.plugin.distribution, r.plugin.version, text)
    console = _console()
    console.print(table)
    for line in ctx.find_object(_State).command_errors:  # type: ignore[union-attr]
        console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)


_KIND_PRIORITY = ("representation", "refiner", "renderer", "loader", "encoder", "fixer", "evaluator", "generator", "plugin")


@click.command("plugin-info")
@click.argument("name")
@click.option("--kind", help="Which kind, when a name is used by several (e.g. loader idr / representation idr).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def plugin_info(ctx: click.Context, name: str, kind: str | None, as_json: bool) -> None:
    """Options, defaults, capabilities and weights of one component."""
    from recon_core.config import describe_options

    reg = _registry(ctx)
    if name == "run" and kind in (None, "run"):
        _run_options_info(as_json)
        return
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
    console.print(f"[bold]{info['name']}[/bold] ({info['kind']}) — {info['status']}"
                  + (f": {info['detail']}" if info["detail"] else ""), highlight=False)
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
        console.print(_options_table(info["options"]))
    for w in info["required_weights"]:
        mark = "present" if w["present"] else "MISSING"
        console.print(f"weights: {w['description']}: {mark} at {w['path']} (from {w['source']})", highlight=False)


def _options_table(options: list[dict[str, Any]], title: str = "options (--set NAME.KEY=VALUE)") -> Table:
    from recon_core.config import format_value

    table = Table(title=title)
    for col in ("option", "type", "default", "help"):
        table.add_column(col)
    for o in options:
        help_text = o["help"] + (f" (one of {', '.join(map(str, o['choices']))})" if o["choices"] else "")
        help_text += f" (range {o['range']})" if o.get("range") else ""
        table.add_row(o["name"], o["type"], format_value(o["default"]), help_text)
    return table


def _run_options_info(as_json: bool) -> None:
    """``recon plugin-info run``: the pipeline's own options (``--set run.KEY=VALUE``)."""
    from recon_core.config import describe_options
    from recon_core.spec import RunOptions

    options = describe_options(RunOptions)
    if as_json:
        _echo_json({"name": "run", "kind": "run", "description": RunOptions.__doc__, "options": options})
        return
    console = _console()
    console.print("[bold]run[/bold] — the pipeline's own options", highlight=False)
    console.print(_options_table(options, "options (--set run.KEY=VALUE)"))


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


@click.command("run")
@click.option("--data", type=click.Path(path_type=Path), help="Input data (folder or file).")
@click.option("--loader", help="Loader name (default: detected from the data).")
@click.option("--repr", "representation", help="Representation name, e.g. 3dgs.")
@click.option("--renderer", help="Renderer name (default: the representation's for the device).")
@click.option("--encoder", help="Encoder for neural-field representations.")
@click.option("--refiner", "refiners", multiple=True, help="Refiner(s), in order; repeat or comma-separate; 'none' for none.")
@click.option("--fixer", help="Image fixer applied to renders (metrics reported with and without).")
@click.option("--eval", "evaluators", multiple=True, help="Evaluators (comma-separated; default psnr,ssim,lpips).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: auto (CUDA when present).")
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option("--out", type=click.Path(path_type=Path), help="Run folder (default outputs/<data>/<repr>/<timestamp>).")
@click.option("--set", "sets", multiple=True, metavar="PLUGIN.KEY=VALUE", help="Set a component option (run.KEY for the pipeline).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="A config.json of an earlier run to start from.")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), help="Continue an interrupted run folder.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in --out (only once the new run has succeeded; the old one stays until then).")
@click.pass_context
def run(ctx: click.Context, data: Path | None, loader: str | None, representation: str | None, renderer: str | None,
        encoder: str | None, refiners: tuple[str, ...], fixer: str | None, evaluators: tuple[str, ...],
        device: str | None, seed: int | None, out: Path | None, sets: tuple[str, ...], config_file: Path | None,
        resume_dir: Path | None, overwrite: bool) -> None:
    """Reconstruct: load → build → refine → render → fix → evaluate → export.

    --out must be new, empty, or (with --overwrite) an earlier run folder; it may not be inside the
    data. A run folder is locked (run.lock) while a run writes it.
    """
    from recon_core.resolve import resolve_run
    from recon_core.rundir import RunDir, RunLock, check_out_path, default_run_path, read_json

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
        base = read_json(config_file, "run configuration") if config_file is not None else None
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
            _replace_run(reg, spec, target, lock)
            return
        run_dir = RunDir.create(target)
        if not lock.held:
            lock.acquire()
        _run_into(reg, spec, run_dir, resume=resume_dir is not None)
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
    if not quiet:
        _print_metrics(doc)
        click.echo(f"run folder: {run_dir.path}")
    return doc


def _replace_run(reg: Registry, spec: Any, target: Path, lock: Any) -> None:
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
    _print_metrics(doc)
    click.echo(f"run folder: {target} (replaced the earlier run)")


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
    for k, reason in doc.get("unavailable", {}).items():
        console.print(f"{k}: unavailable ({reason})", highlight=False)


@click.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--eval", "evaluators", multiple=True, help="Evaluators (default: the run's).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.pass_context
def eval_cmd(ctx: click.Context, run_dir: Path, evaluators: tuple[str, ...], device: str | None) -> None:
    """Re-evaluate a run folder from its latest checkpoint (rewrites metrics.json)."""
    from recon_core.restore import restore_run
    from recon_core.rundir import RunDir, read_json

    folder = RunDir.open(run_dir)
    restored = restore_run(_registry(ctx), folder, device=device, evaluators=list(evaluators) if evaluators else None)
    doc = restored.evaluate()
    if folder.metrics_path.exists():
        previous = read_json(folder.metrics_path, "metrics")
        doc["refiners"] = previous.get("refiners", {})
        doc["exports"] = previous.get("exports", [])
    folder.write_metrics(doc)
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
    from recon_core.restore import orbit_cameras, read_cameras_file, render_to_folder, restore_run
    from recon_core.rundir import RunDir
    from recon_core.scene import Scene

    reg = _registry(ctx)
    folder = RunDir.open(run_dir)
    restored = restore_run(reg, folder, device=device, evaluators=["none"])
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
@click.option("--format", "fmt", required=True, help="Export format (see plugin-info of the representation).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default RUN_DIR).")
@click.pass_context
def export(ctx: click.Context, run_dir: Path, fmt: str, out: Path | None) -> None:
    """Export a run's representation (Representation.export)."""
    from recon_core.restore import restore_run
    from recon_core.rundir import RunDir

    reg = _registry(ctx)
    folder = RunDir.open(run_dir)
    config = folder.read_config()
    rep_name = (config.get("representation") or {}).get("name")
    formats = reg.get("representation", rep_name).export_formats
    if fmt not in formats:
        raise InputError(f"representation {rep_name} cannot export '{fmt}'; formats: {', '.join(formats) or 'none'}")
    restored = restore_run(reg, folder, device="cpu", evaluators=["none"])
    for p in restored.rep.export(out or folder.path, fmt):
        click.echo(str(p))


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the environment: Python, torch, CUDA, gsplat, tinycudann, LPIPS and plugin weights."""
    report = _doctor_report(_registry(ctx))
    if as_json:
        _echo_json(report)
        return
    console = _console()
    console.print(f"python {report['python']['version']} ({report['python']['executable']})", highlight=False)
    t = report["torch"]
    console.print(f"torch {t['version']}; CUDA: {'yes, ' + ', '.join(t['devices']) if t['cuda'] else 'no'}", highlight=False)
    for key in ("gsplat", "tinycudann", "lpips"):
        entry = report[key]
        mark = "[green]ok[/green]" if entry["usable"] else "[yellow]no[/yellow]"
        console.print(f"{key}: {mark} — {entry['detail']}")
    for w in report["weights"]:
        mark = "[green]present[/green]" if w["present"] else "[red]missing[/red]"
        console.print(f"{w['kind']} {w['component']}: {w['description']}: {mark} at {w['path']}"
                      + ("" if w["present"] else f" (get it from {w['source']})"))
    p = report["plugins"]
    console.print(f"plugins: {p['ok']} components ok; problems: {len(p['problems'])}", highlight=False)
    for line in p["problems"]:
        console.print(f"  {line}", highlight=False)


def _doctor_report(reg: Registry) -> dict[str, Any]:
    import importlib.util

    import torch

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
    problems = [f"{r.kind} {r.name}: {r.status} ({r.detail})" for r in reg.rows() if r.status != Status.OK]
    report["plugins"] = {"ok": sum(r.status == Status.OK and r.cls is not None for r in reg.rows()), "problems": problems}
    return report


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


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``recon``)."""
    signal.signal(signal.SIGTERM, _terminate)  # the refine stage installs its own handler meanwhile
    make_cli()(args=list(argv) if argv is not None else None, prog_name="recon")


if __name__ == "__main__":
    main()
