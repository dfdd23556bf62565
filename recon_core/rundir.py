"""The run folder: everything one ``recon run`` writes, and how a later command reads it back.

Layout (``outputs/<scene>/<repr>/<timestamp>/`` unless ``--out`` says otherwise)::

    config.json          the resolved run configuration (``recon run --config`` re-runs it)
    log.txt              timestamped log lines
    checkpoints/         latest.json → the newest complete checkpoint folder (see below)
    renders/             one PNG per evaluated view, renders.mp4 (H.264) when there are ≥ 2
    metrics.json         metrics, per-view values, timings, plugins, refiner reports
    <exports>            whatever ``Representation.export`` writes (point_cloud.ply, mesh.ply…)

Checkpoints are two files (safetensors + JSON), so overwriting one in place could leave a new
tensor file beside an old JSON file after a crash. Each save therefore goes to a fresh numbered
folder, and only then is ``checkpoints/latest.json`` (one atomic rename) pointed at it; older
folders are deleted afterwards. A reader follows the pointer and always sees a complete pair.

``recon run`` guards the folder (:func:`check_out_path`, :class:`RunLock`, :func:`swap_in`): a
non-empty folder that is not a run, an existing run without ``--resume``/``--overwrite``, and a
folder inside the data are refused; ``run.lock`` (holding the writer's PID) makes a second writer
fail fast (a lock of a dead PID is taken over); ``--overwrite`` runs into a temporary sibling
folder and swaps it in only when the new run succeeded.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import InputError
from .io import write_json

__all__ = ["RunDir", "RunLock", "default_run_path", "is_run_folder", "check_out_path", "swap_in", "temporary_sibling"]

CONFIG_NAME = "config.json"
LOCK_NAME = "run.lock"


def _safe(part: str) -> str:
    """A path component made of safe characters (scene names come from user data)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", part).strip("._") or "scene"


def default_run_path(scene: str, representation: str, root: str | Path = "outputs") -> Path:
    """``root/<scene>/<repr>/<UTC timestamp>``, with a numeric suffix if that folder exists."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / _safe(scene) / _safe(representation) / stamp
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{stamp}-{n}")
    return path


class RunDir:
    """One run folder. All writes are atomic (temporary file + rename), except log lines,
    which are appended with a single ``write`` each (a crash can cut only the last line)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ----------------------------------------------------------------------------- creation

    @classmethod
    def create(cls, path: str | Path) -> "RunDir":
        """Make (or reuse) the folder; InputError when the path exists and is not a folder."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InputError("run output path exists and is not a folder", path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the run folder: {e.strerror or e}", path) from None
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run folder; InputError naming the problem when it is not one."""
        path = Path(path)
        if not path.exists():
            raise InputError("run folder does not exist", path)
        if not path.is_dir():
            raise InputError("not a run folder (it is a file)", path)
        if not (path / CONFIG_NAME).is_file():
            raise InputError(f"not a recon run folder (no {CONFIG_NAME})", path)
        return cls(path)

    # -------------------------------------------------------------------------------- paths

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def renders_dir(self) -> Path:
        return self.path / "renders"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    # ------------------------------------------------------------------------- config, logs

    def write_config(self, config: dict[str, Any]) -> Path:
        return write_json(self.config_path, config)

    def read_config(self) -> dict[str, Any]:
        return read_json(self.config_path, "run configuration")

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        return write_json(self.metrics_path, metrics)

    def log(self, message: str) -> None:
        """Append one timestamped line to log.txt."""
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} {message}\n".encode()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # less the umask
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    # -------------------------------------------------------------------------- checkpoints

    def _pointer(self) -> dict[str, Any] | None:
        """``checkpoints/latest.json`` checked: ``{"seq": int >= 1, "folder": NAME}`` where NAME is
        one folder directly inside ``checkpoints/`` (a pointer elsewhere, ``../../other_run`` or
        an absolute path, is refused). InputError naming the file otherwise."""
        pointer = self.checkpoints_dir / "latest.json"
        if not pointer.exists():
            return None
        value = read_json(pointer, "checkpoint pointer")
        folder, seq = value.get("folder"), value.get("seq")
        if not isinstance(folder, str) or not folder:
            raise InputError('checkpoint pointer has no "folder" (the name of a checkpoint folder beside it); '
                             'the file was modified or damaged', pointer)
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise InputError(f'checkpoint pointer needs "seq", a positive whole number, got {seq!r}', pointer)
        inside = Path(folder).name == folder and folder not in (".", "..") and "\\" not in folder
        if inside:
            base = self.checkpoints_dir.resolve()
            inside = (base / folder).resolve().parent == base
        if not inside:
            raise InputError(f"checkpoint pointer names {folder!r}, which is not a folder inside {self.checkpoints_dir}; "
                             f"recon only reads checkpoints of this run", pointer)
        return value

    def save_checkpoint(self, state: dict[str, Any], label: str = "") -> Path:
        """Write ``state`` as a new checkpoint folder, point ``latest.json`` at it, prune older ones."""
        previous = self._pointer()
        seq = int(previous["seq"]) + 1 if previous else 1
        folder_name = f"{seq:06d}" + (f"-{_safe(label)}" if label else "")
        folder = self.checkpoints_dir / folder_name
        if folder.exists():  # left over from a crash before the pointer moved: never pointed to
            shutil.rmtree(folder)
        try:
            save_checkpoint(folder, state)
        except BaseException:  # e.g. the disk is full: the pointer still names the previous, complete one
            shutil.rmtree(folder, ignore_errors=True)
            raise
        write_json(self.checkpoints_dir / "latest.json", {"seq": seq, "folder": folder_name})
        for other in self.checkpoints_dir.iterdir():
            if other.is_dir() and other.name != folder_name:
                shutil.rmtree(other, ignore_errors=True)
        return folder

    def latest_checkpoint(self) -> Path | None:
        """The folder of the newest complete checkpoint, or None when there is none."""
        pointer = self._pointer()
        return None if pointer is None else self.checkpoints_dir / pointer["folder"]

    def load_checkpoint(self, device: str = "cpu") -> dict[str, Any]:
        folder = self.latest_checkpoint()
        if folder is None:
            raise InputError(
                f"run folder has no checkpoint to resume from: the run stopped (or was killed) before it saved its "
                f"first checkpoint (one is saved every run.checkpoint_every steps, at the end of each refiner and "
                f"on Ctrl-C), so there is nothing to continue; start it again with: recon run --config "
                f"{self.config_path} (add --out {self.path} --overwrite to reuse this folder)",
                self.path,
            )
        return load_checkpoint(folder, device=device)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Parse a JSON object file; InputError naming the file when it is missing or malformed."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{what} file is missing", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what} file cannot be read: {e}", path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"{what} file is not valid JSON ({e.msg} at line {e.lineno})", path) from None
    if not isinstance(value, dict):
        raise InputError(f"{what} file must hold a JSON object", path)
    return value


# ------------------------------------------------------------------------------ guarding --out


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a recon ``config.json`` (``"recon_config"`` key)."""
    config = Path(path) / CONFIG_NAME
    try:
        value = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(value, dict) and "recon_config" in value


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_path(out: str | Path, data: str | Path | None, *, overwrite: bool = False) -> bool:
    """Check a ``recon run --out`` folder before any work; True when it holds a run to replace.

    Raises InputError (naming the folder) when ``out`` is a file, is inside (or is) the data
    folder, is a non-empty folder that is not a recon run, or holds a run and ``overwrite`` is
    not set (or would delete the data).
    """
    out = Path(out)
    real_out = out.resolve()
    if data is not None:
        real_data = Path(data).resolve()
        if real_data.is_dir() and _inside(real_out, real_data) or real_out == real_data:
            raise InputError(f"the run folder is inside the input data {data}; recon never writes into its inputs, "
                             f"choose an --out outside it", out)
    if not out.exists():
        return False
    if not out.is_dir():
        raise InputError("run output path exists and is not a folder", out)
    RunLock(out).check()
    if not any(p.name != LOCK_NAME for p in out.iterdir()):
        return False
    if not is_run_folder(out):
        raise InputError(f"--out is a non-empty folder that is not a recon run folder (no recon {CONFIG_NAME}); "
                         f"choose a new or empty folder", out)
    if not overwrite:
        raise InputError(f"--out already holds a recon run; continue it with `recon run --resume {out}` or "
                         f"replace it with --overwrite", out)
    if data is not None and _inside(Path(data).resolve(), real_out):
        raise InputError(f"--overwrite would delete the input data {data}, which is inside this run folder", out)
    return True


def temporary_sibling(path: str | Path, tag: str) -> Path:
    """A fresh hidden folder name next to ``path`` (same file system, so renames are atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.recon-{tag}-{os.getpid()}")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False when unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def swap_in(new: str | Path, target: str | Path) -> None:
    """Replace the folder ``target`` by the folder ``new`` (one atomic exchange where the OS
    allows it, else two renames), then delete the old contents."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # now holds the old run
        return
    old = temporary_sibling(target, "old")
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class RunLock:
    """``run.lock`` in a run folder: created exclusively, holding the writer's PID.

    A second writer fails fast with InputError naming the holder's PID; a lock whose PID is no
    longer running is stale and taken over. ``release`` removes the lock (in ``folder``, which may
    be changed after the folder was renamed).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.held = False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self.check()
                try:  # stale: its process is gone
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
            self.held = True
            return self
        raise InputError(f"cannot take the lock {self.path}", self.folder)

    def check(self) -> None:
        """InputError naming the holder's PID when a live process holds the lock."""
        holder = self._holder()
        if holder is not None:
            who = f"PID {holder}" if holder > 0 else "PID not readable yet"
            raise InputError(
                f"the run folder is in use by another recon process ({who}, lock {self.path}); "
                f"wait for it to finish, or delete the lock if that process is not recon", self.folder,
            )

    def _holder(self) -> int | None:
        """The PID of a live holder, or None when the lock is stale."""
        try:
            text = self.path.read_text().strip()
            age = _dt.datetime.now().timestamp() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError:
            return -1
        if not text.isdigit():
            return -1 if age < 10 else None  # being written just now, or left half-written by a crash
        pid = int(text)
        return pid if _pid_alive(pid) else None

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
