"""recon_core.viewer and `recon view`: what the viewer is sent (known answers) and, marked
``browser``, the real thing: the viewer served on 127.0.0.1 and drawn by headless Chromium
(Debian's ``chromium``, software GL, driven by playwright without downloading a browser)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recon_core.gaussians import Gaussians3D

viser = pytest.importorskip("viser", reason="the viewer extra (viser) is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("RECON_TEST_ARTIFACTS", "test-artifacts"))
"""Where the browser test leaves its screenshots (CI prints the paths)."""


def test_gaussian_arrays_known_covariance():
    from recon_core.viewer import gaussian_arrays

    half = math.sqrt(0.5)
    g = Gaussians3D(means=torch.tensor([[1.0, 2.0, 3.0], [float("nan"), 0, 0]]),
                    quats=torch.tensor([[half, 0.0, 0.0, half], [1.0, 0, 0, 0]]),  # 90° about z
                    scales=torch.tensor([[1.0, 2.0, 3.0], [1.0, 1, 1]]), opacities=torch.tensor([0.25, 1.0]),
                    sh=torch.zeros(2, 1, 3), sh_degree=0)
    out = gaussian_arrays(g)
    assert out["centers"].tolist() == [[1.0, 2.0, 3.0]]  # the non-finite Gaussian is dropped
    np.testing.assert_allclose(out["covariances"][0], np.diag([4.0, 1.0, 9.0]), atol=1e-6)  # x and y swap
    np.testing.assert_allclose(out["rgbs"][0], [0.5, 0.5, 0.5]) and np.testing.assert_allclose(out["opacities"], [[0.25]])


def _screens_differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _splat_pixels(img: np.ndarray) -> float:
    """Fraction of pixels that are neither the white background nor a camera frustum's colour."""
    from recon_core.viewer import SPLIT_COLORS

    rgb = img.astype(np.float32)
    other = rgb.min(axis=2) < 230
    for colour in SPLIT_COLORS.values():
        other &= np.abs(rgb - np.array(colour, np.float32)).sum(axis=2) > 90
    return float(other.mean())


def _centre(png: bytes) -> np.ndarray:
    """The middle of the viewport (away from the GUI panel and notifications), RGB."""
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    h, w = img.shape[:2]
    return img[int(h * 0.3):int(h * 0.9), int(w * 0.3):int(w * 0.7)]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (CI installs Debian's chromium)")
def test_viewer_in_headless_chromium(tmp_path, capsys):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the driver, not a browser) is not installed")
    from click.testing import CliRunner

    from recon_cli.main import make_cli
    from recon_core.registry import Registry

    cli, runner = make_cli(Registry()), CliRunner()
    scene, run = tmp_path / "scene", tmp_path / "run"
    assert runner.invoke(cli, ["demo-scene", str(scene), "--train-views", "6", "--test-views", "2", "--size", "48"]).exit_code == 0
    result = runner.invoke(cli, ["run", "--data", str(scene), "--repr", "3dgs", "--refiner", "none", "--eval", "psnr",
                                 "--out", str(run)])
    assert result.exit_code == 0, result.output

    code = "import sys; from recon_cli.main import main; sys.argv[0] = 'recon'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "view", str(run), "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "viewer: http://127.0.0.1:PORT/ (...); Ctrl-C to stop": stdout's only line
        if not line.startswith("viewer: http://127.0.0.1:"):
            proc.terminate()
            pytest.fail(f"recon view printed {line!r}; stderr: {proc.communicate(timeout=60)[1]}")
        url = line.split()[1]
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]  # software WebGL
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                           headless=True, args=args, viewport={"width": 1280, "height": 800})
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("canvas", timeout=120_000)
            deadline, before = time.monotonic() + 120, None
            while time.monotonic() < deadline:  # until the splats are drawn (software GL is slow)
                shot = page.screenshot()
                centre = _centre(shot)
                drawn = _splat_pixels(centre)
                if drawn > 0.02:
                    before = shot
                    break
                time.sleep(1)
            assert before is not None, f"the canvas stayed blank ({drawn:.1%} of the centre drawn)"
            box = page.locator("canvas").first.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 250, cy + 60, steps=12)  # orbit: drag with the left button
            page.mouse.up()
            time.sleep(2)
            after = page.screenshot()
            browser.close()
        changed = _screens_differ(_centre(before), _centre(after))
        assert changed > 2.0, f"the view did not change when the camera moved (mean difference {changed:.2f})"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        paths = [ARTIFACTS / "viewer-before.png", ARTIFACTS / "viewer-after-orbit.png"]
        for path, png in zip(paths, (before, after)):
            path.write_bytes(png)
        with capsys.disabled():
            print(f"\nviewer screenshots: {', '.join(str(p.resolve()) for p in paths)} "
                  f"(centre {drawn:.1%} drawn; orbit changed it by {changed:.1f} levels)")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_live_viewer_needs_gaussians_and_says_so(toy_registry, toy_scene, tmp_path):
    from recon_core.pipeline import Pipeline
    from recon_core.resolve import resolve_run
    from recon_core.rundir import RunDir

    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid", evaluators=["psnr"],
                       sets=["toy-fit.steps=2", "run.viewer=true", "run.viewer_port=0"])
    run_dir = RunDir.create(tmp_path / "r")
    Pipeline(toy_registry, spec, run_dir).run()
    assert "run.viewer: toy-grid has no Gaussians to show while training" in run_dir.log_path.read_text()


def test_maybe_update_is_throttled():
    from recon_core.viewer import SceneViewer

    class Client:  # a connected browser, as far as maybe_update cares
        pass

    viewer = SceneViewer(port=0)
    try:
        sent = []
        viewer.server.get_clients = lambda: {1: Client()}  # type: ignore[method-assign]
        g = Gaussians3D(means=torch.zeros(1, 3), quats=torch.tensor([[1.0, 0, 0, 0]]), scales=torch.ones(1, 3),
                        opacities=torch.ones(1), colors=torch.ones(1, 3))
        make = lambda: sent.append(1) or g  # noqa: E731
        assert viewer.maybe_update(make, interval=60.0) is True
        assert viewer.maybe_update(make, interval=60.0) is False  # within the interval: training does not wait
        assert viewer.maybe_update(make, interval=0.0) is True and len(sent) == 2
    finally:
        viewer.close()


def test_clicking_a_camera_compares_our_render_with_its_image(toy_scene):
    import recon_toy

    from recon_core.viewer import SceneViewer

    scene = recon_toy.ToyFolderLoader().load(toy_scene)
    view = scene.views[0]
    ours = torch.full((view.height, view.width, 3), 0.25)
    viewer = SceneViewer(port=0)
    try:
        viewer.show_cameras(scene.views, render=lambda v: ours)
        strip = viewer.show_comparison(view, render=lambda v: ours)
        assert strip.shape == (view.height, 2 * view.width, 3)
        assert (strip[:, :view.width] == 64).all()  # our render (0.25) on the left
        expected = (view.image.float().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(strip[:, view.width:], expected)  # the captured image on the right
        assert viewer.show_comparison(scene.views[1]).shape == (view.height, view.width, 3)  # no renderer: the image
    finally:
        viewer.close()


def test_time_slider_shows_the_decoded_frame(toy_registry, toy_video, tmp_path):
    from recon_core.pipeline import Pipeline
    from recon_core.resolve import resolve_run
    from recon_core.restore import restore_run
    from recon_core.rundir import RunDir
    from recon_core.viewer import SceneViewer, view_run

    spec = resolve_run(toy_registry, data=toy_video, representation="toy-frames", evaluators=["psnr"],
                       sets=["toy-fit.steps=5"])
    run_dir = RunDir.create(tmp_path / "r")
    Pipeline(toy_registry, spec, run_dir).run()
    restored = restore_run(toy_registry, run_dir, evaluators=["none"])
    viewer = SceneViewer(port=0)
    try:
        assert view_run(viewer, restored) == "5 decoded frames"
        for i in (0, 3):
            viewer.time_slider.value = i  # what dragging the slider does
            expected = (restored.rep.image(i, *restored.rep.frame_size).detach().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
            assert np.array_equal(np.asarray(viewer.image_panel.image), expected) and viewer.image_panel.label == f"frame {i}"
    finally:
        viewer.close()
