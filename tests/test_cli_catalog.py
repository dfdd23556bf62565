"""recon_cli.catalog and the lazy ``recon`` group: help and completion without importing plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.shell_completion import ShellComplete
from conftest import BUILTIN_PLUGINS, PLUGINS_DIR, make_dist

from recon_cli.main import make_cli

# Runs `recon ARGS` in this interpreter and reports whether torch and the toy plugin were imported.
# main() ends the process itself (os._exit after the atexit handlers), so the report is an atexit handler.
_PROBE = """
import atexit, sys
from recon_cli.main import main
atexit.register(lambda: print("IMPORTED", "torch" in sys.modules, "recon_toy" in sys.modules))
main(sys.argv[1:])
"""


def _env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    make_dist(site, "recon-toy", {"toy": "recon_toy"})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(PLUGINS_DIR), env.get("PYTHONPATH", "")])
    env["RECON_DISABLE_PLUGINS"] = ",".join(BUILTIN_PLUGINS)  # only the toy plugin
    env["RECON_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def _recon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PROBE, *args], env=env, capture_output=True, text=True, timeout=300)


def test_help_lists_plugin_commands_and_answers_from_the_catalog(tmp_path):
    env = _env(tmp_path)
    first = _recon(env, "--help")  # no catalog yet: the plugins are loaded once and the catalog written
    assert "toy-hello" in first.stdout and "IMPORTED True True" in first.stdout
    catalog = json.loads((tmp_path / "cache" / "cli-catalog.json").read_text())
    assert "toy-grid" in catalog["components"]["representation"] and "steps" in catalog["options"]["toy-fit"]
    second = _recon(env, "--help")  # from the catalog: neither torch nor the plugin is imported
    assert "toy-hello" in second.stdout and "IMPORTED False False" in second.stdout
    assert second.stdout.split("IMPORTED")[0] == first.stdout.split("IMPORTED")[0]  # the same help
    hello = _recon(env, "toy-hello")  # a plugin command loads the plugins when it is used
    assert "hello from the toy plugin" in hello.stdout


def test_a_changed_plugin_set_invalidates_the_catalog(tmp_path):
    env = _env(tmp_path)
    _recon(env, "--help")
    env["RECON_DISABLE_PLUGINS"] += ",toy"
    out = _recon(env, "--help").stdout
    assert "toy-hello" not in out and "IMPORTED True" in out  # rebuilt, not the stale catalog


def _complete(cli, args: list[str], incomplete: str) -> list[str]:
    return [c.value for c in ShellComplete(cli, {}, "recon", "_RECON_COMPLETE").get_completions(args, incomplete)]


def test_completion_of_names_and_option_keys(toy_registry):
    cli = make_cli(toy_registry)
    assert "toy-grid" in _complete(cli, ["run", "--repr"], "toy-")
    assert "toy-fit" not in _complete(cli, ["run", "--repr"], "toy-")  # a refiner, not a representation
    assert _complete(cli, ["run", "--refiner"], "toy-fit,toy-l") == ["toy-fit,toy-loop"]
    assert "toy-fit." in _complete(cli, ["run", "--set"], "toy-f")
    assert _complete(cli, ["run", "--set"], "toy-fit.steps") == ["toy-fit.steps="]
    assert "run.checkpoint_every=" in _complete(cli, ["run", "--set"], "run.che")
    assert "toy-grid" in _complete(cli, ["plugin-info"], "toy-g")
    assert {"run", "toy-hello"} <= set(_complete(cli, [], ""))


def test_main_ends_the_process_with_the_command_status_after_atexit_handlers(tmp_path: Path) -> None:
    """main() skips the interpreter's teardown (os._exit) but keeps sys.exit's contract: the
    command's exit status, atexit handlers run, buffered output flushed."""
    code = ("import atexit, sys\nfrom recon_cli.main import main\n"
            "atexit.register(lambda: print('atexit ran'))\nsys.stdout.write('buffered ')\nmain(sys.argv[1:])\n")
    ok = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("buffered ") and ok.stdout.rstrip().endswith("atexit ran"), ok
    bad = subprocess.run([sys.executable, "-c", code, "no-such-command"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "atexit ran" in bad.stdout and "no-such-command" in bad.stderr, bad
