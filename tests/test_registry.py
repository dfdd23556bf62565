"""recon_core.registry: plugins load in isolation from real entry points of fake distributions."""

from __future__ import annotations

import importlib.metadata as md
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import recon_toy

from recon_core.errors import InputError, PluginConflictError
from recon_core.registry import Registry
from conftest import make_dist

GOOD_PLUGIN = '''
from recon_core import Representation, hookimpl

class Rep(Representation):
    name = "{name}"
    description = "from {module}"

@hookimpl
def register_representations():
    return [Rep]
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path for plugin modules and dist-info folders; returns a helper to add plugins."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def add(dist: str, source: str, ep_name: str | None = None) -> str:
        module = f"plug_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source).replace("{module}", module))
        make_dist(tmp_path, dist, {ep_name or module: module})
        created.append(module)
        return module

    yield tmp_path, add
    for module in created:
        sys.modules.pop(module, None)


def _entry_points(folder: Path) -> list[md.EntryPoint]:
    return [ep for d in md.distributions(path=[str(folder)]) for ep in d.entry_points if ep.group == "recon.plugins"]


def _row(registry: Registry, name: str):
    return next(r for r in registry.rows() if r.name == name)


def test_import_failure_is_isolated(site):
    folder, add = site
    add("bad-dist", "raise RuntimeError('kaput')\n", ep_name="bad")
    add("good-dist", GOOD_PLUGIN.replace("{name}", "good-rep"))
    registry = Registry(entry_points=_entry_points(folder), modules=[("toy", recon_toy)], disabled=())
    bad = _row(registry, "bad")
    assert (bad.kind, bad.status, bad.plugin.distribution) == ("plugin", "failed", "bad-dist")
    assert "RuntimeError: kaput" in bad.detail
    assert _row(registry, "good-rep").status == "ok"
    assert registry.get("representation", "good-rep").description.startswith("from plug_")
    assert registry.get("representation", "toy-grid") is recon_toy.ToyGrid


def test_disable_env_blocks_before_import(site, monkeypatch):
    folder, add = site
    marker = folder / "imported.txt"
    module = add("blocked-dist", f"open({str(marker)!r}, 'w').write('imported')\n", ep_name="blocked")
    monkeypatch.setenv("RECON_DISABLE_PLUGINS", "other, blocked")
    registry = Registry(entry_points=_entry_points(folder))
    row = _row(registry, "blocked")
    assert row.status == "blocked" and "RECON_DISABLE_PLUGINS" in row.detail
    assert module not in sys.modules and not marker.exists()
    # without the variable the same plugin is imported (the marker proves the test can fail)
    monkeypatch.delenv("RECON_DISABLE_PLUGINS")
    Registry(entry_points=_entry_points(folder))
    assert marker.exists()


def test_missing_dependency_names_the_package(site):
    folder, add = site
    add("needy-dist", "import surely_not_installed_pkg_42\n", ep_name="needy")
    add("needy-component-dist", '''
        from recon_core import Fixer, hookimpl

        class F(Fixer):
            name = "needs-things"
            needs_packages = ("another_absent_pkg",)
            install_hint = "pip install 'recon[things]'"

        @hookimpl
        def register_fixers():
            return [F]
    ''')
    registry = Registry(entry_points=_entry_points(folder), disabled=())
    needy = _row(registry, "needy")
    assert needy.status == "missing-dependency" and "surely_not_installed_pkg_42" in needy.detail
    comp = _row(registry, "needs-things")
    assert comp.status == "missing-dependency"
    assert "another_absent_pkg" in comp.detail and "pip install 'recon[things]'" in comp.detail
    with pytest.raises(InputError, match="fixer 'needs-things' cannot be used: missing-dependency"):
        registry.get("fixer", "needs-things")


def test_two_components_with_one_name_name_both_distributions(site):
    folder, add = site
    add("first-dist", GOOD_PLUGIN.replace("{name}", "twin"))
    add("second-dist", GOOD_PLUGIN.replace("{name}", "twin"))
    registry = Registry(entry_points=_entry_points(folder), disabled=())
    rows = [r for r in registry.rows() if r.name == "twin"]
    assert len(rows) == 2 and all(r.status == "failed" for r in rows)
    with pytest.raises(PluginConflictError) as info:
        registry.get("representation", "twin")
    assert "first-dist" in str(info.value) and "second-dist" in str(info.value)


def test_bad_hook_results_fail_only_that_plugin(site):
    folder, add = site
    add("notclass-dist", '''
        from recon_core import hookimpl

        @hookimpl
        def register_refiners():
            return ["not a class"]
    ''', ep_name="notclass")
    add("typo-dist", '''
        from recon_core import hookimpl

        @hookimpl
        def register_refinerz():
            return []
    ''', ep_name="typo")
    registry = Registry(entry_points=_entry_points(folder), modules=[("toy", recon_toy)], disabled=())
    assert _row(registry, "notclass").status == "failed" and "not a Component class" in _row(registry, "notclass").detail
    assert _row(registry, "typo").status == "failed" and "register_refinerz" in _row(registry, "typo").detail
    assert registry.get("refiner", "toy-fit") is recon_toy.ToyFit


def test_unknown_names_get_suggestions(toy_registry):
    with pytest.raises(InputError, match="unknown refiner 'toy-fitt'; did you mean toy-fit"):
        toy_registry.get("refiner", "toy-fitt")
    with pytest.raises(InputError, match="unknown fixer 'zzz'; available: toy-smooth"):
        toy_registry.get("fixer", "zzz")


def test_add_commands_reports_failures(site):
    import click

    folder, add = site
    add("cmd-dist", '''
        from recon_core import hookimpl

        @hookimpl
        def register_commands(cli):
            raise ValueError("no commands today")
    ''', ep_name="cmd")
    registry = Registry(entry_points=_entry_points(folder), modules=[("toy", recon_toy)], disabled=())
    group = click.Group("g")
    errors = registry.add_commands(group)
    assert "toy-hello" in group.commands
    assert len(errors) == 1 and "plugin 'cmd'" in errors[0] and "no commands today" in errors[0]


def test_sys_exit_at_import_is_a_plugin_failure(site):
    folder, add = site
    add("exit-dist", "import sys\nsys.exit('leaving at import')\n", ep_name="exiter")
    add("good-dist", GOOD_PLUGIN.replace("{name}", "still-good"))
    registry = Registry(entry_points=_entry_points(folder), modules=[("toy", recon_toy)], disabled=())
    row = _row(registry, "exiter")
    assert row.status == "failed" and "SystemExit: leaving at import" in row.detail
    assert registry.get("representation", "still-good").name == "still-good"
    assert registry.get("refiner", "toy-fit") is recon_toy.ToyFit


def test_keyboard_interrupt_at_import_is_not_swallowed(site):
    folder, add = site
    add("ki-dist", "raise KeyboardInterrupt\n", ep_name="ki")
    with pytest.raises(KeyboardInterrupt):
        Registry(entry_points=_entry_points(folder), disabled=())


# a plugin with a good hook and a failing one; which one runs first must not matter
TWO_HOOKS = '''
from recon_core import Loader, Representation, hookimpl
import sys

class Rep(Representation):
    name = "half-rep"

class Load(Loader):
    name = "half-loader"

@hookimpl
def register_loaders():
    {loaders}

@hookimpl
def register_representations():
    {representations}
'''


@pytest.mark.parametrize("failing", ["first", "last"])
def test_any_failing_hook_fails_the_whole_plugin(site, failing):
    folder, add = site
    raise_ = "sys.exit(3)" if failing == "first" else "raise RuntimeError('late hook')"
    body = {"loaders": raise_ if failing == "first" else "return [Load]",
            "representations": "return [Rep]" if failing == "first" else raise_}
    add("half-dist", TWO_HOOKS.replace("{loaders}", body["loaders"]).replace("{representations}", body["representations"]),
        ep_name="half")
    registry = Registry(entry_points=_entry_points(folder), modules=[("toy", recon_toy)], disabled=())
    row = _row(registry, "half")
    assert row.kind == "plugin" and row.status == "failed"
    assert ("SystemExit: 3" if failing == "first" else "RuntimeError: late hook") in row.detail
    assert not any(r.name in ("half-rep", "half-loader") for r in registry.rows())
    for kind, name in (("loader", "half-loader"), ("representation", "half-rep")):
        with pytest.raises(InputError):
            registry.get(kind, name)
    assert registry.get("representation", "toy-grid") is recon_toy.ToyGrid


def test_failing_command_hook_fails_the_whole_plugin(site):
    import click

    folder, add = site
    add("cmdfail-dist", '''
        import sys
        from recon_core import Representation, hookimpl

        class Rep(Representation):
            name = "cmd-rep"

        @hookimpl
        def register_representations():
            return [Rep]

        @hookimpl
        def register_commands(cli):
            @cli.command("half-added")
            def half_added():
                pass
            sys.exit(1)
    ''', ep_name="cmdfail")
    registry = Registry(entry_points=_entry_points(folder), modules=[("toy", recon_toy)], disabled=())
    assert registry.get("representation", "cmd-rep").name == "cmd-rep"
    group = click.Group("g")
    errors = registry.add_commands(group)
    assert "half-added" not in group.commands and "toy-hello" in group.commands
    assert len(errors) == 1 and "SystemExit" in errors[0]
    row = _row(registry, "cmdfail")
    assert row.kind == "plugin" and row.status == "failed" and "register_commands" in row.detail
    assert not any(r.name == "cmd-rep" for r in registry.rows())
    with pytest.raises(InputError):
        registry.get("representation", "cmd-rep")


def test_plugin_cannot_take_a_builtin_command_name(site):
    from click.testing import CliRunner

    from recon_cli.main import make_cli

    folder, add = site
    add("hijack-dist", '''
        import click
        from recon_core import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command("run")
            def run():
                click.echo("hijacked")

            @cli.command("hijack-own")
            def own():
                click.echo("own command")
    ''', ep_name="hijack")
    registry = Registry(entry_points=_entry_points(folder), modules=[("toy", recon_toy)], disabled=())
    cli = make_cli(registry)
    runner = CliRunner()
    assert "--repr" in runner.invoke(cli, ["run", "--help"]).output  # the built-in stays
    assert "hijacked" not in runner.invoke(cli, ["run", "--help"]).output
    assert runner.invoke(cli, ["hijack-own"]).output.strip() == "own command"
    import json

    result = runner.invoke(cli, ["list-plugins", "--json"])
    assert result.exit_code == 0
    row = next(r for r in json.loads(result.stdout) if r["kind"] == "command")
    assert row["name"] == "run" and row["status"] == "failed" and row["distribution"] == "hijack-dist"
    assert "built-in command" in row["detail"] and "not registered" in row["detail"]
    table = runner.invoke(cli, ["list-plugins"]).stdout
    assert "built-in command" in table


def test_the_same_entry_point_from_a_renamed_distribution_is_one_plugin(site):
    """Stale metadata of a renamed distribution (old ``recon.egg-info`` beside ``recon_toolkit``)
    declares the same entry point twice: one plugin, not a 'name already registered' failure. A
    different target under the same name is still a conflict."""
    folder, add = site
    module = add("new-name", GOOD_PLUGIN.replace("{name}", "twice-rep"), ep_name="twice")
    make_dist(folder, "old-name", {"twice": module})
    registry = Registry(entry_points=_entry_points(folder), disabled=())
    assert [p.name for p in registry.plugins] == ["twice"]
    assert registry.plugins[0].status == "ok"
    assert _row(registry, "twice-rep").status == "ok"
    other = add("other-dist", GOOD_PLUGIN.replace("{name}", "other-rep"))
    make_dist(folder, "clash-dist", {"twice": other})
    clash = Registry(entry_points=_entry_points(folder), disabled=())
    assert sorted(p.status for p in clash.plugins if p.name == "twice") == ["failed", "ok"]
