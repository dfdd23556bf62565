"""Video loader (recon_plugins.loaders.video): lazy, seekable decoding and frame folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from loaders_support import VIDEO, frame_level, gradient_image, write_png, write_video

from recon_core import InputError
from recon_plugins.loaders import register_loaders
from recon_plugins.loaders.video import VideoConfig, VideoLoader


def level(frame: torch.Tensor) -> float:
    return float(frame.mean()) * 255.0


def test_bikes_has_250_frames_of_640x272() -> None:
    path = VIDEO / "bikes.mp4"
    scores = {cls.name: cls().detect(path) for cls in register_loaders()}
    assert max(scores, key=scores.get) == "video"
    video = VideoLoader().load(path)
    assert (video.num_frames, video.width, video.height) == (250, 640, 272)
    assert video.fps == pytest.approx(25.0) and float(video.timestamps[-1]) == pytest.approx(249 / 25)
    frame = video.frame(249)
    assert frame.shape == (272, 640, 3) and frame.dtype == torch.float32 and 0 <= float(frame.min()) <= float(frame.max()) <= 1
    assert video.decoder.decoded < 250  # reached by seeking to a keyframe, not by decoding everything


def test_random_access_matches_sequential_decode(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", 60, gop=12)
    video = VideoLoader(VideoConfig(cache_frames=4)).load(path)
    assert video.num_frames == 60
    for i in [59, 0, 30, 31, 13, 12, 58, 1, 45]:
        assert abs(level(video.frame(i)) - frame_level(i)) < 4, i


def test_thousand_frames_stay_lazy(tmp_path: Path) -> None:
    path = write_video(tmp_path / "long.mp4", 1000, w=16, h=16, gop=25)
    video = VideoLoader(VideoConfig(cache_frames=8, gop_length=25)).load(path)
    assert video.num_frames == 1000 and len(video.gops()) == 40 and video.gop_length == 25
    assert video.decoder.decoded == 0  # loading only demuxed packets
    for gop in video.gops()[::10]:
        for i in gop:
            assert abs(level(video.frame(i)) - frame_level(i)) < 4
            assert len(video.decoder.cache) <= 8
    assert video.decoder.decoded <= 4 * 25 + 8  # each visited GoP decoded about once
    assert abs(level(video.frame(999)) - frame_level(999)) < 4


def test_range_resize_and_timestamps(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", 30, w=32, h=24, fps=10)
    video = VideoLoader(VideoConfig(start=5, end=25, step=5, width=16)).load(path)
    assert (video.num_frames, video.width, video.height) == (4, 16, 12)
    assert video.frame(0).shape == (12, 16, 3)
    assert torch.allclose(video.timestamps, torch.tensor([0.0, 0.5, 1.0, 1.5]))
    assert abs(level(video.frame(3)) - frame_level(20)) < 4
    with pytest.raises(InputError, match="selects no frame"):
        VideoLoader(VideoConfig(start=40)).load(path)


def test_folder_of_frames(tmp_path: Path) -> None:
    for i in (1, 2, 10):  # natural order: f00001, f00002, f00010
        write_png(tmp_path / "frames" / f"f{i:05d}.png", np.full((8, 10, 3), 20 * i, np.uint8))
    assert VideoLoader().detect(tmp_path / "frames") == 5
    video = VideoLoader(VideoConfig(fps=5.0, downscale=2)).load(tmp_path / "frames")
    assert (video.num_frames, video.width, video.height, video.fps) == (3, 5, 4, 5.0)
    assert [round(level(video.frame(i))) for i in range(3)] == [20, 40, 200]
    write_png(tmp_path / "frames" / "f00011.png", gradient_image(9, 10, 0))
    with pytest.raises(InputError, match="mixed sizes") as e:
        VideoLoader().load(tmp_path / "frames")
    assert e.value.path == tmp_path / "frames" / "f00011.png"


def test_original_d2gv_layout_one_folder_per_gop(tmp_path: Path) -> None:
    """dataset/Bunny/bunny_1/f00001.png …: the root is one video, each folder one GoP (folders
    of unequal length; bunny_10 sorts after bunny_2 because its frames come later)."""
    root = tmp_path / "Bunny"
    layout = {"bunny_1": range(1, 4), "bunny_2": range(4, 6), "bunny_10": range(6, 10)}
    for folder, frames in layout.items():
        for i in frames:
            write_png(root / folder / f"f{i:05d}.png", np.full((8, 10, 3), 20 * i, np.uint8))
    scores = {cls.name: cls().detect(root) for cls in register_loaders()}
    assert max(scores, key=scores.get) == "video"
    video = VideoLoader().load(root)
    assert (video.num_frames, video.width, video.height) == (9, 10, 8)
    assert [round(level(video.frame(i))) for i in range(9)] == [20 * i for i in range(1, 10)]
    assert video.gops() == [range(0, 3), range(3, 5), range(5, 9)]
    assert video.gops(4) == [range(0, 4), range(4, 8), range(8, 9)]  # an explicit length still wins
    # a frame range keeps the folders' boundaries
    part = VideoLoader(VideoConfig(start=2, end=7)).load(root)
    assert part.gops() == [range(0, 1), range(1, 3), range(3, 5)]
    # a d2gv representation takes the folders as its GoPs
    from recon_core import RunContext
    from recon_plugins.d2gv.representation import D2GV, D2GVConfig

    rep = D2GV(D2GVConfig(num_gaussians=5))
    rep.build(video, RunContext(torch.device("cpu"), seed=0))
    assert rep.gop_ranges() == video.gops()
    # folders without numbers (image/ + mask/ of an IDR scene) are not GoPs
    for folder in ("image", "mask"):
        write_png(tmp_path / "idr" / folder / "000000.png", np.zeros((8, 10, 3), np.uint8))
        write_png(tmp_path / "idr" / folder / "000001.png", np.zeros((8, 10, 3), np.uint8))
    assert VideoLoader().detect(tmp_path / "idr") == 0
    # a sub-folder that is not a GoP of frames: not this layout
    (root / "notes_1").mkdir()
    (root / "notes_1" / "readme.txt").write_text("x")
    assert VideoLoader().detect(root) == 0


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x00\x18ftypmp42 not really a video", bytes(range(256)) * 8])
def test_undecodable_video_raises_input_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(InputError) as e:
        VideoLoader().load(path)
    assert e.value.path == path


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing"):
        VideoLoader().load(tmp_path / "none.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image frames"):
        VideoLoader().load(tmp_path / "empty")


@pytest.mark.parametrize("suffix", [".mkv", ".mov"])
def test_other_containers_are_indexed_by_demuxing(tmp_path: Path, suffix: str) -> None:
    """Matroska does not store a frame count; the index comes from the packets instead."""
    path = write_video(tmp_path / f"v{suffix}", 30, gop=10)
    assert VideoLoader().detect(path) == 10
    video = VideoLoader().load(path)
    assert video.num_frames == 30 and video.fps == pytest.approx(25.0)
    assert abs(level(video.frame(17)) - frame_level(17)) < 4
