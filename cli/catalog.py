"""What the CLI knows about installed plugins without importing them: a cached catalog.

``recon --help`` and shell completion must answer in well under a second, but the plugins import
torch (seconds). Whenever the CLI builds the registry it writes a catalog: component names per
kind, each component's option keys, and the commands plugins add (name and short help). The
catalog is keyed by the installed ``recon.plugins`` entry points (name, target, distribution
version), the files of the plugin packages (paths, sizes and modification times, so an edited
editable install counts as changed) and ``RECON_DISABLE_PLUGINS``; a catalog with another key is
ignored and rebuilt on the next command that loads the plugins.

Location: ``$RECON_CACHE_DIR`` or ``$XDG_CACHE_HOME/recon`` or ``~/.cache/recon``, file
``cli-catalog.json`` (written atomically; a cache that cannot be written is skipped silently).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["catalog_path", "catalog_key", "read_catalog", "write_catalog", "build_catalog"]

_FORMAT = 1


def catalog_path() -> Path:
    root = os.environ.get("RECON_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "recon")
    return Path(root) / "cli-catalog.json"


def _package_files(module: str) -> list[str]:
    """``path:size:mtime`` of the Python files of an entry point's package (without importing it)."""
    try:
        spec = importlib.util.find_spec(module.split(":")[0])
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.origin:
        return []
    origin = Path(spec.origin)
    folder = origin.parent if origin.name == "__init__.py" else None
    files = sorted(folder.rglob("*.py")) if folder is not None else [origin]
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    return out


def catalog_key() -> str:
    """A digest of what decides the plugins' contents (see the module docstring)."""
    from recon_core.hookspecs import DISABLE_ENV, ENTRY_POINT_GROUP  # light: pluggy, no components

    parts = [f"format={_FORMAT}", f"disabled={os.environ.get(DISABLE_ENV, '')}"]
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        parts.append(f"{ep.name}={ep.value}@{dist.version if dist is not None else '?'}")
        parts += _package_files(ep.value)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def read_catalog() -> dict[str, Any] | None:
    """The cached catalog when it matches the installed plugins, else None."""
    path = catalog_path()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != catalog_key():
        return None
    return doc


def build_catalog(registry: Any, cli: Any) -> dict[str, Any]:
    """Components (kind → names), option keys per component name and the plugin commands."""
    from recon_core.config import option_names
    from recon_core.registry import Status
    from recon_core.spec import RunOptions

    components: dict[str, list[str]] = {}
    options: dict[str, list[str]] = {"run": option_names(RunOptions)}
    for row in registry.rows():
        if row.kind == "command" or row.cls is None or row.status != Status.OK:
            continue
        components.setdefault(row.kind, [])
        if row.name not in components[row.kind]:
            components[row.kind].append(row.name)
        try:
            keys = option_names(row.cls.Config)
        except Exception:  # noqa: BLE001 - a malformed third-party config: no completion for it
            keys = []
        options[row.name] = sorted(set(options.get(row.name, [])) | set(keys))
    commands = {name: cmd.get_short_help_str(limit=60) for name, cmd in cli.commands.items()}
    return {"components": components, "options": options, "commands": commands}


def write_catalog(catalog: dict[str, Any]) -> None:
    """Store ``catalog`` under the current key (best effort: a read-only home just skips it)."""
    from recon_core.io import write_json

    try:
        write_json(catalog_path(), {"key": catalog_key(), **catalog})
    except OSError:
        pass
