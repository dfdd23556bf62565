"""Atomic file output: write to a temporary file beside the target, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never
a half-written file, even when the process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["atomic_path", "current_umask", "write_json", "write_bytes", "write_png", "Mp4Writer", "child_python", "ChildError"]


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``);
    elsewhere set-and-restore, which is not thread-safe but brief."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask,
    typically 0644), not the 0600 of :func:`tempfile.mkstemp`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # after the writer: some (safetensors) replace the file rather than write into it
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_png(path: str | Path, image: Any) -> Path:
    """Write float [0, 1] (H, W, 3|4) or uint8 image data as PNG."""
    from PIL import Image

    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(tmp, format="PNG")
    return Path(path)


def child_python(target: str, *args: str) -> list[str]:
    """The command running ``target`` (``"package.module:function"``, called with the list of
    ``args``) in a fresh interpreter: work that needs a large library the run itself does not
    (PyAV, matplotlib) is done there, so that importing it does not add to the run's resident
    memory for good (measured: PyAV ~15 MB, matplotlib ~25 MB; a child without torch peaks far
    below the run). The target's module must not import torch. The current directory is taken
    off ``sys.path`` (a ``-c`` command puts it first)."""
    module, function = target.split(":")
    code = f"import sys; del sys.path[0]; from {module} import {function}; {function}(sys.argv[1:])"
    return [sys.executable, "-c", code, *args]


class ChildError(RuntimeError):
    """A :func:`child_python` command failed; its message holds the child's error output."""


def _child_failed(what: str, returncode: int, stderr: bytes) -> Exception:
    text = stderr.decode(errors="replace").strip()
    last = text.splitlines()[-1] if text else f"exit status {returncode}"
    if "ModuleNotFoundError" in last or "ImportError" in last:
        return ImportError(f"{what}: {last}")
    return ChildError(f"{what} failed: {last}")


class Mp4Writer:
    """H.264 video (PyAV's libx264, yuv420p, MP4 with faststart) written to a temporary file,
    renamed into place on close. Frames go as raw RGB bytes through a pipe to an encoder in a
    child interpreter (:func:`child_python`), started at the first frame, so the calling
    process never imports PyAV."""

    def __init__(self, path: Path, fps: float) -> None:
        if importlib.util.find_spec("av") is None:
            raise ImportError("writing MP4 needs PyAV (pip install av)")
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.stem}.partial.mp4")
        self._rate = str(Fraction(fps).limit_denominator(1001))
        self._size: tuple[int, int] | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    def add(self, image: "Tensor") -> None:
        """Append an (H, W, 3) float [0, 1] frame (padded to even size, as yuv420p needs)."""
        arr = (image.numpy().clip(0, 1) * 255 + 0.5).astype(np.uint8)
        h, w = arr.shape[:2]
        arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._size is None:
            self._size = arr.shape[:2]
            self._stderr = tempfile.TemporaryFile()
            cmd = child_python("recon_core.io:encode_mp4_from_stdin", str(self._tmp), self._rate, str(self._size[1]), str(self._size[0]))
            self._child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)
        if arr.shape[:2] != self._size:
            return  # frames of another size cannot go into the same stream
        assert self._child is not None and self._child.stdin is not None
        try:
            self._child.stdin.write(np.ascontiguousarray(arr).tobytes())
        except BrokenPipeError:
            self._finish()  # raises with the encoder's error

    def _finish(self) -> None:
        assert self._child is not None
        try:
            if self._child.stdin is not None and not self._child.stdin.closed:
                self._child.stdin.close()
        except BrokenPipeError:
            pass
        returncode = self._child.wait()
        self._stderr.seek(0)
        stderr = self._stderr.read()
        self._stderr.close()
        self._child = None
        if returncode != 0:
            self._tmp.unlink(missing_ok=True)
            raise _child_failed(f"encoding {self.path}", returncode, stderr)

    def close(self, keep: bool = True) -> None:
        if self._child is not None:
            try:
                self._finish()
            except (ChildError, ImportError):
                if keep:
                    raise  # (not keeping: another error is on its way; the video is dropped anyway)
        if keep and self._size is not None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def encode_mp4_from_stdin(args: list[str]) -> None:
    """The child of :class:`Mp4Writer`: ``args`` = path, frame rate, width, height; raw RGB24
    frames of that size on stdin until it closes."""
    import av

    path, rate, width, height = args[0], Fraction(args[1]), int(args[2]), int(args[3])
    # faststart: the index (moov) goes before the media data, so a browser can stream the file
    container = av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"})
    stream = container.add_stream("libx264", rate=rate)
    stream.pix_fmt = "yuv420p"
    stream.height, stream.width = height, width
    size = width * height * 3
    source = sys.stdin.buffer
    try:
        while True:
            data = source.read(size)
            if len(data) < size:
                break
            frame = av.VideoFrame.from_ndarray(np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
