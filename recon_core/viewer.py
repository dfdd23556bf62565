"""A browser viewer of runs and Gaussian files (``recon view``, live with ``--set run.viewer=true``).

Built on viser (the ``viewer`` extra: ``pip install 'recon-toolkit[viewer]'``), which serves its
web client from the installed package: nothing is fetched from the network. What it shows:

* the Gaussians, drawn by the browser (viser's WebGL splat renderer; DC colour, as in a .splat), or
  the mesh of a neural field (``idr``: its exported mesh, with vertex colours when present);
* the scene's cameras as frusta coloured by split (train blue, val orange, test red); clicking one
  shows, beside the 3D view, our renderer's image from that camera next to the captured image;
* a time slider for time-dependent representations: ``dggt`` (the Gaussians of time t) and
  ``d2gv`` (the decoded video frame);
* during training (``run.viewer=true``) the Gaussians are re-sent as the refiners change them, at
  most once every ``run.viewer_interval`` seconds (the nerfview/gsplat pattern: training never
  waits for the browser).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import InputError
from .gaussians import SH_C0, Gaussians3D
from .geometry import quat_to_rotmat

__all__ = ["SceneViewer", "SPLIT_COLORS", "gaussian_arrays"]

SPLIT_COLORS = {"train": (31, 119, 180), "val": (255, 127, 14), "test": (214, 39, 40)}
"""Frustum colour per split (RGB 0-255)."""


def _import_viser() -> Any:
    try:
        import viser
    except ImportError as e:
        raise InputError(f"the viewer needs viser, which cannot be imported ({e}); install it with "
                         "pip install 'recon-toolkit[viewer]'") from None
    return viser


def gaussian_arrays(g: Gaussians3D) -> dict[str, np.ndarray]:
    """What viser's splat renderer takes: centers [N, 3], covariances [N, 3, 3] (R diag(s²) Rᵀ),
    rgbs [N, 3] (DC colour, clipped to [0, 1]) and opacities [N, 1], as float32 arrays."""
    with torch.no_grad():
        means = g.means.detach().float().cpu()
        rot = quat_to_rotmat(torch.nn.functional.normalize(g.quats.detach().float().cpu(), dim=-1))
        s2 = g.scales.detach().float().cpu() ** 2
        cov = rot @ torch.diag_embed(s2) @ rot.transpose(-1, -2)
        rgb = g.colors if g.sh is None else g.sh[:, 0] * SH_C0 + 0.5
        finite = torch.isfinite(means).all(1) & torch.isfinite(cov).flatten(1).all(1)
        return {
            "centers": means[finite].numpy(),
            "covariances": cov[finite].numpy(),
            "rgbs": rgb.detach().float().cpu().clamp(0, 1)[finite].numpy(),
            "opacities": g.opacities.detach().float().cpu().clamp(0, 1)[finite, None].numpy(),
        }


def _look_from(c2w: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz, position) of an OpenCV camera-to-world, viser's frame convention (also OpenCV)."""
    from scipy.spatial.transform import Rotation

    m = c2w.detach().double().cpu().numpy()
    x, y, z, w = Rotation.from_matrix(m[:3, :3]).as_quat()
    return np.array([w, x, y, z]), m[:3, 3]


class SceneViewer:
    """One viser server showing a representation, its scene's cameras and (optionally) a time slider.

    ::

        viewer = SceneViewer(port=8080)
        viewer.show_gaussians(rep.gaussians())
        viewer.show_cameras(scene.views, render=lambda view: image)   # frusta; click → render | image
        viewer.add_time_slider(times, on_change)                      # dggt / d2gv
        viewer.close()
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        viser = _import_viser()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # viser prints a banner even when not verbose
                self.server = viser.ViserServer(host=host, port=port, verbose=False)
        except OSError as e:
            raise InputError(f"the viewer cannot listen on {host}:{port} ({e}); pick another with --port") from None
        self.host, self.port = host, int(self.server.get_port())
        self._lock = threading.Lock()
        self._splats: Any = None
        self._panel: Any = None
        self._comparison: tuple[Any, Any] | None = None
        self.image_panel: Any = None
        """The GUI image of :meth:`show_image` (e.g. d2gv's decoded frame), once shown."""
        self.time_slider: Any = None
        """The slider of :meth:`add_time_slider`, once added (``.value`` moves it, as a user does)."""
        self._last_update = 0.0
        self.server.gui.configure_theme(control_width="large")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    # ------------------------------------------------------------------------------ content

    def show_gaussians(self, g: Gaussians3D, name: str = "/gaussians") -> None:
        """Replace the splats on screen by ``g`` (thread-safe; called from training too)."""
        arrays = gaussian_arrays(g)
        with self._lock:
            self._splats = self.server.scene.add_gaussian_splats(name, **arrays)

    def show_mesh(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None,
                  name: str = "/mesh") -> None:
        """A triangle mesh; ``colors`` [V, 3] uint8 per vertex (else a neutral grey)."""
        import trimesh

        mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)
        if colors is None:
            self.server.scene.add_mesh_simple(name, vertices=np.asarray(vertices, np.float32),
                                              faces=np.asarray(faces, np.uint32), color=(180, 180, 180))
        else:
            self.server.scene.add_mesh_trimesh(name, mesh)

    def show_cameras(self, views: Sequence[Any], render: Callable[[Any], Tensor | None] | None = None,
                     scale: float | None = None) -> None:
        """A frustum per view, coloured by split; clicking one shows ``render(view)`` beside its image."""
        if not views:
            return
        centers = torch.stack([v.camera.c2w[0, :3, 3].float().cpu() for v in views])
        extent = float((centers - centers.mean(0)).norm(dim=1).max()) if len(views) > 1 else 1.0
        scale = scale if scale is not None else max(extent, 1e-3) * 0.06
        self._panel = self.server.gui.add_markdown("Click a camera to compare our render with its image.")
        for view in views:
            wxyz, position = _look_from(view.camera.c2w[0])
            K = view.camera.K[0]
            fov_y = float(2 * np.arctan(view.height / (2 * float(K[1, 1]))))
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{view.split}/{view.name}", fov=fov_y, aspect=view.width / view.height, scale=scale,
                wxyz=wxyz, position=position, color=SPLIT_COLORS.get(view.split, (120, 120, 120)))
            frustum.on_click(lambda event, view=view: self.show_comparison(view, render))

    def show_comparison(self, view: Any, render: Callable[[Any], Tensor | None] | None = None) -> np.ndarray:
        """The panel a click on ``view``'s frustum opens: ``render(view)`` | the view's image
        (uint8 [H, W or 2W, 3], also returned)."""
        panels = [render(view)] if render is not None else []
        panels = [p for p in panels if p is not None] + [view.image.float()]
        strip = (torch.cat([p.detach().float().cpu().clamp(0, 1) for p in panels], dim=1).numpy() * 255 + 0.5).astype(np.uint8)
        label = f"{view.name} ({view.split}): " + ("our render | captured image" if len(panels) == 2 else "captured image")
        with self._lock:
            if self._comparison is None:
                self._comparison = (self.server.gui.add_image(strip, label=None), self.server.gui.add_markdown(label))
            else:
                self._comparison[0].image = strip
                self._comparison[1].content = label
        return strip

    def show_image(self, image: Tensor, label: str) -> None:
        """An image panel (e.g. a decoded video frame) beside the 3D view."""
        arr = (image.detach().float().cpu().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        with self._lock:
            if self.image_panel is None:
                self.image_panel = self.server.gui.add_image(arr, label=label)
            else:
                self.image_panel.image = arr
                self.image_panel.label = label

    def add_time_slider(self, times: Sequence[float], on_change: Callable[[int], None]) -> Any:
        """A slider over ``times`` (indices); ``on_change(index)`` runs on every move and once now."""
        slider = self.server.gui.add_slider("time", min=0, max=max(len(times) - 1, 0), step=1, initial_value=0)
        slider.on_update(lambda event: on_change(int(slider.value)))
        on_change(0)
        self.time_slider = slider
        return slider

    # ------------------------------------------------------------------------------ training

    def maybe_update(self, gaussians: Callable[[], Gaussians3D], interval: float) -> bool:
        """Re-send the splats when ``interval`` seconds passed since the last time (live view)."""
        now = time.monotonic()
        if now - self._last_update < interval or not self.server.get_clients():
            return False
        self._last_update = now
        self.show_gaussians(gaussians())
        return True

    def start_at(self, c2w: Tensor, target: Tensor | None = None, ahead: float = 0.25) -> None:
        """Open every browser (connected now or later) looking as the OpenCV camera-to-world ``c2w``
        does, moved ``ahead`` × its distance to ``target`` forward (so its own frustum is behind
        the eye, not across the view), orbiting ``target``."""
        wxyz, position = _look_from(c2w)
        look_at = None if target is None else target.detach().double().cpu().numpy()
        if look_at is not None:
            forward = c2w[:3, 2].detach().double().cpu().numpy()
            position = position + forward * ahead * float(np.linalg.norm(position - look_at))

        def place(client: Any) -> None:
            with client.atomic():
                client.camera.wxyz = wxyz
                client.camera.position = position
                if look_at is not None:
                    client.camera.look_at = look_at

        self.server.on_client_connect(place)
        for client in self.server.get_clients().values():
            place(client)

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # "(viser) Server stopped"
            self.server.stop()


def view_run(viewer: SceneViewer, restored: Any) -> str:
    """Show a restored run (:func:`recon_core.restore.restore_run`); returns what is shown."""
    from .evaluate import render_items
    from .scene import Scene

    rep, data = restored.rep, restored.data
    renderer, device, bg = restored.renderer, restored.device, restored.ctx.background
    shown = []
    if isinstance(data, Scene):
        def render(view: Any) -> Tensor | None:
            return next(render_items(rep, data, renderer, device, background=bg, views=[view], chunk=1)).pred

        viewer.show_cameras(data.views, render)
        start = (data.eval_views or data.views)[0]
        viewer.start_at(start.camera.c2w[0], data.bounds.center)  # the browser opens at a test camera
        shown.append(f"{len(data.views)} cameras")
    frame_times = getattr(rep, "frame_times", None)
    if hasattr(rep, "splats") and callable(getattr(rep, "gaussians", None)):
        if frame_times is not None and len(frame_times) > 1:  # dggt: the Gaussians of each input time
            times = [float(t) for t in frame_times]
            viewer.add_time_slider(times, lambda i: viewer.show_gaussians(rep.gaussians(times[i])))
            shown.append(f"Gaussians over {len(times)} times")
        else:
            viewer.show_gaussians(rep.gaussians())
            shown.append(f"{len(rep)} Gaussians")
    elif getattr(rep, "rendered_by", None) == "frames":  # d2gv: the decoded frame of the slider's time
        n = int(getattr(data, "num_frames", 0))

        def frame(i: int) -> None:
            with torch.no_grad():
                out = renderer.render_frames(rep, torch.tensor([i], device=device), background=bg)  # type: ignore[attr-defined]
            viewer.show_image(out.rgb[0], f"frame {i}")

        viewer.add_time_slider(list(range(n)), frame)
        shown.append(f"{n} decoded frames")
    elif callable(getattr(rep, "extract_mesh", None)):  # idr: the exported mesh, else extract one
        mesh_path = restored.run_dir.path / "mesh.ply"
        import trimesh

        mesh = trimesh.load(mesh_path, process=False) if mesh_path.exists() else rep.extract_mesh()
        colors = getattr(mesh.visual, "vertex_colors", None)
        viewer.show_mesh(np.asarray(mesh.vertices), np.asarray(mesh.faces),
                         None if colors is None else np.asarray(colors)[:, :3])
        shown.append(f"mesh of {len(mesh.faces)} faces")
    else:
        raise InputError(f"the viewer cannot show a {rep.name} representation (no Gaussians, frames or mesh)")
    return ", ".join(shown)


def view_file(viewer: SceneViewer, path: Path) -> str:
    """Show a Gaussian file (3DGS PLY or .splat)."""
    from .gaussians import activate
    from .ply import read_splat_ply
    from .splatfile import read_splat_file

    splats = read_splat_file(path) if path.suffix.lower() == ".splat" else read_splat_ply(path)
    g = activate(splats, 0)
    viewer.show_gaussians(g)
    return f"{len(g)} Gaussians from {path.name}"
