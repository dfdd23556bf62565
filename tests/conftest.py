"""Shared fixtures: the toy plugin (tests/plugins/recon_toy.py), tiny data folders, fake distributions."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    import torch

PLUGINS_DIR = Path(__file__).parent / "plugins"
if str(PLUGINS_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGINS_DIR))

BUILTIN_PLUGINS = ("metrics", "loaders", "gaussians", "d2gv", "idr", "encoders", "dggt", "ttr", "difix", "reconx")
"""Entry points of this repository; subprocess tests block them to see only the toy plugin."""


def look_at(position: np.ndarray, target: np.ndarray = np.zeros(3), up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenCV camera-to-world looking from ``position`` at ``target`` (x right, y down, z forward)."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, position
    return c2w


def look_at_torch(
    eye: torch.Tensor | Sequence[float],
    target: torch.Tensor | Sequence[float] = (0.0, 0.0, 0.0),
    up: torch.Tensor | Sequence[float] = (0.0, 0.0, 1.0),
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Torch twin of :func:`look_at`: a [4, 4] OpenCV camera-to-world from ``eye`` towards ``target``.

    Computed and returned in ``dtype``; by default the dtype of ``eye`` when it is a tensor, else
    torch's default dtype. ``up`` must not be parallel to the viewing direction.
    """
    import torch

    if dtype is None:
        dtype = eye.dtype if isinstance(eye, torch.Tensor) else torch.get_default_dtype()
    eye, target, up = (torch.as_tensor(v, dtype=dtype) for v in (eye, target, up))
    forward = target - eye
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, up)
    norm = right.norm()
    if not norm > 1e-6:
        raise ValueError(f"look_at_torch: up {up.tolist()} is parallel to the viewing direction {forward.tolist()}")
    right = right / norm
    c2w = torch.eye(4, dtype=dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, torch.linalg.cross(forward, right), forward, eye
    return c2w


def tiny_dggt_checkpoint(path: Path, seed: int = 5) -> Path:
    """Save a random "tiny" DGGT network whose predicted fields of view are pinned to 1 rad (ReLU'd
    random ones may be 0) to ``path``; returns ``path``."""
    import torch

    from recon_plugins.dggt.network import DGGTNetwork

    torch.manual_seed(seed)
    net = DGGTNetwork("tiny")
    with torch.no_grad():
        net.camera_head.pose_branch.fc2.weight[7:] = 0.0
        net.camera_head.pose_branch.fc2.bias[7:] = 1.0 / net.camera_head.iterations
    torch.save(net.state_dict(), path)
    return path


def forward_views(n: int, height: int, width: int, step: float, t0: float = 0.0, generator=None) -> list:
    """``n`` timed "train" views of one camera driving forward (z += ``step`` per view, times t0 +
    0.1 i), random images from ``generator``, the top 4 rows marked sky (dggt tests)."""
    import torch

    from recon_core import Cameras, View

    g = generator if generator is not None else torch.Generator().manual_seed(3)
    K = torch.tensor([[30.0, 0, width / 2], [0, 30.0, height / 2], [0, 0, 1]])
    views = []
    for i in range(n):
        c2w = torch.eye(4)
        c2w[2, 3] = step * i
        sky = torch.zeros(height, width, dtype=torch.bool)
        sky[:4] = True
        cam = Cameras.create(K, c2w, width, height, times=t0 + 0.1 * i)
        views.append(View(f"f{i}", cam, torch.rand(height, width, 3, generator=g), "train", sky_mask=sky))
    return views


def write_toy_scene(root: Path, n_views: int = 6, width: int = 12, height: int = 10, masks: bool = True) -> Path:
    """A toy.json folder: smooth colour images from cameras on a circle; the last 2 are test views."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    K = [[10.0, 0.0, width / 2], [0.0, 10.0, height / 2], [0.0, 0.0, 1.0]]
    views = []
    ys, xs = np.mgrid[0:height, 0:width]
    for i in range(n_views):
        angle = 2 * np.pi * i / n_views
        img = np.stack([xs / width, ys / height, np.full_like(xs, 0.3 + 0.05 * i, dtype=float)], -1)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / f"v{i}.png")
        entry = {
            "image": f"v{i}.png",
            "split": "test" if i >= n_views - 2 else "train",
            "c2w": look_at(np.array([3 * np.cos(angle), 3 * np.sin(angle), 1.0])).tolist(),
        }
        if masks and entry["split"] == "test":
            mask = np.zeros((height, width), np.uint8)
            mask[2:-2, 2:-2] = 255
            Image.fromarray(mask).save(root / f"m{i}.png")
            entry["mask"] = f"m{i}.png"
        views.append(entry)
    (root / "toy.json").write_text(json.dumps({"scene": "toyscene", "K": K, "views": views}))
    return root


def write_toy_video(root: Path, n_frames: int = 5, width: int = 8, height: int = 6) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n_frames):
        img = np.full((height, width, 3), 40 * i, np.uint8)
        Image.fromarray(img).save(root / f"f{i}.png")
        frames.append(f"f{i}.png")
    (root / "toyvideo.json").write_text(json.dumps({"fps": 5, "frames": frames}))
    return root


def first_and_second_derivatives(fn, x: "torch.Tensor", weights: "torch.Tensor") -> tuple["torch.Tensor", ...]:  # noqa: ANN001
    """(y, g, gg) of an elementwise ``fn`` at ``x``: y = fn(x), g = ∂(Σ y·w)/∂x with a graph, gg =
    ∂(Σ g²·w)/∂x, the double backward of an eikonal-style loss (tests of compiled activations)."""
    import torch

    y = fn(x)
    (g,) = torch.autograd.grad((y * weights).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad((g * g * weights).sum(), x)
    return y, g, gg


def make_dist(site: Path, name: str, entry_points: dict[str, str], version: str = "1.0") -> Path:
    """A minimal installed-distribution folder (``NAME-VERSION.dist-info``) declaring recon plugins."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[recon.plugins]\n{lines}")
    return info


@pytest.fixture(scope="session", autouse=True)
def cli_logging_installed() -> None:
    """Install the CLI's logging (``recon_core.logs.setup_logging``: it routes Python warnings to its
    console with ``logging.captureWarnings``, once per process) before any test runs. Otherwise a
    test that runs the CLI inside ``pytest.warns`` / ``catch_warnings(record=True)`` records the
    warning only if an earlier test had run the CLI (installed inside the block, the capture takes
    the warning from the recorder), so it passed in the full suite and failed alone."""
    from recon_core.logs import setup_logging

    setup_logging(0)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a test module on one intra-op torch thread; opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.

    Unit tests use tiny networks and scenes: splitting them across OpenMP threads costs more than it
    saves, and on the busy, shared 2-core machines this suite runs on a second thread mostly waits
    for a core held by another process. One thread is several times faster there and keeps the
    reduction order, hence the results, the same from run to run. Module scope, so that
    module-scoped fixtures (built networks, rendered scenes) also run on one thread; a test that
    changes the thread count itself must restore it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def toy_registry():
    import recon_toy

    from recon_core.registry import Registry

    return Registry(entry_points=[], modules=[("toy", recon_toy)], disabled=())


@pytest.fixture
def toy_scene(tmp_path: Path) -> Path:
    return write_toy_scene(tmp_path / "scene")


@pytest.fixture
def toy_video(tmp_path: Path) -> Path:
    return write_toy_video(tmp_path / "video")


class _MissingExtension:
    """A compiled extension that could not be built: ``load()`` gives None (the PyTorch fallbacks run)."""

    def load(self) -> None:
        return None


@pytest.fixture
def missing_extension() -> _MissingExtension:
    """Monkeypatch a module's declared extension with this to run its PyTorch fallback."""
    return _MissingExtension()
