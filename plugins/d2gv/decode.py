"""Fast decoding of a ``d2gv`` model: frames as images, without autograd.

Decoding frame i of a GoP is the deformation MLP (``deform.py``) for every kept Gaussian, then
the summation rasteriser, a clamp and (for video output) the conversion to 8 bits. The training
path computes the same images; this path only reorganises the work for inference:

* pruned Gaussians are dropped before the MLP (the hard mask is 0/1, so the image is the same);
* what does not depend on time is computed once per GoP: the first layer's response to the
  canonical positions ``W_xy γ(xy)`` (the time input only shifts it by ``b + W_t γ(t)``), the
  conics and the footprint radii (the Cholesky factors are not deformed);
* so each frame costs one add + ReLU and two matrix products over the Gaussians (three with
  ``preset=paper``'s branches, fused into one layer; the hidden
  layer with its ReLU fused, and the heads), run by oneDNN where PyTorch exposes it
  (``torch.ops.mkldnn._linear_pointwise``, which uses AVX-512 on AMD CPUs where MKL does not;
  plain ``addmm`` otherwise, same result up to rounding);
* frames are rasterised straight from these tensors by :func:`rasterize.rasterize_sum`.

``mlp_dtype=torch.bfloat16`` runs the MLP in bfloat16 (fp32 accumulation), as ``d2gv-fit`` does
with ``mlp_bf16``: about 3× faster matrix products on CPUs with AVX512-BF16/AMX, offsets within
~1 % (relative) of float32; the rasteriser stays float32.

Use :class:`Decoder` (``Decoder(rep).frames_uint8(idx)``) or the ``torch-2dgs`` renderer, which
uses it whenever gradients are off.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .deform import gop_times, positional_encoding
from .rasterize import RasterSettings, project_cholesky, rasterize_sum
from .representation import MASK_THRESHOLD, D2GV, GopModel

__all__ = ["Decoder", "GopConstants", "gop_constants", "decode_gop_frames"]


@functools.cache
def _fused_linear_available() -> bool:
    """Whether oneDNN's fused linear(+ReLU) op exists in this PyTorch build (x86/ARM CPU builds)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _linear(x: Tensor, weight: Tensor, bias: Tensor, relu: bool) -> Tensor:
    """``x @ weight.T + bias`` (ReLU'd when asked); [M, in] → [M, out], dtype of ``x``."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and _fused_linear_available():
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")
    y = F.linear(x, weight, bias)
    return y.relu_() if relu else y


@dataclass(frozen=True)
class GopConstants:
    """Time-independent tensors of one GoP, for the kept Gaussians only (K of them).

    xy [K, 2] positions before tanh; h_xy [K, width] first-layer response ``W_xy γ(tanh(xy))``
    (no bias); conics [K, 3]; radii [K] int64; color [K, 3]; bias_t [F, width] first-layer bias
    of each frame of the GoP (``b + W_t γ(t_i)``); length F; layers: (weight, bias, relu) of the
    layers after the first (``DeformationMLP.decode_layers``: hidden, [fused branches,] heads).
    h_xy, bias_t and the layers are in the MLP's decoding dtype.
    """

    xy: Tensor
    h_xy: Tensor
    conics: Tensor
    radii: Tensor
    color: Tensor
    bias_t: Tensor
    length: int
    layers: tuple[tuple[Tensor, Tensor, bool], ...]


@torch.no_grad()
def gop_constants(gop: GopModel, length: int, height: int, width: int, mlp_dtype: torch.dtype = torch.float32) -> GopConstants:
    """Precompute what every frame of a GoP of ``length`` frames shares (hard mask applied)."""
    keep = torch.sigmoid(gop.mask_logit) > MASK_THRESHOLD
    xy = gop.xy[keep].contiguous()
    chol = gop.cholesky()[keep]
    _, conics, radii = project_cholesky(torch.zeros_like(xy), chol, height, width)
    mlp = gop.deform
    s = mlp.settings
    encoded = positional_encoding(torch.tanh(xy), s.xy_freqs, s.embedder).to(mlp_dtype)
    h_xy = F.linear(encoded, mlp.in_xy.weight.to(mlp_dtype)).contiguous()
    t = gop_times(length, xy.device)
    bias_t = mlp.in_xy.bias[None] + F.linear(positional_encoding(t[:, None], s.t_freqs, s.embedder), mlp.in_t.weight)
    layers = tuple((w.to(mlp_dtype).contiguous(), b.to(mlp_dtype).contiguous(), relu) for w, b, relu in mlp.decode_layers())

    return GopConstants(
        xy,
        h_xy,
        conics.contiguous(),
        radii,
        gop.color[keep].contiguous(),
        bias_t.to(mlp_dtype).contiguous(),
        length,
        layers,
    )


@torch.no_grad()
def decode_gop_frames(
    const: GopConstants,
    local: Tensor,
    height: int,
    width: int,
    backend: str = "auto",
) -> Tensor:
    """Frames ``local`` [F] (0-based in the GoP) → [F, H, W, 3] float32 in [0, 1], one frame at a time."""
    scale = const.xy.new_tensor([0.5 * width, 0.5 * height])
    settings = RasterSettings(height, width, backend=backend)
    out = const.xy.new_empty(local.numel(), height, width, 3)
    for k, i in enumerate(local.tolist()):
        h = torch.add(const.h_xy, const.bias_t[i]).relu_()
        for weight, bias, relu in const.layers:
            h = _linear(h, weight, bias, relu=relu)
        d = h.float()  # [K, 5]: Δxy, Δcolour
        means = (torch.tanh(const.xy + d[:, :2]) + 1.0) * scale
        color = const.color + d[:, 2:]
        out[k] = rasterize_sum(means[None], const.conics[None], color[None], const.radii[None], None, settings)[0]
    return out


class Decoder:
    """Decodes frames of a ``d2gv`` representation (inference only).

    GoP constants are computed when a GoP is first needed; the ``keep_gops`` most recently used
    are kept (12.5 MB for 20 000 Gaussians at width 156), so a sequential decode computes each
    GoP's once. They are not updated: build a new decoder after changing the model's parameters.

    Example::

        dec = Decoder(rep, workers=2)
        video = dec.frames_uint8()          # [T, H, W, 3] uint8, every frame
        rgb = dec.frames(torch.tensor([5]))  # [1, H, W, 3] float32 in [0, 1]
    """

    def __init__(
        self,
        rep: D2GV,
        backend: str = "auto",
        keep_gops: int = 2,
        mlp_dtype: torch.dtype = torch.float32,
        workers: int = 1,
    ) -> None:
        self.rep = rep
        self.backend = backend
        self.mlp_dtype = mlp_dtype
        self.keep_gops = max(1, keep_gops)
        self.workers = max(1, workers)
        self._constants: OrderedDict[int, GopConstants] = OrderedDict()

    def constants(self, g: int) -> GopConstants:
        """Constants of GoP ``g`` (computed on first use, least recently used dropped)."""
        if g in self._constants:
            self._constants.move_to_end(g)
        else:
            r = self.rep.gop_ranges()[g]
            self._constants[g] = gop_constants(self.rep.gops[g], len(r), self.rep.height, self.rep.width, self.mlp_dtype)
            while len(self._constants) > self.keep_gops:
                self._constants.popitem(last=False)
        return self._constants[g]

    @torch.no_grad()
    def frames(self, frames: Tensor | None = None) -> Tensor:
        """[F, H, W, 3] float32 in [0, 1] for global frame indices ``frames`` (None: all), in that order."""
        return self._decode(frames, torch.float32)

    @torch.no_grad()
    def frames_uint8(self, frames: Tensor | None = None) -> Tensor:
        """[F, H, W, 3] uint8 (round to nearest) for ``frames`` (None: all), converted frame by frame."""
        return self._decode(frames, torch.uint8)

    def _decode(self, frames: Tensor | None, dtype: torch.dtype) -> Tensor:
        """Decode GoP by GoP; with ``workers`` > 1 the frames of a GoP are shared out to that many
        threads, each running single-threaded torch ops (torch's thread count is set to 1 meanwhile).

        Frame-level threads rather than OpenMP threads inside every op: an op's OpenMP threads
        wait for each other at its end, and on a CPU shared with other jobs a preempted thread
        stalls them all (decoding with 2 OpenMP threads on a busy 2-core machine measured ~10×
        slower than with one); independent frames have no such barrier.
        """
        rep = self.rep
        idx = rep.frame_indices(frames)
        starts = rep.gop_starts.cpu()
        gop_idx = torch.searchsorted(starts, idx, right=True) - 1
        out = torch.empty(idx.numel(), rep.height, rep.width, 3, dtype=dtype, device=rep.gop_starts.device)

        def one(const: GopConstants, p: int, local: int) -> None:
            img = decode_gop_frames(const, torch.tensor([local]), rep.height, rep.width, self.backend)[0]
            out[p] = img if dtype == torch.float32 else img.mul_(255.0).add_(0.5).to(dtype)

        pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        threads = torch.get_num_threads()
        if pool is not None:
            torch.set_num_threads(1)
        try:
            for g in torch.unique(gop_idx).tolist():
                const = self.constants(g)
                pos = torch.nonzero(gop_idx == g).squeeze(1).tolist()
                local = (idx[pos] - starts[g]).tolist()
                if pool is None:
                    for p, i in zip(pos, local):
                        one(const, p, i)
                else:
                    list(pool.map(one, [const] * len(pos), pos, local))
        finally:
            if pool is not None:
                pool.shutdown()
                torch.set_num_threads(threads)
        return out
