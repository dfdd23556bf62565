"""recon_core.imageops: PSNR, SSIM (parity with skimage), MS-SSIM (parity with an independent
NumPy implementation) and the masking helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d
from skimage.metrics import structural_similarity

from recon_core import imageops

pytestmark = pytest.mark.usefixtures("one_thread")

STANDARD = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _textured(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth random image with structure at several scales, float64 (H, W, 3) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(3, h, w, dtype=torch.float64)
    for cells in (4, 12, 40):
        coarse = torch.rand(1, 3, cells, cells, generator=g, dtype=torch.float64)
        img += torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (img / 3).permute(1, 2, 0).contiguous()


def _noisy(img: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (img + sigma * torch.randn(img.shape, generator=g, dtype=img.dtype)).clamp(0, 1)


# ----------------------------------------------------------------------------- independent MS-SSIM


def _reference_ms_ssim(a: np.ndarray, b: np.ndarray, weights, win: int = 11, sigma: float = 1.5) -> float:
    """MS-SSIM written from the paper with NumPy: 2D kernel, correlate2d, block-mean downsampling."""
    ax = np.arange(win) - (win - 1) / 2
    k1 = np.exp(-(ax**2) / (2 * sigma**2))
    kernel = np.outer(k1, k1)
    kernel /= kernel.sum()
    c1, c2 = 0.01**2, 0.03**2
    per_channel = []
    for ch in range(a.shape[2]):
        x, y = a[:, :, ch], b[:, :, ch]
        total = 1.0
        for j, w in enumerate(weights):
            if j:
                hh, ww = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
                x = x[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2).mean(axis=(1, 3))
                y = y[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2).mean(axis=(1, 3))
            f = lambda t: correlate2d(t, kernel, mode="valid")  # noqa: E731
            mx, my = f(x), f(y)
            vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
            cs = (2 * cxy + c2) / (vx + vy + c2)
            lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
            term = (lum * cs).mean() if j == len(weights) - 1 else cs.mean()
            total *= max(term, 0.0) ** w
        per_channel.append(total)
    return float(np.mean(per_channel))


@pytest.mark.parametrize("shape", [(200, 200), (180, 320)])
def test_ms_ssim_matches_independent_implementation_full_pyramid(shape):
    a = _textured(*shape, seed=1)
    b = _noisy(a, 0.08, seed=2)
    ours = float(imageops.ms_ssim(a, b))
    ref = _reference_ms_ssim(a.numpy(), b.numpy(), STANDARD)
    assert ours == pytest.approx(ref, abs=1e-9)
    assert 0.3 < ours < 0.999  # a real difference, far from both ends


def test_ms_ssim_small_image_uses_fewer_renormalised_scales():
    a = _textured(40, 50, seed=3)
    b = _noisy(a, 0.1, seed=4)
    plan = imageops.ms_ssim_plan(40, 50)
    assert plan.scales == 2 and plan.window_size == 11
    assert sum(plan.weights) == pytest.approx(1.0)
    kept = (STANDARD[0] / (STANDARD[0] + STANDARD[1]), STANDARD[1] / (STANDARD[0] + STANDARD[1]))
    assert float(imageops.ms_ssim(a, b)) == pytest.approx(_reference_ms_ssim(a.numpy(), b.numpy(), kept), abs=1e-9)


def test_ms_ssim_tiny_image_shrinks_window():
    a = _textured(9, 10, seed=5)
    b = _noisy(a, 0.1, seed=6)
    plan = imageops.ms_ssim_plan(9, 10)
    assert plan == imageops.MsSsimPlan((1.0,), 9, 1.5 * 9 / 11)
    ref = _reference_ms_ssim(a.numpy(), b.numpy(), (1.0,), win=9, sigma=1.5 * 9 / 11)
    assert float(imageops.ms_ssim(a, b)) == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize(
    "h, w, scales",
    [(200, 200, 5), (180, 320, 5), (176, 176, 5), (175, 175, 4), (22, 300, 2), (11, 11, 1), (12, 40, 1)],
)
def test_ms_ssim_plan_keeps_every_scale_that_fits(h, w, scales):
    plan = imageops.ms_ssim_plan(h, w)
    assert plan.scales == scales
    # the coarsest scale still holds a full window, one more would not
    assert min(h, w) // 2 ** (scales - 1) >= plan.window_size
    assert scales == 5 or min(h, w) // 2**scales < plan.window_size


def test_ms_ssim_plan_rejects_degenerate_input():
    with pytest.raises(ValueError, match="at least 3x3"):
        imageops.ms_ssim_plan(2, 100)
    with pytest.raises(ValueError, match="odd"):
        imageops.ms_ssim_plan(100, 100, window_size=10)


def test_ms_ssim_identical_is_one_and_decreases_with_noise():
    a = _textured(200, 200, seed=7).float()
    assert float(imageops.ms_ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    values = [float(imageops.ms_ssim(a, _noisy(a, s, seed=8))) for s in (0.01, 0.05, 0.15, 0.4)]
    assert all(x > y for x, y in zip(values, values[1:])), values


def test_ms_ssim_is_differentiable_and_batched():
    a = _textured(64, 64, seed=9).float()
    b = _noisy(a, 0.1, seed=10).requires_grad_(True)
    loss = 1 - imageops.ms_ssim(b, a)
    loss.backward()
    assert b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
    batch = torch.stack([a, a])
    other = torch.stack([a, b.detach()])
    both = float(imageops.ms_ssim(other, batch))
    assert both == pytest.approx((1.0 + float(imageops.ms_ssim(b.detach(), a))) / 2, abs=1e-6)


def test_ms_ssim_of_anticorrelated_images_is_zero_with_finite_gradients():
    a = _textured(64, 64, seed=12).float()
    inverted = (1 - a).requires_grad_(True)
    value = imageops.ms_ssim(inverted, a)
    assert float(value.detach()) == 0.0  # negative contrast-structure terms clamp to 0
    value.backward()
    assert torch.isfinite(inverted.grad).all()


# ----------------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_of_a_known_mse_is_exact():
    target = torch.full((20, 30, 3), 0.5, dtype=torch.float64)
    pred = target + 0.1  # MSE = 0.01 → 20 dB
    assert float(imageops.psnr(pred, target)) == pytest.approx(20.0, abs=1e-9)
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[:5] = True
    pred[~mask] = 0.0  # large errors outside the mask are ignored
    assert float(imageops.psnr(pred, target, mask)) == pytest.approx(20.0, abs=1e-9)


@pytest.mark.parametrize("shape, seed", [((200, 200), 0), ((180, 320), 1), ((23, 31), 2)])
def test_ssim_matches_skimage(shape, seed):
    a = _textured(*shape, seed=seed)
    b = _noisy(a, 0.1, seed=seed + 10)
    ref = structural_similarity(
        a.numpy(), b.numpy(), channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
    )
    assert float(imageops.ssim(a, b)) == pytest.approx(ref, abs=1e-9)


# ------------------------------------------------------------------------------------- masking


def test_mask_bbox_and_empty_mask():
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[2, 3] = mask[6, 9] = True
    assert imageops.mask_bbox(mask) == (2, 7, 3, 10)
    with pytest.raises(ValueError, match="no pixel"):
        imageops.mask_bbox(torch.zeros(4, 4, dtype=torch.bool))


def test_masked_crop_ignores_outside_pixels_and_pads():
    a = _textured(30, 40, seed=11)
    b = a.clone()
    mask = torch.zeros(30, 40, dtype=torch.bool)
    mask[10:14, 5:20] = True
    mask[12, 5] = False
    b[~mask] = torch.rand(int((~mask).sum()), 3, dtype=b.dtype)
    ca, cb = imageops.masked_crop([a, b], mask, background=0.25)
    assert ca.shape == (4, 15, 3) and torch.equal(ca, cb)
    assert torch.all(ca[2, 0] == 0.25)  # the hole inside the box is background
    (padded,) = imageops.masked_crop([a], mask, background=0.25, min_size=8)
    assert padded.shape == (8, 15, 3)
    assert torch.equal(padded[2:6], ca) and torch.all(padded[:2] == 0.25) and torch.all(padded[6:] == 0.25)
    assert math.isclose(float(padded[0, 0, 0]), 0.25)


# ------------------------------------------------------------------------------ photometric loss


def test_photometric_loss_of_constant_images_is_known():
    a, b, w = 0.3, 0.7, 0.2
    pred, target = torch.full((16, 20, 3), a, dtype=torch.float64), torch.full((16, 20, 3), b, dtype=torch.float64)
    c1 = 0.01**2
    ssim_const = (2 * a * b + c1) / (a * a + b * b + c1)  # zero variances: the contrast term is 1
    expected = (1 - w) * abs(a - b) + w * (1 - ssim_const)
    assert float(imageops.photometric_loss(pred, target, w)) == pytest.approx(expected, abs=1e-12)
    assert float(imageops.photometric_loss(pred, pred, w)) == pytest.approx(0.0, abs=1e-12)


def test_photometric_loss_matches_l1_and_skimage_ssim():
    a = _textured(40, 50, seed=3)
    b = _noisy(a, 0.1, seed=4)
    ref = structural_similarity(
        a.numpy(), b.numpy(), channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
    )
    l1 = float((a - b).abs().mean())
    assert float(imageops.photometric_loss(a, b, 0.3)) == pytest.approx(0.7 * l1 + 0.3 * (1 - ref), abs=1e-9)
    assert float(imageops.photometric_loss(a, b, 0.0)) == pytest.approx(l1, abs=1e-12)
    batched = imageops.photometric_loss(torch.stack([a, a]), torch.stack([b, b]), 0.3)
    assert float(batched) == pytest.approx(0.7 * l1 + 0.3 * (1 - ref), abs=1e-9)


def test_photometric_loss_falls_back_to_l1_below_the_ssim_window():
    a = _textured(10, 40, seed=5)  # 10 rows < 11
    b = _noisy(a, 0.1, seed=6)
    assert float(imageops.photometric_loss(a, b, 0.2)) == float((a - b).abs().mean())
    mask = torch.zeros(10, 40, dtype=torch.bool)
    mask[:, :8] = True
    assert float(imageops.photometric_loss(a, b, 0.2, mask)) == pytest.approx(float((a - b)[:, :8].abs().mean()), abs=1e-12)


def test_photometric_loss_ignores_pixels_outside_the_mask():
    a = _textured(30, 30, seed=7)
    b = _noisy(a, 0.05, seed=8)
    mask = torch.zeros(30, 30, dtype=torch.bool)
    mask[3:25, 5:28] = True
    pred = a.clone().requires_grad_(True)
    loss = imageops.photometric_loss(pred, b, 0.2, mask)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[~mask] == 0).all() and (pred.grad[mask] != 0).any()
    # changing either image outside the mask changes nothing
    a2, b2 = a.clone(), b.clone()
    a2[~mask], b2[~mask] = 1.0, 0.0
    assert float(imageops.photometric_loss(a2, b2, 0.2, mask)) == pytest.approx(loss.item(), abs=1e-12)
    # the known parts: L1 over masked pixels, SSIM over window centres on masked pixels
    m = mask[..., None].double()
    l1 = float((a - b)[mask].abs().mean())
    s = float(imageops.ssim(a * m, b * m, mask))
    assert loss.item() == pytest.approx(0.8 * l1 + 0.2 * (1 - s), abs=1e-12)
    assert loss.item() != pytest.approx(float(imageops.photometric_loss(a, b, 0.2)), abs=1e-6)


def test_psnr_with_a_batch_mask():
    target = torch.full((2, 8, 9, 3), 0.5, dtype=torch.float64)
    pred = target + 0.01  # 40 dB
    mask = torch.zeros(2, 8, 9, dtype=torch.bool)
    mask[0, :2] = mask[1, 5:] = True
    pred[~mask] = 1.0
    assert float(imageops.psnr(pred, target, mask)) == pytest.approx(40.0, abs=1e-9)
