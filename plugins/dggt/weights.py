"""Loading the DGGT checkpoint (a plain state dict, read with ``weights_only=True`` only).

The published file is ``model_latest_waymo.pt`` from the Hugging Face repository
``xiaomi-research/dggt`` (linked from the README of github.com/xiaomi-research/dggt). recon never
downloads it; :data:`CHECKPOINT_SOURCE` tells users where to get it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from recon_core.components import weights_dir
from recon_core.errors import InputError

from .network import DGGT_SIZES, DGGTNetwork, DGGTSize

__all__ = [
    "CHECKPOINT_FILENAME",
    "CHECKPOINT_SOURCE",
    "default_checkpoint_path",
    "read_state_dict",
    "load_network_weights",
    "load_network",
]

CHECKPOINT_FILENAME = "model_latest_waymo.pt"
CHECKPOINT_SOURCE = "https://huggingface.co/xiaomi-research/dggt/resolve/main/model_latest_waymo.pt"


def default_checkpoint_path() -> Path:
    """``weights_dir()/dggt/model_latest_waymo.pt`` (``$RECON_WEIGHTS_DIR`` overrides the folder)."""
    return weights_dir() / "dggt" / CHECKPOINT_FILENAME


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; InputError if it is not a flat
    mapping of names to tensors."""
    path = Path(path)
    if not path.is_file():
        raise InputError("DGGT checkpoint not found", path)
    try:
        try:
            # mmap: the 5.4 GB file is paged in on use instead of copied (zip-format files only).
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise InputError(f"cannot read the DGGT checkpoint ({type(e).__name__}: {e})", path) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError("not a DGGT checkpoint: expected a plain state dict of tensors", path)
    return dict(state)


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", … (+{len(keys) - n} more)" if len(keys) > n else "")


def load_network_weights(net: DGGTNetwork, path: str | Path) -> None:
    """Load ``path`` into ``net`` strictly (all keys, all shapes), or raise InputError naming a few
    missing / unexpected / mis-shaped keys. Works on a meta-device network (tensors are assigned,
    and the non-persistent buffers recreated), which avoids holding two copies of 1.35 B weights.
    """
    state = read_state_dict(path)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} key(s) with the wrong shape: {_few(wrong, 3)}")
        raise InputError(
            "checkpoint does not match the DGGT network "
            f"({'; '.join(parts)}). Expected the published {CHECKPOINT_FILENAME} from {CHECKPOINT_SOURCE}",
            path,
        )
    on_meta = any(t.is_meta for t in expected.values())
    if on_meta:
        dtypes = {k: v.dtype for k, v in expected.items()}
        net.load_state_dict({k: v.to(dtypes[k]) for k, v in state.items()}, strict=True, assign=True)
        net.aggregator.reset_normalization()
    else:
        net.load_state_dict(state, strict=True)


def load_network(path: str | Path, size: DGGTSize | str = "full", device: torch.device | str = "cpu") -> DGGTNetwork:
    """Build the network without allocating random weights, load ``path`` and move it to ``device``."""
    with torch.device("meta"):
        net = DGGTNetwork(DGGT_SIZES[size] if isinstance(size, str) else size)
    load_network_weights(net, path)
    leftover = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    assert not leftover, f"tensors left on the meta device: {leftover[:5]}"
    return net.to(device).eval()
