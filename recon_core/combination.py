"""Whether the components of a run fit together, checked before any work.

:func:`check_combination` compares declared capabilities (``provides``/``requires``), the
renderer's devices and kind (``renders`` vs ``rendered_by``), and names what would fit instead.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .components import Component, Encoder, Evaluator, Fixer, Loader, Refiner, Renderer, Representation
from .errors import CombinationError
from .registry import Registry

__all__ = ["check_combination"]


def _fmt(caps: frozenset[str] | set[str]) -> str:
    return ", ".join(sorted(caps)) or "nothing"


def _alternatives(registry: Registry, kind: str, fits: Callable[[type[Component]], bool]) -> str:
    names = [r.name for r in registry.components(kind) if r.cls is not None and fits(r.cls)]
    return ", ".join(names) or "none installed"


_ADD_PART = {
    "fixer": "add --fixer NAME",
    "encoder": "add --encoder NAME",
    "generator": "name one in an option of the component that creates it (e.g. --set REFINER.generator=NAME)",
}
"""How a user adds a run part that a component requires (the kind names as capabilities)."""


def check_combination(
    registry: Registry,
    device: torch.device,
    loader: type[Loader],
    representation: type[Representation],
    renderer: type[Renderer],
    refiners: Sequence[type[Refiner]] = (),
    encoder: type[Encoder] | None = None,
    fixer: type[Fixer] | None = None,
    evaluators: Sequence[type[Evaluator]] = (),
    used: Sequence[type[Component]] = (),
) -> None:
    """Raise CombinationError (listing what would fit instead) unless the parts fit together.

    A representation's ``requires`` must be met by the loader's ``provides``; every other
    component's ``requires`` by the union of what the loader, representation, renderer, encoder
    and fixer provide, plus the kinds of the run's optional parts ("fixer" with a fixer,
    "encoder" with an encoder, "generator" when a ``used`` component is a generator); the
    renderer must support ``device`` and draw what the representation needs (its ``renders``
    equals the representation's ``rendered_by``: posed cameras or video frames); an encoder needs a representation that provides
    "neural-field". ``used`` are the components created through ``ctx.create``.
    """
    problems: list[str] = []
    rep = representation
    missing = rep.requires - loader.provides
    if missing:
        alts = _alternatives(registry, "representation", lambda c: c.requires <= loader.provides)
        problems.append(
            f"representation {rep.name} needs {_fmt(missing)}; loader {loader.name} provides {_fmt(loader.provides)}; "
            f"representations that fit {loader.name}: {alts}"
        )
    # what a renderer may rely on, and (plus the renderer's own) what everything else may
    base_pool = set(loader.provides | rep.provides)
    base_pool |= encoder.provides if encoder else set()
    base_pool |= fixer.provides if fixer else set()
    pool = base_pool | renderer.provides | {c.kind for c in (encoder, fixer, *used) if c is not None}

    def fits_rep(c: type[Component]) -> bool:
        return (c.requires <= base_pool and device.type in c.devices  # type: ignore[attr-defined]
                and getattr(c, "renders", "") == rep.rendered_by)

    missing = renderer.requires - base_pool
    if missing:
        alts = _alternatives(registry, "renderer", fits_rep)
        problems.append(
            f"renderer {renderer.name} needs {_fmt(missing)}; representation {rep.name} provides {_fmt(rep.provides)}; "
            f"renderers that fit {rep.name}: {alts}"
        )
    elif device.type not in renderer.devices:
        alts = _alternatives(registry, "renderer", fits_rep)
        problems.append(
            f"renderer {renderer.name} runs on {', '.join(renderer.devices)}, not {device.type}; "
            f"renderers for {rep.name} on {device.type}: {alts}"
        )
    if encoder is not None and "neural-field" not in rep.provides:
        alts = _alternatives(registry, "representation", lambda c: "neural-field" in c.provides)
        problems.append(
            f"representation {rep.name} takes no encoder (it does not provide neural-field); "
            f"representations that take --encoder: {alts}"
        )
    if renderer.renders != rep.rendered_by:
        alts = _alternatives(registry, "renderer", fits_rep)
        problems.append(
            f"renderer {renderer.name} renders {renderer.renders or 'nothing (it is neither a CameraRenderer nor a FrameRenderer)'}, "
            f"but representation {rep.name} is rendered from {rep.rendered_by}; renderers that fit {rep.name}: {alts}"
        )
    others: list[type[Component] | None] = [encoder, *refiners, fixer, *evaluators, *used]
    for cls in others:
        if cls is None:
            continue
        missing = cls.requires - pool
        for part in sorted(missing & set(_ADD_PART)):
            problems.append(
                f"{cls.kind} {cls.name} needs a {part}: {_ADD_PART[part]} "
                f"(installed {part}s: {_alternatives(registry, part, lambda c: True)})"
            )
        missing -= set(_ADD_PART)
        if missing:
            alts = _alternatives(registry, cls.kind, lambda c: c.requires <= pool)
            problems.append(
                f"{cls.kind} {cls.name} needs {_fmt(missing)}; representation {rep.name} provides {_fmt(rep.provides)}; "
                f"{cls.kind}s that fit {rep.name}: {alts}"
            )
    if problems:
        raise CombinationError(". ".join(problems))
