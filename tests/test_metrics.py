"""The built-in evaluators of the ``metrics`` plugin: psnr, ssim, ms-ssim and lpips."""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from recon_core import InputError, MissingWeightsError
from recon_core.imageops import ms_ssim
from recon_core.registry import Registry
from recon_plugins import metrics
from recon_plugins.metrics.perceptual import BACKBONES, LPIPS, LPIPSConfig, linear_weights_path

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(h: int = 64, w: int = 80, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 8, w // 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    detail = 0.2 * torch.rand(3, h, w, generator=g)
    return (0.8 * smooth + detail).clamp(0, 1).permute(1, 2, 0).contiguous()


def _noisy(img: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (img + sigma * torch.randn(img.shape, generator=g)).clamp(0, 1)


def _scramble_outside(img: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = img.clone()
    out[~mask] = torch.rand(int((~mask).sum()), 3, generator=g)
    return out


def _disk_mask(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2


# ------------------------------------------------------------------------------------ registry


def test_entry_point_registers_the_four_evaluators():
    eps = [ep for ep in importlib.metadata.entry_points(group="recon.plugins") if ep.name == "metrics"]
    assert eps and eps[0].value == "recon_plugins.metrics"
    reg = Registry(entry_points=eps, disabled=())
    names = {r.name: r.status for r in reg.components("evaluator", usable_only=False)}
    assert names == {"psnr": "ok", "ssim": "ok", "ms-ssim": "ok", "lpips": "ok"}
    assert reg.get("evaluator", "lpips").higher_is_better is False
    assert reg.get("evaluator", "psnr").higher_is_better is True


# ----------------------------------------------------------------------------------- PSNR, SSIM


def test_psnr_of_a_known_mse():
    target = torch.full((10, 10, 3), 0.25)
    pred = target.clone()
    pred[0, 0, 0] = 0.25 + 0.3  # MSE = 0.09 / 300 = 3e-4 → 10·log10(1/3e-4)
    assert metrics.PSNR().compute(pred, target) == pytest.approx(10 * np.log10(1 / 3e-4), abs=1e-6)


def test_ssim_matches_skimage_on_float32_input():
    a = _image(90, 120)
    b = _noisy(a, 0.1)
    ref = structural_similarity(
        a.double().numpy(), b.double().numpy(), channel_axis=2, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1,
    )
    assert metrics.SSIM().compute(a, b) == pytest.approx(ref, abs=1e-5)  # computed in float32


def test_ms_ssim_evaluator_properties():
    a = _image(200, 200)
    ev = metrics.MSSSIM()
    assert ev.compute(a, a) == pytest.approx(1.0, abs=1e-6)
    values = [ev.compute(_noisy(a, s), a) for s in (0.02, 0.1, 0.3)]
    assert values[0] > values[1] > values[2]
    assert ev.compute(_noisy(a, 0.1), a) == pytest.approx(float(ms_ssim(_noisy(a, 0.1).double(), a.double())), abs=1e-5)
    three = metrics.MSSSIM(metrics.image.MSSSIMConfig(scales=3))
    assert sum(three.weights()) == pytest.approx(1.0) and len(three.weights()) == 3
    assert three.compute(_noisy(a, 0.1), a) != pytest.approx(values[1])


# ------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("evaluator", [metrics.PSNR(), metrics.SSIM(), metrics.MSSSIM()], ids=lambda e: e.name)
def test_pixels_outside_the_mask_have_no_effect(evaluator):
    target = _image(96, 128)
    pred = _noisy(target, 0.08)
    mask = _disk_mask(96, 128)
    reference = evaluator.compute(pred, target, mask)
    scrambled = evaluator.compute(_scramble_outside(pred, mask, 5), _scramble_outside(target, mask, 6), mask)
    assert scrambled == reference  # bit-identical: outside pixels never enter the computation
    assert evaluator.compute(pred, target) != pytest.approx(reference, abs=1e-6)  # the mask matters
    worse = pred.clone()
    worse[mask] = 1 - worse[mask]
    assert evaluator.compute(worse, target, mask) < reference  # pixels inside do count


def test_bad_input_is_an_input_error():
    a = _image(32, 32)
    for ev in (metrics.PSNR(), metrics.SSIM(), metrics.MSSSIM(), LPIPS()):
        with pytest.raises(InputError, match="torch.bool"):
            ev.compute(a, a, torch.ones(32, 32))
        with pytest.raises(InputError, match="mask has shape"):
            ev.compute(a, a, torch.ones(16, 32, dtype=torch.bool))
        with pytest.raises(InputError, match="differ in shape"):
            ev.compute(a, a[:16])
        with pytest.raises(InputError, match=r"expected \(H, W, 3\)"):
            ev.compute(a[..., :2], a[..., :2])
        with pytest.raises(InputError, match="NaN"):
            ev.compute(a * float("nan"), a)
    with pytest.raises(InputError, match="scales must be between 1 and 5"):
        metrics.MSSSIM(metrics.image.MSSSIMConfig(scales=6)).compute(a, a)


def test_undefined_values_are_nan_not_errors():
    """One view with an empty mask or a tiny image must not abort the evaluation of a run."""
    a = _image(32, 32)
    empty = torch.zeros(32, 32, dtype=torch.bool)
    for ev in (metrics.PSNR(), metrics.SSIM(), metrics.MSSSIM()):  # lpips: see its own test
        assert math.isnan(ev.compute(a, a, empty)), ev.name
    border_only = torch.zeros(32, 32, dtype=torch.bool)
    border_only[:3] = True
    assert math.isnan(metrics.SSIM().compute(a, a, border_only))
    assert math.isnan(metrics.SSIM().compute(a[:10], a[:10]))
    assert metrics.MSSSIM().compute(a[:10], a[:10]) == pytest.approx(1.0)  # shrunk window
    assert math.isnan(metrics.MSSSIM().compute(a[:2], a[:2]))


# ------------------------------------------------------------------------------------- LPIPS


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; any attempt to download weights fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    import urllib.request

    import torchvision.models._api as tv_api

    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_download)  # torchvision's own binding
    return tmp_path / "torch"


def _write_random_alexnet(torch_home: Path) -> Path:
    """A random-weights AlexNet ``features`` checkpoint with torchvision's key names and shapes."""
    from torchvision.models import alexnet

    torch.manual_seed(0)
    features = alexnet(weights=None).features.state_dict()
    path = torch_home / "hub" / "checkpoints" / BACKBONES["alex"].filename
    path.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in features.items()}, path)
    return path


def test_lpips_without_backbone_is_unavailable_with_the_exact_path(torch_home):
    folder = torch_home / "hub" / "checkpoints"
    for net, filename in (("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")):
        reason = LPIPS(LPIPSConfig(net=net)).unavailable_reason()
        assert reason is not None and f"'{filename}'" in reason and str(folder) in reason
    a = _image()
    with pytest.raises(MissingWeightsError) as err:
        LPIPS().compute(a, a)
    assert err.value.expected_path == folder / "alexnet-owt-7be5be79.pth"
    assert [w.path for w in LPIPS.required_weights()] == [folder / "alexnet-owt-7be5be79.pth", folder / "vgg16-397923af.pth"]
    assert not any(w.present for w in LPIPS.required_weights())


def test_lpips_runs_with_a_random_backbone_and_no_download(torch_home):
    path = _write_random_alexnet(torch_home)
    ev = LPIPS()
    assert ev.unavailable_reason() is None
    assert LPIPS.required_weights()[0].present
    a = _image(96, 128)
    b = _noisy(a, 0.2)
    assert ev.compute(a, a) == pytest.approx(0.0, abs=1e-7)
    d = ev.compute(b, a)
    assert d > 1e-6 and d == pytest.approx(ev.compute(a, b), rel=1e-5)  # symmetric

    # both weight files really were loaded: backbone from the hub cache, linear layers from lpips
    model = ev.network(torch.device("cpu"))
    saved = torch.load(path, weights_only=True)
    assert torch.equal(getattr(model.net.slice1, "0").weight, saved["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "10").weight, saved["features.10.weight"])
    lin = torch.load(linear_weights_path("alex"), map_location="cpu", weights_only=True)
    assert torch.equal(model.lin0.model[1].weight, lin["lin0.model.1.weight"])

    # masks: outside pixels do not matter, tiny masks are padded to the network's minimum size
    mask = _disk_mask(96, 128)
    ref = ev.compute(b, a, mask)
    assert ev.compute(_scramble_outside(b, mask, 1), _scramble_outside(a, mask, 2), mask) == pytest.approx(ref, abs=1e-6)
    tiny = torch.zeros(96, 128, dtype=torch.bool)
    tiny[40:45, 60:66] = True
    assert ev.compute(b, a, tiny) > 0
    assert math.isnan(ev.compute(b, a, torch.zeros(96, 128, dtype=torch.bool)))
    small = ev.compute(b[:20, :24], a[:20, :20 + 4])  # padded to 32x32 with background
    assert small > 0 and ev.compute(a[:20, :24], a[:20, :24]) == pytest.approx(0.0, abs=1e-7)


def test_lpips_matches_the_lpips_package_built_its_own_way(torch_home):
    """Parity: lpips.LPIPS loading its linear layers itself, given the same backbone tensors."""
    import warnings

    import lpips

    path = _write_random_alexnet(torch_home)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    saved = torch.load(path, weights_only=True)
    for key, param in reference.net.state_dict().items():
        param.copy_(saved["features." + key.split(".", 1)[1]])
    a, b = _image(64, 96, seed=3), _noisy(_image(64, 96, seed=3), 0.15)
    with torch.no_grad():
        expected = float(reference(b.permute(2, 0, 1)[None], a.permute(2, 0, 1)[None], normalize=True).flatten()[0])
    assert LPIPS().compute(b, a) == pytest.approx(expected, rel=1e-5)


def test_lpips_rejects_a_wrong_backbone_file_naming_it(torch_home):
    path = torch_home / "hub" / "checkpoints" / BACKBONES["alex"].filename
    path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(InputError, match="features.0.weight") as err:
        LPIPS().compute(_image(), _image())
    assert str(path) in str(err.value)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read") as err:
        LPIPS().compute(_image(), _image())
    assert str(path) in str(err.value)


# --------------------------------------------------------------- in a run: full image vs masked

OBJECT = (255, 0, 51)
"""The object's colour (uint8, so the PNG holds it exactly): (1, 0, 0.2)."""
H, W = 16, 20
BOX = (slice(4, 12), slice(5, 15))  # 8 x 10 = 80 of 320 pixels: a quarter of the image


def _write_rgba_scene(root: Path, rgba: bool = True) -> Path:
    """Four views (two in the test split) of an opaque box of colour OBJECT; outside it alpha 0
    over random colours (the loader composites them away), or an RGB image on white."""
    from loaders_support import write_png, write_transforms

    write_transforms(root, n=4, w=W, h=H, rgba=rgba, extra={"test_filenames": ["images/0001.png", "images/0003.png"]})
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.integers(0, 256, (H, W, 4 if rgba else 3), dtype=np.uint8)
        if rgba:
            img[..., 3] = 0
            img[BOX] = (*OBJECT, 255)
        else:
            img[:] = 255
            img[BOX] = OBJECT
        write_png(root / "images" / f"{i:04d}.png", img)
    return root


def _run_background_only(tmp_path: Path, data: Path, background: str, evaluators: str):
    """A 3dgs run whose one Gaussian is transparent: every render is the run's background."""
    import recon_plugins.gaussians as gaussians
    import recon_plugins.loaders as loaders
    from recon_core.pipeline import Pipeline
    from recon_core.ply import write_splat_ply
    from recon_core.resolve import resolve_run
    from recon_core.rundir import RunDir

    ply = write_splat_ply(tmp_path / "empty.ply", {
        "means": torch.zeros(1, 3), "quats": torch.tensor([[1.0, 0, 0, 0]]), "scales": torch.full((1, 3), -5.0),
        "opacities": torch.full((1,), -40.0), "sh0": torch.zeros(1, 1, 3), "shN": torch.zeros(1, 0, 3)})
    registry = Registry(entry_points=[], modules=[("loaders", loaders), ("gaussians", gaussians), ("metrics", metrics)],
                        disabled=())
    spec = resolve_run(registry, data=data, representation="3dgs", renderer="torch-3dgs", refiners=["none"],
                       evaluators=[evaluators], device="cpu",
                       sets=[f"run.background={background}", "3dgs.init=ply", f"3dgs.ply_path={ply}", "3dgs.sh_degree=0",
                             "torch-3dgs.backend=torch"])
    run_dir = RunDir.create(tmp_path / "run")
    doc = Pipeline(registry, spec, run_dir).run()
    import json

    assert json.loads(run_dir.metrics_path.read_text())["metrics"] == doc["metrics"]
    return doc, run_dir


def test_metrics_are_over_the_full_image_on_the_run_background_and_masked_ones_say_so(tmp_path, torch_home):
    """Renders of nothing (the run's blue background) against an RGBA box: the known answer.

    Inside the box the error is OBJECT - blue in every pixel; outside it the target is the blue
    background too (the box's alpha composited onto the run's background), so the full-image MSE is
    a quarter of the masked one: PSNR_full = PSNR_masked + 10 log10(4).
    """
    _write_random_alexnet(torch_home)
    data = _write_rgba_scene(tmp_path / "scene")
    doc, run_dir = _run_background_only(tmp_path, data, "0,0,1", "psnr,ssim,ms-ssim,lpips")

    blue = torch.tensor([0.0, 0.0, 1.0])
    obj = torch.tensor(OBJECT, dtype=torch.float64) / 255
    mse_masked = float(((obj - blue.double()) ** 2).mean())
    expected_masked = -10 * math.log10(mse_masked)
    expected_full = -10 * math.log10(mse_masked * 80 / 320)
    assert doc["metrics"]["psnr_masked"] == pytest.approx(expected_masked, abs=1e-4)
    assert doc["metrics"]["psnr"] == pytest.approx(expected_full, abs=1e-4)

    target = blue.expand(H, W, 3).clone()
    target[BOX] = obj.float()
    pred = blue.expand(H, W, 3).clone()
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[BOX] = True
    full_ssim = structural_similarity(target.double().numpy(), pred.double().numpy(), channel_axis=2, gaussian_weights=True,
                                      sigma=1.5, use_sample_covariance=False, data_range=1)
    assert doc["metrics"]["ssim"] == pytest.approx(full_ssim, abs=1e-4)
    assert doc["metrics"]["ssim_masked"] == pytest.approx(metrics.SSIM().compute(pred, target, mask), abs=1e-4)
    assert doc["metrics"]["ms-ssim"] == pytest.approx(metrics.MSSSIM().compute(pred, target), abs=1e-4)
    assert doc["metrics"]["lpips"] == pytest.approx(LPIPS().compute(pred, target), abs=1e-4)
    assert doc["metrics"]["lpips_masked"] == pytest.approx(LPIPS().compute(pred, target, mask), abs=1e-4)
    assert list(doc["metrics"]) == ["psnr", "psnr_masked", "ssim", "ssim_masked", "ms-ssim", "ms-ssim_masked",
                                    "lpips", "lpips_masked"]

    # what the numbers are
    assert doc["split"] == "test" and doc["num_views"] == 2 and [r["name"] for r in doc["per_view"]] == ["0001", "0003"]
    assert doc["device"] == "cpu" and doc["device_name"] is None and doc["background"] == [0.0, 0.0, 1.0]
    import recon_core

    assert doc["versions"]["recon"] == recon_core.__version__ and doc["versions"]["torch"] == torch.__version__
    info = doc["metric_info"]
    assert info["psnr"] == {"evaluator": "psnr", "higher_is_better": True, "unit": "dB", "region": "full image",
                            "renders": "raw", "views": 2}
    assert info["psnr_masked"]["region"] == "object mask" and info["psnr_masked"]["unit"] == "dB"
    assert info["lpips"]["higher_is_better"] is False and info["lpips"]["unit"] is None
    assert info["ssim"]["higher_is_better"] is True and info["ssim"]["unit"] is None
    assert doc["masked_metric_suffix"] == "_masked" and doc["fixed_metric_suffix"] is None
    # the render really is the background
    from PIL import Image

    render = np.asarray(Image.open(run_dir.renders_dir / "0001.png"))
    assert (render == np.array([0, 0, 255], np.uint8)).all()


def test_views_without_mask_or_alpha_get_no_masked_metrics(tmp_path):
    data = _write_rgba_scene(tmp_path / "scene", rgba=False)
    doc, _ = _run_background_only(tmp_path, data, "1,1,1", "psnr")
    obj = torch.tensor(OBJECT, dtype=torch.float64) / 255
    expected = -10 * math.log10(float(((obj - 1.0) ** 2).mean()) * 80 / 320)  # white renders, box on white
    assert list(doc["metrics"]) == ["psnr"] and doc["metrics"]["psnr"] == pytest.approx(expected, abs=1e-4)
    assert doc["split"] == "test" and doc["background"] == [1.0, 1.0, 1.0]
