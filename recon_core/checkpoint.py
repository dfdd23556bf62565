"""Checkpoints: nested state (dicts and lists of tensors and plain values) ↔ safetensors + JSON.

Tensors go into ``NAME.safetensors`` under '/'-joined keys; everything else (numbers, strings,
the nesting itself) goes into ``NAME.json``. Both files are written atomically, the JSON last,
so a checkpoint whose JSON exists is complete. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import InputError
from .io import atomic_path, write_json

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_exists"]

_TENSOR = "__tensor__"


def _split(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        key, n = prefix or "_", 1
        while key in tensors:  # '/'-joined paths can collide ({"a/b": x, "a": {"b": y}})
            n += 1
            key = f"{prefix or '_'}#{n}"
        tensor = obj.detach().cpu().contiguous()
        # safetensors refuses tensors sharing memory (tied weights, the same tensor twice)
        if any(t.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr() for t in tensors.values()):
            tensor = tensor.clone()
        tensors[key] = tensor
        return {_TENSOR: key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split(v, f"{prefix}/{k}" if prefix else str(k), tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_split(v, f"{prefix}/{i}" if prefix else str(i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": items}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} at '{prefix}'")


def _join(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__dict__" in obj:
            return {k: _join(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_join(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
    return obj


def save_checkpoint(directory: str | Path, state: dict[str, Any], name: str = "state") -> Path:
    """Write ``state`` to ``directory/name.safetensors`` + ``name.json``; return the JSON path."""
    directory = Path(directory)
    tensors: dict[str, Tensor] = {}
    structure = _split(state, "", tensors)
    with atomic_path(directory / f"{name}.safetensors") as tmp:
        save_file(tensors, str(tmp))
    return write_json(directory / f"{name}.json", {"format": "recon-checkpoint-1", "state": structure})


def checkpoint_exists(directory: str | Path, name: str = "state") -> bool:
    return (Path(directory) / f"{name}.json").exists()


def load_checkpoint(directory: str | Path, name: str = "state", device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; InputError when missing or corrupt."""
    directory = Path(directory)
    meta_path, tensor_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    if not meta_path.exists() or not tensor_path.exists():
        raise InputError(f"no checkpoint here (expected {meta_path.name} and {tensor_path.name})", directory)
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(tensor_path), device=str(device))
    except Exception as e:  # corrupt JSON or safetensors header
        raise InputError(f"checkpoint cannot be read: {e}", meta_path) from None
    if meta.get("format") != "recon-checkpoint-1":
        raise InputError("not a recon checkpoint (unknown format)", meta_path)
    return _join(meta["state"], tensors)
