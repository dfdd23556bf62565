"""Loader of the compiled CPU rasteriser (``rasterize_cpu.cpp``), built on first use.

:func:`extension` returns the module, or ``None`` (with one warning naming the reason) when it
cannot be built; :mod:`.rasterize` then uses its pure-PyTorch twin. ``RECON_NO_CPP=1`` turns
the compiled path off (see :mod:`recon_core.cpp_extension`).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from recon_core.cpp_extension import declare_extension

__all__ = ["EXTENSION", "EXTENSION_NAME", "SOURCES", "extension"]

EXTENSION_NAME = "recon_gaussians_cpu"
SOURCES = [Path(__file__).with_name("rasterize_cpu.cpp")]
EXTENSION = declare_extension(EXTENSION_NAME, SOURCES)  # recon doctor --build builds it ahead


def extension() -> ModuleType | None:
    """The compiled module (built and cached on the first call), or ``None`` if unavailable."""
    return EXTENSION.load()
