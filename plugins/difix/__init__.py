"""Built-in plugin ``difix``: the ``difix`` fixer, the ``nearest-gt`` oracle fixer and the
``difix3d+`` progressive refiner (Difix3D+, Wu et al., CVPR 2025, arXiv 2503.01774).

Importing this module needs neither diffusers nor transformers: ``difix`` declares them in
``needs_packages`` (``recon list-plugins`` shows it as missing-dependency without them) and
imports them only when it loads weights. ``nearest-gt`` and ``difix3d+`` need neither.
"""

from __future__ import annotations

from recon_core.hookspecs import hookimpl

from .fixer import DifixConfig, DifixFixer
from .known import NearestGTConfig, NearestGTFixer
from .progressive import Difix3DPlus, Difix3DPlusConfig

__all__ = ["DifixFixer", "DifixConfig", "NearestGTFixer", "NearestGTConfig", "Difix3DPlus", "Difix3DPlusConfig"]


@hookimpl
def register_fixers() -> list[type]:
    return [DifixFixer, NearestGTFixer]


@hookimpl
def register_refiners() -> list[type]:
    return [Difix3DPlus]
