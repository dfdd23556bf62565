"""D2GV: a video as deformable 2D Gaussians, one independent set per group of pictures (GoP).

Every GoP holds N canonical Gaussians and one deformation MLP (``deform.py``):

* ``xy``   [N, 2] positions *before* tanh (the rendered position is tanh(xy + Δxy) ∈ [-1, 1]²,
  mapped to pixels as in ``rasterize.py``: -1/+1 are the image edges, pixel centres at i + 0.5);
* ``chol`` [N, 3] raw Cholesky entries; the factor used is ``chol + (bound, 0, bound)`` in pixels
  with the diagonal clamped to ``>= min_diag`` (GaussianImage adds the same bound, 0.5);
* ``color`` [N, 3] linear RGB weights (no activation; opacity is fixed at 1);
* ``mask_logit`` [N] learnable pruning logits: mask = [sigmoid(m) > threshold], used
  straight-through while fitting and as a hard 0/1 mask for evaluation and export.

Frame i of a GoP of F frames is rendered at time t = (i + 1) / F.

Presets (``d2gv.preset``; ``d2gv-fit`` follows it unless its own preset is set):

* ``cpu`` (default): the settings that met the targets of docs/benchmarks.md on a 2-core CPU:
  16 000 Gaussians per GoP of 4 frames, the single-head MLP (``deform.py``), Gaussians
  initialised to cover the GoP's middle frame (colours sampled from it), mask logits at 2.0.
* ``paper``: the original D2GV (Evan-sudo/D2GV, ``train_deform.py`` / ``train_prune.py``):
  20 000 Gaussians, GoP = the loader's (one folder per GoP in the original's data layout), the
  branched MLP with Deformable-3DGS's embedder, GaussianImage's random initialisation (positions
  uniform in (-1, 1), Cholesky entries and colours ~ U[0, 1)), mask logits at 1.2.
* ``codec``: the settings of the Bunny figure of docs/benchmarks.md ("The Bunny figure from the
  CLI": ≥ 30 dB at ≤ 7.7 KB/frame from the ``.d2gv`` file): the cpu model and initialisation
  with 6 000 Gaussians per GoP of 8 frames, a 64-wide MLP, colours on a 1/32 grid and 6-bit MLP
  weights in the bitstream; ``d2gv-fit`` runs 1 500 deformation steps and ``d2gv-compress``
  300 fine-tune steps (their ``auto`` settings follow this preset).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import torch
from torch import Tensor, nn

from recon_core import InputError, Representation, RunContext, Video, option
from recon_core.checkpoint import load_checkpoint, save_checkpoint

from .deform import DeformationMLP, DeformSettings, gop_times

__all__ = ["D2GVConfig", "D2GV", "GopModel", "FrameGaussians", "straight_through_mask"]

CHOL_BOUND = 0.5
"""Added to the raw Cholesky diagonal (pixels), as GaussianImage does."""
MIN_DIAG = 0.2
"""Smallest Cholesky diagonal entry (pixels); keeps every covariance positive definite."""
MASK_THRESHOLD = 0.2
EXPORT_FORMAT = "d2gv"
"""The compressed bitstream (``.d2gv`` file, see ``bitstream.py``)."""
FP16_FORMAT = "d2gv-fp16"
"""The uncompressed fp16 model (a checkpoint folder, read by :meth:`D2GV.from_export`)."""


def straight_through_mask(logits: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """Hard mask [sigmoid(m) > threshold] whose gradient is that of sigmoid(m).

    Args:
        logits: [N] mask logits.
    Returns:
        [N] tensor of exact 0.0/1.0 values; d mask / d m = sigmoid'(m).
    """
    soft = torch.sigmoid(logits)
    hard = (soft > threshold).to(soft.dtype)
    return hard + soft - soft.detach()


@dataclass(frozen=True)
class FrameGaussians:
    """Gaussians of F frames of one GoP, ready for ``project_cholesky`` + ``rasterize_sum``.

    xy [F, N, 2] positions in [-1, 1]; chol [F, N, 3] Cholesky entries in pixels;
    color [F, N, 3]; weights [F, N] mask values or None; frames [F] global frame indices.
    """

    xy: Tensor
    chol: Tensor
    color: Tensor
    weights: Tensor | None
    frames: Tensor


MaskMode = Literal["straight-through", "hard", "none"]


class GopModel(nn.Module):
    """Canonical Gaussians + deformation MLP of one GoP (parameters listed in the module docstring)."""

    def __init__(self, num_gaussians: int, deform: DeformSettings = DeformSettings()) -> None:
        super().__init__()
        n = num_gaussians
        self.xy = nn.Parameter(torch.zeros(n, 2))
        self.chol = nn.Parameter(torch.zeros(n, 3))
        self.color = nn.Parameter(torch.zeros(n, 3))
        self.mask_logit = nn.Parameter(torch.full((n,), 2.0))
        self.deform = DeformationMLP(deform)
        # [stages, codewords, 3] residual-VQ colour codebooks once d2gv-compress (q_color_codec=rvq)
        # put the colours on them: what the bitstream stores; empty otherwise
        self.register_buffer("color_codebook", torch.zeros(0, 0, 3))

    @property
    def num_gaussians(self) -> int:
        return self.xy.shape[0]

    def cholesky(self) -> Tensor:
        """[N, 3] Cholesky entries (l11, l21, l22) in pixels, diagonal >= MIN_DIAG."""
        raw = self.chol + self.chol.new_tensor([CHOL_BOUND, 0.0, CHOL_BOUND])
        l11, l21, l22 = raw.unbind(-1)
        return torch.stack([l11.clamp_min(MIN_DIAG), l21, l22.clamp_min(MIN_DIAG)], dim=-1)

    def mask(self, mode: MaskMode) -> Tensor | None:
        """[N] pruning mask: straight-through (fitting), hard 0/1 (evaluation), or None."""
        if mode == "none":
            return None
        if mode == "hard":
            return (torch.sigmoid(self.mask_logit) > MASK_THRESHOLD).to(self.xy.dtype)
        return straight_through_mask(self.mask_logit)

    def frame_gaussians(self, local: Tensor, length: int, *, deform: bool = True, mask: MaskMode = "hard") -> FrameGaussians:
        """Gaussians of the GoP frames ``local`` [F] (0-based within a GoP of ``length`` frames).

        With ``mask="hard"`` the pruned Gaussians are left out (weights None): the same image as
        multiplying them by 0, and the MLP never runs for them.
        """
        F = local.shape[0]
        xy_raw, chol, color_raw = self.xy, self.cholesky(), self.color
        m = self.mask(mask)
        if mask == "hard":
            keep = m > 0
            xy_raw, chol, color_raw, m = xy_raw[keep], chol[keep], color_raw[keep], None
        chol = chol[None].expand(F, -1, -1)
        if deform:
            t = gop_times(length, self.xy.device)[local]
            dxy, dcol = self.deform(torch.tanh(xy_raw), t)
            xy = torch.tanh(xy_raw[None] + dxy)
            color = color_raw[None] + dcol
        else:
            xy = torch.tanh(xy_raw)[None].expand(F, -1, -1)
            color = color_raw[None].expand(F, -1, -1)
        weights = None if m is None else m[None].expand(F, -1)
        return FrameGaussians(xy, chol, color, weights, local)

    @torch.no_grad()
    def initialise(self, frame: Tensor, generator: torch.Generator, style: str = "cpu") -> None:
        """Initial Gaussians and a fresh deformation MLP, all drawn from ``generator`` (reproducible).

        ``cpu``: uniform random positions, colours sampled from ``frame`` (H, W, 3) and isotropic
        sizes chosen so that the Gaussians cover each pixel about once on average
        (N · 2πσ² = H · W), which with the summation model makes the first render ≈ the frame.
        ``paper``: GaussianImage's initialisation as D2GV uses it: positions uniform in (-1, 1),
        raw Cholesky entries and colours ~ U[0, 1), mask logits 1.2 (``frame`` is not used).
        """
        H, W, _ = frame.shape
        n = self.num_gaussians
        if style == "paper":
            u = (2 * (torch.rand(n, 2, generator=generator) - 0.5)).clamp(-1 + 1e-6, 1 - 1e-6)
            self.xy.copy_(torch.atanh(u))
            self.chol.copy_(torch.rand(n, 3, generator=generator))
            self.color.copy_(torch.rand(n, 3, generator=generator))
            self.mask_logit.fill_(1.2)
            self.deform.reset_parameters(generator)
            return
        u = torch.rand(n, 2, generator=generator) * 1.9 - 0.95
        self.xy.copy_(torch.atanh(u))
        cols = ((u[:, 0] + 1) * 0.5 * W).long().clamp(0, W - 1)
        rows = ((u[:, 1] + 1) * 0.5 * H).long().clamp(0, H - 1)
        self.color.copy_(frame[rows, cols].to(self.color))
        sigma = max(math.sqrt(H * W / (2 * math.pi * n)), MIN_DIAG)
        self.chol.copy_(torch.tensor([sigma - CHOL_BOUND, 0.0, sigma - CHOL_BOUND]).expand(n, 3))
        self.mask_logit.fill_(2.0)
        self.deform.reset_parameters(generator)

    @torch.no_grad()
    def prune(self) -> int:
        """Drop the Gaussians the hard mask removes (parameters are replaced); return how many remain."""
        keep = torch.sigmoid(self.mask_logit) > MASK_THRESHOLD
        for name in ("xy", "chol", "color", "mask_logit"):
            old = getattr(self, name)
            setattr(self, name, nn.Parameter(old.detach()[keep].clone(), requires_grad=old.requires_grad))
        return int(keep.sum())

    def load_tensors(self, state: dict[str, Tensor]) -> None:
        """Load a ``state_dict()`` of possibly another Gaussian count (parameters are replaced)."""
        for name in ("xy", "chol", "color", "mask_logit"):
            setattr(self, name, nn.Parameter(state[name].detach().to(self.xy.device, torch.float32).clone()))
        self.color_codebook = state.get("color_codebook", torch.zeros(0, 0, 3)).detach().to(self.xy.device, torch.float32).clone()
        self.deform.load_state_dict({k[len("deform.") :]: v for k, v in state.items() if k.startswith("deform.")})

    def export_tensors(self) -> dict[str, Tensor]:
        """fp16 payload of the kept Gaussians (positions pre-tanh, Cholesky factor, colours) + the MLP."""
        keep = torch.sigmoid(self.mask_logit.detach()) > MASK_THRESHOLD
        out = {
            "xy": self.xy.detach()[keep].half(),
            "chol": self.cholesky().detach()[keep].half(),
            "color": self.color.detach()[keep].half(),
        }
        out.update({f"deform.{k}": v.detach().half() for k, v in self.deform.state_dict().items()})
        return out

    def import_tensors(self, payload: dict[str, Tensor]) -> None:
        """Inverse of :meth:`export_tensors` (every exported Gaussian is kept)."""
        bound = torch.tensor([CHOL_BOUND, 0.0, CHOL_BOUND])
        n = payload["xy"].shape[0]
        self.load_tensors(
            {
                "xy": payload["xy"].float(),
                "chol": payload["chol"].float() - bound,
                "color": payload["color"].float(),
                "mask_logit": torch.full((n,), 10.0),
                **{k: v.float() for k, v in payload.items() if k.startswith("deform.")},
            }
        )


_GRID = {"mlp_width": 156, "q_color_step": 1 / 64, "q_mlp_bits": 8}
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"num_gaussians": 16000, "gop_length": 4, "embedder": "nerf", "branches": False, **_GRID},
    "paper": {"num_gaussians": 20000, "gop_length": 0, "embedder": "deform3dgs", "branches": True, **_GRID},
    "codec": {"num_gaussians": 6000, "gop_length": 8, "embedder": "nerf", "branches": False,
              "mlp_width": 64, "q_color_step": 1 / 32, "q_mlp_bits": 6},
}
"""What each ``d2gv.preset`` sets (module docstring); explicit options override it."""


@dataclass
class D2GVConfig:
    preset: str = option("cpu", "cpu: the CPU-tuned settings of docs/benchmarks.md; paper: the original D2GV's MLP, embedder and initialisation; codec: the Bunny figure's model, grid and steps (d2gv-fit, d2gv-compress follow)", choices=tuple(PRESETS))
    num_gaussians: int | None = option(None, "canonical 2D Gaussians per GoP (none: the preset's; cpu 16 000, paper 20 000 as for Bunny, codec 6 000)", min=1)
    gop_length: int | None = option(None, "frames per GoP; 0 uses the loader's (a folder per GoP, else Video.gop_length); none: the preset's (cpu 4, codec 8 unless the data has GoP folders, paper 0)", min=0)
    xy_freqs: int = option(10, "positional-encoding frequencies of the canonical position", min=0)
    t_freqs: int = option(6, "positional-encoding frequencies of the GoP time", min=0)
    mlp_width: int | None = option(None, "width of the two hidden layers of the deformation MLP (none: the preset's; cpu, paper 156, codec 64)", min=1)
    seed: int = option(0, "seed of the random initial positions")
    # quantisation grid of the .d2gv bitstream (bitstream.QuantGrid; d2gv-compress fine-tunes onto it)
    q_pos_step: float = option(1 / 16, "bitstream: position grid step in pixels (the MLP's positional encoding makes it sensitive: 1/4 px costs ~0.7 dB)", min=1e-6)
    q_chol_step: float = option(1 / 16, "bitstream: Cholesky factor grid step in pixels", min=1e-6)
    q_color_step: float | None = option(None, "bitstream: colour grid step (none: the preset's; cpu, paper 1/64, codec 1/32)", min=1e-6)
    q_mlp_bits: int | None = option(None, "bitstream: bits per deformation-MLP weight, symmetric, per tensor (none: the preset's; cpu, paper 8, codec 6)", min=2, max=16)
    q_color_codec: str = option("uniform", "bitstream: colours on the q_color_step grid (uniform) or residual vector quantisation as GaussianImage (rvq)", choices=("uniform", "rvq"))
    q_color_codebook: int = option(8, "bitstream, rvq: codewords per stage (GaussianImage: 8)", min=2, max=256)
    q_color_stages: int = option(2, "bitstream, rvq: residual stages (GaussianImage: 2); codebook^stages at most 4096", min=1, max=4)

    @classmethod
    def for_layout(cls, deform: DeformSettings, **options: Any) -> "D2GVConfig":
        """A config whose ``deform_settings`` are ``deform`` (for models read back from a file)."""
        preset = next((name for name, p in PRESETS.items()
                       if (p["embedder"], p["branches"]) == (deform.embedder, deform.branches)), None)
        if preset is None:
            raise InputError(f"d2gv has no preset with the MLP layout {deform}")
        return cls(preset=preset, xy_freqs=deform.xy_freqs, t_freqs=deform.t_freqs, mlp_width=deform.width, **options)

    def resolved(self, key: str) -> Any:
        """Option ``key`` of the preset unless set explicitly."""
        value = getattr(self, key, None)
        return PRESETS[self.preset][key] if value is None else value


class D2GV(Representation):
    """Video as deformable 2D Gaussians (D2GV), one Gaussian set + MLP per GoP."""

    name = "d2gv"
    description = "video as deformable 2D Gaussians per group of pictures (D2GV)"
    Config = D2GVConfig
    provides = frozenset({"gaussians-2d", "dynamic"})
    requires = frozenset({"video"})
    rendered_by = "frames"
    default_renderer = {"cpu": "torch-2dgs", "cuda": "torch-2dgs"}
    native_refiner = "d2gv-fit"
    export_formats = (EXPORT_FORMAT, FP16_FORMAT)

    def __init__(self, config: D2GVConfig | None = None) -> None:
        super().__init__(config)
        self.gops = nn.ModuleList()
        self.register_buffer("gop_starts", torch.zeros(1, dtype=torch.long))
        self.register_buffer("frame_times", torch.zeros(0))
        self.register_buffer("frame_size", torch.zeros(2, dtype=torch.long))  # (H, W)

    # ------------------------------------------------------------------------------ structure

    @property
    def deform_settings(self) -> DeformSettings:
        c = self.config
        return DeformSettings(xy_freqs=c.xy_freqs, t_freqs=c.t_freqs, width=c.resolved("mlp_width"),
                              embedder=c.resolved("embedder"), branches=c.resolved("branches"))

    @property
    def height(self) -> int:
        return int(self.frame_size[0])

    @property
    def width(self) -> int:
        return int(self.frame_size[1])

    @property
    def num_frames(self) -> int:
        return int(self.gop_starts[-1])

    def gop_ranges(self) -> list[range]:
        """Frame ranges of the GoPs, in order; together they cover every frame exactly once."""
        s = self.gop_starts.tolist()
        return [range(a, b) for a, b in zip(s[:-1], s[1:])]

    def _set_layout(self, ranges: list[range], times: Tensor, height: int, width: int) -> None:
        starts = [r.start for r in ranges] + [ranges[-1].stop]
        self.gop_starts = torch.tensor(starts, dtype=torch.long, device=self.gop_starts.device)
        self.frame_times = times.float().to(self.gop_starts.device)
        self.frame_size = torch.tensor([height, width], dtype=torch.long, device=self.gop_starts.device)
        self.gops = nn.ModuleList([GopModel(self.config.resolved("num_gaussians"), self.deform_settings) for _ in ranges])

    def build(self, data: Any, ctx: RunContext) -> None:
        """Split ``data`` (a Video) into GoPs and initialise each GoP from its middle frame, on ``ctx.device``."""
        if not isinstance(data, Video):
            raise InputError(f"d2gv represents videos; got {type(data).__name__} (use a video loader)")
        if data.num_frames < 1:
            raise InputError("the video has no frames", data.source)
        length = self.config.gop_length
        if length is None:  # the preset's, but GoP folders of the data win
            length = 0 if getattr(data, "gop_starts", None) else self.config.resolved("gop_length")
        ranges = data.gops(length or None)
        self._set_layout(ranges, data.timestamps, data.height, data.width)
        gen = torch.Generator().manual_seed(self.config.seed)
        for gop, r in zip(self.gops, ranges):
            gop.initialise(data.frame(r[len(r) // 2]), gen, self.config.preset)
        self.to(ctx.device)

    # ------------------------------------------------------------------------------ frames

    def frame_indices(self, times: Tensor | None) -> Tensor:
        """Frames to render: all when None, ``times`` itself when integer, else the nearest frame
        to each time in seconds. Returns [F] int64."""
        if times is None:
            return torch.arange(self.num_frames)
        times = torch.as_tensor(times).reshape(-1).cpu()
        if not times.is_floating_point():
            idx = times.long()
        else:
            idx = (times[:, None] - self.frame_times.cpu()[None]).abs().argmin(dim=1)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.num_frames):
            raise InputError(f"frame index out of range 0..{self.num_frames - 1}")
        return idx

    def frame_gaussians(self, frames: Tensor, *, max_frames: int = 8, mask: MaskMode = "hard") -> Iterator[tuple[Tensor, FrameGaussians]]:
        """Yield (positions in ``frames``, Gaussians) per GoP, at most ``max_frames`` frames at a time.

        Args:
            frames: [F] global frame indices (any order, repeats allowed).
        """
        starts = self.gop_starts.cpu()
        gop_idx = torch.searchsorted(starts, frames, right=True) - 1
        for g in torch.unique(gop_idx).tolist():
            where = torch.nonzero(gop_idx == g).squeeze(1)
            length = int(starts[g + 1] - starts[g])
            for k in range(0, where.numel(), max_frames):
                pos = where[k : k + max_frames]
                local = (frames[pos] - starts[g]).to(self.gop_starts.device)
                yield pos, self.gops[g].frame_gaussians(local, length, mask=mask)

    # ------------------------------------------------------------------------------ export

    def export_state(self) -> dict[str, Any]:
        """The decodable model: layout + per-GoP fp16 payload (see ``GopModel.export_tensors``)."""
        return {
            "format": "d2gv-1",
            "height": self.height,
            "width": self.width,
            "gop_starts": self.gop_starts.tolist(),
            "frame_times": self.frame_times.cpu().float(),
            "deform": asdict(self.deform_settings),
            "gops": [g.export_tensors() for g in self.gops],
        }

    def load_state_dict_resizing(self, state: Mapping[str, Tensor]) -> None:
        """As the base class; checkpoints written before the colour codebooks existed load with
        empty ones."""
        state = dict(state)
        for key in [k for k in state if k.startswith("gops.") and k.endswith(".xy")]:
            state.setdefault(key[: -len("xy")] + "color_codebook", torch.zeros(0, 0, 3))
        super().load_state_dict_resizing(state)

    def payload_bytes(self) -> int:
        """Bytes of the fp16 payload (positions, Cholesky factors, colours and MLP weights of every GoP)."""
        return sum(t.numel() * t.element_size() for g in self.export_state()["gops"] for t in g.values())

    def num_kept(self) -> int:
        """Gaussians kept by the hard masks, over all GoPs."""
        return sum(int((torch.sigmoid(g.mask_logit) > MASK_THRESHOLD).sum()) for g in self.gops)

    def export(self, out_dir: Path, fmt: str) -> list[Path]:
        """``d2gv``: the compressed bitstream (``out_dir`` ending in ``.d2gv`` is the file, else
        ``out_dir/clip.d2gv``); ``d2gv-fp16``: the uncompressed model as a checkpoint folder."""
        if fmt == EXPORT_FORMAT:
            from .codec import export_bitstream

            return [export_bitstream(self, Path(out_dir))]
        if fmt != FP16_FORMAT:
            raise InputError(f"d2gv exports '{EXPORT_FORMAT}' or '{FP16_FORMAT}', not '{fmt}'")
        out_dir = Path(out_dir)
        meta = save_checkpoint(out_dir, self.export_state(), name=EXPORT_FORMAT)
        return [out_dir / f"{EXPORT_FORMAT}.safetensors", meta]

    @classmethod
    def from_export(cls, directory: str | Path) -> "D2GV":
        """Decode a model written by ``export(dir, "d2gv-fp16")``."""
        state = load_checkpoint(directory, name=EXPORT_FORMAT)
        if state.get("format") != "d2gv-1":
            raise InputError("not a d2gv export", directory)
        d = state["deform"]
        try:
            deform = DeformSettings(**d)  # exports from before the presets lack embedder/branches: the defaults
            rep = cls(D2GVConfig.for_layout(deform, num_gaussians=1))
        except (TypeError, InputError):
            raise InputError(f"d2gv export with an unknown MLP layout {d}", directory) from None
        s = state["gop_starts"]
        rep._set_layout([range(a, b) for a, b in zip(s[:-1], s[1:])], state["frame_times"], state["height"], state["width"])
        for gop, payload in zip(rep.gops, state["gops"]):
            gop.import_tensors(payload)
        return rep
