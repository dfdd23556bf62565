"""The ``idr`` representation: an SDF network + rendering network conditioned on any Encoder.

World ↔ network frame: the networks see ``x_n = (x − centre) / scale`` where the bounding sphere
(centre, scale) comes from the scene's bounds (an IDR-normalised scene has centre 0, radius 1) or from
``bounding_radius``; SDF values in world units are ``scale · f(x_n)``. With ``refine_cameras`` the
representation also holds the training poses and a learnable se(3) correction per training view
(``c2w' = c2w · [Exp(ω) | τ]``, camera-frame increments), and provides "cameras".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.utils.parametrize as parametrize
from torch import Tensor, nn

if TYPE_CHECKING:  # imported where used: at registry load trimesh and scipy add ~60 MB to every run's memory
    import trimesh

from recon_core import Cameras, Encoder, InputError, Representation, RunContext, Scene, Video, option
from recon_core.geometry import so3_exp  # re-exported: ``recon_plugins.idr.representation.so3_exp``

from .checkpoint import load_idr_checkpoint
from .mesh import extract_mesh, write_mesh
from .network import ImplicitNetwork, RenderingNetwork
from .raytrace import TraceResult, TraceSettings, trace

__all__ = ["IDRRepresentation", "PRESETS", "pixel_rays", "so3_exp"]

PRESETS: dict[str, dict[str, Any]] = {
    # IDR's published sizes.
    "idr": dict(sdf_width=512, sdf_layers=8, skip_in=(4,), feature_dim=256, color_width=512, color_layers=4),
    # A CPU-friendly network for tests and short benchmarks.
    "small": dict(sdf_width=128, sdf_layers=4, skip_in=(2,), feature_dim=64, color_width=128, color_layers=2),
    # For grid encoders (hashgrid, ffb): the grid holds the detail, so a tiny MLP suffices (as in
    # instant-NGP / NeuS2 / Neuralangelo); every SDF evaluation of the sphere tracer gets ~6x cheaper.
    "grid": dict(sdf_width=64, sdf_layers=2, skip_in=(), feature_dim=32, color_width=64, color_layers=2),
}


def pixel_rays(K: Tensor, c2w: Tensor, uv: Tensor) -> tuple[Tensor, Tensor]:
    """Rays through pixel positions: K [R, 3, 3], c2w [R, 4, 4] (OpenCV), uv [R, 2] pixel coordinates
    (centres at i + 0.5) → (origins [R, 3], unit directions [R, 3]) in world space."""
    x = (uv[:, 0] - K[:, 0, 2] - K[:, 0, 1] * (uv[:, 1] - K[:, 1, 2]) / K[:, 1, 1]) / K[:, 0, 0]
    y = (uv[:, 1] - K[:, 1, 2]) / K[:, 1, 1]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    d = (c2w[:, :3, :3] @ d_cam[..., None])[..., 0]
    return c2w[:, :3, 3], d / d.norm(dim=-1, keepdim=True)


@dataclass
class IDRConfig:
    preset: str = option("auto", "network sizes: idr (8×512 SDF, 4×512 colour), small (4×128, CPU), grid (2×64, for grid "
                         "encoders), or auto: idr on CUDA; on the CPU grid for grid encoders, else small, and an encoder left at "
                         "its defaults at its CPU sizes (hashgrid 12 levels, 2^15, finest 512; ffb 2^15) (docs/benchmarks.md, IDR)",
                         choices=("auto", *PRESETS))
    sdf_width: int | None = option(None, "SDF network width (overrides the preset)", min=1)
    sdf_layers: int | None = option(None, "SDF network hidden layers (overrides the preset)", min=1)
    skip_in: list[int] | None = option(None, "layers receiving the skip connection (overrides the preset)", min=0)
    feature_dim: int | None = option(None, "geometry feature size (overrides the preset)", min=1)
    color_width: int | None = option(None, "rendering network width (overrides the preset)", min=1)
    color_layers: int | None = option(None, "rendering network hidden layers (overrides the preset)", min=1)
    init_radius: float = option(0.6, "geometric initialisation sphere radius (normalised frame)", min=1e-12)
    softplus_beta: float = option(100.0, "Softplus β of the SDF network", min=1e-12)
    weight_norm: bool = option(True, "weight normalisation on all layers")
    rgb_range: list[float] = option(None, "range of the predicted colour: [0, 1] (sigmoid; recon's default) or [-1, 1] "
                                    "(tanh, as IDR: images are compared in [-1, 1], so the RGB L1 counts double)",
                                    factory=lambda: [0.0, 1.0])
    sdf_squash: bool = option(False, "the HashModNFFBanks-IDR seed's SDF squashing tanh(f / (2 + LaplaceDensity(f)))")
    encoder: str = option("fourier", "encoder of 3-D points when the run names no --encoder (fourier: 6 octaves)",
                          component="encoder")
    view_encoder: str = option("fourier", "encoder of view directions (its n_frequencies option, when it has one, "
                               "is set to view_frequencies)", component="encoder")
    view_frequencies: int = option(4, "positional-encoding octaves of the view direction", min=0)
    bounding_radius: float | None = option(None, "bounding sphere radius (world); none: the scene's bounds", min=1e-12)
    trace_threshold: float = option(5e-5, "sphere-tracing convergence |f| (normalised units)", min=1e-12)
    trace_iters: int = option(10, "sphere-tracing iterations", min=0)
    trace_samples: int | None = option(None, "samples of the fallback search along unconverged rays; none: IDR's 100 on "
                                       "CUDA, 32 on the CPU (the benchmark's)", min=1)
    trace_back_off_iters: int = option(1, "halvings of a sphere-tracing step that overshot into the inside "
                                       "(IDR's conf: line_step_iters = 3)", min=0)
    secant_steps: int = option(8, "secant refinement steps", min=0)
    trace_min_search: str = option("traced", "search on rays whose tracing fronts crossed: traced (the sphere tracer's own "
                                   "points as the coarse pass, then ⌈√(2·trace_samples)⌉+1 evaluations around the best), "
                                   "coarse-to-fine (twice that: a coarse pass over the chord too), both with full sampling "
                                   "only where the minimum is negative, or uniform (IDR: trace_samples evaluations on every "
                                   "such ray)", choices=("traced", "coarse-to-fine", "uniform"))
    chunk: int = option(8192, "rays per chunk when rendering", min=1)
    mesh_resolution: int = option(256, "marching-cubes grid resolution for the mesh export", min=2)
    mesh_drop_voids: bool = option(True, "leave out surfaces of voids enclosed by the object (unseen by any camera)")
    refine_cameras: bool = option(False, "hold learnable corrections of the training poses")
    init_weights: str | None = option(None, "an IDR / HashModNFFBanks-IDR checkpoint (ModelParameters/<epoch>.pth) to "
                                      "start from; the network sizes must match it (e.g. from its .conf)")

    def resolved_preset(self, device: torch.device | str = "cpu", encoder: Encoder | None = None) -> str:
        """The preset ``auto`` stands for on ``device`` with ``encoder`` (see the option)."""
        if self.preset != "auto":
            return self.preset
        if torch.device(device).type == "cuda":
            return "idr"
        return "grid" if encoder is not None and hasattr(encoder, "n_grid_levels") else "small"

    def sizes(self, device: torch.device | str = "cpu", encoder: Encoder | None = None) -> dict[str, Any]:
        """Network sizes: the preset with explicit overrides applied."""
        out = dict(PRESETS[self.resolved_preset(device, encoder)])
        for k in out:
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    def trace_settings(self, device: torch.device | str = "cpu") -> TraceSettings:
        samples = self.trace_samples if self.trace_samples is not None else (100 if torch.device(device).type == "cuda" else 32)
        return TraceSettings(threshold=self.trace_threshold, iters=self.trace_iters, back_off_iters=self.trace_back_off_iters,
                             n_samples=samples, secant_steps=self.secant_steps, min_search=self.trace_min_search)


def _create_encoder(ctx: RunContext, name: str, **options: Any) -> Encoder:
    """``ctx.create("encoder", name)`` (3-D input), with those of ``options`` its config has replaced."""
    if ctx.create is None:
        raise InputError(f"idr creates its encoder '{name}' through the run context (RunContext.create is not set)")
    enc = ctx.create("encoder", name)
    if not isinstance(enc, Encoder):
        raise InputError(f"idr: '{name}' is not an encoder")
    known = {k: v for k, v in options.items() if dataclasses.is_dataclass(enc.config) and hasattr(enc.config, k)}
    if known:
        enc = type(enc)(dataclasses.replace(enc.config, **known), in_dim=3)
    return enc


@dataclass(frozen=True)
class Shading:
    """Differentiable quantities at surface points: points/normals [P, 3] (network frame), rgb [P, 3] in
    [0, 1], and ``rgb_net`` [P, 3]: the network's output in its own range (``rgb_range``), where IDR's
    RGB loss is computed."""

    points: Tensor
    normals: Tensor
    rgb: Tensor
    rgb_net: Tensor


class IDRRepresentation(Representation):
    """IDR neural implicit surface with a pluggable input Encoder (default: fourier, 6 octaves)."""

    name = "idr"
    description = "IDR implicit differentiable renderer: SDF + appearance networks with any --encoder"
    Config = IDRConfig
    provides = frozenset({"sdf", "neural-field"})
    default_renderer = {"cpu": "sphere-tracing", "cuda": "sphere-tracing"}
    native_refiner = "idr-fit"
    export_formats = ("mesh",)

    def __init__(self, config: IDRConfig | None = None) -> None:
        super().__init__(config)
        if self.config.refine_cameras:
            self.provides = self.provides | {"cameras"}
        self.implicit: ImplicitNetwork | None = None
        self.rendering: RenderingNetwork | None = None
        self.register_buffer("center", torch.zeros(3))
        self.register_buffer("scale", torch.ones(()))

    # ------------------------------------------------------------------------------ build

    def build(self, data: Scene | Video, ctx: RunContext) -> None:
        """Networks on ``ctx.device``: the position encoder is ``ctx.encoder`` (``--encoder``) or
        ``ctx.create("encoder", config.encoder)``; the view encoder ``config.view_encoder``."""
        if not isinstance(data, Scene):
            raise InputError("idr needs posed views (a Scene), not a video")
        c = self.config
        if [float(v) for v in c.rgb_range] not in ([0.0, 1.0], [-1.0, 1.0]):
            raise InputError(f"idr.rgb_range must be [0, 1] or [-1, 1], got {list(c.rgb_range)}")
        enc = ctx.encoder if ctx.encoder is not None else _create_encoder(ctx, c.encoder)
        if enc.in_dim != 3:
            raise InputError(f"idr needs an encoder of 3-D points, got in_dim={enc.in_dim}")
        enc = self._cpu_sized(enc, ctx)
        s = c.sizes(ctx.device, enc)
        self.implicit = ImplicitNetwork(
            enc, width=s["sdf_width"], n_layers=s["sdf_layers"], skip_in=tuple(s["skip_in"]), feature_dim=s["feature_dim"],
            init_radius=c.init_radius, softplus_beta=c.softplus_beta, use_weight_norm=c.weight_norm, sdf_squash=c.sdf_squash,
        )
        self.rendering = RenderingNetwork(
            s["feature_dim"], width=s["color_width"], n_layers=s["color_layers"],
            view_encoder=_create_encoder(ctx, c.view_encoder, n_frequencies=c.view_frequencies), use_weight_norm=c.weight_norm,
            output="tanh" if float(c.rgb_range[0]) < 0 else "sigmoid",
        )
        self.center = data.bounds.center.detach().float().clone().reshape(3)
        self.scale = torch.tensor(float(c.bounding_radius if c.bounding_radius is not None else data.bounds.radius))
        if c.init_weights is not None:
            load_idr_checkpoint(self, Path(c.init_weights))
        if c.refine_cameras:
            train = data.train_views
            self.register_buffer("train_c2w", torch.cat([v.camera.c2w for v in train]).float())
            self.pose_delta = nn.Parameter(torch.zeros(len(train), 6))
        self.to(ctx.device)

    def _cpu_sized(self, enc: Encoder, ctx: RunContext) -> Encoder:
        """With ``preset=auto`` on the CPU, an encoder whose options all equal their defaults is rebuilt
        with its ``cpu_options`` (hashgrid: 12 levels, 2^15 rows, finest 512; ffb: 2^15 rows): the sizes
        the CPU benchmark trains (docs/benchmarks.md). A changed option (or an explicit preset) keeps
        the encoder as given."""
        cfg = enc.config
        if (self.config.preset != "auto" or torch.device(ctx.device).type == "cuda" or not enc.cpu_options
                or not dataclasses.is_dataclass(cfg) or cfg != type(cfg)()):
            return enc
        # re-seeded: the encoder is the first thing the run's seed initialises, so auto sizes give the
        # same model as those sizes spelled out (--set hashgrid.n_levels=12 ...) and as the benchmark
        torch.manual_seed(int(ctx.seed))
        sized = type(enc)(dataclasses.replace(cfg, **enc.cpu_options), in_dim=enc.in_dim).to(ctx.device)
        ctx.log(f"idr: preset auto on the CPU: encoder {enc.name} at its CPU sizes "
                + ", ".join(f"{k}={v}" for k, v in enc.cpu_options.items()) + " (change one of its options, or set idr.preset, to keep it as given)")
        return sized

    def _check_built(self) -> None:
        if self.implicit is None or self.rendering is None:
            raise RuntimeError("idr representation used before build()")

    # ------------------------------------------------------------------------------ frames

    def to_network(self, x: Tensor) -> Tensor:
        """World points [..., 3] → network frame."""
        return (x - self.center) / self.scale

    def sdf_world(self, x: Tensor) -> Tensor:
        """World points [P, 3] → SDF [P] in world units."""
        self._check_built()
        return self.implicit.sdf(self.to_network(x)) * self.scale

    def refined_c2w(self, view_index: Tensor) -> Tensor:
        """[R] training-view indices → [R, 4, 4] refined c2w (requires ``refine_cameras``)."""
        if not self.config.refine_cameras:
            raise RuntimeError("refined_c2w needs refine_cameras=true")
        d = self.pose_delta[view_index]
        delta = torch.eye(4, device=d.device).repeat(len(d), 1, 1)
        delta = torch.cat([torch.cat([so3_exp(d[:, :3]), d[:, 3:, None]], dim=-1), delta[:, 3:]], dim=1)
        return self.train_c2w[view_index] @ delta

    def refined_train_cameras(self, cameras: Cameras) -> Cameras:
        """The training cameras (in training order) moved to the refined poses."""
        idx = torch.arange(len(cameras), device=self.train_c2w.device)
        return cameras.with_c2w(self.refined_c2w(idx).detach().to(cameras.c2w))

    def network_rays(self, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        """World rays → network-frame rays (same unit directions; distances scale by 1/scale)."""
        return self.to_network(origins), dirs

    # ------------------------------------------------------------------------------ tracing and shading

    def trace(self, origins_n: Tensor, dirs: Tensor, generator: torch.Generator | None = None) -> TraceResult:
        """Network-frame rays [R, 3] → first surface crossing (no gradients)."""
        self._check_built()
        with parametrize.cached():
            return trace(self.implicit.sdf_inference, origins_n, dirs, self.config.trace_settings(self.center.device), generator)

    def shade(self, points_n: Tensor, dirs: Tensor, create_graph: bool = True) -> Shading:
        """Colour of network-frame surface points [P, 3] seen along ``dirs`` [P, 3]."""
        self._check_built()
        _, feat, grad = self.implicit.sdf_and_gradient(points_n, create_graph=create_graph)
        normals = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        out = self.rendering(points_n, -dirs, normals, feat)
        rgb = (out + 1) * 0.5 if self.rendering.output == "tanh" else out
        return Shading(points_n, normals, rgb, out)

    def to_rgb_range(self, rgb: Tensor) -> Tensor:
        """Colours in [0, 1] → the network's range (``rgb_range``)."""
        return rgb * 2 - 1 if self.rendering.output == "tanh" else rgb

    # ------------------------------------------------------------------------------ export

    def extract_mesh(self, resolution: int | None = None, drop_voids: bool | None = None) -> trimesh.Trimesh:
        """Zero level set in world coordinates by marching cubes over the bounding cube (``None``: config values)."""
        self._check_built()
        res = resolution or self.config.mesh_resolution
        drop = self.config.mesh_drop_voids if drop_voids is None else drop_voids
        dev = self.center.device

        def f(x: Tensor) -> Tensor:
            return self.implicit.sdf(x.to(dev)).detach()

        with parametrize.cached():
            mesh = extract_mesh(f, res, (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0), drop_voids=drop)
        mesh.vertices = mesh.vertices * float(self.scale) + self.center.cpu().numpy()
        return mesh

    def vertex_colors(self, vertices: Tensor, chunk: int = 8192) -> Tensor:
        """RGB [V, 3] in [0, 1] of world points on the surface, each seen head-on (along minus its
        normal): the appearance network's colour without a particular viewpoint."""
        self._check_built()
        out = []
        dev = self.center.device
        for part in vertices.split(chunk):
            x = self.to_network(part.to(dev, torch.float32))
            with torch.enable_grad():
                _, _, grad = self.implicit.sdf_and_gradient(x, create_graph=False)
            normals = grad.detach() / grad.detach().norm(dim=-1, keepdim=True).clamp_min(1e-8)
            out.append(self.shade(x, -normals, create_graph=False).rgb.detach().clamp(0, 1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 3)

    def export(self, out_dir: Path, fmt: str) -> list[Path]:
        """``mesh``: ``mesh.ply``, the zero level set with per-vertex colours (:meth:`vertex_colors`)."""
        if fmt != "mesh":
            raise InputError(f"idr exports {', '.join(self.export_formats)}, not '{fmt}'")
        mesh = self.extract_mesh()
        rgb = self.vertex_colors(torch.from_numpy(np.asarray(mesh.vertices)).float())
        mesh.visual.vertex_colors = (rgb.numpy() * 255 + 0.5).astype(np.uint8)
        return [write_mesh(mesh, Path(out_dir) / "mesh.ply")]


