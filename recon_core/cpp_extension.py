"""Just-in-time C++ extensions, cached per source and environment, with a pure-PyTorch fallback.

Plugins declare their C++ sources (shipped as package data) with :func:`declare_extension`;
the first :meth:`Extension.load` builds them with :func:`torch.utils.cpp_extension.load`
(ninja, the host compiler, OpenMP). Each build lives in its own folder of the extension cache,
``<root>/recon/<name>-<key>``, where ``root`` is torch's (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) and ``key`` hashes everything the binary depends on
(:func:`build_key`): the sources' bytes, the flags, torch's version and C++ ABI, CUDA or not, the
Python ABI, the compiler's identity, and with ``-march=native`` the CPU model. So two
environments (two torch versions, two compilers) never rebuild over each other or load each
other's binary, and an edited source gets a fresh build instead of a stale one. A build counts
only once ``recon_build.json`` sits beside its module (written last); a folder without it (an
interrupted build) is rebuilt, not imported.

A build prints one line saying what is compiled and why (first use, or which input changed since
the previous build); ``recon doctor --build`` builds every declared extension ahead of time.

If the build or import is impossible (no compiler, no ninja, no OpenMP, a compile error), the
caller gets ``None`` and one :class:`RuntimeWarning` per extension and process naming the
reason; it then uses its pure-PyTorch path. A failed attempt is remembered in its folder
(``recon_build_failed.json``), so later processes go straight to the next fallback. Environment
variables:

* ``RECON_NO_CPP=1`` — never build; every load returns ``None`` silently (an explicit choice,
  so no warning).
* ``RECON_CPP_VERBOSE=1`` — show the compiler's output.

Example::

    from recon_core.cpp_extension import declare_extension
    MYOP = declare_extension("recon_myop", [Path(__file__).with_name("myop.cpp")])
    _ext = MYOP.load()
    if _ext is None:
        ...  # use the torch implementation
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "load_extension",
    "declare_extension",
    "declared_extensions",
    "Extension",
    "BuildResult",
    "build_key",
    "build_environment",
    "cache_root",
    "cpp_disabled",
    "DEFAULT_CFLAGS",
]

DEFAULT_CFLAGS: tuple[str, ...] = ("-O3", "-march=native", "-ffp-contract=off")
"""Compiled on the user's machine, so ``-march=native`` is safe (the CPU model is part of the
cache key); no fused multiply-add contraction, so results stay close to the PyTorch twins
(parity tests use 1e-4)."""

_OPENMP_FLAGS: tuple[str, ...] = ("-fopenmp",)
_MARKER = "recon_build.json"
_FAILED = "recon_build_failed.json"
_FORMAT = 1  # bump when the layout of a build folder changes

_lock = threading.Lock()
_cache: dict[str, ModuleType | None] = {}
_declared: dict[str, "Extension"] = {}


def cpp_disabled() -> bool:
    """Whether ``RECON_NO_CPP`` asks for the pure-PyTorch paths only."""
    return os.environ.get("RECON_NO_CPP", "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class Extension:
    """A C++ extension a plugin ships: its module name, sources and flags."""

    name: str
    sources: tuple[Path, ...]
    extra_cflags: tuple[str, ...] = DEFAULT_CFLAGS
    openmp: bool = True

    def load(self) -> ModuleType | None:
        """The built module (built on first use), or None (see :func:`load_extension`)."""
        return load_extension(self.name, self.sources, self.extra_cflags, self.openmp)

    def build(self, say: Any = None) -> BuildResult:
        """Build now if this environment has no build yet, retrying attempts that failed before
        (``recon doctor --build``); the module is not kept in :func:`load_extension`'s cache."""
        return build_extension(self.name, self.sources, self.extra_cflags, self.openmp, say=say, retry_failed=True)

    def cached_build(self) -> Path | None:
        """The folder of this environment's finished build (any fallback attempt), or None."""
        try:
            for cf, ld in _attempts(list(self.extra_cflags), self.openmp):
                key, _ = build_key(self.name, self.sources, cf, ld)
                folder = cache_root() / f"{self.name}-{key}"
                marker = _read_json(folder / _MARKER)
                if marker and marker.get("key") == key and (folder / str(marker.get("library", ""))).is_file():
                    return folder
        except (OSError, ImportError):
            return None
        return None


def declare_extension(
    name: str, sources: Sequence[Path | str], extra_cflags: Sequence[str] = DEFAULT_CFLAGS, openmp: bool = True
) -> Extension:
    """Declare (without building) an extension, so ``recon doctor --build`` can build it ahead."""
    ext = Extension(name, tuple(Path(s) for s in sources), tuple(extra_cflags), openmp)
    _declared[name] = ext
    return ext


def declared_extensions() -> list[Extension]:
    """Every extension declared so far (by the imported plugin modules), by name."""
    return [_declared[k] for k in sorted(_declared)]


def load_extension(
    name: str,
    sources: Sequence[Path | str],
    extra_cflags: Sequence[str] = DEFAULT_CFLAGS,
    openmp: bool = True,
) -> ModuleType | None:
    """Build (once per source and environment) and import a C++ torch extension, or return
    ``None`` with a warning.

    Args:
        name: module name, unique per extension (e.g. ``"recon_gaussians_cpu"``); the
            in-process cache key and the prefix of its build folder.
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
        result = build_extension(name, sources, extra_cflags, openmp)
        if result.module is None:
            warnings.warn(
                f"recon: could not build the C++ extension {name!r} ({result.reason}); "
                "falling back to the slower pure-PyTorch implementation. "
                "Set RECON_CPP_VERBOSE=1 to see the compiler output, RECON_NO_CPP=1 to silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
        _cache[name] = result.module
        return result.module


@dataclass
class BuildResult:
    """What :func:`build_extension` did: the module (or None), whether it compiled now, where."""

    module: ModuleType | None
    compiled: bool
    folder: Path | None
    reason: str = ""
    seconds: float = 0.0


def build_extension(
    name: str, sources: Sequence[Path | str], extra_cflags: Sequence[str] = DEFAULT_CFLAGS, openmp: bool = True,
    *, say: Any = None, retry_failed: bool = False,
) -> BuildResult:
    """Import the cached build of ``name`` for this environment, or compile it (trying the
    fallbacks of :func:`_attempts`). Never raises; ``say(line)`` gets the status line of a
    compilation (default: the stderr console). An attempt that failed before in this
    environment is skipped unless ``retry_failed`` (``recon doctor --build``)."""
    paths = [Path(s) for s in sources]
    missing = [str(s) for s in paths if not s.is_file()]
    if missing:
        return BuildResult(None, False, None, f"missing source file(s): {', '.join(missing)}")
    try:
        from torch.utils import cpp_extension
    except Exception as exc:  # a torch build without the extension tooling
        return BuildResult(None, False, None, f"torch.utils.cpp_extension unavailable: {exc}")
    verbose = os.environ.get("RECON_CPP_VERBOSE", "") not in ("", "0")
    reason = "no build attempted"
    for cf, ld in _attempts(list(extra_cflags), openmp):
        key, info = build_key(name, paths, cf, ld)
        folder = cache_root() / f"{name}-{key}"
        module = _import_cached(name, folder, key)
        if module is not None:
            return BuildResult(module, False, folder)
        failed = _read_json(folder / _FAILED)
        if failed and failed.get("key") == key and not retry_failed:
            reason = str(failed.get("reason", "an earlier build with these flags failed"))
            continue  # this attempt failed before in this very environment: the next one
        (say or _say)(f"recon: compiling the C++ extension {name!r} ({_why(name, info)}); "
                      f"once per environment, about a minute; `recon doctor --build` does it ahead of time")
        start = time.perf_counter()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / _FAILED).unlink(missing_ok=True)
            _clear_stale_lock(folder)
            module = cpp_extension.load(name=name, sources=[str(s) for s in paths], extra_cflags=cf,
                                        extra_ldflags=ld, build_directory=str(folder), verbose=verbose)
        except Exception as exc:  # compiler errors are RuntimeError / CalledProcessError / ImportError
            reason = _short(exc)
            _write_json(folder / _FAILED, {"key": key, "reason": reason, **info})
            continue
        library = Path(getattr(module, "__file__", "") or "")
        _write_json(folder / _MARKER, {"key": key, "library": library.name, "module": module.__name__,
                                       "built": time.time(), **info})
        return BuildResult(module, True, folder, seconds=time.perf_counter() - start)
    return BuildResult(None, False, None, reason)


def cache_root() -> Path:
    """Where recon's extension builds live: ``$TORCH_EXTENSIONS_DIR/recon``, by default
    ``~/.cache/torch_extensions/recon`` (torch's root)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR", "").strip()
    if not root:
        from torch.utils import cpp_extension

        root = cpp_extension.get_default_build_root()
    return Path(root) / "recon"


def _say(line: str) -> None:
    from .progress import stderr_console

    stderr_console().print(f"[dim]{line}[/dim]", highlight=False)


@functools.lru_cache(maxsize=None)
def _compiler_identity(compiler: str) -> str:
    """First line of ``<compiler> --version`` (e.g. "c++ (Debian 12.2.0-14) 12.2.0")."""
    try:
        out = subprocess.run([*shlex.split(compiler), "--version"], capture_output=True, text=True, timeout=30)
        return (out.stdout.strip().splitlines() or [f"{compiler} (no version)"])[0]
    except (OSError, subprocess.SubprocessError, ValueError):
        return f"{compiler} (not found)"


@functools.lru_cache(maxsize=None)
def _cpu_model() -> str:
    """CPU model and instruction-set flags (what ``-march=native`` compiles for), hashed."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())
    flags = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(("flags", "Features"))), "")
    return f"{model} [{hashlib.sha256(flags.encode()).hexdigest()[:8]}]"


def build_environment(native: bool = True) -> dict[str, str]:
    """What a build depends on besides its sources and flags (all strings, shown in messages)."""
    import torch

    env = {
        "torch": torch.__version__,
        "torch_cxx11_abi": str(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", False))),
        "cuda": torch.version.cuda or "none",
        "python": f"{sys.implementation.cache_tag} {sysconfig.get_config_var('SOABI') or ''}".strip(),
        "platform": f"{sys.platform} {platform.machine()}",
        "compiler": _compiler_identity(os.environ.get("CXX", "c++")),
    }
    if native:
        env["cpu"] = _cpu_model()
    return env


def build_key(name: str, sources: Sequence[Path], cflags: Sequence[str], ldflags: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(16-hex-digit key, the facts it hashes): name, the sources' bytes, flags, format and
    :func:`build_environment` (with the CPU model only under ``-march``/``-mcpu=native``)."""
    native = any(f.startswith(("-march=native", "-mcpu=native", "-mtune=native")) for f in cflags)
    info: dict[str, Any] = {
        "name": name,
        "format": _FORMAT,
        "sources": {Path(s).name: hashlib.sha256(Path(s).read_bytes()).hexdigest() for s in sources},
        "cflags": list(cflags),
        "ldflags": list(ldflags),
        **build_environment(native),
    }
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    return digest, info


def _import_cached(name: str, folder: Path, key: str) -> ModuleType | None:
    """The module of a finished build in ``folder`` (its marker names ``key``), else None."""
    marker = _read_json(folder / _MARKER)
    if not marker or marker.get("key") != key:
        return None
    library = folder / str(marker.get("library", ""))
    if not library.is_file() or library.parent != folder:
        return None
    loaded = sys.modules.get(str(marker.get("module") or name))
    if loaded is not None and getattr(loaded, "__file__", None) == str(library):
        return loaded
    try:
        import torch  # noqa: F401 - the extension links against torch's libraries

        # torch renames a module it builds twice in one process (name_v1): import by the built name
        spec = importlib.util.spec_from_file_location(str(marker.get("module") or name), library)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception:  # a damaged build: rebuild it
        return None
    sys.modules[module.__name__] = module
    return module


_STALE_LOCK_S = 3600.0
_BUILDER = "recon_builder.json"


def _clear_stale_lock(folder: Path) -> None:
    """Remove torch's build lock left by a build that was killed (torch would wait on it
    forever): the lock is stale when the process that started the build (``recon_builder.json``)
    is gone from this host, or when the lock is over an hour old. Then record
    this process as the builder."""
    lock = folder / "lock"
    try:
        if lock.exists():
            builder = _read_json(folder / _BUILDER) or {}
            same_host = builder.get("host") == platform.node() and isinstance(builder.get("pid"), int)
            dead = same_host and not _alive(builder["pid"])
            if dead or time.time() - lock.stat().st_mtime > _STALE_LOCK_S:  # no build takes an hour
                lock.unlink()
                _say(f"recon: removed the lock of an interrupted build in {folder}")
    except OSError:
        pass
    _write_json(folder / _BUILDER, {"pid": os.getpid(), "host": platform.node()})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _why(name: str, info: dict[str, Any]) -> str:
    """"first use in this environment (...)" or what changed since the newest other build."""
    here = f"torch {info['torch']}, {info['python'].split()[0]}, {info['compiler']}"
    root = cache_root()
    others = []
    for marker in root.glob(f"{name}-*/{_MARKER}") if root.is_dir() else []:
        doc = _read_json(marker)
        if doc and doc.get("name") == name:
            others.append(doc)
    if not others:
        return f"first use with {here}"
    last = max(others, key=lambda d: d.get("built", 0))
    changed = [k for k in ("sources", "cflags", "ldflags", "torch", "torch_cxx11_abi", "cuda", "python", "platform",
                           "compiler", "cpu", "format") if last.get(k) != info.get(k)]
    detail = []
    for k in changed:
        if k == "sources":
            detail.append("the C++ sources changed")
        elif isinstance(info.get(k), str) and isinstance(last.get(k), str):
            detail.append(f"{k} {last[k]} → {info[k]}")
        else:
            detail.append(f"{k} changed")
    return "; ".join(detail) + " since the last build" if detail else f"a new build with {here}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    try:
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: the build still works for this process


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


def _short(exc: BaseException) -> str:
    """First meaningful line of an exception (compiler errors can be pages long)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # prefer the compiler's own diagnostic ("file.cpp:3:1: error: ...") over ninja's summary
    diagnostics = [ln for ln in lines if "error:" in ln]
    errors = [ln for ln in lines if "error" in ln.lower()]
    line = (diagnostics or errors or lines)[0]
    return f"{type(exc).__name__}: {line[:300]}"
