"""A tiny but real plugin used to exercise the pipeline and the CLI without the heavy methods.

- ``toy-folder`` loader: a folder with ``toy.json`` (views with PNG images, OpenCV c2w, one K).
- ``toy-video`` loader: a folder with ``toyvideo.json`` listing PNG frames and an fps.
- ``toy-grid`` representation: a low-resolution colour grid [T, h, w, 3] (T = 1 for scenes, one
  per frame for videos) that the ``toy-grid-render`` camera renderer upsamples bilinearly to the
  camera size. For a video it holds one camera per frame (carrying the frame's time, as a network
  predicting poses would), so frames are drawn from ``rep.cameras()``. ``toy-frames`` is the same
  grid drawn by video frame index (``rendered_by = "frames"``, ``toy-frame-render``).
  ``toy-fit`` fits either with Adam on randomly sampled views (global torch RNG for the view, a
  private generator for input noise, so resume must restore both; a nested ``schedule`` config
  with a selector); ``toy-loop`` does the same through a custom ``run`` loop.
- ``toy-sdf`` representation (a sphere) and ``toy-sphere-render``: a second capability family
  ("sdf") for combination checks; the sphere renderer composites the run's background.
- ``toy-augment`` refiner: ``toy-fit`` on the training views plus the views of a generator it
  creates through ``ctx.create`` (option ``generator``, default ``toy-jitter``: copies of the
  training views with noise of std ``noise``); ``toy-polish`` refiner requires a fixer.
- evaluators ``psnr``, ``ssim`` (recon_core.imageops), ``toy-params`` (geometry: parameter
  count), ``toy-unavailable`` (always unavailable); fixer ``toy-smooth`` (3x3 box blur);
  encoder ``toy-fourier``; a ``toy-hello`` CLI command.

Registered through ``Registry(modules=[("toy", recon_toy)])`` or an entry point ``toy = recon_toy``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from recon_core import (
    Bounds,
    CameraRenderer,
    Cameras,
    Encoder,
    Fixer,
    FrameRenderer,
    Generator,
    GeometryEvaluator,
    ImageEvaluator,
    InputError,
    Loader,
    Refiner,
    RenderOutput,
    Representation,
    RunContext,
    Scene,
    Video,
    View,
    hookimpl,
    option,
)
from recon_core.imageops import psnr, ssim


def _read_png(path: Path) -> Tensor:
    """(H, W, 3) float32 in [0, 1]; InputError naming the file when it is not a readable image."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"image cannot be read ({type(e).__name__})", path) from None
    return torch.from_numpy(arr.copy())


def _check_png(path: Path) -> tuple[int, int]:
    """Validate without decoding pixels; return (width, height)."""
    if not path.is_file():
        raise InputError("image file is missing", path)
    try:
        with Image.open(path) as im:
            im.verify()
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(f"image cannot be read ({type(e).__name__})", path) from None


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read manifest: {e}", path) from None


class ToyFolderLoader(Loader):
    name = "toy-folder"
    description = "Toy posed-image folder (toy.json)"
    provides = frozenset({"scene"})

    def detect(self, path: Path) -> int:
        return 10 if (Path(path) / "toy.json").is_file() else 0

    def load(self, path: Path) -> Scene:
        path = Path(path)
        manifest_path = path / "toy.json"
        doc = _read_manifest(manifest_path)
        views = []
        for entry in doc.get("views", []):
            image = path / entry["image"]
            w, h = _check_png(image)
            cam = Cameras.create(doc["K"], entry["c2w"], w, h)
            mask = None
            if entry.get("mask"):
                mask_path = path / entry["mask"]
                _check_png(mask_path)
                mask = lambda p=mask_path: _read_png(p)[..., 0] > 0.5  # noqa: E731
            views.append(View(Path(entry["image"]).stem, cam, lambda p=image: _read_png(p), entry.get("split", "train"),
                              object_mask=mask, path=image))
        if not views:
            raise InputError("toy.json lists no views", manifest_path)
        scene = Scene(doc.get("scene", path.name), views, Bounds(torch.zeros(3), 1.0), source=path)
        return Scene(scene.name, views, Bounds.from_cameras(scene.cameras()), source=path)


class ToyVideoLoader(Loader):
    name = "toy-video"
    description = "Toy video: PNG frames listed in toyvideo.json"
    provides = frozenset({"video"})

    def detect(self, path: Path) -> int:
        return 10 if (Path(path) / "toyvideo.json").is_file() else 0

    def load(self, path: Path) -> Video:
        path = Path(path)
        doc = _read_manifest(path / "toyvideo.json")
        frames = [path / f for f in doc["frames"]]
        sizes = {_check_png(f) for f in frames}
        if len(sizes) != 1:
            raise InputError("frames differ in size", path)
        (w, h), = sizes
        return Video(path.name, len(frames), w, h, float(doc["fps"]), lambda i: _read_png(frames[i]), source=path)


# ---------------------------------------------------------------------------------- grid family


@dataclass
class GridConfig:
    size: int = option(4, "grid resolution (cells per side)", min=1)
    noise: float = option(0.05, "std of the random initial perturbation", min=0)


class ToyGrid(Representation):
    name = "toy-grid"
    description = "Low-resolution colour grid, upsampled to the image"
    Config = GridConfig
    provides = frozenset({"image-grid"})
    default_renderer = {"cpu": "toy-grid-render"}
    native_refiner = "toy-fit"
    export_formats = ("npy",)

    def build(self, data: Scene | Video, ctx: RunContext) -> None:
        n = data.num_frames if isinstance(data, Video) else 1
        s = self.config.size
        self.fps = data.fps if isinstance(data, Video) else 1.0
        self.frame_size = (data.height, data.width) if isinstance(data, Video) else None
        init = 0.5 + self.config.noise * torch.randn(n, s, s, 3)  # global RNG: seeded by the pipeline
        self.grid = nn.Parameter(init.to(ctx.device))
        self._cameras: Cameras | None = None
        if isinstance(data, Video):  # one camera per frame, at the frame's time
            h, w = data.height, data.width
            K = torch.tensor([[float(w), 0.0, w / 2], [0.0, float(w), h / 2], [0.0, 0.0, 1.0]])
            self._cameras = Cameras.create(K.expand(n, 3, 3), torch.eye(4).expand(n, 4, 4), w, h, times=data.timestamps)

    def cameras(self) -> Cameras | None:
        return self._cameras

    def image(self, index: int, height: int, width: int) -> Tensor:
        """(H, W, 3) bilinear upsampling of grid ``index``."""
        g = self.grid[index].permute(2, 0, 1)[None]
        return F.interpolate(g, size=(height, width), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)

    def export(self, out_dir: Path, fmt: str) -> list[Path]:
        from recon_core.io import write_bytes
        import io

        buf = io.BytesIO()
        np.save(buf, self.grid.detach().cpu().numpy())
        return [write_bytes(Path(out_dir) / "grid.npy", buf.getvalue())]


class ToyFrames(ToyGrid):
    name = "toy-frames"
    description = "Low-resolution colour grid per video frame, drawn by frame index"
    requires = frozenset({"video"})
    rendered_by = "frames"
    default_renderer = {"cpu": "toy-frame-render"}


class ToyGridRenderer(CameraRenderer):
    name = "toy-grid-render"
    requires = frozenset({"image-grid"})

    def render(self, rep: Representation, cameras: Cameras, *, background: Tensor | None = None) -> RenderOutput:
        assert isinstance(rep, ToyGrid)
        if cameras.times is not None and rep.frame_size is not None:  # a video's frames, by time
            idx = (cameras.times.cpu() * rep.fps).round().long().clamp(0, rep.grid.shape[0] - 1).tolist()
        else:
            idx = [0] * len(cameras)
        return RenderOutput(rgb=torch.stack([rep.image(i, *cameras.size(k)) for k, i in enumerate(idx)]))


class ToyFrameRenderer(FrameRenderer):
    name = "toy-frame-render"
    requires = frozenset({"image-grid"})

    def render_frames(self, rep: Representation, frames: Tensor, *, background: Tensor | None = None) -> RenderOutput:
        assert isinstance(rep, ToyFrames) and rep.frame_size is not None
        return RenderOutput(rgb=torch.stack([rep.image(int(i), *rep.frame_size) for i in frames]))


@dataclass
class ScheduleConfig:
    """A nested config with a selector: ``--set toy-fit.schedule=step`` sets ``kind``."""

    __selector__ = "kind"
    kind: str = option("constant", "learning-rate schedule", choices=("constant", "step"))
    gamma: float = option(0.5, "lr factor at each milestone (kind=step)", min=0)
    every: int = option(20, "steps between milestones (kind=step)", min=1)


@dataclass
class FitConfig:
    steps: int = option(40, "Adam steps", min=0)
    lr: float = option(0.05, "learning rate", min=0)
    input_noise: float = option(0.01, "std of noise added to targets (private generator)", min=0)
    step_delay: float = option(0.0, "seconds to sleep per step (lets tests interrupt mid-run)", min=0)
    nan_at: int = option(-1, "poison the grid with NaN after this step (tests the non-finite guard; -1: never)", min=-1)
    schedule: ScheduleConfig = option(factory=ScheduleConfig, help="learning-rate schedule")


class ToyFit(Refiner):
    name = "toy-fit"
    description = "Adam on randomly sampled views"
    Config = FitConfig
    requires = frozenset({"image-grid"})

    def setup(self, rep: Representation, data: Scene | Video, ctx: Any) -> None:
        self.rep, self.data, self.ctx = rep, data, ctx
        self.opt = torch.optim.Adam(rep.parameters(), lr=self.config.lr)
        self.gen = torch.Generator().manual_seed(ctx.seed + 1)
        self.last_loss = math.nan
        self.first_loss: float | None = None

    @property
    def total_steps(self) -> int:
        return self.config.steps

    def _target(self) -> tuple[Tensor, int, int, int]:
        if isinstance(self.data, Video):
            i = int(torch.randint(self.data.num_frames, ()))
            img = self.data.frame(i)
            return img, i, img.shape[0], img.shape[1]
        views = self.data.train_views or self.data.views
        v = views[int(torch.randint(len(views), ()))]
        return v.image, 0, v.height, v.width

    def lr_at(self, step: int) -> float:
        sched = getattr(self.config, "schedule", None)
        if sched is None or sched.kind == "constant":
            return self.config.lr
        return self.config.lr * sched.gamma ** (step // max(1, sched.every))

    def step(self, step: int) -> dict[str, float]:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        target, index, h, w = self._target()
        target = target + self.config.input_noise * torch.randn(target.shape, generator=self.gen)
        pred = self.rep.image(index, h, w)
        loss = F.mse_loss(pred, target.to(pred.device))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        nan_at = getattr(self.config, "nan_at", -1)
        if 0 <= nan_at <= step:
            with torch.no_grad():
                self.rep.grid.fill_(math.nan)
        self.last_loss = float(loss.detach())
        if self.first_loss is None:
            self.first_loss = self.last_loss
        if self.config.step_delay:
            time.sleep(self.config.step_delay)
        return {"loss": self.last_loss}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "generator": self.gen.get_state(),
                "last_loss": self.last_loss, "first_loss": self.first_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.last_loss, self.first_loss = state["last_loss"], state["first_loss"]

    def finish(self) -> dict[str, Any]:
        return {"first_loss": self.first_loss, "final_loss": self.last_loss, "steps": self.config.steps}


class ToyLoop(ToyFit):
    """The same fit through a custom ``run`` loop (test-only: shows the custom-loop contract)."""

    name = "toy-loop"

    def run(self, rep: Representation, data: Scene | Video, ctx: Any) -> dict[str, Any]:  # type: ignore[override]
        self.setup(rep, data, ctx)
        if ctx.resume_state is not None:
            self.load_state_dict(ctx.resume_state)
        for step in range(ctx.start_step, self.total_steps):
            if ctx.should_stop():
                ctx.save_state(step)
                return {}
            ctx.log_scalars(step, self.step(step))
        return self.finish()


@dataclass
class JitterConfig:
    noise: float = option(0.02, "std of the noise added to each training image", min=0)
    copies: int = option(1, "noisy copies of each training view", min=0)


class ToyJitter(Generator):
    """Noisy copies of the training views (confidence 1), from a private seeded generator."""

    name = "toy-jitter"
    Config = JitterConfig
    requires = frozenset({"image-grid"})

    def generate(self, rep: Representation, scene: Scene, ctx: Any) -> list[View]:
        gen = torch.Generator().manual_seed(ctx.seed + 7)
        out = []
        for k in range(self.config.copies):
            for v in scene.train_views:
                image = (v.image + self.config.noise * torch.randn(v.image.shape, generator=gen)).clamp(0, 1)
                out.append(View(f"{v.name}-jitter{k}", v.camera, image, "train", confidence=torch.ones(v.height, v.width)))
        return out


@dataclass
class AugmentConfig:
    steps: int = option(10, "Adam steps", min=0)
    lr: float = option(0.05, "learning rate", min=0)
    input_noise: float = option(0.0, "std of noise added to targets (private generator)", min=0)
    step_delay: float = option(0.0, "seconds to sleep per step", min=0)
    generator: str = option("toy-jitter", "generator of extra training views ('none': training views only)",
                            component="generator")


class ToyAugment(ToyFit):
    """toy-fit on the training views plus generated ones (the generator comes from ``ctx.create``)."""

    name = "toy-augment"
    Config = AugmentConfig

    def setup(self, rep: Representation, data: Scene | Video, ctx: Any) -> None:
        super().setup(rep, data, ctx)
        assert isinstance(data, Scene)
        self.generated: list[View] = []
        self.generator_config: Any = None
        if self.config.generator != "none":
            gen = ctx.create("generator", self.config.generator)
            self.generator_config = gen.config
            self.generated = gen.generate(rep, data, ctx)
            self.data = Scene(data.name, list(data.views) + self.generated, data.bounds, source=data.source)

    def finish(self) -> dict[str, Any]:
        cfg = self.generator_config
        return {**super().finish(), "generated": len(self.generated),
                "generator_config": None if cfg is None else dataclasses.asdict(cfg)}


class ToyPolish(ToyFit):
    """toy-fit that needs a fixer in the run (declared in ``requires``)."""

    name = "toy-polish"
    requires = frozenset({"image-grid", "fixer"})


# ----------------------------------------------------------------------------------- sdf family


@dataclass
class SphereConfig:
    radius: float = option(0.5, "initial sphere radius", min=1e-12)


class ToySdf(Representation):
    name = "toy-sdf"
    description = "A sphere as a signed distance field"
    Config = SphereConfig
    provides = frozenset({"sdf", "neural-field"})
    requires = frozenset({"scene"})
    default_renderer = {"cpu": "toy-sphere-render"}

    def build(self, data: Scene | Video, ctx: RunContext) -> None:
        self.radius = nn.Parameter(torch.tensor(float(self.config.radius), device=ctx.device))
        self.encoder = ctx.encoder


class ToySphereRenderer(CameraRenderer):
    name = "toy-sphere-render"
    requires = frozenset({"sdf"})

    def render(self, rep: Representation, cameras: Cameras, *, background: Tensor | None = None) -> RenderOutput:
        """White where a ray hits the sphere, ``background`` (default black) elsewhere."""
        bg = torch.zeros(3) if background is None else background.detach().float().cpu()
        out = []
        for i in range(len(cameras)):
            h, w = cameras.size(i)
            ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            pix = torch.stack([xs, ys, torch.ones_like(xs)], -1)
            dirs = pix @ torch.linalg.inv(cameras.K[i]).T @ cameras.c2w[i, :3, :3].T
            dirs = dirs / dirs.norm(dim=-1, keepdim=True)
            o = cameras.c2w[i, :3, 3]
            b = dirs @ o
            hit = (b**2 - (o @ o - rep.radius**2)) >= 0
            out.append(torch.where(hit[..., None], torch.ones(3), bg.expand(h, w, 3)))
        return RenderOutput(rgb=torch.stack(out))


# ---------------------------------------------------------------------------- other components


class ToyPsnr(ImageEvaluator):
    name = "psnr"
    unit = "dB"

    def compute(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
        return float(psnr(pred, target, mask))


class ToySsim(ImageEvaluator):
    name = "ssim"

    def compute(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
        return float(ssim(pred, target, mask, window_size=min(11, min(pred.shape[:2]) // 2 * 2 - 1)))


class ToyUnavailable(ImageEvaluator):
    name = "toy-unavailable"

    def unavailable_reason(self) -> str | None:
        return "its weights are not installed"

    def compute(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
        raise AssertionError("must not be called when unavailable")


class ToyParams(GeometryEvaluator):
    name = "toy-params"
    higher_is_better = False
    part_regions = {"tensors": "parameter tensors"}  # labelled; the value itself has no region

    def evaluate(self, inputs: Any) -> dict[str, float]:
        """Its value plus a named part (reported as ``toy-params.tensors``)."""
        params = list(inputs.rep.parameters())
        return {"toy-params": float(sum(p.numel() for p in params)), "tensors": float(len(params))}


class ToySmooth(Fixer):
    name = "toy-smooth"
    description = "3x3 box blur"

    def fix(self, images: Tensor, references: Tensor | None = None, *, views: Any = None) -> Tensor:
        x = images.permute(0, 3, 1, 2)
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False).permute(0, 2, 3, 1)


@dataclass
class FourierConfig:
    levels: int = option(2, "frequency levels", min=0)


class ToyFourier(Encoder):
    name = "toy-fourier"
    Config = FourierConfig

    @property
    def out_dim(self) -> int:
        return self.in_dim * (2 * self.config.levels + 1)

    def forward(self, x: Tensor) -> Tensor:
        freqs = 2.0 ** torch.arange(self.config.levels, dtype=x.dtype, device=x.device) * math.pi
        xf = x[..., None] * freqs
        return torch.cat([x, xf.sin().flatten(-2), xf.cos().flatten(-2)], -1)


@hookimpl
def register_loaders() -> list[type]:
    return [ToyFolderLoader, ToyVideoLoader]


@hookimpl
def register_representations() -> list[type]:
    return [ToyGrid, ToyFrames, ToySdf]


@hookimpl
def register_renderers() -> list[type]:
    return [ToyGridRenderer, ToyFrameRenderer, ToySphereRenderer]


@hookimpl
def register_refiners() -> list[type]:
    return [ToyFit, ToyLoop, ToyAugment, ToyPolish]


@hookimpl
def register_evaluators() -> list[type]:
    return [ToyPsnr, ToySsim, ToyUnavailable, ToyParams]


@hookimpl
def register_fixers() -> list[type]:
    return [ToySmooth]


@hookimpl
def register_generators() -> list[type]:
    return [ToyJitter]


@hookimpl
def register_encoders() -> list[type]:
    return [ToyFourier]


@hookimpl
def register_commands(cli: Any) -> None:
    import click

    @cli.command("toy-hello")
    def toy_hello() -> None:
        """Say hello (a command added by a plugin)."""
        click.echo("hello from the toy plugin")
