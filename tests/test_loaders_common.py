"""What all loaders share (recon_plugins.loaders.common) and the contract every loader keeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from loaders_support import gradient_image, ring_poses, write_ply, write_png

from recon_core import Cameras, InputError
from recon_plugins.loaders import register_loaders
from recon_core.optim import TargetCache
from recon_core.scene import CompactImage
from recon_plugins.loaders.common import FrameSpec, bounds_from_points, build_views, read_ply_points

K = np.array([[10.0, 0.0, 8.0], [0.0, 10.0, 6.0], [0.0, 0.0, 1.0]])


def frames(tmp_path: Path, sizes: list[tuple[int, int]], **kw) -> list[FrameSpec]:  # noqa: ANN003
    out = []
    for i, (h, w) in enumerate(sizes):
        img = write_png(tmp_path / f"{i}.png", gradient_image(h, w, i))
        out.append(FrameSpec(name=str(i), image=img, K=K, c2w=ring_poses(len(sizes))[i], **kw))
    return out


def test_mixed_sizes_only_rejected_when_the_format_requires_one(tmp_path: Path) -> None:
    fs = frames(tmp_path, [(12, 16), (12, 18)])
    assert [v.width for v in build_views(fs)] == [16, 18]
    with pytest.raises(InputError, match="mixed sizes") as e:
        build_views(fs, same_size=True)
    assert e.value.path == tmp_path / "1.png"


def test_distortion_is_undone_at_load_and_cleared(tmp_path: Path) -> None:
    fs = frames(tmp_path, [(12, 16), (12, 16)])
    fs[1].distortion = np.array([0.1, 0.2, 0.0, 0.0, 0.3])
    views = build_views(fs)
    cams = Cameras.cat([v.camera for v in views])
    assert cams.distortion is None
    assert torch.allclose(cams.K[0].double(), torch.from_numpy(fs[0].K))  # no distortion: K unchanged
    assert not torch.allclose(cams.K[1].double(), torch.from_numpy(fs[1].K))  # the new pinhole K
    assert views[1].image.shape == views[0].image.shape == (12, 16, 3)


def test_bad_intrinsics_and_poses(tmp_path: Path) -> None:
    fs = frames(tmp_path, [(12, 16)])
    fs[0].K = np.array([[-1.0, 0, 8], [0, 10, 6], [0, 0, 1]])
    with pytest.raises(InputError, match="positive focal"):
        build_views(fs)
    fs = frames(tmp_path, [(12, 16)])
    fs[0].c2w = np.diag([1.0, 1.0, 1.0, 1.0]) * 2
    with pytest.raises(InputError, match="rigid"):
        build_views(fs)
    with pytest.raises(InputError, match="no frames"):
        build_views([])


def test_bounds_prefer_points_and_ignore_stragglers() -> None:
    rng = np.random.default_rng(0)
    pts = torch.from_numpy(np.concatenate([rng.normal(size=(500, 3)), [[1000.0, 0, 0]]])).float()
    cams = Cameras.create(torch.eye(3), torch.from_numpy(np.stack(ring_poses(4, radius=50))).float(), 4, 4)
    b = bounds_from_points(pts, cams)
    assert b.radius < 5 and b.center.norm() < 0.5
    assert bounds_from_points(None, cams).radius == pytest.approx(50.0, rel=1e-4)


def test_ply_reader_colours_and_normals_optional(tmp_path: Path) -> None:
    pts = np.arange(12, dtype=np.float32).reshape(4, 3)
    pc = read_ply_points(write_ply(tmp_path / "a.ply", pts))
    assert pc.colors is None and torch.equal(pc.points, torch.from_numpy(pts))
    pc = read_ply_points(write_ply(tmp_path / "b.ply", pts, np.full((4, 3), 255, np.uint8)))
    assert torch.equal(pc.colors, torch.ones(4, 3))


@pytest.mark.parametrize("loader", register_loaders(), ids=lambda c: c.name)
def test_every_loader_rejects_empty_and_missing_inputs(tmp_path: Path, loader) -> None:  # noqa: ANN001
    empty = tmp_path / "empty"
    empty.mkdir()
    lonely = write_png(tmp_path / "lonely.png", gradient_image(4, 4))
    for path in (empty, tmp_path / "does-not-exist", lonely):
        assert loader().detect(path) == 0
        if path == lonely and loader.name == "video":
            continue  # asked explicitly, FFmpeg opens a still image as a 1-frame video: fine
        with pytest.raises(InputError) as e:
            loader().load(path)
        assert e.value.path is not None


def test_report_missing_warns_once_with_count_and_first_names(tmp_path: Path) -> None:
    import warnings

    from recon_plugins.loaders.common import report_missing

    missing = [(f"frame {i}", tmp_path / f"{i}.jpg") for i in range(5)]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        report_missing(missing, 9, strict=False, option="x.strict")
        report_missing([], 9, strict=False, option="x.strict")
    assert len(record) == 1
    assert str(record[0].message).startswith("skipped 5 of 9 frames whose image file is missing: 0.jpg, 1.jpg, 2.jpg, ...")
    with pytest.raises(InputError, match=r"image of frame 0 is missing \(5 of 9") as e:
        report_missing(missing, 9, strict=True, option="x.strict")
    assert e.value.path == tmp_path / "0.jpg"
    with pytest.raises(InputError, match="all 5 frames"):
        report_missing(missing, 5, strict=False, option="x.strict")


def test_hold_out_every_follows_image_names_not_list_order(tmp_path: Path) -> None:
    from recon_plugins.loaders.common import hold_out_every

    fs = frames(tmp_path, [(4, 4)] * 5)
    fs.reverse()  # listed 4, 3, 2, 1, 0
    hold_out_every(fs, 2, "x.test_every")
    assert [f.split for f in fs] == ["train", "test", "train", "test", "train"]  # names 1 and 3
    hold_out_every(fs, 0, "x.test_every")
    assert {f.split for f in fs} == {"train"}


def test_a_truncated_test_view_fails_at_load_not_when_decoded(tmp_path: Path) -> None:
    fs = frames(tmp_path, [(12, 16)] * 4)
    fs[3].split = "test"
    data = fs[3].image.read_bytes()
    fs[3].image.write_bytes(data[: len(data) - 30])  # the header is intact, the pixels are cut
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        build_views(fs)
    assert e.value.path == fs[3].image


def test_a_corrupt_mask_or_depth_file_fails_at_load(tmp_path: Path) -> None:
    fs = frames(tmp_path, [(12, 16)] * 2)
    mask = write_png(tmp_path / "m.png", np.full((12, 16), 255, dtype=np.uint8))
    fs[1].object_mask = mask
    np.save(tmp_path / "d.npy", np.ones((12, 16), np.float32))
    fs[0].depth = tmp_path / "d.npy"
    views = build_views(fs)  # all intact: lazy views
    assert views[1].object_mask is not None
    mask.write_bytes(mask.read_bytes()[:-30])
    with pytest.raises(InputError) as e:
        build_views(fs)
    assert e.value.path == mask


def test_ply_points_with_a_list_colour_property_is_an_input_error(tmp_path: Path) -> None:
    """Found by the fuzz test: a list-typed colour property crashed with ValueError (exit 1)."""
    header = (b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
              b"property float z\nproperty uchar red\nproperty list uchar int green\nproperty uchar blue\nend_header\n")
    row = np.zeros(3, "<f4").tobytes() + b"\xc8" + b"\x01" + np.int32(7).tobytes() + b"\x00"
    path = tmp_path / "points.ply"
    path.write_bytes(header + row * 2)
    with pytest.raises(InputError, match="colours are not numeric"):
        read_ply_points(path)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("kernel", [True, False])
def test_compact_training_targets_are_bit_identical_to_image_on(tmp_path: Path, monkeypatch, kernel: bool) -> None:  # noqa: ANN001
    """TargetCache keeps 8-bit RGBA / RGB views as their pixels and re-composites them (compiled
    kernel or numpy) into exactly View.image_on's floats; other views keep the float target."""
    import recon_core.optim as optim

    if not kernel:
        monkeypatch.setattr(optim, "_adam_kernel", lambda: None)
    rng = np.random.default_rng(0)
    fs = []
    for i, channels in enumerate((4, 4, 3)):
        px = rng.integers(0, 256, (12, 16, channels), dtype=np.uint8)
        if channels == 4:
            px[:3, :, 3] = 0  # fully clear pixels: image_on replaces their median colour
            px[3:5, :, 3] = rng.integers(1, 4, (2, 16))  # barely covered ones
        fs.append(FrameSpec(name=str(i), image=write_png(tmp_path / f"{i}.png", px), K=K, c2w=ring_poses(3)[i]))
    loaded_on = torch.tensor([0.25, 0.5, 0.125])
    for background in (torch.tensor([0.613, 0.0101, 0.3984]), torch.ones(3), torch.zeros(3)):
        views = build_views(fs, background=loaded_on)
        cache = TargetCache(background, torch.device("cpu"))
        for v in views:
            expected = v.image_on(background)
            assert torch.equal(_bits(cache(v)), _bits(expected))  # first call: image_on itself
            assert isinstance(cache._cache[v.name], CompactImage)
            assert torch.equal(_bits(cache(v)), _bits(expected))  # then re-composited from 8-bit pixels
        assert cache._bytes == 12 * 16 * (4 + 4 + 3)  # against 3 * 12 * 16 * 12 bytes as floats
    # resized views are not their files' pixels: the float target is kept, still image_on's
    views = build_views(fs[:1], background=loaded_on, downscale=2.0)
    cache = TargetCache(torch.ones(3), torch.device("cpu"))
    assert torch.equal(_bits(cache(views[0])), _bits(views[0].image_on(torch.ones(3))))
    assert isinstance(cache._cache[views[0].name], torch.Tensor) and views[0].compact_image_on(torch.ones(3)) is None
