"""IDR checkpoints (``checkpoints/ModelParameters/<epoch>.pth``) into the ``idr`` representation.

IDR saves ``{"epoch": int, "model_state_dict": IDRNetwork.state_dict()}`` (torch.save). The network's
keys are ``implicit_network.lin{l}.{bias, weight_g, weight_v}`` and
``rendering_network.lin{l}.{bias, weight_g, weight_v}`` (``torch.nn.utils.weight_norm``: g is the
per-row norm [out, 1], v the direction [out, in]; ``lin{l}.weight`` without weight normalisation).
HashModNFFBanks-IDR adds ``implicit_network.dencity_net.beta`` (its squashing's Laplace β, never
trained) and its encoders' parameters under ``implicit_network.embed_model.*``; those are not read
(only the MLPs map one to one), and a positional-encoding (``fourier``) or parameter-free encoder
is needed for a complete load.

Layer l of IDR is ``layers.l`` here (the same layer order, input layouts ``[x, sin(2^k x), cos(2^k x)]``
and skip concatenation), with ``parametrizations.weight.original0`` = g and ``original1`` = v. The file
is read with ``torch.load(weights_only=True)``: tensors and plain containers only, no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from recon_core import InputError, MissingWeightsError

if TYPE_CHECKING:
    from .representation import IDRRepresentation

__all__ = ["idr_key_map", "load_idr_checkpoint", "read_idr_state"]


def read_idr_state(path: Path) -> dict[str, Tensor]:
    """The ``model_state_dict`` of an IDR checkpoint (or a bare state dict), read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError("idr (init_weights)", path.name, path,
                                  "an IDR run (its checkpoints/ModelParameters/<epoch>.pth; IDR's repository ships trained ones)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling raises many types
        raise InputError(f"not a readable torch checkpoint with plain tensors ({type(e).__name__}: {e})", path) from None
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError("expected IDR's {'model_state_dict': {name: tensor}}", path)
    return state


def idr_key_map(module: nn.ModuleList, prefix: str, ours: str) -> dict[str, str]:
    """IDR key → our state-dict key for one MLP (``layers`` of ImplicitNetwork / RenderingNetwork)."""
    out = {}
    for i, lin in enumerate(module):
        out[f"{prefix}.lin{i}.bias"] = f"{ours}.{i}.bias"
        if hasattr(lin, "parametrizations"):
            out[f"{prefix}.lin{i}.weight_g"] = f"{ours}.{i}.parametrizations.weight.original0"
            out[f"{prefix}.lin{i}.weight_v"] = f"{ours}.{i}.parametrizations.weight.original1"
        else:
            out[f"{prefix}.lin{i}.weight"] = f"{ours}.{i}.weight"
    return out


def load_idr_checkpoint(rep: "IDRRepresentation", path: Path) -> None:
    """Copy an IDR checkpoint's MLP weights into a built representation; InputError on any mismatch."""
    state = read_idr_state(path)
    mapping = {**idr_key_map(rep.implicit.layers, "implicit_network", "implicit.layers"),
               **idr_key_map(rep.rendering.layers, "rendering_network", "rendering.layers")}
    ours = rep.state_dict()
    missing = [k for k in mapping if k not in state]
    if missing:
        raise InputError(f"the checkpoint lacks {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}: its network "
                         f"does not have our layers (sizes, weight_norm); configure idr to match it (e.g. --config its .conf)", path)
    extra = sorted(k for k in state if k.startswith(("implicit_network.lin", "rendering_network.lin")) and k not in mapping)
    if extra:
        raise InputError(f"the checkpoint has more layers than configured ({', '.join(extra[:4])}); match idr's sizes to it", path)
    new = {}
    for theirs, mine in mapping.items():
        t = state[theirs]
        if mine not in ours:
            raise InputError(f"{theirs} has no counterpart ({mine})", path)
        if tuple(t.shape) != tuple(ours[mine].shape):
            raise InputError(f"{theirs} has shape {tuple(t.shape)}, the configured network needs {tuple(ours[mine].shape)}", path)
        if not torch.isfinite(t).all():
            raise InputError(f"{theirs} holds NaN or infinite values", path)
        new[mine] = t.to(ours[mine].dtype)
    rep.load_state_dict(new, strict=False)
