"""The plugin contract: one pluggy hook per interface, plus one to add CLI commands.

A plugin module implements any subset of these with ``@recon_core.hookimpl``. Each
``register_*`` hook returns a list of component classes. Hooks may gain arguments in later
versions, never lose or rename them (pluggy passes only the arguments an implementation names).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .components import Encoder, Evaluator, Fixer, Generator, Loader, Refiner, Renderer, Representation

PROJECT = "recon"
ENTRY_POINT_GROUP = "recon.plugins"
"""The entry-point group plugins register under."""
DISABLE_ENV = "RECON_DISABLE_PLUGINS"
"""Comma-separated plugin names blocked before import."""
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_loaders() -> list[type["Loader"]]:
    """Loader classes: a path → Scene or Video."""


@hookspec
def register_representations() -> list[type["Representation"]]:
    """Representation classes: parameters, initialisation and export."""


@hookspec
def register_renderers() -> list[type["Renderer"]]:
    """Renderer classes: representation + cameras → images."""


@hookspec
def register_refiners() -> list[type["Refiner"]]:
    """Refiner classes: optimisation procedures over a representation."""


@hookspec
def register_encoders() -> list[type["Encoder"]]:
    """Encoder classes: coordinate encodings for neural fields."""


@hookspec
def register_fixers() -> list[type["Fixer"]]:
    """Fixer classes: image-space artifact removal of renders."""


@hookspec
def register_evaluators() -> list[type["Evaluator"]]:
    """Evaluator classes: image or geometry metrics."""


@hookspec
def register_generators() -> list[type["Generator"]]:
    """Generator classes: extra pseudo-views with confidence (novel-view generation)."""


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add sub-commands to the ``recon`` click group."""


KIND_HOOKS = {
    "loader": "register_loaders",
    "representation": "register_representations",
    "renderer": "register_renderers",
    "refiner": "register_refiners",
    "encoder": "register_encoders",
    "fixer": "register_fixers",
    "evaluator": "register_evaluators",
    "generator": "register_generators",
}
"""Which hook returns components of which kind."""


@hookspec
def register_config_readers() -> list[Any]:
    """Readers of foreign run configurations for ``recon run --config FILE``: objects with
    ``suffixes`` (e.g. ``(".conf",)``) and ``read(path) -> (config dict, [unmapped key lines])``,
    the dict in the format of a run's config.json (without ``data``)."""
