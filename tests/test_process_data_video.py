"""``recon process-data video`` (recon_plugins.loaders.process_data): frame extraction with PyAV,
sharpest frame per window, cut detection, then structure from motion into a colmap dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import look_at
from scipy import ndimage
from test_points_triangulate import render_plane, noise_texture

import recon_plugins.loaders as loaders_plugin
from recon_core.registry import Registry
from recon_plugins.loaders.colmap import ColmapConfig, ColmapLoader
from recon_plugins.loaders.process_data import extract_frames, laplacian_variance

av = pytest.importorskip("av")


def cli():  # noqa: ANN201
    from recon_cli.main import make_cli

    return make_cli(Registry(entry_points=[], modules=[("loaders", loaders_plugin)], disabled=()))


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Near-lossless H.264 (crf 0 would be lossless; 4 keeps files small) of uint8 RGB frames."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"bf": "0", "crf": "4"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_laplacian_variance_matches_scipy_and_drops_with_blur() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((40, 50))
    reference = ndimage.laplace(img)[1:-1, 1:-1].var()  # same 4-neighbour stencil, interior pixels
    assert laplacian_variance(img) == pytest.approx(reference, rel=1e-12)
    assert laplacian_variance(np.full((10, 10), 0.3)) == 0.0
    assert laplacian_variance(ndimage.gaussian_filter(img, 1.5)) < 0.1 * laplacian_variance(img)
    with pytest.raises(ValueError):
        laplacian_variance(np.zeros((2, 5)))


def test_extract_frames_keeps_the_sharpest_frame_of_each_window_and_finds_the_cut(tmp_path: Path) -> None:
    """25 fps, 20 frames, kept at 5 fps: windows of 5 frames, each with one sharp frame among
    blurred copies; a different texture from frame 10 on is a cut at 0.4 s."""
    t = noise_texture(96, seed=1)[:64, :96]
    a = (np.clip((t - t.mean()) / t.std() * 0.25 + 0.5, 0, 1) * 255).astype(np.uint8)  # contrast stretched
    b = 255 - a[::-1]  # another shot: the same texture inverted and flipped
    sharp = {2, 6, 13, 15}  # one per window: [0, 5), [5, 10), [10, 15), [15, 20)
    frames = []
    for i in range(20):
        img = a if i < 10 else b
        if i not in sharp:
            img = ndimage.gaussian_filter(img.astype(float), (1.0 + 0.3 * (i % 3), 1.0 + 0.3 * (i % 3), 0)).round().astype(np.uint8)
        frames.append(img)
    clip = write_clip(tmp_path / "clip.mp4", frames)
    got = extract_frames(clip, tmp_path / "frames", fps=5, max_size=48)
    assert got.decoded == 20 and got.fps == pytest.approx(25)
    assert got.names == [f"frame_{i:05d}.png" for i in sorted(sharp)]
    assert got.times == pytest.approx([i / 25 for i in sorted(sharp)])
    assert got.cuts == pytest.approx([0.4])
    from PIL import Image

    assert Image.open(tmp_path / "frames" / got.names[0]).size == (48, 32)  # longer side 96 → 48
    part = extract_frames(clip, tmp_path / "part", fps=5, max_size=96, start=0.4, end=0.7)  # frames 10-17
    assert part.names == ["frame_00013.png", "frame_00015.png"] and part.cuts == pytest.approx([0.4])
    assert extract_frames(clip, tmp_path / "late", fps=5, max_size=96, start=0.5).cuts == []  # cuts outside the range


def test_video_command_reports_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli(), ["process-data", "video", "--help"])
    assert result.exit_code == 0 and "--fps" in result.output and "--max-size" in result.output
    result = runner.invoke(cli(), ["process-data", "video", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "does not exist" in result.output and "none.mp4" in result.output
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    result = runner.invoke(cli(), ["process-data", "video", str(tmp_path / "bad.mp4"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "bad.mp4" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = runner.invoke(cli(), ["process-data", "video", str(tmp_path / "bad.mp4"), "--out", str(tmp_path / "full")])
    assert result.exit_code == 2 and "not empty" in result.output
    frames = [np.full((32, 48, 3), 100, np.uint8)] * 30  # a flat clip: nothing to match
    clip = write_clip(tmp_path / "flat.mp4", frames)
    result = runner.invoke(cli(), ["process-data", "video", str(clip), "--out", str(tmp_path / "flat"), "--fps", "10"])
    assert result.exit_code == 2 and "no model" in result.output and "no cuts detected" in result.output
    assert "partial" not in result.output  # the message names the clip, not a temporary folder
    assert not (tmp_path / "flat").exists() and not list(tmp_path.glob(".flat.partial-*"))  # nothing half-written


def test_video_to_colmap_dataset(tmp_path: Path) -> None:
    """A camera sliding over a textured plane → frames → SfM → the colmap loader reads the result."""
    pytest.importorskip("pycolmap")
    texture = noise_texture(512, seed=3)
    frames = []
    for i in range(36):
        eye = np.array([-0.5 + i / 35.0, -0.3 + 0.2 * np.sin(i / 6), 1.6])
        c2w = look_at(eye, np.array([0.0, 0.0, 0.0]), up=np.array([0.0, 1.0, 0.0]))
        frames.append((render_plane(c2w, texture) * 255).round().astype(np.uint8))
    clip = write_clip(tmp_path / "slide.mp4", frames, fps=12)
    out = tmp_path / "data"
    result = CliRunner().invoke(cli(), ["process-data", "video", str(clip), "--out", str(out), "--fps", "4",
                                        "--camera-model", "SIMPLE_PINHOLE"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "frames.json").read_text())
    assert len(meta["frames"]) == 12 and meta["cuts"] == []
    registered = [f for f in meta["frames"] if f["registered"]]
    assert len(registered) >= 10, result.output
    scene = ColmapLoader(ColmapConfig(test_every=0)).load(out)
    assert len(scene.views) == len(registered) and scene.point_cloud is not None and len(scene.point_cloud) > 100
    assert "mean reprojection error" in result.output
