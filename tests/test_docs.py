"""Meta-tests: docs/plugins.md and docs/conventions.md stay in step with the code.

Like datasette's ``test_plugin_hooks_are_documented``: every hook in recon_core/hookspecs.py
needs a heading with its exact signature, every interface and status needs its section, and
every ``# runnable`` code block in the docs is executed.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from recon_core import components, hookspecs, registry
from recon_core.gaussians import SH_C0
from recon_core.registry import Registry

DOCS = Path(__file__).resolve().parents[1] / "docs"
PLUGINS_MD = DOCS / "plugins.md"
CONVENTIONS_MD = DOCS / "conventions.md"

HOOKS = sorted(
    name for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, "recon_spec")
)
INTERFACES = [
    components.Loader,
    components.Representation,
    components.Renderer,
    components.Refiner,
    components.Encoder,
    components.Fixer,
    components.Evaluator,
    components.ImageEvaluator,
    components.GeometryEvaluator,
    components.Generator,
]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _headings(text: str, level: int) -> list[str]:
    prefix = "#" * level + " "
    return [line[len(prefix):].strip() for line in text.splitlines() if line.startswith(prefix)]


def _hook_heading(name: str) -> str:
    params = inspect.signature(getattr(hookspecs, name)).parameters
    return f"{name}({', '.join(params)})"


def _typed_signature(name: str) -> str:
    """``def name(arg: T) -> R`` as written in hookspecs.py, with string-annotation quotes removed."""
    sig = inspect.signature(getattr(hookspecs, name))
    args = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {name}({args}) -> {sig.return_annotation}".replace('"', "").replace("'", "")


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _runnable(text: str) -> list[tuple[str, str]]:
    return [(b.splitlines()[0].split(":", 1)[1].strip(), b) for b in _python_blocks(text) if b.startswith("# runnable:")]


# ------------------------------------------------------------------------------------- hooks


def test_hookspecs_are_found():
    assert "register_loaders" in HOOKS and "register_commands" in HOOKS and len(HOOKS) == 10


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook):
    headings = _headings(_text(PLUGINS_MD), 3)
    assert _hook_heading(hook) in headings, f"docs/plugins.md needs a heading '### {_hook_heading(hook)}'"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_sections_show_the_typed_signature_and_an_example(hook):
    text = _text(PLUGINS_MD)
    start = text.index(f"### {_hook_heading(hook)}\n")
    end = text.find("\n## ", start)
    following = text.find("\n### ", start + 1)
    section = text[start : min(i for i in (end, following, len(text)) if i != -1)]
    assert _typed_signature(hook) in section, f"the section of {hook} must show `{_typed_signature(hook)}`"
    assert f"@hookimpl\ndef {hook}(" in section, f"the section of {hook} needs a minimal @hookimpl example"
    assert "Called" in section, f"the section of {hook} must say when it is called"


def test_no_documented_hook_is_missing_from_hookspecs():
    for heading in _headings(_text(PLUGINS_MD), 3):
        match = re.fullmatch(r"(register_\w+|prepare_\w+)\((.*)\)", heading)
        if match:
            assert match.group(1) in HOOKS, f"docs/plugins.md documents a hook '{heading}' that hookspecs.py lacks"
            assert heading == _hook_heading(match.group(1)), f"heading '{heading}' does not match the hookspec"


def test_every_component_kind_has_a_hook():
    assert set(hookspecs.KIND_HOOKS) == set(components.KINDS)
    assert set(hookspecs.KIND_HOOKS.values()) <= set(HOOKS)


# ------------------------------------------------------------------------------- interfaces


def _own_members(cls: type) -> list[str]:
    """Public methods and properties a base class defines itself (not inherited)."""
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if inspect.isfunction(value) or isinstance(value, (property, classmethod, staticmethod)):
            out.append(name)
    return out


@pytest.mark.parametrize("cls", INTERFACES, ids=lambda c: c.__name__)
def test_component_interfaces_are_documented(cls):
    text = _text(PLUGINS_MD)
    for name in _own_members(cls):
        assert re.search(rf"`(\w+\.)?{name}\b", text), f"docs/plugins.md does not mention {cls.__name__}.{name}"
    top = [c for c in INTERFACES if components.Component in c.__bases__ or c.__bases__[0] is components.Component]
    if cls in top:
        assert cls.__name__ in _headings(text, 3), f"docs/plugins.md needs a section '### {cls.__name__}'"


def test_component_attributes_are_documented():
    text = _text(PLUGINS_MD)
    for name in list(components.Component.__annotations__) + ["required_weights"]:
        assert f"`{name}`" in text, f"docs/plugins.md does not describe Component.{name}"


def test_statuses_entry_point_group_and_disable_variable_are_documented():
    text = _text(PLUGINS_MD)
    statuses = [v for k, v in vars(registry.Status).items() if k.isupper()]
    assert len(statuses) == 4
    for status in statuses:
        assert re.search(rf"^\| `{re.escape(status)}` \|", text, flags=re.M), f"status '{status}' lacks a table row"
    assert f'"{registry.ENTRY_POINT_GROUP}"' in text
    assert f"## `{registry.DISABLE_ENV}`" in text


# ---------------------------------------------------------------------------- code in the docs


def test_every_python_block_parses():
    for path in (PLUGINS_MD, CONVENTIONS_MD):
        for block in _python_blocks(_text(path)):
            compile(block, str(path), "exec", dont_inherit=True)


def test_minimal_plugin_of_the_guide_registers_and_works(monkeypatch):
    (label, code), *_ = [r for r in _runnable(_text(PLUGINS_MD)) if r[0] == "minimal-plugin"]
    module = types.ModuleType("recon_docs_minimal_plugin")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # as an imported plugin module would be
    exec(compile(code, f"docs/plugins.md ({label})", "exec", dont_inherit=True), module.__dict__)
    reg = Registry(entry_points=[], modules=[("gamma", module)], disabled=())
    assert reg.info("gamma", "fixer").status == "ok"
    fixer = reg.create("fixer", "gamma", reg.get("fixer", "gamma").Config(gamma=2.0))
    images = torch.full((1, 2, 2, 3), 0.5)
    assert torch.allclose(fixer.fix(images), torch.full((1, 2, 2, 3), 0.25))


@pytest.mark.parametrize("label, code", _runnable(_text(CONVENTIONS_MD)), ids=lambda v: v[:40])
def test_conventions_examples_run(label, code):
    exec(compile(code, f"docs/conventions.md ({label})", "exec", dont_inherit=True), {})


def test_conventions_list_every_capability_and_the_constants():
    text = _text(CONVENTIONS_MD)
    documented = set(re.findall(r'^\s+"([a-z0-9-]+)"\s', components.__doc__, flags=re.M))
    assert {"scene", "video", "gaussians-3d", "sdf", "neural-field"} <= documented
    for name in documented:
        assert re.search(rf"^\| `{re.escape(name)}` \|", text, flags=re.M), f"capability '{name}' lacks a row"
    assert repr(SH_C0) in text
    assert "diag(1, -1, -1, 1)" in text
    assert "i + 0.5" in text


def test_relative_links_resolve():
    for path in (PLUGINS_MD, CONVENTIONS_MD):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", _text(path)):
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
