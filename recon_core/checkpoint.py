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


class _Invalid(Exception):
    pass


def _join(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of :func:`_split` for a structure read from disk: anything it does not expect is _Invalid."""
    if isinstance(obj, dict):
        if len(obj) != 1:
            raise _Invalid(f"unexpected object with keys {sorted(obj)[:4]}")
        (kind, value), = obj.items()
        if kind == _TENSOR:
            if not isinstance(value, str) or value not in tensors:
                raise _Invalid(f"tensor {value!r} is not in the tensor file")
            return tensors[value]
        if kind == "__dict__":
            if not isinstance(value, list) or not all(
                isinstance(kv, list) and len(kv) == 2 and (kv[0] is None or isinstance(kv[0], (str, int, float, bool))) for kv in value
            ):
                raise _Invalid("malformed dictionary entry")
            return {k: _join(v, tensors) for k, v in value}
        if kind in ("__list__", "__tuple__"):
            if not isinstance(value, list):
                raise _Invalid(f"malformed {kind.strip('_')}")
            items = [_join(v, tensors) for v in value]
            return tuple(items) if kind == "__tuple__" else items
        raise _Invalid(f"unknown entry {kind!r}")
    if isinstance(obj, list):
        raise _Invalid("bare list outside a __list__ entry")
    return obj


def load_checkpoint(directory: str | Path, name: str = "state", device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; InputError naming the file that is
    missing, corrupt or not what recon writes (a tampered JSON structure included)."""
    directory = Path(directory)
    meta_path, tensor_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    if not meta_path.exists() or not tensor_path.exists():
        raise InputError(f"no checkpoint here (expected {meta_path.name} and {tensor_path.name})", directory)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: JSONDecodeError, huge numbers
        raise InputError(f"checkpoint file cannot be read: {e}", meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != "recon-checkpoint-1" or "state" not in meta:
        raise InputError("not a recon checkpoint (unknown format)", meta_path)
    try:
        tensors = load_file(str(tensor_path), device=str(device))
    except Exception as e:  # noqa: BLE001 - a corrupt safetensors header or body
        raise InputError(f"checkpoint tensor file cannot be read: {type(e).__name__}: {e}", tensor_path) from None
    try:
        state = _join(meta["state"], tensors)
    except (_Invalid, RecursionError) as e:
        raise InputError(f"checkpoint structure is invalid ({e}); the file was modified or damaged", meta_path) from None
    if not isinstance(state, dict):
        raise InputError("checkpoint structure is invalid (the state is not a dictionary)", meta_path)
    return state
