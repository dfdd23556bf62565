"""The DGGT network: exact checkpoint layout (meta device) and tiny-config forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recon_plugins.dggt.layers import RotaryPositionEmbedding2D
from recon_plugins.dggt.network import DGGT_SIZES, DGGTNetwork

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = Path(__file__).parents[1] / "plugins" / "dggt" / "reference_state_dict.json"
SHARED_REFERENCE = Path("/work/shared/reference/dggt_state_dict.json")


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def meta_net() -> DGGTNetwork:
    with torch.device("meta"):
        return DGGTNetwork("full")


@pytest.fixture(scope="module")
def tiny() -> DGGTNetwork:
    torch.manual_seed(0)
    return DGGTNetwork("tiny").eval()


def test_packaged_reference_is_the_shared_one() -> None:
    if not SHARED_REFERENCE.exists():
        pytest.skip("shared reference folder not on this machine")
    assert REFERENCE.read_bytes() == SHARED_REFERENCE.read_bytes()


def test_full_config_matches_published_checkpoint_layout(meta_net: DGGTNetwork, reference: dict) -> None:
    state = meta_net.state_dict()
    expected = {name: tuple(shape) for name, shape, _ in reference["entries"]}
    assert len(expected) == reference["num_entries"] == 1991
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    assert missing == [] and unexpected == []
    wrong = {k: (tuple(v.shape), expected[k]) for k, v in state.items() if tuple(v.shape) != expected[k]}
    assert wrong == {}
    assert list(state) == [name for name, _, _ in reference["entries"]], "state-dict order differs"
    assert all(v.dtype == torch.float32 for v in state.values())
    assert sum(p.numel() for p in meta_net.parameters()) == reference["total_parameters"] == 1_351_616_843


def test_buffers_match_reference(meta_net: DGGTNetwork, reference: dict) -> None:
    params = {n for n, _ in meta_net.named_parameters()}
    persistent = [k for k in meta_net.state_dict() if k not in params]
    assert persistent == reference["persistent_buffers"]
    non_persistent = sorted(n for n, _ in meta_net.named_buffers() if n not in persistent)
    assert non_persistent == sorted(s.split(" ")[0] for s in reference["non_persistent_buffers_not_in_state_dict"])


def test_meta_build_allocates_nothing(meta_net: DGGTNetwork) -> None:
    tensors = [*meta_net.parameters(), *meta_net.buffers()]
    assert tensors and all(t.is_meta for t in tensors)


def test_tiny_forward_shapes_and_ranges(tiny: DGGTNetwork) -> None:
    B, S, H, W = 1, 2, 28, 42
    images = torch.rand(B, S, 3, H, W)
    query = torch.tensor([[[5.0, 6.0], [30.0, 20.0]]])
    with torch.no_grad():
        out = tiny(images, query_points=query)
    assert out.pose_enc.shape == (B, S, 9)
    assert (out.pose_enc[..., 7:] >= 0).all(), "fields of view are ReLU-activated"
    assert out.depth.shape == (B, S, H, W, 1) and (out.depth > 0).all()
    assert out.depth_conf.shape == (B, S, H, W) and ((out.depth_conf > 0) & (out.depth_conf < 1)).all()
    assert out.world_points.shape == (B, S, H, W, 3) and out.world_points_conf.shape == (B, S, H, W)
    assert (out.world_points_conf > 1).all(), "expp1 confidence"
    gs = out.gs_map
    assert gs.shape == (B, S, H, W, 11)
    assert ((gs[..., :4] >= 0) & (gs[..., :4] <= 1)).all(), "rgb and opacity are sigmoids"
    assert (gs[..., 4:7] >= 0).all() and (gs[..., 4:7] <= 0.1 * 40).all()
    assert torch.allclose(gs[..., 7:11].norm(dim=-1), torch.ones(B, S, H, W), atol=1e-5)
    assert out.lifespan.shape == (B, S, H, W) and (out.lifespan > 0).all()
    assert out.dynamic_logit.shape == (B, S, H, W)
    assert out.semantic_logits.shape == (B, S, H, W, 10)
    assert out.tracks.shape == (B, S, 2, 2) and out.track_vis.shape == (B, S, 2) and out.track_conf.shape == (B, S, 2)
    assert torch.allclose(out.tracks[:, 0], query), "frame 0 holds the query points"
    for t in vars(out).values():
        if isinstance(t, torch.Tensor):
            assert torch.isfinite(t).all()


def test_unbatched_input_and_head_selection(tiny: DGGTNetwork) -> None:
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        out = tiny(images, heads=("depth",))
    assert out.depth.shape == (1, 2, 28, 28, 1)
    assert out.gs_map is None and out.world_points is None and out.tracks is None
    with pytest.raises(ValueError, match="unknown heads"):
        tiny(images, heads=("depth", "normals"))


def test_frame0_is_the_reference_and_other_frames_are_exchangeable(tiny: DGGTNetwork) -> None:
    """Frame 0 has its own camera/register tokens; frames 1..S-1 are treated alike, so
    swapping two of them swaps their predictions and leaves frame 0's unchanged."""
    images = torch.rand(1, 3, 3, 28, 28)
    swapped = images[:, [0, 2, 1]]
    with torch.no_grad():
        a, b = tiny(images, heads=("depth", "gs")), tiny(swapped, heads=("depth", "gs"))
    for x, y in ((a.pose_enc, b.pose_enc), (a.depth, b.depth), (a.gs_map, b.gs_map)):
        assert torch.allclose(x[:, [0, 2, 1]], y, atol=1e-5)
    with torch.no_grad():
        agg = tiny.aggregator
        saved = agg.camera_token.clone()
        agg.camera_token[:, 0] += 1.0  # trained tokens differ; random ones barely do
        try:
            d = agg(images).frame[-1]
            c = agg(images[:, [1, 0, 2]]).frame[-1]
        finally:
            agg.camera_token.copy_(saved)
    assert not torch.allclose(d[:, [1, 0, 2]], c, atol=1e-4), "frame 0 must be special"


def test_rope_depends_only_on_relative_position() -> None:
    rope = RotaryPositionEmbedding2D(100.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq: tuple[int, int], pk: tuple[int, int]) -> float:
        rq = rope(q, torch.tensor([[pq]]))
        rk = rope(k, torch.tensor([[pk]]))
        return float((rq * rk).sum())

    assert score((3, 5), (1, 2)) == pytest.approx(score((7, 9), (5, 6)), rel=1e-4)
    assert score((3, 5), (1, 2)) != pytest.approx(score((3, 5), (2, 2)), rel=1e-3)
    x = torch.randn(2, 3, 4, 16)
    pos = torch.randint(0, 9, (2, 4, 2))
    assert torch.allclose(rope(x, pos).norm(dim=-1), x.norm(dim=-1), atol=1e-5), "a rotation keeps norms"


def test_tiny_config_is_small_with_the_same_key_names(reference: dict) -> None:
    net = DGGTNetwork(DGGT_SIZES["tiny"])
    assert sum(p.numel() for p in net.parameters()) < 2_000_000
    names = {name for name, _, _ in reference["entries"]}
    assert set(net.state_dict()) <= names, "tiny uses the checkpoint's names (fewer blocks)"


def test_full_size_forward_shapes_on_meta(meta_net: DGGTNetwork) -> None:
    """The full network at DGGT's input size (518 x 294), shape propagation only (no memory)."""
    images = torch.empty(1, 2, 3, 294, 518, device="meta")
    with torch.no_grad():
        out = meta_net(images, query_points=torch.empty(1, 4, 2, device="meta"))
    assert out.pose_enc.shape == (1, 2, 9)
    assert out.depth.shape == (1, 2, 294, 518, 1) and out.gs_map.shape == (1, 2, 294, 518, 11)
    assert out.lifespan.shape == out.dynamic_logit.shape == (1, 2, 294, 518)
    assert out.tracks.shape == (1, 2, 4, 2)


def test_batch_elements_are_independent(tiny: DGGTNetwork) -> None:
    images = torch.rand(2, 2, 3, 28, 28)
    with torch.no_grad():
        both = tiny(images, heads=("depth",))
        second = tiny(images[1:], heads=("depth",))
    assert torch.allclose(both.depth[1:], second.depth, atol=1e-5)
    assert torch.allclose(both.pose_enc[1:], second.pose_enc, atol=1e-5)


def _deterministic_state(net: DGGTNetwork) -> dict[str, torch.Tensor]:
    """Weights that depend only on each tensor's position in the state dict and its shape."""
    out = {}
    for k, (name, v) in enumerate(net.state_dict().items()):
        w = 0.1 * torch.sin(torch.arange(v.numel(), dtype=torch.float64) * 0.37 + k).float().reshape(v.shape)
        out[name] = w + 1.0 if name.endswith("weight") and v.ndim == 1 else w
    return out


def test_outputs_match_the_reference_implementation() -> None:
    """Golden values computed by xiaomi-research/dggt@a3276d2's own modules (Aggregator with a
    2-block DINOv2, CameraHead, DPTHead, GaussianHead) at the tiny config with the weights of
    ``_deterministic_state``; guards the quirks the checkpoint depends on (RoPE layout, the
    in-place-ReLU residual of the DPT fusion blocks, the Gaussian head's first-DINO-layer input)."""
    net = DGGTNetwork("tiny").eval()
    net.load_state_dict(_deterministic_state(net))
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(42.0), indexing="ij")
    img = torch.stack([torch.stack([0.5 + 0.4 * torch.sin(0.3 * xx + 0.2 * yy + c + 2 * s) for c in range(3)]) for s in range(2)])[None]
    with torch.no_grad():
        out = net(img, heads=("depth", "gs", "instance"))
    pose = [0.343598, 0.805585, 0.719247, 0.122509, -0.669104, -1.223687, -1.215358, 0.0, 0.377808,
            -0.292756, -0.450855, -0.523002, -0.478437, -0.325377, -0.108808, 0.107861, 0.26859, 0.345781]
    assert torch.allclose(out.pose_enc.flatten(), torch.tensor(pose), atol=2e-5)
    assert out.depth.mean().item() == pytest.approx(1.0968738794326782, rel=1e-5)
    assert out.depth[0, 1, 10, 20, 0].item() == pytest.approx(1.084613680839538, rel=1e-5)
    assert out.depth_conf.mean().item() == pytest.approx(0.5250635743141174, rel=1e-5)
    gs_means = [0.505684, 0.523112, 0.529663, 0.525328, 0.07236, 0.070457, 0.069862, 0.241923, 0.504131, 0.655406, 0.506114]
    assert torch.allclose(out.gs_map.mean(dim=(0, 1, 2, 3)), torch.tensor(gs_means), atol=2e-5)
    gs_pixel = [0.5048038363456726, 0.5229559540748596, 0.5303076505661011, 0.5264490246772766, 0.07257308810949326,
                0.0705421194434166, 0.06978025287389755, 0.21594655513763428, 0.4857475459575653, 0.6593925356864929, 0.5316182374954224]
    assert torch.allclose(out.gs_map[0, 0, 5, 7], torch.tensor(gs_pixel), atol=2e-5)
    assert (1 / out.lifespan).mean().item() == pytest.approx(0.002296633552759886, rel=1e-4)
    assert (1 / out.lifespan).max().item() == pytest.approx(0.011267120018601418, rel=1e-4)
    assert out.dynamic_logit.mean().item() == pytest.approx(-0.03881413862109184, rel=1e-4)
    assert out.dynamic_logit[0, 0, 12, 30].item() == pytest.approx(-0.032504498958587646, rel=1e-4)
