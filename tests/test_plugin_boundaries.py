"""Plugins mix only through recon_core: no plugin imports another plugin's modules, and none
imports a private name of recon_core (parsed from the source, so lazy imports count too)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import recon_core

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
PACKAGE = "recon_plugins"
CORE = ROOT / "recon_core"


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import statement in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    plugin = path.relative_to(PLUGINS).parts[0]
    package_parts = [PACKAGE, *path.relative_to(PLUGINS).parent.parts]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module, [a.name for a in node.names]))
    assert plugin  # every file sits in a plugin folder
    return out


def _plugin_files() -> list[Path]:
    return sorted(p for p in PLUGINS.rglob("*.py") if p.relative_to(PLUGINS).parts[0] != "__pycache__")


def cross_imports() -> list[str]:
    found = []
    for path in _plugin_files():
        own = path.relative_to(PLUGINS).parts[0]
        for line, module, names in _imports(path):
            parts = module.split(".")
            if parts[0] == PACKAGE and len(parts) > 1 and parts[1] != own:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            if parts[0] == PACKAGE and len(parts) == 1:  # from recon_plugins import other
                found += [f"{path.relative_to(ROOT)}:{line} imports {PACKAGE}.{n}" for n in names if n != own]
    return found


def private_core_imports() -> list[str]:
    found = []
    for path in _plugin_files():
        for line, module, names in _imports(path):
            parts = module.split(".")
            if parts[0] != "recon_core":
                continue
            if any(p.startswith("_") for p in parts[1:]):
                found.append(f"{path.relative_to(ROOT)}:{line} imports private module {module}")
            found += [f"{path.relative_to(ROOT)}:{line} imports private {module}.{n}" for n in names if n.startswith("_")]
            if module == "recon_core":
                found += [f"{path.relative_to(ROOT)}:{line} imports {n}, not in recon_core.__all__"
                          for n in names if n not in recon_core.__all__ and not (CORE / f"{n}.py").is_file()]
    return found


def test_no_plugin_imports_another_plugin() -> None:
    assert cross_imports() == []


def test_plugins_use_only_public_core_names() -> None:
    assert private_core_imports() == []


def test_the_check_sees_relative_and_lazy_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scanner is not vacuous: a fake plugin tree with violations is reported."""
    fake = tmp_path / "plugins"
    (fake / "alpha").mkdir(parents=True)
    (fake / "beta").mkdir()
    (fake / "alpha" / "__init__.py").write_text("")
    (fake / "alpha" / "mod.py").write_text(
        "from ..beta.thing import x\n"
        "def f():\n    from recon_plugins.beta import y\n    from recon_core.pipeline import _private\n"
        "from recon_core import NotExported\nfrom . import sibling\n"
    )
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "PLUGINS", fake)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    crossing = cross_imports()
    assert [c.split(" imports ")[1] for c in crossing] == ["recon_plugins.beta.thing", "recon_plugins.beta"]
    private = private_core_imports()
    assert any("_private" in p for p in private) and any("NotExported" in p for p in private)
