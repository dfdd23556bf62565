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

__all__ = ["RunDir", "default_run_path"]

CONFIG_NAME = "config.json"


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
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    # -------------------------------------------------------------------------- checkpoints

    def _pointer(self) -> dict[str, Any] | None:
        pointer = self.checkpoints_dir / "latest.json"
        if not pointer.exists():
            return None
        return read_json(pointer, "checkpoint pointer")

    def save_checkpoint(self, state: dict[str, Any], label: str = "") -> Path:
        """Write ``state`` as a new checkpoint folder, point ``latest.json`` at it, prune older ones."""
        previous = self._pointer()
        seq = int(previous["seq"]) + 1 if previous else 1
        folder_name = f"{seq:06d}" + (f"-{_safe(label)}" if label else "")
        folder = self.checkpoints_dir / folder_name
        if folder.exists():  # left over from a crash before the pointer moved: never pointed to
            shutil.rmtree(folder)
        save_checkpoint(folder, state)
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
                f"run folder has no checkpoint (it stopped before refining began); "
                f"start it again with: recon run --config {self.config_path}",
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
