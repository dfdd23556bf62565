"""recon_core.scene: lazy views, splits, bounds, videos and their groups of pictures."""

from __future__ import annotations

import pytest
import torch

from recon_core.cameras import Cameras
from recon_core.scene import Bounds, Scene, Video, View


def _view(name: str, split: str = "train", x: float = 0.0, time: float | None = None, **fields) -> View:
    c2w = torch.eye(4)
    c2w[0, 3] = x
    return View(name, Cameras.create(torch.eye(3), c2w, 4, 3, times=time), torch.zeros(3, 4, 3), split, **fields)


def test_lazy_fields_are_read_on_access_only():
    reads = []

    def read() -> torch.Tensor:
        reads.append(1)
        return torch.ones(3, 4, dtype=torch.bool)

    v = _view("a", object_mask=read)
    assert v.has("object_mask") and not v.has("sky_mask") and reads == []
    assert v.object_mask.all() and reads == [1]
    assert v.sky_mask is None
    assert (v.width, v.height, v.time) == (4, 3, None)


def test_splits_and_eval_views():
    scene = Scene("s", [_view("a"), _view("b", "test"), _view("c", "val")], Bounds(torch.zeros(3), 1.0))
    assert [v.name for v in scene.train_views] == ["a"]
    assert [v.name for v in scene.eval_views] == ["b"]
    no_test = Scene("s", [_view("a"), _view("c", "val")], Bounds(torch.zeros(3), 1.0))
    assert [v.name for v in no_test.eval_views] == ["a", "c"]
    assert len(scene.cameras()) == 3 and not scene.is_dynamic
    assert Scene("d", [_view("t", time=0.1)], Bounds(torch.zeros(3), 1.0)).is_dynamic


def test_bounds_from_cameras():
    cams = Cameras.cat([_view(str(i), x=float(x)).camera for i, x in enumerate([-2, 0, 2])])
    b = Bounds.from_cameras(cams)
    assert torch.allclose(b.center, torch.zeros(3)) and b.radius == pytest.approx(2.0)
    assert Bounds.from_cameras(cams[0]).radius == 1.0


def test_video_frames_timestamps_and_gops():
    video = Video("v", 7, 4, 3, 2.0, lambda i: torch.full((3, 4, 3), float(i)), gop_length=3)
    assert video.timestamps.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert [float(f[0, 0, 0]) for f in video.frames([6, 0])] == [6.0, 0.0]
    with pytest.raises(IndexError):
        video.frame(7)
    gops = video.gops()
    assert [list(g) for g in gops] == [[0, 1, 2], [3, 4, 5], [6]]
    assert sorted(i for g in video.gops(2) for i in g) == list(range(7))
    with pytest.raises(ValueError):
        video.gops(0)
