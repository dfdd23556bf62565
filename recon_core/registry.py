"""Finding plugins: entry points of the group ``recon.plugins``, loaded one by one, isolated.

pluggy's ``load_setuptools_entrypoints`` stops at the first plugin that fails to import, so
the registry loads each entry point itself inside try/except. A plugin that fails is reported
(``failed`` with its error, ``missing-dependency`` naming the package) and everything else keeps
working. ``RECON_DISABLE_PLUGINS=a,b`` blocks plugins before they are imported.

Anything a plugin raises at import or in a hook, ``SystemExit`` included (only
``KeyboardInterrupt`` passes through), fails that plugin as a whole: none of its components stay
usable, whichever of its hooks raised. A plugin command may not take a name already in the CLI
(the built-ins ``run``, ``eval``…, or another plugin's): it is refused and listed.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import inspect
import os
import traceback
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterable, Sequence

import pluggy

from . import hookspecs
from .components import KINDS, Component
from .errors import InputError, PluginConflictError
from .hookspecs import DISABLE_ENV, ENTRY_POINT_GROUP

__all__ = ["ENTRY_POINT_GROUP", "PluginInfo", "ComponentInfo", "Registry", "get_registry", "Status"]


class Status:
    OK = "ok"
    FAILED = "failed"
    BLOCKED = "blocked"
    MISSING_DEPENDENCY = "missing-dependency"


@dataclass
class PluginInfo:
    """One entry point (a plugin module, which may provide several components)."""

    name: str
    distribution: str
    version: str
    status: str = Status.OK
    detail: str = ""
    module: ModuleType | None = None


@dataclass
class ComponentInfo:
    """One component as seen by ``recon list-plugins``."""

    name: str
    kind: str
    plugin: PluginInfo
    cls: type[Component] | None = None
    status: str = Status.OK
    detail: str = ""
    description: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "distribution": self.plugin.distribution,
            "version": self.plugin.version,
            "status": self.status,
            "detail": self.detail,
            "description": self.description,
        }


def _disabled_from_env() -> set[str]:
    return {s.strip() for s in os.environ.get(DISABLE_ENV, "").split(",") if s.strip()}


def _short_error(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def _missing_packages(cls: type[Component]) -> list[str]:
    missing = []
    for pkg in cls.needs_packages:
        try:
            found = importlib.util.find_spec(pkg) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(pkg)
    return missing


@dataclass
class _Source:
    name: str
    distribution: str
    version: str
    load: Any  # () -> module


class Registry:
    """All installed components by kind and name.

    Args:
        entry_points: entry points to load (default: the installed ``recon.plugins`` group).
        modules: extra ``(name, module)`` plugins registered directly (tests, embedding apps).
        disabled: plugin names to block (default: ``$RECON_DISABLE_PLUGINS``).
    """

    def __init__(
        self,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
        modules: Sequence[tuple[str, ModuleType]] = (),
        disabled: Iterable[str] | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = set(_disabled_from_env() if disabled is None else disabled)
        self.plugins: list[PluginInfo] = []
        self._components: dict[tuple[str, str], ComponentInfo] = {}
        self._rows: list[ComponentInfo] = []
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
        # The same entry point (name and target) seen twice is one plugin: stale metadata of a renamed
        # distribution (e.g. a source tree's old *.egg-info beside the new one) must not fail it.
        sources: list[_Source] = []
        seen: set[tuple[str, str]] = set()
        for ep in eps:
            if (ep.name, ep.value) not in seen:
                seen.add((ep.name, ep.value))
                sources.append(_Source(ep.name, ep.dist.name if ep.dist else "unknown", ep.dist.version if ep.dist else "", ep.load))
        sources += [_Source(name, "(local)", "", (lambda m=m: m)) for name, m in modules]
        for source in sorted(sources, key=lambda s: s.name):
            self._load_plugin(source)
        self._collect_components()

    # -------------------------------------------------------------------------------- loading

    def _load_plugin(self, source: _Source) -> None:
        info = PluginInfo(source.name, source.distribution, source.version)
        self.plugins.append(info)
        if source.name in self.disabled:
            info.status, info.detail = Status.BLOCKED, f"blocked by {DISABLE_ENV}"
            return
        try:
            module = source.load()
        except ModuleNotFoundError as e:
            own = getattr(source.load, "__self__", None)
            own_pkg = (getattr(own, "value", "") or "").split(":")[0].split(".")[0]
            missing = (e.name or "").split(".")[0]
            if missing and missing != own_pkg:
                info.status, info.detail = Status.MISSING_DEPENDENCY, f"needs package '{missing}'"
            else:
                info.status, info.detail = Status.FAILED, _short_error(e)
            return
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - any import error (sys.exit() too) is the plugin's, not ours
            info.status, info.detail = Status.FAILED, _short_error(e)
            return
        try:
            self.pm.register(module, name=source.name)
            self.pm.check_pending()
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - e.g. a misspelled hook name
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            info.status, info.detail = Status.FAILED, _short_error(e)
            return
        info.module = module

    def _fail(self, plugin: PluginInfo, detail: str) -> None:
        """Fail ``plugin`` as a whole: drop its components and its hooks, list it as failed."""
        plugin.status, plugin.detail = Status.FAILED, detail
        self._rows = [r for r in self._rows if r.plugin is not plugin]
        self._rows.append(ComponentInfo(plugin.name, "plugin", plugin, status=plugin.status, detail=plugin.detail))
        self._components = {k: r for k, r in self._components.items() if r.plugin is not plugin}
        if self.pm.has_plugin(plugin.name):
            self.pm.unregister(name=plugin.name)

    def _collect_components(self) -> None:
        by_plugin = {p.name: p for p in self.plugins}
        # first ask every hook of every plugin; a plugin with any failing hook adds nothing
        collected: list[tuple[PluginInfo, str, list[Any]]] = []
        for kind in KINDS:
            hook = getattr(self.pm.hook, hookspecs.KIND_HOOKS[kind])
            for impl in hook.get_hookimpls():
                plugin = by_plugin[impl.plugin_name]
                if plugin.status != Status.OK:
                    continue
                try:
                    classes = list(impl.function() or [])
                    for cls in classes:
                        self._check_class(cls, kind)
                except KeyboardInterrupt:
                    raise
                except BaseException as e:  # noqa: BLE001 - SystemExit from a hook too
                    plugin.status, plugin.detail = Status.FAILED, _short_error(e)
                    continue
                collected.append((plugin, kind, classes))
        for plugin in self.plugins:
            if plugin.status == Status.FAILED and self.pm.has_plugin(plugin.name):
                self.pm.unregister(name=plugin.name)
        for plugin, kind, classes in collected:
            if plugin.status == Status.OK:
                for cls in classes:
                    self._add(cls, kind, plugin)
        for plugin in self.plugins:
            if plugin.status != Status.OK or not any(r.plugin is plugin for r in self._rows):
                self._rows.append(
                    ComponentInfo(plugin.name, "plugin", plugin, status=plugin.status, detail=plugin.detail)
                )
        self._components = {(r.kind, r.name): r for r in self._rows if r.cls is not None}

    @staticmethod
    def _check_class(cls: Any, kind: str) -> None:
        if not (inspect.isclass(cls) and issubclass(cls, Component)):
            raise TypeError(f"{hookspecs.KIND_HOOKS[kind]}() returned {cls!r}, which is not a Component class")
        if getattr(cls, "kind", None) != kind:
            raise TypeError(f"{cls.__name__} is a {getattr(cls, 'kind', '?')}, returned from {hookspecs.KIND_HOOKS[kind]}()")
        if not isinstance(getattr(cls, "name", None), str) or not cls.name:
            raise TypeError(f"{cls.__name__} has no name")

    def _add(self, cls: type[Component], kind: str, plugin: PluginInfo) -> None:
        row = ComponentInfo(cls.name, kind, plugin, cls, description=cls.description)
        missing = _missing_packages(cls)
        if missing:
            hint = f" ({cls.install_hint})" if cls.install_hint else ""
            row.status = Status.MISSING_DEPENDENCY
            row.detail = f"needs package {', '.join(repr(m) for m in missing)}{hint}"
        clash = next((r for r in self._rows if r.kind == kind and r.name == cls.name), None)
        if clash is not None:
            detail = (
                f"{kind} name '{cls.name}' is claimed by two plugins: '{clash.plugin.name}' from distribution "
                f"'{clash.plugin.distribution}' and '{plugin.name}' from distribution '{plugin.distribution}'; "
                f"uninstall one or block it with {DISABLE_ENV}"
            )
            for r in (clash, row):
                r.status, r.detail = Status.FAILED, detail
        self._rows.append(row)

    # -------------------------------------------------------------------------------- queries

    def rows(self) -> list[ComponentInfo]:
        """Every component and every plugin that provided none (failed, blocked…), for listing."""
        return sorted(self._rows, key=lambda r: (r.kind == "plugin", r.kind, r.name))

    def components(self, kind: str, usable_only: bool = True) -> list[ComponentInfo]:
        return [r for r in self.rows() if r.kind == kind and (r.status == Status.OK or not usable_only)]

    def info(self, name: str, kind: str | None = None) -> ComponentInfo:
        """Look a component up by name (and kind); InputError with suggestions when unknown."""
        matches = [r for r in self._rows if r.name == name and (kind is None or r.kind == kind)]
        if not matches:
            pool = [r.name for r in self._rows if kind is None or r.kind == kind]
            close = difflib.get_close_matches(name, pool, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(sorted(set(pool))) or 'none'}"
            raise InputError(f"unknown {kind or 'plugin'} '{name}'{hint} (see `recon list-plugins`)")
        return matches[0]

    def get(self, kind: str, name: str) -> type[Component]:
        """The usable component class ``name`` of ``kind``; InputError saying why not otherwise."""
        row = self.info(name, kind)
        if row.status == Status.FAILED and "claimed by two plugins" in row.detail:
            raise PluginConflictError(row.detail)
        if row.status != Status.OK or row.cls is None:
            raise InputError(f"{kind} '{name}' cannot be used: {row.status} ({row.detail})")
        return row.cls

    def create(self, kind: str, name: str, config: Any = None) -> Component:
        return self.get(kind, name)(config)

    def add_commands(self, cli: Any) -> list[str]:
        """Let each plugin add CLI commands; returns error lines for the problems.

        A command whose name is already taken (a built-in such as ``run``, or an earlier plugin's)
        is not registered: the existing command stays and a failed ``command`` row is listed. A
        plugin whose hook raises is failed as a whole (its commands and components are removed).
        """
        errors = []
        by_plugin = {p.name: p for p in self.plugins}
        owners = {name: None for name in cli.commands}  # None: built in
        for impl in self.pm.hook.register_commands.get_hookimpls():
            plugin = by_plugin[impl.plugin_name]
            before = dict(cli.commands)
            try:
                impl.function(cli)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 - SystemExit from a hook too
                cli.commands.clear()
                cli.commands.update(before)
                detail = f"register_commands() failed: {_short_error(e)}"
                self._fail(plugin, detail)
                errors.append(f"plugin '{plugin.name}' failed: {detail}")
                continue
            for name in sorted(set(before) | set(cli.commands)):
                if name in before and cli.commands.get(name) is before[name]:
                    continue
                if name not in before:
                    owners[name] = plugin.name
                    continue
                owner = owners.get(name)
                taken = "a built-in command" if owner is None else f"a command of plugin '{owner}'"
                detail = (f"plugin '{plugin.name}' tried to register command '{name}', which is {taken}; "
                          f"not registered (rename it in the plugin)")
                cli.commands[name] = before[name]
                self._rows.append(ComponentInfo(name, "command", plugin, status=Status.FAILED, detail=detail))
                errors.append(detail)
        return errors

    def config_reader(self, suffix: str) -> Any | None:
        """The plugin reader of foreign run configurations with this file suffix (``register_config_readers``), or None."""
        for readers in self.pm.hook.register_config_readers():
            for reader in readers or []:
                if suffix.lower() in getattr(reader, "suffixes", ()):
                    return reader
        return None


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry of installed plugins (built on first use)."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = Registry()
    return _REGISTRY
