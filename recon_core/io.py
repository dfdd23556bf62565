"""Atomic file output: write to a temporary file beside the target, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never
a half-written file, even when the process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["atomic_path", "current_umask", "write_json", "write_bytes", "write_png", "Mp4Writer"]


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


class Mp4Writer:
    """H.264 video written through PyAV to a temporary file, renamed into place on close."""

    def __init__(self, path: Path, fps: float) -> None:
        import av

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.stem}.partial.mp4")
        # faststart: the index (moov) goes before the media data, so a browser can stream the file
        self.container = av.open(str(self._tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.pix_fmt = "yuv420p"
        self._size: tuple[int, int] | None = None

    def add(self, image: "Tensor") -> None:
        """Append an (H, W, 3) float [0, 1] frame (padded to even size, as yuv420p needs)."""
        import av

        arr = (image.numpy().clip(0, 1) * 255 + 0.5).astype(np.uint8)
        h, w = arr.shape[:2]
        arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._size is None:
            self._size = arr.shape[:2]
            self.stream.height, self.stream.width = self._size
        if arr.shape[:2] != self._size:
            return  # frames of another size cannot go into the same stream
        frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self, keep: bool = True) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
        if keep and self._size is not None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
