"""Shared image reading and resizing (recon_plugins.loaders.imageio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loaders_support import write_png

from recon_core import InputError
from recon_plugins.loaders import imageio


def sky_with_line(h: int, w: int, col: int) -> torch.Tensor:
    """All sky (True) except one 1-pixel-wide vertical non-sky line (a street lamp) at ``col``."""
    m = torch.ones(h, w, dtype=torch.bool)
    m[:, col] = False
    return m


@pytest.mark.parametrize("factor", [2, 3])
def test_thin_non_sky_line_survives_downscale_at_every_offset(factor: int) -> None:
    h, w = 12, 36
    for col in range(w):
        out = imageio.resize_mask(sky_with_line(h, w, col), (h // factor, w // factor), keep="all")
        assert out.shape == (h // factor, w // factor)
        non_sky_cols = torch.nonzero(~out.all(dim=0)).flatten().tolist()
        assert non_sky_cols == [col // factor], f"line at column {col} lost or smeared: {non_sky_cols}"
        assert (~out).sum() == h // factor  # exactly one column of blocks, nothing else turned non-sky


def test_plain_nearest_would_lose_the_line() -> None:
    """The reason for block selection: one-sample nearest drops a line on half the offsets at 2x."""
    lost = 0
    for col in range(16):
        out = imageio.resize_mask(sky_with_line(4, 16, col), (2, 8), keep="nearest")
        lost += bool(out.all())
    assert lost == 8


def test_thin_object_line_survives_with_keep_any_and_non_integer_factor() -> None:
    for col in range(30):
        m = torch.zeros(9, 30, dtype=torch.bool)
        m[:, col] = True
        out = imageio.resize_mask(m, (4, 11), keep="any")  # factor 30/11 ≈ 2.73
        assert out.any(dim=0).sum() >= 1


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 20), st.integers(2, 20), st.integers(1, 20), st.integers(1, 20), st.integers(0, 2**31 - 1))
def test_block_resize_matches_brute_force(h: int, w: int, nh: int, nw: int, seed: int) -> None:
    m = torch.from_numpy(np.random.default_rng(seed).random((h, w)) > 0.7)
    for keep, reduce in (("any", np.any), ("all", np.all)):
        out = imageio.resize_mask(m, (nh, nw), keep=keep).numpy()
        for i in range(nh):
            y0, y1 = int(np.floor(i * h / nh + 1e-9)), max(int(np.ceil((i + 1) * h / nh - 1e-9)), int(np.floor(i * h / nh + 1e-9)) + 1)
            for j in range(nw):
                x0, x1 = int(np.floor(j * w / nw + 1e-9)), max(int(np.ceil((j + 1) * w / nw - 1e-9)), int(np.floor(j * w / nw + 1e-9)) + 1)
                assert out[i, j] == reduce(m.numpy()[y0:y1, x0:x1])


def test_resize_image_is_antialiased() -> None:
    """A 1-pixel checkerboard downscaled 3x becomes flat grey (an unfiltered resize keeps 0/1 values)."""
    ys, xs = np.mgrid[0:30, 0:30]
    board = torch.from_numpy(((xs + ys) % 2).astype(np.float32))[..., None].expand(30, 30, 3).contiguous()
    out = imageio.resize_image(board, (10, 10))
    assert (out - 0.5).abs().max() < 0.12
    assert abs(float(out.mean()) - float(board.mean())) < 0.02
    flat = torch.full((8, 8, 3), 0.3)
    assert torch.allclose(imageio.resize_image(flat, (3, 5)), torch.full((3, 5, 3), 0.3), atol=1e-6)


def test_scale_intrinsics_keeps_pixel_centres() -> None:
    """Pixel centre i + 0.5 maps to (i + 0.5) * s; a centred principal point stays centred."""
    K = torch.tensor([[100.0, 0.0, 100.0], [0.0, 100.0, 50.0], [0.0, 0.0, 1.0]])
    K2 = imageio.scale_intrinsics(K, (100, 200), (50, 67))
    assert K2[0, 2] == pytest.approx(67 / 2) and K2[1, 2] == pytest.approx(25.0)
    assert K2[0, 0] == pytest.approx(100 * 67 / 200) and K2[1, 1] == pytest.approx(50.0)
    x = torch.tensor([0.3, -0.2, 1.0])
    u, u2 = K @ x, K2 @ x
    assert u2[0] == pytest.approx(u[0] * 67 / 200) and u2[1] == pytest.approx(u[1] * 0.5)


def test_read_rgba_composite_and_alpha(tmp_path: Path) -> None:
    img = np.zeros((4, 6, 4), np.uint8)
    img[..., 0] = 200
    img[:, :3, 3] = 255  # left half opaque red, right half transparent
    write_png(tmp_path / "a.png", img)
    rgb, alpha = imageio.read_rgb_alpha(tmp_path / "a.png")
    assert rgb.shape == (4, 6, 3) and alpha is not None and alpha.shape == (4, 6)
    out = imageio.composite(rgb, alpha, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(out[0, 0], torch.tensor([200 / 255, 0.0, 0.0]))
    assert torch.allclose(out[0, 5], torch.tensor([0.0, 1.0, 0.0]))


def test_depth_png_scale_and_npy(tmp_path: Path) -> None:
    write_png(tmp_path / "d.png", np.array([[0, 1500], [65535, 20]], np.uint16))
    d = imageio.read_depth(tmp_path / "d.png", 0.001)
    assert d.dtype == torch.float32
    assert torch.allclose(d, torch.tensor([[0.0, 1.5], [65.535, 0.02]]))
    np.save(tmp_path / "d.npy", np.array([[np.nan, -1.0], [2.0, np.inf]], np.float32))
    assert torch.equal(imageio.read_depth(tmp_path / "d.npy", 0.001), torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    assert imageio.probe_depth(tmp_path / "d.npy", 1.0) == (2, 2)


def test_mask_threshold_is_above_half(tmp_path: Path) -> None:
    write_png(tmp_path / "m.png", np.array([[127, 128, 0, 255]], np.uint8))
    assert imageio.read_mask(tmp_path / "m.png").tolist() == [[False, True, False, True]]


@pytest.mark.parametrize("content", [None, b"", b"not a png at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_bad_image_files_raise_input_error_naming_the_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as e:
        imageio.probe_image(path)
    assert e.value.path == path


def test_truncated_png_fails_on_decode_with_input_error(tmp_path: Path) -> None:
    write_png(tmp_path / "ok.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    imageio.probe_image(tmp_path / "cut.png")  # the header is intact
    with pytest.raises(InputError, match="cannot be decoded"):
        imageio.read_rgb_alpha(tmp_path / "cut.png")


@pytest.mark.parametrize("value, expected", [("white", [1, 1, 1]), ("black", [0, 0, 0]), ((0.2, 0.4, 0.6), [0.2, 0.4, 0.6]), ("0.5,0,1", [0.5, 0, 1])])
def test_parse_background(value, expected) -> None:  # noqa: ANN001
    assert torch.allclose(imageio.parse_background(value), torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize("value", ["purple", (1.0, 2.0, 0.0), (0.1, 0.2), (float("nan"), 0, 0)])
def test_parse_background_rejects(value) -> None:  # noqa: ANN001
    with pytest.raises(InputError):
        imageio.parse_background(value)


def test_exif_orientation_turns_size_and_pixels(tmp_path: Path) -> None:
    from loaders_support import quadrant_image, write_exif_jpeg

    upright = quadrant_image(20, 12)
    for orientation in (3, 6, 8):
        path = write_exif_jpeg(tmp_path / f"o{orientation}.jpg", upright, orientation)
        info = imageio.probe_image(path)
        assert info.size == (20, 12) and info.orientation == orientation
        arr, _ = imageio.read_pixels(path)
        assert arr.shape == (20, 12, 3) and np.abs(arr.astype(int) - upright).mean() < 25  # JPEG blurs the colour edges; a wrong turn gives > 100
        stored = imageio.probe_image(path, exif=False)
        assert stored.size == info.stored == ((20, 12) if orientation == 3 else (12, 20))
        assert imageio.read_pixels(path, exif=False)[0].shape[:2] == stored.size


def _bomb_png(path: Path, w: int, h: int) -> Path:
    """A tiny PNG whose IHDR claims w x h pixels (no real pixel data: a decompression bomb header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_header_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    path = _bomb_png(tmp_path / "bomb.png", 15000, 15000)
    for fn in (imageio.probe_image, imageio.verify_image, imageio.read_pixels):
        with pytest.raises(InputError, match="too large") as e:
            fn(path)
        assert e.value.path == path


def test_image_above_the_pixel_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    path = write_png(tmp_path / "big.png", np.zeros((40, 50, 3), dtype=np.uint8))
    imageio.probe_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 2000 pixels: between 1x and 2x (PIL only warns there)
    with pytest.raises(InputError, match="50x40") as e:
        imageio.probe_image(path)
    assert e.value.path == path
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over 2x: PIL's DecompressionBombError
    with pytest.raises(InputError, match="too large") as e:
        imageio.verify_image(path)
    assert e.value.path == path


def test_verify_files_reports_the_truncated_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = [write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for i in range(6)]
    imageio.verify_files([(p, imageio.verify_image) for p in paths])
    data = paths[4].read_bytes()
    paths[4].write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        imageio.verify_files([(p, imageio.verify_image) for p in paths], workers=3)
    assert e.value.path == paths[4]
    np.save(tmp_path / "d.npy", np.ones((8, 8), np.float32))
    raw = (tmp_path / "d.npy").read_bytes()
    (tmp_path / "d.npy").write_bytes(raw[:-40])
    with pytest.raises(InputError) as e:
        imageio.verify_depth(tmp_path / "d.npy")
    assert e.value.path == tmp_path / "d.npy"
