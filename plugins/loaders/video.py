"""Videos (``.mp4 .mov .mkv .avi .webm`` through PyAV) and folders of frames (``f00001.png`` ...).

A folder whose sub-folders hold the frames (and which has no frames itself) is one video cut
into GoPs, one sub-folder each: the original D2GV's layout (``dataset/Bunny/bunny_1/f00001.png``
…). Frames are ordered by name (numbers compared as numbers), within a folder and across folders
(folders by the name of their first frame, then by their own name); ``Video.gop_starts`` records
the folders' boundaries. ``start`` / ``end`` / ``step`` then apply to the whole sequence, and a
GoP left with no frame is dropped.

Loading only *indexes* the video: it demuxes the packets (no decoding) to learn every frame's
presentation timestamp and where the keyframes are. :attr:`Video.read_frame` then decodes on
demand: a frame at or shortly after the last decoded one is reached by decoding forward; any other
frame by seeking to the keyframe before it and decoding forward. Decoded frames go into a small
LRU cache (``cache_frames``), so sequential and GoP-wise access decode each frame once and a
1000-frame video never holds more than ``cache_frames`` frames in memory.

Frames are float32 (H, W, 3) in [0, 1], resized (antialiased, see :mod:`.imageio`) when ``width``
/ ``height`` / ``downscale`` ask for it. ``start`` / ``end`` / ``step`` pick a frame range;
``timestamps`` are seconds from the first loaded frame.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from recon_core import InputError, Loader, Video, option

from . import imageio

__all__ = ["VideoLoader", "VideoDecoder", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
_NUMBER = re.compile(r"(\d+)")


def _natural_key(p: Path) -> tuple:
    return tuple(int(s) if s.isdigit() else s for s in _NUMBER.split(p.name))


class VideoDecoder:
    """Random access to the frames of one video file by index (presentation order).

    Args:
        path: the video file.
        size: (H, W) to resize to, or None for the native size.
        cache_frames: how many decoded frames to keep (LRU).
        forward_limit: decode forward (instead of seeking) when the wanted frame is at most this
            many frames after the last decoded one.
    """

    def __init__(self, path: Path, size: tuple[int, int] | None = None, cache_frames: int = 16, forward_limit: int = 32) -> None:
        import av

        self.path = Path(path)
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise InputError("file has no video stream", self.path)
                stream = container.streams.video[0]
                self.width = int(stream.codec_context.width)
                self.height = int(stream.codec_context.height)
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self.time_base = stream.time_base or Fraction(1, 1)
                pts, keys = [], []
                for packet in container.demux(stream):
                    if packet.pts is not None and packet.size > 0:
                        pts.append(int(packet.pts))
                        keys.append(bool(packet.is_keyframe))
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - av raises many error types (InvalidDataError, OSError, ...)
            raise InputError(f"the video decoder cannot open this file ({type(e).__name__}: {e})", self.path) from None
        if not pts:
            raise InputError("video has no frames", self.path)
        if self.width < 1 or self.height < 1:
            raise InputError(f"video has an invalid size {self.width}x{self.height}", self.path)
        order = np.argsort(np.asarray(pts), kind="stable")
        self.pts = np.asarray(pts, dtype=np.int64)[order]
        key_pts = {p for p, k in zip(pts, keys) if k}
        self.is_key = np.array([p in key_pts for p in self.pts])
        self.fps = float(rate) if rate else (len(self.pts) - 1) / max(float((self.pts[-1] - self.pts[0]) * self.time_base), 1e-9)
        self.size = size
        self.cache: OrderedDict[int, Tensor] = OrderedDict()
        self.cache_frames = max(1, cache_frames)
        self.forward_limit = forward_limit
        self._index_of = {int(p): i for i, p in enumerate(self.pts)}
        self._container: Any = None
        self._frames: Any = None  # generator of decoded frames after the last seek
        self._last = -1  # index of the last decoded frame
        self.decoded = 0  # frames decoded so far (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def timestamps(self) -> np.ndarray:
        """Seconds of each frame from the first one."""
        return (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)

    def _open(self) -> None:
        import av

        if self._container is None:
            self._container = av.open(str(self.path))
            self._container.streams.video[0].thread_type = "AUTO"

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames, self._last = None, None, -1

    def _seek(self, i: int) -> None:
        self._open()
        stream = self._container.streams.video[0]
        self._container.seek(int(self.pts[i]), stream=stream, backward=True, any_frame=False)
        self._frames = self._container.decode(stream)
        self._last = -1

    def _convert(self, frame: Any) -> Tensor:
        rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).float().div_(255.0)
        return rgb if self.size is None else imageio.resize_image(rgb, self.size)

    def _remember(self, i: int, image: Tensor) -> None:
        self.cache[i] = image
        self.cache.move_to_end(i)
        while len(self.cache) > self.cache_frames:
            self.cache.popitem(last=False)

    def read(self, i: int) -> Tensor:
        """Frame ``i`` (presentation order) as float32 (H, W, 3) in [0, 1]."""
        if not 0 <= i < len(self.pts):
            raise IndexError(f"frame {i} out of range 0..{len(self.pts) - 1}")
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        if self._frames is None or not (self._last < i <= self._last + self.forward_limit):
            self._seek(i)
        try:
            for frame in self._frames:
                j = self._index_of.get(int(frame.pts)) if frame.pts is not None else None
                if j is None:
                    continue
                self.decoded += 1
                self._last = j
                if j >= i - self.cache_frames:  # keep frames near the target (cheap GoP access)
                    self._remember(j, self._convert(frame))
                if j >= i:
                    break
        except Exception as e:  # noqa: BLE001
            self.close()
            raise InputError(f"frame {i} cannot be decoded ({type(e).__name__}: {e})", self.path) from None
        if i not in self.cache:
            # The decoder skipped it (e.g. a broken seek index): decode from the start once.
            self.close()
            self._seek(0)
            for frame in self._frames:
                j = self._index_of.get(int(frame.pts)) if frame.pts is not None else None
                self.decoded += 1
                if j == i:
                    self._remember(i, self._convert(frame))
                    self._last = i
                    break
            else:
                raise InputError(f"frame {i} cannot be decoded", self.path)
        return self.cache[i]


@dataclass
class VideoConfig:
    start: int = option(0, "first frame to load", min=0)
    end: int = option(-1, "frame to stop before (-1 = to the end)", min=-1)
    step: int = option(1, "load every step-th frame", min=1)
    width: int = option(0, "resize frames to this width (0 = keep; height follows the aspect ratio if 0)", min=0)
    height: int = option(0, "resize frames to this height (0 = keep; width follows the aspect ratio if 0)", min=0)
    downscale: float = option(1.0, "divide the frame size by this (ignored when width/height are set)", min=1)
    gop_length: int = option(10, "frames per group of pictures (Video.gop_length)", min=1)
    fps: float = option(25.0, "frame rate of a folder of frames (videos use their own)", min=1e-12)
    cache_frames: int = option(16, "decoded frames kept in memory", min=1)


class VideoLoader(Loader):
    """A video file (PyAV) or a folder of numbered frames, decoded lazily."""

    name = "video"
    description = "video files (.mp4/.mov/.mkv via PyAV) or a folder of frames; lazy decoding"
    Config = VideoConfig
    provides = frozenset({"video"})

    def detect(self, path: Path) -> int:
        path = Path(path)
        if path.is_file():
            return 10 if path.suffix.lower() in VIDEO_SUFFIXES else 0
        if path.is_dir() and not (path / "transforms.json").exists() and not (path / "sparse").exists():
            frames = imageio.list_images(path)
            if len(frames) >= 2 and all(_NUMBER.search(p.stem) for p in frames):
                return 5
            if not frames and _gop_folders(path):
                return 5
        return 0

    def _size(self, width: int, height: int) -> tuple[int, int] | None:
        c = self.config
        if c.width < 0 or c.height < 0:
            raise InputError(f"width/height must be >= 0, got {c.width}x{c.height}")
        if c.width or c.height:
            w = c.width or max(1, round(width * c.height / height))
            h = c.height or max(1, round(height * c.width / width))
            return None if (h, w) == (height, width) else (h, w)
        if c.downscale != 1.0:
            return imageio.scaled_size((height, width), c.downscale)
        return None

    def _range(self, total: int, where: Path) -> range:
        c = self.config
        end = total if c.end < 0 else min(c.end, total)
        if c.step < 1 or c.start < 0 or c.start >= end:
            raise InputError(f"frame range start={c.start}, end={c.end}, step={c.step} selects no frame of {total}", where)
        return range(c.start, end, c.step)

    def load(self, path: Path) -> Video:
        path = Path(path)
        if path.is_dir():
            return self._load_folder(path)
        if not path.is_file():
            raise InputError("file is missing", path)
        decoder = VideoDecoder(path, cache_frames=self.config.cache_frames)
        size = decoder.size = self._size(decoder.width, decoder.height)
        picked = self._range(len(decoder), path)
        stamps = decoder.timestamps[list(picked)]
        h, w = size or (decoder.height, decoder.width)
        read: Callable[[int], Tensor] = lambda i: decoder.read(picked[i])  # noqa: E731
        video = Video(
            name=path.stem,
            num_frames=len(picked),
            width=w,
            height=h,
            fps=decoder.fps / self.config.step,
            read_frame=read,
            gop_length=self.config.gop_length,
            source=path,
            timestamps=torch.from_numpy(stamps - stamps[0]).float(),
        )
        video.decoder = decoder  # type: ignore[attr-defined]  # for inspection (decoded count, close())
        return video

    def _load_folder(self, path: Path) -> Video:
        frames = sorted(imageio.list_images(path), key=_natural_key)
        gop_of: list[int] | None = None
        if not frames:
            folders = _gop_folders(path)
            frames = [f for files in folders for f in files]
            gop_of = [g for g, files in enumerate(folders) for _ in files]
        if not frames:
            raise InputError("folder has no image frames (nor sub-folders of numbered frames, one per GoP)", path)
        infos = [imageio.probe_image(p) for p in frames]
        first = infos[0]
        for info in infos[1:]:
            if info.size != first.size:
                raise InputError(f"frames have mixed sizes: {frames[0].name} is {first.width}x{first.height}, "
                                 f"this one is {info.width}x{info.height}", info.path)
        picked = self._range(len(frames), path)
        size = self._size(first.width, first.height)
        h, w = size or first.size
        files = [frames[i] for i in picked]
        fps = self.config.fps / self.config.step
        if not fps > 0:
            raise InputError(f"fps must be > 0, got {self.config.fps}")

        def read(i: int) -> Tensor:
            return imageio.read_rgb_alpha(files[i], (h, w))[0]

        starts = None
        if gop_of is not None:  # first picked frame of each GoP folder
            kept = [gop_of[i] for i in picked]
            starts = [k for k in range(len(kept)) if k == 0 or kept[k] != kept[k - 1]]
        return Video(name=path.name, num_frames=len(files), width=w, height=h, fps=fps, read_frame=read,
                     gop_length=self.config.gop_length, source=path, gop_starts=starts)


def _gop_folders(path: Path) -> list[list[Path]]:
    """Frames of the sub-folders of ``path`` that hold numbered frames, one list per folder, in
    frame-name order; [] unless every non-hidden sub-folder is numbered (``bunny_1``) and holds
    only numbered frames (so ``image/`` + ``mask/`` of other layouts is not taken for GoPs)."""
    folders = []
    subs = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key)
    if not subs or not all(_NUMBER.search(sub.name) for sub in subs):
        return []
    for sub in subs:
        frames = sorted(imageio.list_images(sub), key=_natural_key)
        if not frames or not all(_NUMBER.search(p.stem) for p in frames):
            return []
        folders.append(frames)
    folders.sort(key=lambda files: _natural_key(files[0]))  # stable: ties keep the folder-name order
    return folders
