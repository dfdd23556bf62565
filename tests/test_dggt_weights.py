"""Loading DGGT checkpoints: strict, weights_only, meta-device assignment, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recon_core.errors import InputError
from recon_plugins.dggt.network import DGGTNetwork
from recon_plugins.dggt.weights import (
    CHECKPOINT_FILENAME,
    default_checkpoint_path,
    load_network,
    load_network_weights,
    read_state_dict,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[DGGTNetwork, Path]:
    torch.manual_seed(1)
    net = DGGTNetwork("tiny").eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(net.state_dict(), path)
    return net, path


def _outputs(net: DGGTNetwork, images: torch.Tensor, heads: tuple[str, ...] = ("depth", "gs", "instance")) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = net(images, heads=heads)
    return {k: v for k, v in vars(out).items() if isinstance(v, torch.Tensor)}


def test_round_trip_through_meta_build_gives_identical_outputs(tiny_ckpt) -> None:
    net, path = tiny_ckpt
    loaded = load_network(path, "tiny")
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert not loaded.training
    images = torch.rand(1, 2, 3, 28, 42)
    ref, got = _outputs(net, images), _outputs(loaded, images)
    assert ref.keys() == got.keys() and len(ref) == 6
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_loading_into_a_materialised_network(tiny_ckpt) -> None:
    net, path = tiny_ckpt
    other = DGGTNetwork("tiny").eval()
    images = torch.rand(1, 2, 3, 28, 28)
    expected = _outputs(net, images, ("depth",))["depth"]
    assert not torch.equal(_outputs(other, images, ("depth",))["depth"], expected)
    load_network_weights(other, path)
    assert torch.equal(_outputs(other, images, ("depth",))["depth"], expected)


def test_mismatched_checkpoint_names_the_keys(tiny_ckpt, tmp_path: Path) -> None:
    net, _ = tiny_ckpt
    state = dict(net.state_dict())
    del state["gs_head.norm.weight"]
    state["fusion_model.mlp.weight"] = torch.zeros(3)
    state["camera_head.embed_pose.bias"] = torch.zeros(7)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(InputError) as info:
        load_network(bad, "tiny")
    msg = str(info.value)
    assert "1 missing key(s): gs_head.norm.weight" in msg
    assert "1 unexpected key(s): fusion_model.mlp.weight" in msg
    assert "camera_head.embed_pose.bias (7,)" in msg and CHECKPOINT_FILENAME in msg
    assert str(bad) in msg


def test_full_checkpoint_into_tiny_network_lists_a_few_keys(tiny_ckpt, tmp_path: Path) -> None:
    _, path = tiny_ckpt
    with torch.device("meta"):
        full = DGGTNetwork("full")
    with pytest.raises(InputError, match=r"wrong shape: .*\(\+\d+ more\)"):
        load_network_weights(full, path)


def test_unreadable_or_foreign_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_state_dict(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        read_state_dict(garbage)
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, nested)
    with pytest.raises(InputError, match="plain state dict"):
        read_state_dict(nested)


class _Evil:
    def __reduce__(self):  # pragma: no cover - must never run
        return (print, ("unpickled!",))


def test_arbitrary_objects_are_never_unpickled(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"w": _Evil()}, evil)
    with pytest.raises(InputError, match="cannot read"):
        read_state_dict(evil)
    assert "unpickled!" not in capsys.readouterr().out


def test_default_path_follows_weights_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECON_WEIGHTS_DIR", str(tmp_path))
    assert default_checkpoint_path() == tmp_path / "dggt" / CHECKPOINT_FILENAME
