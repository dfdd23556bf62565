"""d2gv representation: pruning mask, GoP split/stitch, export → decode round trip, renderer."""

from __future__ import annotations

import pytest
import torch

from recon_core import InputError, RunContext, Video
from recon_plugins.d2gv.renderer import Torch2DGS
from recon_plugins.d2gv.representation import D2GV, D2GVConfig, straight_through_mask

CPU = RunContext(torch.device("cpu"), seed=0)


def tiny_video(num_frames: int = 7, width: int = 24, height: int = 16, gop_length: int = 3) -> Video:
    """A moving colour gradient with a bright square; frame i is deterministic in i."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")

    def read(i: int) -> torch.Tensor:
        shift = i / max(num_frames - 1, 1)
        img = torch.stack([0.2 + 0.6 * xs, 0.3 + 0.4 * ys, 0.5 + 0.3 * torch.sin(6 * (xs + shift))], -1)
        x0 = 2 + 2 * i % (width - 6)
        img[4:9, x0 : x0 + 5] = 0.95
        return img.clamp(0, 1).float()

    return Video("tiny", num_frames, width, height, 25.0, read, gop_length=gop_length)


def test_straight_through_mask_is_hard_forward_soft_backward():
    logits = torch.tensor([-3.0, -1.5, -1.3863, -1.38, 2.0], requires_grad=True)
    mask = straight_through_mask(logits, threshold=0.2)
    assert mask.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # sigmoid(-1.3863) = 0.19999 → pruned, sigmoid(-1.38) = 0.2010 → kept
    (mask * torch.arange(1.0, 6.0)).sum().backward()
    s = torch.sigmoid(logits.detach())
    torch.testing.assert_close(logits.grad, torch.arange(1.0, 6.0) * s * (1 - s))


def test_hard_mask_removes_contribution_and_prune_drops_gaussians():
    video = tiny_video(num_frames=3, gop_length=3)
    rep = D2GV(D2GVConfig(gop_length=0, num_gaussians=50))
    rep.build(video, CPU)
    gop = rep.gops[0]
    renderer = Torch2DGS()
    with torch.no_grad():
        gop.mask_logit[10:] = -5.0  # prune all but the first 10
        pruned = renderer.render_frames(rep, torch.tensor([1])).rgb
        assert rep.num_kept() == 10
        kept = gop.prune()
        assert kept == 10 and gop.xy.shape == (10, 2) and gop.mask_logit.shape == (10,)
        after = renderer.render_frames(rep, torch.tensor([1])).rgb
    torch.testing.assert_close(pruned, after)


@pytest.mark.parametrize("num_frames,gop_length", [(7, 3), (6, 3), (1, 4), (10, 1), (5, 10)])
def test_gop_split_and_stitch_cover_every_frame_once(num_frames, gop_length):
    video = tiny_video(num_frames=num_frames, gop_length=gop_length)
    rep = D2GV(D2GVConfig(gop_length=0, num_gaussians=8))
    rep.build(video, CPU)
    covered = [i for r in rep.gop_ranges() for i in r]
    assert covered == list(range(num_frames))
    assert all(0 < len(r) <= gop_length for r in rep.gop_ranges())

    # stitching: frames requested in any order come back in that order, each from its own GoP
    order = torch.randperm(num_frames, generator=torch.Generator().manual_seed(0))
    seen = torch.zeros(num_frames, dtype=torch.long)
    for pos, g in rep.frame_gaussians(order, max_frames=2):
        frames = order[pos]
        seen[frames] += 1
        gop = int(torch.searchsorted(rep.gop_starts, frames[:1], right=True)) - 1
        assert all(i in rep.gop_ranges()[gop] for i in frames.tolist())
        assert torch.equal(g.frames, frames - rep.gop_starts[gop])
    assert torch.equal(seen, torch.ones(num_frames, dtype=torch.long))


def test_render_by_time_index_and_order():
    video = tiny_video(num_frames=7, gop_length=3)
    rep = D2GV(D2GVConfig(gop_length=0, num_gaussians=40))
    rep.build(video, CPU)
    with torch.no_grad():  # give every GoP/frame a distinct image through the deformation head
        for gop in rep.gops:
            gop.deform.head.bias.copy_(torch.tensor([0.0, 0.0, 0.1, 0.0, 0.0]))
            gop.deform.head.weight.normal_(0, 0.05)
    r = Torch2DGS()
    with torch.no_grad():
        every = r.render_frames(rep, torch.arange(rep.num_frames)).rgb
        by_index = r.render_frames(rep, torch.tensor([5, 0, 5])).rgb
        by_time = r.render_frames(rep, rep.frame_indices(video.timestamps[[5, 0, 5]] + 0.004)).rgb
    assert every.shape == (7, 16, 24, 3)
    torch.testing.assert_close(by_index, every[[5, 0, 5]])
    torch.testing.assert_close(by_time, every[[5, 0, 5]])
    assert not torch.allclose(every[0], every[1])
    with pytest.raises(InputError):
        r.render_frames(rep, torch.tensor([7]))
    with pytest.raises(InputError, match="integer index"):
        r.render_frames(rep, torch.tensor([0.5]))


def test_render_is_differentiable():
    video = tiny_video(num_frames=4, gop_length=2)
    rep = D2GV(D2GVConfig(gop_length=0, num_gaussians=30))
    rep.build(video, CPU)
    out = Torch2DGS().render_frames(rep, torch.tensor([3, 0])).rgb
    out.sum().backward()
    assert rep.gops[0].color.grad.abs().sum() > 0 and rep.gops[1].color.grad.abs().sum() > 0


def test_export_decode_round_trip(tmp_path):
    video = tiny_video(num_frames=7, gop_length=3)
    rep = D2GV(D2GVConfig(gop_length=0, num_gaussians=60, mlp_width=16))
    rep.build(video, CPU)
    with torch.no_grad():
        rep.gops[1].mask_logit[:20] = -4.0  # pruned Gaussians are not exported
        for gop in rep.gops:
            gop.deform.head.weight.normal_(0, 0.02)
    files = rep.export(tmp_path, "d2gv-fp16")
    assert all(f.exists() for f in files)
    decoded = D2GV.from_export(tmp_path)
    assert [g.num_gaussians for g in decoded.gops] == [60, 40, 60]
    assert decoded.payload_bytes() == rep.payload_bytes()
    expected_bytes = 2 * (160 * 8) + 3 * 2 * sum(p.numel() for p in rep.gops[0].deform.parameters())
    assert rep.payload_bytes() == expected_bytes
    r = Torch2DGS()
    with torch.no_grad():
        original, frames = r.render_frames(rep, torch.arange(rep.num_frames)).rgb, r.render_frames(decoded, torch.arange(decoded.num_frames)).rgb
    assert frames.shape == (video.num_frames, video.height, video.width, 3)
    assert (frames - original).abs().max() < 2e-2  # fp16 storage
    with pytest.raises(InputError):
        rep.export(tmp_path, "ply")


def test_build_rejects_non_video():
    with pytest.raises(InputError):
        D2GV().build(object(), CPU)
