"""d2gv decoding path (``decode.py``): same frames as the differentiable training path, faster."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recon_core.components import RunContext
from recon_plugins.d2gv import decode
from recon_plugins.d2gv.decode import Decoder
from recon_plugins.d2gv.renderer import Torch2DGS, Torch2DGSConfig, render_gaussians
from recon_plugins.d2gv.representation import D2GV, D2GVConfig

from test_d2gv_representation import tiny_video

CPU = RunContext(torch.device("cpu"), seed=0)

pytestmark = pytest.mark.usefixtures("one_thread")


def deformed_rep(num_frames: int = 7, gop_length: int = 3, n: int = 80) -> D2GV:
    """A model whose frames differ through the MLP, with a third of GoP 1 pruned."""
    video = tiny_video(num_frames=num_frames, gop_length=gop_length)
    rep = D2GV(D2GVConfig(gop_length=0, num_gaussians=n, mlp_width=24))
    rep.build(video, CPU)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for gop in rep.gops:
            gop.deform.head.weight.copy_(torch.randn(gop.deform.head.weight.shape, generator=g) * 0.05)
            gop.deform.head.bias.copy_(torch.randn(5, generator=g) * 0.02)
        rep.gops[1].mask_logit[: n // 3] = -4.0
    return rep


def training_path(rep: D2GV, backend: str) -> torch.Tensor:
    """Every frame through ``frame_gaussians`` with the straight-through mask (pruned Gaussians
    multiplied by 0, not dropped) and the differentiable rasteriser."""
    out = torch.empty(rep.num_frames, rep.height, rep.width, 3)
    for pos, g in rep.frame_gaussians(torch.arange(rep.num_frames), mask="straight-through"):
        out[pos] = render_gaussians(g, rep.height, rep.width, backend=backend).detach()
    return out


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_decoder_matches_training_path(backend):
    rep = deformed_rep()
    expected = training_path(rep, "torch")
    frames = Decoder(rep, backend=backend).frames()
    assert frames.shape == (7, 16, 24, 3)
    assert not torch.allclose(frames[0], frames[1], atol=1e-3)  # the MLP moves things
    torch.testing.assert_close(frames, expected, rtol=0, atol=2e-5)


def test_frames_in_any_order_and_uint8():
    rep = deformed_rep()
    dec = Decoder(rep)
    every = dec.frames()
    order = torch.tensor([6, 0, 4, 4])
    torch.testing.assert_close(dec.frames(order), every[order], rtol=0, atol=0)
    u8 = dec.frames_uint8(order)
    assert u8.dtype == torch.uint8 and u8.shape == (4, 16, 24, 3)
    assert torch.equal(u8, torch.round(every[order] * 255).to(torch.uint8))


def test_constants_cache_is_bounded_and_does_not_change_frames():
    rep = deformed_rep(num_frames=9, gop_length=3)
    small = Decoder(rep, keep_gops=1)
    frames = small.frames(torch.tensor([0, 8, 3, 1]))
    assert list(small._constants) == [2]  # GoPs are decoded in index order; only the last is kept
    torch.testing.assert_close(frames, Decoder(rep, keep_gops=3).frames(torch.tensor([0, 8, 3, 1])), rtol=0, atol=0)


def test_renderer_decodes_without_grad_and_differentiates_with_grad():
    rep = deformed_rep()
    renderer = Torch2DGS(Torch2DGSConfig(backend="torch"))
    with torch.no_grad():
        fast = renderer.render_frames(rep, torch.tensor([5, 2])).rgb
    slow = renderer.render_frames(rep, torch.tensor([5, 2])).rgb
    assert slow.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=2e-5)


def test_linear_helper_matches_reference():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(300, 40, generator=g), torch.randn(17, 40, generator=g), torch.randn(17, generator=g)
    torch.testing.assert_close(decode._linear(x, w, b, relu=True), F.linear(x, w, b).relu(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decode._linear(x, w, b, relu=False), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_bfloat16_mlp_decode_stays_close_to_float32():
    rep = deformed_rep()
    full = Decoder(rep).frames()
    half = Decoder(rep, mlp_dtype=torch.bfloat16).frames()
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0, atol=1e-2)


def test_frame_threads_give_the_same_frames_and_restore_thread_count():
    rep = deformed_rep(num_frames=9, gop_length=3)
    order = torch.tensor([8, 0, 4, 5, 1])
    one = Decoder(rep).frames_uint8(order)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = Decoder(rep, workers=3).frames_uint8(order)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
