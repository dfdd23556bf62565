"""Peer CPU Gaussian rasterisers for the render benchmark (issue 10), as ``render(scene) -> image``.

The peers' code is not part of this repository: each adapter is given the path of a checkout kept
elsewhere (see ``/work/notes/peers.md`` for where and how to get and build them) and records that
checkout's git commit. Every adapter renders the benchmark scene (a ``make_scene(n, w, h)``
mapping: ``means`` [N,3], ``quats`` [N,4] wxyz, ``scales`` [N,3], ``opacities`` [N], ``sh``
[N,1,3] (degree 0), ``viewmats`` [1,4,4] world-to-camera OpenCV, ``Ks`` [1,3,3], ``width``,
``height``) into an [H, W, 3] image that ``image.sum().backward()`` differentiates into every
Gaussian parameter that the peer supports, with a black background.

Peers:
    opensplat  pierotofy/OpenSplat ``rasterizer/gsplat-cpu`` (C++; its projection and SH are
               torch ops differentiated by autograd, its rasterisation forward/backward are
               hand-written serial loops). Built as a torch extension by ``build.py`` in the
               wrapper folder (default: ``opensplat_ext`` beside the checkout). Fixed here: the
               incoming image gradient and the depth sort keys are made contiguous before the
               C++ code reads them through raw pointers (``image.sum()`` hands back a stride-0
               gradient; the depths are a strided column view), which otherwise gives wrong
               gradients and a wrong depth order; and its off-diagonal conic gradient, which
               the C++ backward halves, is doubled (otherwise quaternion and scale gradients are
               off by 5-20 %).
    warp       guoriyue/3dgs-warp-scratch (NVIDIA Warp kernels, run on the ``cpu`` device;
               needs ``warp-lang``, importable or installed into ``pylib`` beside the checkout). Its
               kernels index SH coefficients with a stride of 16, so the degree-0 SH is
               zero-padded to 16 coefficients, and its SH-gradient buffer (allocated with
               (degree+1)² coefficients per Gaussian, then written with stride 16) is allocated
               here with 16, calling its render and preprocess backward steps directly. Its
               scale/rotation backward kernel uses the transposed rotation (wrong gradients for
               rotated Gaussians) and is replaced by an autograd vector-Jacobian product of its
               own covariance formula (O(N), a few ms; the rasteriser dominates the time).
    mxbonn     Mxbonn/gsplat-pytorch (pure PyTorch, autograd; image size must be a multiple of
               its 8-pixel tile).

Check that the peers agree with ``recon_plugins.gaussians.rasterize.rasterize_gaussians``::

    PYTHONPATH=/work/peers/pylib python benchmarks/render_peers.py --check \\
        --opensplat /work/peers/pierotofy+OpenSplat \\
        --warp /work/peers/guoriyue+3dgs-warp-scratch \\
        --mxbonn /work/peers/Mxbonn+gsplat-pytorch
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
Scene = Mapping[str, Any]
RenderFn = Callable[[Scene], Tensor]


@dataclass(frozen=True)
class Peer:
    """A peer renderer: ``render(scene)`` gives [H, W, 3]; ``commit`` is its checkout's HEAD."""

    name: str
    commit: str
    render: RenderFn
    grads: tuple[str, ...]  # scene keys that receive gradients from image.sum().backward()
    note: str = ""


def git_commit(path: str | os.PathLike[str]) -> str:
    """HEAD commit of the checkout at ``path`` ("unknown" if it is not a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _camera(scene: Scene) -> tuple[Tensor, float, float, float, float, int, int]:
    """The scene's single camera: viewmat [4,4], fx, fy, cx, cy, width, height."""
    viewmats, Ks = scene["viewmats"], scene["Ks"]
    if viewmats.shape[0] != 1:
        raise ValueError("peer adapters render one camera")
    K = Ks[0]
    fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    return viewmats[0], fx, fy, cx, cy, int(scene["width"]), int(scene["height"])


def _require_centred(name: str, cx: float, cy: float, width: int, height: int) -> None:
    # the peers build an OpenGL-style projection from the field of view alone
    if abs(cx - width / 2) > 1e-6 or abs(cy - height / 2) > 1e-6:
        raise ValueError(f"{name} supports only a centred principal point (cx = W/2, cy = H/2)")


def _gl_projection(fx: float, fy: float, width: int, height: int, near: float, far: float) -> Tensor:
    """OpenGL-style perspective matrix (column-vector convention) for a centred pinhole camera.

    Maps camera z in [near, far] to NDC z in [-1, 1]-ish as both peers expect; x_ndc = 2 fx x / (W z).
    """
    proj = torch.zeros(4, 4)
    proj[0, 0] = 2.0 * fx / width
    proj[1, 1] = 2.0 * fy / height
    proj[2, 2] = (far + near) / (far - near)
    proj[2, 3] = -far * near / (far - near)
    proj[3, 2] = 1.0
    return proj


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------- OpenSplat


def _opensplat_extension(checkout: Path, ext_dir: Path) -> ModuleType:
    build_py = ext_dir / "build.py"
    if not build_py.is_file():
        raise FileNotFoundError(f"{build_py} not found: the OpenSplat wrapper folder (see /work/notes/peers.md)")
    return _load_module("opensplat_ext_build", build_py).build(str(checkout))


def load_opensplat(checkout: str | os.PathLike[str], ext_dir: str | os.PathLike[str] | None = None) -> Peer:
    """OpenSplat's CPU rasteriser (built on first use into ``ext_dir/build``)."""
    checkout = Path(checkout).resolve()
    if not (checkout / "rasterizer" / "gsplat-cpu" / "gsplat_cpu.cpp").is_file():
        raise FileNotFoundError(f"{checkout} is not an OpenSplat checkout (no rasterizer/gsplat-cpu/gsplat_cpu.cpp)")
    ext_dir = Path(ext_dir or os.environ.get("RECON_OPENSPLAT_EXT") or checkout.parent / "opensplat_ext")
    ext = _opensplat_extension(checkout, ext_dir)

    class Rasterize(torch.autograd.Function):
        @staticmethod
        def forward(ctx, xys, conics, colors, opacities, cov2d, depths, width, height, background):  # type: ignore
            # the C++ code reads every tensor through data_ptr() as dense row-major memory
            xys, conics, colors, opacities, cov2d, depths = (
                t.contiguous() for t in (xys, conics, colors, opacities, cov2d, depths)
            )
            image, final_ts, lists = ext.rasterize_forward(
                width, height, xys, conics, colors, opacities, background, cov2d, depths
            )
            ctx.save_for_backward(xys, conics, colors, opacities, cov2d, depths, final_ts, background)
            ctx.lists, ctx.size = lists, (width, height)
            return image

        @staticmethod
        def backward(ctx, v_image):  # type: ignore[override]
            xys, conics, colors, opacities, cov2d, depths, final_ts, background = ctx.saved_tensors
            width, height = ctx.size
            v_alpha = torch.zeros(height, width)
            v_xy, v_conic, v_colors, v_opacity = ext.rasterize_backward(
                height, width, xys, conics, colors, opacities, background, cov2d, depths, final_ts, ctx.lists,
                v_image.contiguous(), v_alpha,
            )
            ctx.lists = None  # frees the per-pixel lists
            # The C++ backward scales the off-diagonal conic gradient by 0.5 (the convention of
            # gsplat's CUDA conic backward, which OpenSplat's CPU path does not use: autograd
            # differentiates its conic = (c11, -c01, c00) / det, so dL/db = sum v_sigma dx dy).
            v_conic = v_conic * torch.tensor([1.0, 2.0, 1.0])
            return v_xy, v_conic, v_colors, v_opacity.reshape(opacities.shape), None, None, None, None, None

    def render(scene: Scene) -> Tensor:
        viewmat, fx, fy, cx, cy, width, height = _camera(scene)
        _require_centred("OpenSplat", cx, cy, width, height)
        means, quats, scales = scene["means"], scene["quats"], scene["scales"]
        projmat = _gl_projection(fx, fy, width, height, 0.001, 1000.0) @ viewmat  # OpenSplat's near/far
        xys, _radii, conics, cov2d, depths = ext.project_forward(
            means, scales, 1.0, quats, viewmat, projmat, fx, fy, cx, cy, height, width, 0.01
        )
        campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
        dirs = torch.nn.functional.normalize(means.detach() - campos, dim=-1)
        colors = (ext.compute_sh_forward(0, 0, dirs, scene["sh"]) + 0.5).clamp_min(0.0)
        return Rasterize.apply(xys, conics, colors, scene["opacities"], cov2d, depths, width, height, torch.zeros(3))

    return Peer(
        "opensplat", git_commit(checkout), render, ("means", "quats", "scales", "opacities", "sh"),
        "C++ CPU rasteriser, serial loops; wrapper fixes: contiguous gradient and depth keys, "
        "conic off-diagonal gradient x2",
    )


# --------------------------------------------------------------------------------------- Warp


def _import_warp_peer(checkout: Path) -> tuple[ModuleType, ModuleType, ModuleType]:
    """Import the peer's ``forward`` and ``backward`` modules with its DEVICE set to "cpu"."""
    try:
        import warp as wp
    except ImportError:
        # fallback: warp-lang installed with `pip --target` into pylib/ beside the checkout
        pylib = checkout.parent / "pylib"
        if not (pylib / "warp" / "__init__.py").is_file():
            raise ImportError(
                f"the warp peer needs warp-lang: pip install warp-lang==1.7.0 (or --target {pylib})"
            ) from None
        sys.path.insert(0, str(pylib))
        import warp as wp
    wp.config.quiet = True
    with contextlib.redirect_stdout(sys.stderr):  # its CUDA-driver warning on GPU-less machines
        wp.init()
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    import config  # the peer's module: its constants are copied by `from config import *`

    config.DEVICE = "cpu"  # before forward/backward/utils copy it
    import backward
    import forward

    for module in (config, forward, backward):  # not a same-named module from elsewhere
        if Path(module.__file__).resolve().parent != checkout:
            raise ImportError(f"module {module.__name__!r} was imported from {module.__file__}, not from {checkout}")
    wp.set_device("cpu")
    return wp, forward, backward


def _cov3d_vjp(quats: Tensor, scales: Tensor, v_packed: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of quats (wxyz) and scales from the gradient of the packed 3D covariance.

    ``packed`` = (c00, c01, c02, c11, c12, c22) of R(q) diag(s)^2 R(q)^T with the unnormalised
    rotation formula that Warp's quat_to_matrix uses for unit quaternions; each off-diagonal
    gradient already counts both symmetric entries (the peer's convention).
    """
    with torch.enable_grad():
        q, s = quats.detach().requires_grad_(True), scales.detach().requires_grad_(True)
        w, x, y, z = q.unbind(-1)
        rot = torch.stack([
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ], dim=-1).reshape(-1, 3, 3)
        m = rot * s[:, None, :]
        cov = m @ m.transpose(-1, -2)
        packed = cov[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
        grad_q, grad_s = torch.autograd.grad(packed, (q, s), v_packed)
    return grad_q, grad_s


def load_warp(checkout: str | os.PathLike[str]) -> Peer:
    """3dgs-warp-scratch on Warp's CPU device (imports its top-level modules into this process)."""
    checkout = Path(checkout).resolve()
    if not (checkout / "forward.py").is_file() or not (checkout / "backward.py").is_file():
        raise FileNotFoundError(f"{checkout} is not a 3dgs-warp-scratch checkout (no forward.py/backward.py)")
    wp, fwd, bwd = _import_warp_peer(checkout)
    n_coeffs = 16  # the kernels' stride per Gaussian, whatever the degree

    def camera(scene: Scene) -> dict[str, Any]:
        viewmat, fx, fy, cx, cy, width, height = _camera(scene)
        _require_centred("3dgs-warp-scratch", cx, cy, width, height)
        # the peer multiplies row vectors by transposed (row-major) matrices: p' = p M
        view_t = viewmat.T.contiguous()
        full_t = (_gl_projection(fx, fy, width, height, 0.01, 100.0) @ viewmat).T.contiguous()
        return dict(
            view=wp.mat44(view_t.flatten().tolist()), full=wp.mat44(full_t.flatten().tolist()),
            tan_fovx=0.5 * width / fx, tan_fovy=0.5 * height / fy,
            campos=wp.vec3(*(-viewmat[:3, :3].T @ viewmat[:3, 3]).tolist()), width=width, height=height,
        )

    def padded_sh(sh: Tensor) -> Tensor:
        out = torch.zeros(sh.shape[0], n_coeffs, 3)
        out[:, : sh.shape[1]] = sh.detach()
        return out

    class Render(torch.autograd.Function):
        @staticmethod
        def forward(ctx, means, quats, scales, opacities, sh, cam):  # type: ignore[override]
            xyzw = torch.roll(quats.detach(), -1, dims=-1)  # wxyz -> Warp's xyzw
            arrays = dict(
                means=wp.from_torch(means.detach().contiguous(), dtype=wp.vec3),
                scales=wp.from_torch(scales.detach().contiguous(), dtype=wp.vec3),
                rotations=wp.from_torch(xyzw.contiguous(), dtype=wp.vec4),
                opacities=wp.from_torch(opacities.detach().contiguous().reshape(-1)),
            )
            # given as a tensor: the peer reshapes it to (-1, 3) and copies it into a vec3 array
            sh16 = padded_sh(sh).reshape(-1, 3)
            arrays["shs"] = wp.from_torch(sh16, dtype=wp.vec3)
            image, _depth, state = fwd.render_gaussians(
                background=[0.0, 0.0, 0.0], means3D=arrays["means"], colors=None, opacity=arrays["opacities"],
                scales=arrays["scales"], rotations=arrays["rotations"], scale_modifier=1.0,
                viewmatrix=cam["view"], projmatrix=cam["full"], tan_fovx=cam["tan_fovx"], tan_fovy=cam["tan_fovy"],
                image_height=cam["height"], image_width=cam["width"], sh=sh16, degree=0,
                campos=cam["campos"], prefiltered=False, antialiasing=False, clamped=True,
            )
            ctx.arrays, ctx.state, ctx.cam, ctx.n_sh, ctx.sh16 = arrays, state, cam, sh.shape[1], sh16
            ctx.quats, ctx.scales = quats.detach(), scales.detach()
            return wp.to_torch(image).clone()

        @staticmethod
        def backward(ctx, v_image):  # type: ignore[override]
            arrays, state, cam = ctx.arrays, ctx.state, ctx.cam
            n = arrays["means"].shape[0]
            width, height = cam["width"], cam["height"]
            zeros = lambda dtype, size=n: wp.zeros(size, dtype=dtype, device="cpu")  # noqa: E731
            v_mean2d, v_conic, v_opacity, v_color = zeros(wp.vec3), zeros(wp.vec4), zeros(float), zeros(wp.vec3)
            v_means = zeros(wp.vec3)
            v_sh = zeros(wp.vec3, n * n_coeffs)  # the peer allocates (degree+1)^2 here but writes with stride 16
            tile_grid = wp.vec3((width + fwd.TILE_M - 1) // fwd.TILE_M, (height + fwd.TILE_N - 1) // fwd.TILE_N, 1)
            bwd.backward_render(
                ranges=state["ranges"], point_list=state["point_list"], width=width, height=height,
                bg_color=wp.vec3(0.0, 0.0, 0.0), tile_grid=tile_grid, points_xy_image=state["points_xy_image"],
                conic_opacity=state["conic_opacity"], colors=state["colors"], final_Ts=state["final_Ts"],
                n_contrib=state["n_contrib"], dL_dpixels=wp.from_torch(v_image.contiguous(), dtype=wp.vec3),
                dL_dmean2D=v_mean2d, dL_dconic2D=v_conic, dL_dopacity=v_opacity, dL_dcolors=v_color,
            )
            # The peer's backward_preprocess, step by step, with its scale/rotation step replaced:
            # compute_cov3d_backward_kernel rebuilds R with the transposed layout of the forward's
            # quat_to_matrix (M = S R instead of R S), so rotated Gaussians get wrong gradients.
            v_cov3d = wp.zeros(n, dtype=fwd.VEC6, device="cpu")
            focal_x, focal_y = width / (2.0 * cam["tan_fovx"]), height / (2.0 * cam["tan_fovy"])
            wp.launch(bwd.compute_cov2d_backward_kernel, dim=n, device="cpu", inputs=[
                n, arrays["means"], state["cov3Ds"], state["radii"], focal_x, focal_y, cam["tan_fovx"],
                cam["tan_fovy"], cam["view"], v_conic, v_means, v_cov3d])
            wp.launch(bwd.compute_projection_backward_kernel, dim=n, device="cpu", inputs=[
                n, arrays["means"], state["radii"], cam["full"], v_mean2d, v_means])
            wp.launch(bwd.sh_backward_kernel, dim=n, device="cpu", inputs=[
                n, 0, arrays["means"], arrays["shs"], state["radii"], cam["campos"], state["clamped_state"],
                v_color, v_means, v_sh])
            grad_quats, grad_scales = _cov3d_vjp(ctx.quats, ctx.scales, wp.to_torch(v_cov3d))
            ctx.arrays = ctx.state = ctx.sh16 = ctx.quats = ctx.scales = None
            grad_sh = wp.to_torch(v_sh).reshape(n, n_coeffs, 3)[:, : ctx.n_sh].clone()
            return (wp.to_torch(v_means).clone(), grad_quats, grad_scales,
                    wp.to_torch(v_opacity).clone(), grad_sh, None)

    def render(scene: Scene) -> Tensor:
        keys = ("means", "quats", "scales", "opacities", "sh")
        return Render.apply(*(scene[k] for k in keys), camera(scene))

    return Peer(
        "warp", git_commit(checkout), render, ("means", "quats", "scales", "opacities", "sh"),
        f"NVIDIA Warp {wp.__version__} kernels on the cpu device; SH padded to 16 coefficients",
    )


# ------------------------------------------------------------------------------------- Mxbonn


def load_mxbonn(checkout: str | os.PathLike[str]) -> Peer:
    """Mxbonn/gsplat-pytorch (its package is also named ``gsplat``: loaded by path, renamed)."""
    checkout = Path(checkout).resolve()
    pkg = checkout / "gsplat"
    if not (pkg / "rasterize.py").is_file():
        raise FileNotFoundError(f"{checkout} is not a Mxbonn/gsplat-pytorch checkout (no gsplat/rasterize.py)")
    project_gaussians = _load_module("mxbonn_project_gaussians", pkg / "project_gaussians.py").project_gaussians
    rasterize = _load_module("mxbonn_rasterize", pkg / "rasterize.py").rasterize_gaussians
    tile = 8

    def render(scene: Scene) -> Tensor:
        viewmat, fx, fy, cx, cy, width, height = _camera(scene)
        if width % tile or height % tile:
            raise ValueError(f"Mxbonn/gsplat-pytorch needs the image size to be a multiple of {tile}")
        # it evaluates pixel (i, j) at (j, i), ours at (j + 0.5, i + 0.5): shift the principal point
        xys, depths, radii, conics, _, _ = project_gaussians(
            scene["means"], scene["scales"], 1.0, scene["quats"], viewmat, fx, fy, cx - 0.5, cy - 0.5, height, width
        )
        colors = (scene["sh"][:, 0] * SH_C0 + 0.5).clamp_min(0.0)
        return rasterize(xys, depths, radii, conics, colors, scene["opacities"], height, width, tile, torch.zeros(3))

    return Peer("mxbonn", git_commit(checkout), render, ("means", "quats", "scales", "opacities", "sh"),
                "pure PyTorch, autograd; 8-pixel tiles")


PEER_LOADERS: dict[str, Callable[[str], Peer]] = {"opensplat": load_opensplat, "warp": load_warp, "mxbonn": load_mxbonn}


def load_peer(name: str, checkout: str | os.PathLike[str]) -> Peer:
    """The named peer (``opensplat``, ``warp`` or ``mxbonn``) from its checkout."""
    if name not in PEER_LOADERS:
        raise ValueError(f"unknown peer {name!r}; known: {sorted(PEER_LOADERS)}")
    return PEER_LOADERS[name](str(checkout))


# --------------------------------------------------------------------------------- agreement


def _ours(scene: Scene, backend: str | None = None) -> Tensor:
    from recon_plugins.gaussians.rasterize import RasterizeSettings, rasterize_gaussians

    settings = RasterizeSettings(backend=backend) if backend else None
    rgb, _, _ = rasterize_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmats"], scene["Ks"],
        int(scene["width"]), int(scene["height"]), sh=scene["sh"], sh_degree=0, settings=settings,
    )
    return rgb[0]


def _grads(render: RenderFn, scene: Scene, keys: tuple[str, ...]) -> tuple[Tensor, dict[str, Tensor]]:
    names = ("means", "quats", "scales", "opacities", "sh")
    params = {k: scene[k].detach().clone().requires_grad_(k in keys) for k in names}
    image = render({**scene, **params})
    image.sum().backward()
    return image.detach(), {k: params[k].grad for k in keys}


def compare_with_ours(peer: Peer, scene: Scene, backend: str | None = None) -> dict[str, Any]:
    """Image and gradient agreement of a peer with ours on ``scene`` (image.sum() as the loss).

    Gradients are compared by the relative L2 error ||g_peer - g_ours|| / ||g_ours|| per
    parameter; quaternion gradients are first projected onto the tangent of the unit sphere
    (ours normalises the quaternion, a peer may not, so their radial parts may differ).
    ``backend`` picks our compositing engine (default: ours' default).
    """
    ours_img, ours_g = _grads(lambda s: _ours(s, backend), scene, peer.grads)
    img, g = _grads(peer.render, scene, peer.grads)
    diff = (img.reshape(ours_img.shape) - ours_img).abs()
    out: dict[str, Any] = dict(
        peer=peer.name, commit=peer.commit, n=int(scene["means"].shape[0]), width=int(scene["width"]),
        height=int(scene["height"]), image_max_abs=float(diff.max()), image_mean_abs=float(diff.mean()),
        pixels_over_1e3=int((diff.amax(-1) > 1e-3).sum()), image_mean=float(ours_img.mean()),
    )
    q = scene["quats"] / scene["quats"].norm(dim=-1, keepdim=True)
    for key in peer.grads:
        a, b = g[key], ours_g[key]
        if key == "quats":
            a, b = (x - (x * q).sum(-1, keepdim=True) * q for x in (a, b))
        out[f"grad_{key}_rel"] = float((a.reshape(b.shape) - b).norm() / b.norm().clamp_min(1e-30))
    return out


# ----------------------------------------------------------------------------------- command


def _bench() -> ModuleType:
    """The shared benchmark module (scene, measurement in fresh processes, table)."""
    from recon_plugins.gaussians import bench

    return bench


def _sizes(texts: list[str]) -> list[tuple[int, int]]:
    return [size for text in texts for size in _bench().parse_sizes(text)]


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Time our rasteriser and peer renderers in one run (or --check their agreement with ours).",
    )
    for name in PEER_LOADERS:
        parser.add_argument(f"--{name}", metavar="PATH", help=f"checkout of the {name} peer")
    parser.add_argument("--ours", nargs="*", default=["cpp-cpu", "torch-3dgs"],
                        help="our renderers (names in recon_plugins.gaussians.bench.RENDERERS)")
    parser.add_argument("--counts", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--sizes", nargs="+", default=["200x200", "640x360"], help="WIDTHxHEIGHT ...")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--check", action="store_true",
                        help="instead of timing, compare each peer's image and gradients with ours")
    parser.add_argument("--backend", help="with --check: our compositing backend (auto, cpp, torch)")
    args = parser.parse_args(argv)
    paths = {name: getattr(args, name) for name in PEER_LOADERS if getattr(args, name)}
    if not paths and (args.check or not args.ours):
        parser.error("give at least one peer checkout")
    sizes = _sizes(args.sizes)
    rows: list[dict[str, Any]] = []
    if args.check:
        torch.set_num_threads(args.threads)
        peers = [load_peer(name, path) for name, path in paths.items()]
        for n in args.counts:
            for width, height in sizes:
                scene = _bench().make_scene(n, width, height)
                for peer in peers:
                    rows.append(compare_with_ours(peer, scene, args.backend))
                    print(json.dumps(rows[-1]), flush=True)
    else:
        load = _load_average()
        rows = _bench().run_render_benchmark(
            renderers=args.ours, counts=args.counts, sizes=sizes, repeats=args.repeats, threads=args.threads,
            peers=paths, timeout_s=args.timeout, log=lambda row: print(json.dumps(row), file=sys.stderr, flush=True),
        )
        print(_bench().format_table(rows, baseline=args.ours[0] if args.ours else next(iter(paths))))
        print()
        commits = {r["renderer"]: r["commit"] for r in rows if r.get("commit")}
        for name, path in paths.items():
            print(f"{name}: {path} @ {commits.get(name) or git_commit(path)}")
        print(f"threads {args.threads}, median of {args.repeats} after a warm-up (slow renderers: at most 3); "
              f"load average before: {load}, after: {_load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
