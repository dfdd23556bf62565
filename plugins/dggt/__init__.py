"""DGGT: pose-free feed-forward 4D Gaussian reconstruction of driving scenes (arXiv 2512.03004).

Provides the ``dggt`` representation. Modules:

* :mod:`.layers`, :mod:`.dinov2`, :mod:`.aggregator` — the VGGT-1B backbone (DINOv2 ViT-L/14-reg4
  patch embedding, 24 + 24 alternating frame/global blocks with RoPE and QK-norm);
* :mod:`.heads` (camera head, one configurable DPT head), :mod:`.track` (track head),
  :mod:`.sky` (sky hemisphere) and :mod:`.network` (the whole model, ``full``/``tiny`` sizes);
  the ``full`` layout equals the published checkpoint key for key; ``benchmarks/dggt_parity.py``
  runs the original code (xiaomi-research/dggt, the TTR fork) beside it at tiny size with the same
  weights: heads, cameras and Gaussian positions identical, frames (modes 2 and 3) within 6e-7
  (docs/benchmarks.md);
* :mod:`.weights` (strict ``weights_only`` loading of ``model_latest_waymo.pt``),
  :mod:`.pose_encoding`, :mod:`.preprocess` (518-wide inputs), :mod:`.composition`
  (static/dynamic/lifespan rules), :mod:`.interpolate` (``mode=interpolate``, the original's mode 3:
  frames between the input frames, with clustered and tracked dynamic objects), :mod:`.fit`
  (``init=fit``) and :mod:`.representation`.
"""

from __future__ import annotations

from recon_core import hookimpl

from .representation import DGGTConfig, DGGTRepresentation

__all__ = ["DGGTRepresentation", "DGGTConfig"]


@hookimpl
def register_representations() -> list[type]:
    return [DGGTRepresentation]
