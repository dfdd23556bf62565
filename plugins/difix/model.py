"""Difix assembled on diffusers: SD-Turbo UNet + VAE with decoder skip convolutions, one step.

What the model computes (checked against nv-tlabs/Difix3D ``src/model.py`` and
``src/pipeline_difix.py``):

1. the render (and, for the reference model, the reference view) is encoded by the VAE; the
   latent is the posterior *mean* times ``scaling_factor`` (the original samples the posterior,
   whose standard deviation is negligible for the SD VAE; the mean makes the fixer deterministic);
2. **no noise is added**: the clean latent is treated as x_t at timestep t = 199 and the UNet,
   conditioned on the prompt "remove degradation", predicts ε (or v, per the scheduler's
   ``prediction_type``); the x0 estimate is
   ``x0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)`` (ε-prediction) or
   ``x0 = sqrt(ᾱ_t) x_t - sqrt(1 - ᾱ_t) v`` (v-prediction), which is what a one-step
   ``DDPMScheduler.step`` with ``set_timesteps(timesteps=[199])`` and ``clip_sample=False`` returns;
3. x0 is decoded by the VAE decoder, which also receives the encoder's down-block *inputs*
   through 1x1 convolutions ``decoder.skip_conv_{1..n}`` (initialised to 1e-5 in training),
   scaled by ``gamma`` (1.0): before up-block i the decoder adds
   ``skip_conv_{i+1}(skip[n-1-i] * gamma)``; the decoder's rank-4 LoRA is merged into its weights
   at load time (see :mod:`.weights`);
4. with a reference, self-attention in every UNet transformer block runs jointly over the two
   views (:mod:`.attention`); only the render's latent is decoded, with the render's skips.

Images are padded (reflect) to a multiple of the VAE's downsampling factor (8) and cropped
back, which keeps every original pixel where the original resized (Lanczos) to a multiple of 8;
``fit="resize"`` does what the original does (:func:`fit_to_multiple`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import ViewGrouping

__all__ = [
    "OneStepSchedule",
    "predict_x0",
    "skip_conv_shapes",
    "add_skip_convs",
    "encode_with_skips",
    "decode_with_skips",
    "pad_to_multiple",
    "crop_to",
    "DifixModel",
    "LATENTS",
    "FITS",
    "resize_lanczos",
    "fit_to_multiple",
    "fit_from_multiple",
]

FITS = ("pad", "resize")
"""How images reach a multiple of the VAE factor: pad and crop, or resize and resize back (the original)."""

LATENTS = ("mean", "sample")
"""How the VAE posterior becomes the latent: its mean (deterministic), or a sample (the original)."""


@dataclass(frozen=True)
class OneStepSchedule:
    """The single denoising step: timestep, ᾱ at that timestep, and the UNet's parameterisation."""

    timestep: int
    alpha_bar: float
    prediction_type: str  # "epsilon", "v_prediction" or "sample"

    @staticmethod
    def from_scheduler_config(config: dict, timestep: int = 199) -> "OneStepSchedule":
        """ᾱ_t from a diffusers scheduler config (betas of ``beta_schedule``, via ``DDPMScheduler``)."""
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        n = int(scheduler.config.num_train_timesteps)
        if not 0 <= timestep < n:
            raise ValueError(f"timestep {timestep} outside the scheduler's 0..{n - 1}")
        return OneStepSchedule(int(timestep), float(scheduler.alphas_cumprod[timestep]), str(scheduler.config.prediction_type))


def predict_x0(model_output: Tensor, x_t: Tensor, alpha_bar: float, prediction_type: str) -> Tensor:
    """The clean-sample estimate from the UNet output at one timestep (DDPM x0 formulas)."""
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "epsilon":
        return (x_t - s * model_output) / a
    if prediction_type == "v_prediction":
        return a * x_t - s * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type '{prediction_type}'")


# -------------------------------------------------------------------------- VAE skip path


def skip_conv_shapes(block_out_channels: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """(in, out) channels of ``decoder.skip_conv_{1..n}`` for a VAE with these block widths.

    skip_conv_{i+1} maps the input of encoder down-block n-1-i to the input of decoder up-block i;
    for SD's (128, 256, 512, 512): (512, 512), (256, 512), (128, 512), (128, 256).
    """
    ch = list(block_out_channels)
    n = len(ch)
    enc_in = [ch[0]] + ch[:-1]  # input channels of encoder down-block j
    rev = ch[::-1]
    dec_in = [rev[0]] + rev[:-1]  # input channels of decoder up-block i
    return [(enc_in[n - 1 - i], dec_in[i]) for i in range(n)]


def add_skip_convs(vae: nn.Module, init: float = 1e-5) -> None:
    """Attach ``decoder.skip_conv_{1..n}`` (1x1, no bias, weights ``init``) to a diffusers AutoencoderKL."""
    for i, (cin, cout) in enumerate(skip_conv_shapes(vae.config.block_out_channels)):  # type: ignore[attr-defined]
        conv = nn.Conv2d(cin, cout, kernel_size=1, bias=False)
        nn.init.constant_(conv.weight, init)
        setattr(vae.decoder, f"skip_conv_{i + 1}", conv)  # type: ignore[union-attr]


def encode_with_skips(vae: nn.Module, x: Tensor, *, sample: bool = False,
                      generator: torch.Generator | None = None) -> tuple[Tensor, list[Tensor]]:
    """Posterior mean [B, C_lat, H/f, W/f] of images x [B, 3, H, W] in [-1, 1], and the inputs of
    every encoder down-block (the decoder's skip activations), shallowest first.

    With ``sample`` the latent is a posterior sample instead, drawn as diffusers'
    ``DiagonalGaussianDistribution.sample`` draws it (``mean + exp(logvar / 2) · ε``, logvar
    clamped to [-30, 20], ε = ``torch.randn`` from ``generator``, else the global generator).
    """
    enc = vae.encoder  # type: ignore[union-attr]
    h = enc.conv_in(x)
    skips = []
    for block in enc.down_blocks:
        skips.append(h)
        h = block(h)
    h = enc.conv_out(enc.conv_act(enc.conv_norm_out(enc.mid_block(h))))
    if getattr(vae, "quant_conv", None) is not None:
        h = vae.quant_conv(h)  # type: ignore[operator]
    mean, logvar = h.chunk(2, dim=1)
    if sample:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        mean = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps
    return mean, skips


def decode_with_skips(vae: nn.Module, z: Tensor, skips: list[Tensor], gamma: float = 1.0) -> Tensor:
    """Decode latents z [B, C_lat, h, w] (unscaled) to images [B, 3, H, W], adding the skip path."""
    dec = vae.decoder  # type: ignore[union-attr]
    if getattr(vae, "post_quant_conv", None) is not None:
        z = vae.post_quant_conv(z)  # type: ignore[operator]
    h = dec.mid_block(dec.conv_in(z), None)
    n = len(dec.up_blocks)
    for i, block in enumerate(dec.up_blocks):
        skip = skips[n - 1 - i]
        h = h + getattr(dec, f"skip_conv_{i + 1}")(skip.to(h.dtype) * gamma)
        h = block(h, None)
    return dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))


# ------------------------------------------------------------------------------- padding


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad images [B, C, H, W] at the bottom/right to a multiple of ``multiple`` (reflect, else replicate)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple`: the top-left (H, W) of [B, C, H', W']."""
    return x[..., : size[0], : size[1]]


def resize_lanczos(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Images [B, C, H, W] resized to ``size`` (H', W') with PIL's Lanczos filter, per channel in
    float (the original resizes 8-bit PIL images with the same filter; no quantisation here)."""
    import numpy as np
    from PIL import Image

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    h, w = int(size[0]), int(size[1])
    src = x.detach().float().cpu().numpy()
    out = np.empty(src.shape[:2] + (h, w), dtype=np.float32)
    for b in range(src.shape[0]):
        for c in range(src.shape[1]):
            out[b, c] = np.asarray(Image.fromarray(src[b, c], mode="F").resize((w, h), Image.LANCZOS))
    return torch.from_numpy(out).to(x.device, x.dtype)


def fit_to_multiple(x: Tensor, multiple: int, fit: str = "pad") -> Tensor:
    """[B, C, H, W] brought to a multiple of ``multiple``: reflect-padded (``pad``) or, as the
    original's ``VaeImageProcessor``, resized down to the multiple (``resize``, Lanczos)."""
    if fit == "pad":
        return pad_to_multiple(x, multiple)
    if fit == "resize":
        h, w = x.shape[-2:]
        if h < multiple or w < multiple:
            raise ValueError(f"an image of {h}x{w} px is smaller than the {multiple}-px multiple it is resized to")
        return resize_lanczos(x, (h - h % multiple, w - w % multiple))
    raise ValueError(f"fit must be one of {FITS}, got '{fit}'")


def fit_from_multiple(x: Tensor, size: tuple[int, int], fit: str = "pad") -> Tensor:
    """Undo :func:`fit_to_multiple`: crop (``pad``) or Lanczos-resize back to ``size`` (``resize``)."""
    return crop_to(x, size) if fit == "pad" else resize_lanczos(x, size)


# --------------------------------------------------------------------------------- model


class DifixModel(nn.Module):
    """The Difix network: ``forward(images, references) -> fixed images`` (all [B, 3, H, W] in [-1, 1]).

    Attributes:
        unet: diffusers ``UNet2DConditionModel`` (SD-Turbo architecture, fully fine-tuned).
        vae: diffusers ``AutoencoderKL`` with ``decoder.skip_conv_{1..n}`` (LoRA merged).
        prompt_embeds: [1, L, D] text-encoder output for the prompt (computed once at load).
        schedule: the one-step schedule (t = 199).
        grouping: the shared view grouping of the reference attention, or None for the
            single-view model (which then ignores references).
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        prompt_embeds: Tensor,
        schedule: OneStepSchedule,
        *,
        grouping: ViewGrouping | None = None,
        gamma: float = 1.0,
        latent: str = "mean",
    ) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.register_buffer("prompt_embeds", prompt_embeds.detach().clone(), persistent=False)
        self.schedule = schedule
        self.grouping = grouping
        self.gamma = float(gamma)
        if latent not in LATENTS:
            raise ValueError(f"latent must be one of {LATENTS}, got '{latent}'")
        self.latent = latent
        self.scaling_factor = float(vae.config.scaling_factor)  # type: ignore[union-attr]
        self.multiple = 2 ** (len(vae.config.block_out_channels) - 1)  # type: ignore[union-attr]

    @property
    def uses_reference(self) -> bool:
        return self.grouping is not None

    @torch.no_grad()
    def forward(self, images: Tensor, references: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> Tensor:
        """Fix images [B, 3, H, W] in [-1, 1] (H, W multiples of ``self.multiple``), optionally
        conditioned on references of the same shape; returns [B, 3, H, W] in [-1, 1].

        The reference model needs references: the original's joint attention is hard-wired to
        two views (nv-tlabs/Difix3D ``src/mv_unet.py``), so it has no single-view mode.
        ``generator`` draws the posterior sample when ``latent == "sample"``.
        """
        if references is not None and not self.uses_reference:
            references = None  # the single-view model has no reference attention
        if references is None and self.uses_reference:
            raise ValueError("the reference Difix model (difix_ref) needs a reference view per image")
        v = 1 if references is None else 2
        x = images if references is None else torch.stack([images, references], dim=1).flatten(0, 1)
        unet_dtype = next(self.unet.parameters()).dtype
        vae_dtype = next(self.vae.parameters()).dtype
        mean, skips = encode_with_skips(self.vae, x.to(vae_dtype), sample=self.latent == "sample", generator=generator)
        z = (mean * self.scaling_factor).to(unet_dtype)
        prompt = self.prompt_embeds.to(unet_dtype).expand(z.shape[0], -1, -1)
        t = torch.full((z.shape[0],), self.schedule.timestep, device=z.device, dtype=torch.long)
        if self.grouping is not None:
            self.grouping.num_views = v
        try:
            out = self.unet(z, t, encoder_hidden_states=prompt).sample
        finally:
            if self.grouping is not None:
                self.grouping.num_views = 1
        x0 = predict_x0(out.float(), z.float(), self.schedule.alpha_bar, self.schedule.prediction_type)
        x0, skips = x0[::v], [s[::v] for s in skips]  # keep the render's view
        decoded = decode_with_skips(self.vae, (x0 / self.scaling_factor).to(vae_dtype), skips, self.gamma)
        return decoded.float().clamp(-1.0, 1.0)
