"""Optional tiny-cuda-nn support: used only when importable and a CUDA device is present."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from recon_core import InputError

__all__ = ["tcnn_available", "tcnn_module"]


def tcnn_available() -> bool:
    """True when tinycudann can be imported and CUDA is available."""
    try:
        found = importlib.util.find_spec("tinycudann") is not None
    except (ImportError, ValueError):
        found = False
    return found and torch.cuda.is_available()


def tcnn_module(in_dim: int, encoding_config: dict[str, Any]) -> nn.Module:
    """A float32 ``tinycudann.Encoding``; InputError when tinycudann/CUDA are missing."""
    if not tcnn_available():
        raise InputError("backend 'tcnn' needs the tinycudann package and a CUDA GPU; use backend=torch or auto")
    import tinycudann as tcnn  # type: ignore[import-not-found]

    return tcnn.Encoding(n_input_dims=in_dim, encoding_config=encoding_config, dtype=torch.float32)
