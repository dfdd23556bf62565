"""Just-in-time C++ extensions with a pure-PyTorch fallback.

Plugins ship C++ sources as package data and build them on first use with
:func:`torch.utils.cpp_extension.load` (ninja, the host compiler, OpenMP). The build is cached
in torch's extension directory (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``), so only the first call in a fresh environment compiles; later
processes just import the cached module (torch rebuilds it when a source or flag changes).

If the build or import is impossible (no compiler, no ninja, no OpenMP, a compile error), the
caller gets ``None`` and one :class:`RuntimeWarning` per extension and process naming the
reason; it then uses its pure-PyTorch path. Environment variables:

* ``RECON_NO_CPP=1`` — never build; every :func:`load_extension` returns ``None`` silently
  (an explicit choice, so no warning).
* ``RECON_CPP_VERBOSE=1`` — show the compiler's output.

Example::

    from recon_core.cpp_extension import load_extension
    _ext = load_extension("recon_myop", [Path(__file__).with_name("myop.cpp")])
    if _ext is None:
        ...  # use the torch implementation
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["load_extension", "cpp_disabled", "DEFAULT_CFLAGS"]

DEFAULT_CFLAGS: tuple[str, ...] = ("-O3", "-march=native", "-ffp-contract=off")
"""Compiled on the user's machine, so ``-march=native`` is safe; no fused multiply-add
contraction, so results stay close to the PyTorch twins (parity tests use 1e-4)."""

_OPENMP_FLAGS: tuple[str, ...] = ("-fopenmp",)

_lock = threading.Lock()
_cache: dict[str, ModuleType | None] = {}


def cpp_disabled() -> bool:
    """Whether ``RECON_NO_CPP`` asks for the pure-PyTorch paths only."""
    return os.environ.get("RECON_NO_CPP", "").strip().lower() not in ("", "0", "false", "no")


def load_extension(
    name: str,
    sources: Sequence[Path | str],
    extra_cflags: Sequence[str] = DEFAULT_CFLAGS,
    openmp: bool = True,
) -> ModuleType | None:
    """Build (once) and import a C++ torch extension, or return ``None`` with a warning.

    Args:
        name: module name, unique per extension (e.g. ``"recon_gaussians_cpu"``); it is also
            the cache key, within this process and in torch's extension directory.
        sources: C++ files; a source may ``#ifdef _OPENMP`` around its pragmas so that it
            still builds without OpenMP.
        extra_cflags: compiler flags. If the build fails, it is retried without
            ``-march=native`` and then without OpenMP before giving up.
        openmp: compile and link with ``-fopenmp`` (first attempt).

    Returns:
        The imported module, or ``None`` when ``RECON_NO_CPP=1`` is set or every build attempt
        failed (then a :class:`RuntimeWarning` naming the last error is issued, once per
        ``name`` and process). Later calls with the same ``name`` return the cached answer.
    """
    if cpp_disabled():
        return None
    with _lock:
        if name in _cache:
            return _cache[name]
        module, reason = _build(name, [str(Path(s)) for s in sources], list(extra_cflags), openmp)
        if module is None:
            warnings.warn(
                f"recon: could not build the C++ extension {name!r} ({reason}); "
                "falling back to the slower pure-PyTorch implementation. "
                "Set RECON_CPP_VERBOSE=1 to see the compiler output, RECON_NO_CPP=1 to silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
        _cache[name] = module
        return module


def _attempts(cflags: list[str], openmp: bool) -> list[tuple[list[str], list[str]]]:
    """(cflags, ldflags) to try in order: as asked, then without -march=native, then no OpenMP."""
    omp = list(_OPENMP_FLAGS) if openmp else []
    tries = [(cflags + omp, omp)]
    portable = [f for f in cflags if not f.startswith(("-march", "-mcpu", "-mtune"))]
    if portable != cflags:
        tries.append((portable + omp, omp))
    if omp:
        tries.append((portable, []))
    return tries


def _build(name: str, sources: list[str], cflags: list[str], openmp: bool) -> tuple[ModuleType | None, str]:
    missing = [s for s in sources if not Path(s).is_file()]
    if missing:
        return None, f"missing source file(s): {', '.join(missing)}"
    try:
        from torch.utils import cpp_extension
    except Exception as exc:  # a torch build without the extension tooling
        return None, f"torch.utils.cpp_extension unavailable: {exc}"
    verbose = os.environ.get("RECON_CPP_VERBOSE", "") not in ("", "0")
    if not _is_built(cpp_extension, name):
        from .progress import stderr_console

        stderr_console().print(f"[dim]recon: compiling the C++ extension {name!r} (first use; cached afterwards)[/dim]")
    reason = "no build attempted"
    for attempt, (cf, ld) in enumerate(_attempts(cflags, openmp)):
        # each flag set gets its own module name, so a failed attempt's build dir is not reused
        mod_name = name if attempt == 0 else f"{name}_fallback{attempt}"
        try:
            module = cpp_extension.load(
                name=mod_name, sources=sources, extra_cflags=cf, extra_ldflags=ld, verbose=verbose
            )
            return module, ""
        except Exception as exc:  # compiler errors are RuntimeError / CalledProcessError / ImportError
            reason = _short(exc)
    return None, reason


def _is_built(cpp_extension: ModuleType, name: str) -> bool:
    """Whether torch's extension folder already holds a build of ``name`` (only for a status line)."""
    try:
        folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:  # a private helper: if it changes, just print nothing
        return True
    return any(folder.glob(f"{name}*.so")) or any(folder.glob(f"{name}*.pyd"))


def _short(exc: BaseException) -> str:
    """First meaningful line of an exception (compiler errors can be pages long)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # prefer the compiler's own diagnostic ("file.cpp:3:1: error: ...") over ninja's summary
    diagnostics = [ln for ln in lines if "error:" in ln]
    errors = [ln for ln in lines if "error" in ln.lower()]
    line = (diagnostics or errors or lines)[0]
    return f"{type(exc).__name__}: {line[:300]}"
