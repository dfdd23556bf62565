"""The ``difix`` fixer: Difix (Difix3D+, CVPR 2025) single-step diffusion artifact removal.

Where the calls go::

    fixer = DifixFixer(DifixConfig(reference="nearest"))
    fixer.prepare(ctx)                       # finds and loads weights on ctx.device (MissingWeightsError if absent)
    fixed = fixer.fix(renders, references)   # [N, H, W, 3] in [0, 1] -> same shape

``reference: nearest`` uses ``nvidia/difix_ref`` and conditions every render on the reference
image given with it (the pipeline and ``difix3d+`` pass the nearest training image); a call
without references is an input error (exit 2), as the original reference model has no
single-view mode (its joint attention is hard-wired to two views). ``reference: none`` uses
``nvidia/difix`` and ignores references.

Two settings reproduce the original where our default differs (parity measured in
``benchmarks/difix_parity.py``): ``latent: sample`` samples the VAE posterior as the original
does (default ``mean``: deterministic, and the SD VAE's posterior spread is small), and
``fit: resize`` resizes to a multiple of 8 (Lanczos) and back as its pipeline and Difix3D+
script do (default ``pad``: reflect-pad and crop, which keeps every pixel). Needs the optional ``difix`` extra (diffusers,
transformers); weights are never downloaded (see :mod:`.weights` for where they are looked for).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from recon_core.components import Fixer, RunContext, WeightFile
from recon_core.config import option
from recon_core.errors import InputError, MissingWeightsError
from recon_core.scene import View

from .model import FITS, LATENTS
from .weights import REPOSITORIES, find_weights, hf_cache_folder, local_folder, missing_parts

__all__ = ["DifixFixer", "DifixConfig", "check_images"]


@dataclass
class DifixConfig:
    reference: str = option("nearest", "condition on a reference view: nearest (nvidia/difix_ref, uses the reference "
                                       "images it is given) or none (nvidia/difix)", choices=("nearest", "none"))
    weights_path: str | None = option(None, "folder holding the Difix repository (default: $RECON_WEIGHTS_DIR/difix/"
                                            "<difix|difix_ref>, then the Hugging Face cache)")
    batch_size: int = option(4, "images per network call", min=1)
    dtype: str = option("auto", "network precision: auto (float16 on CUDA, float32 on CPU), float16, float32",
                        choices=("auto", "float16", "float32"))
    prompt: str = option("remove degradation", "text prompt the model was trained with")
    timestep: int = option(199, "diffusion timestep of the single step", min=0, max=999)
    latent: str = option("mean", "VAE latent: mean (posterior mean, deterministic) or sample (a posterior sample, as the "
                                 "original; seeded by the run's seed)", choices=LATENTS)
    fit: str = option("pad", "reach a multiple of 8 px: pad (reflect, then crop) or resize (Lanczos down to the multiple "
                             "and back, as the original pipeline)", choices=FITS)


def check_images(images: Tensor, what: str = "images") -> None:
    """Raise InputError unless ``images`` is a float tensor [N, H, W, 3]."""
    if images.ndim != 4 or images.shape[-1] != 3 or not images.is_floating_point():
        raise InputError(f"{what} must be float [N, H, W, 3], got {tuple(images.shape)} {images.dtype}")


class DifixFixer(Fixer):
    """Removes rendering artifacts with Difix (one diffusion step on SD-Turbo), optionally reference-conditioned."""

    name = "difix"
    description = "Difix single-step diffusion artifact removal (nvidia/difix, nvidia/difix_ref)"
    Config = DifixConfig
    needs_packages = ("diffusers", "transformers")
    install_hint = "pip install 'recon-toolkit[difix]'"

    def __init__(self, config: DifixConfig | None = None) -> None:
        super().__init__(config)
        self.model: Any = None
        self.device = torch.device("cpu")
        self.generator: torch.Generator | None = None

    @classmethod
    def required_weights(cls) -> list[WeightFile]:
        """Both repositories (``reference: nearest`` needs difix_ref, ``none`` needs difix)."""
        out = []
        for setting, repo in REPOSITORIES.items():
            cached = hf_cache_folder(repo)
            path = cached if cached is not None and not missing_parts(cached) else local_folder(repo)
            out.append(WeightFile(description=f"Difix diffusers folder for reference={setting} ({repo}, about 5 GB)",
                                  path=path, source=f"https://huggingface.co/{repo}"))
        return out

    @property
    def repository(self) -> str:
        return REPOSITORIES[self.config.reference]

    def prepare(self, ctx: RunContext) -> None:
        """Locate and load the weights on ``ctx.device`` (float16 on CUDA unless configured otherwise)."""
        from .weights import load_difix

        device = ctx.device
        if int(self.config.batch_size) < 1:
            raise InputError(f"difix.batch_size must be >= 1, got {self.config.batch_size}")
        folder = find_weights(self.repository, self.config.weights_path)
        if folder is None:
            raise MissingWeightsError("difix", self.repository, local_folder(self.repository), f"https://huggingface.co/{self.repository}")
        dtype = {"float16": torch.float16, "float32": torch.float32}.get(self.config.dtype)
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.device = device
        self.model = load_difix(folder, device=device, dtype=dtype, reference=self.config.reference == "nearest",
                                prompt=self.config.prompt, timestep=int(self.config.timestep), latent=self.config.latent)
        if self.config.latent == "sample":
            self.generator = torch.Generator(device=device).manual_seed(int(ctx.seed))

    def fix(self, images: Tensor, references: Tensor | None = None, *, views: Sequence[View] | None = None) -> Tensor:
        """Fixed images [N, H, W, 3] in [0, 1] (float32, on the input's device) of renders [N, H, W, 3] in [0, 1].

        ``references`` [N, H, W, 3] (needed with ``reference: nearest``, ignored with ``none``);
        ``views`` is not used.
        """
        from .model import fit_from_multiple, fit_to_multiple

        if self.model is None:
            raise RuntimeError("DifixFixer.prepare(ctx) must be called before fix()")
        check_images(images)
        if references is not None:
            check_images(references, "references")
            if references.shape != images.shape:
                raise InputError(f"references {tuple(references.shape)} must match the images {tuple(images.shape)}")
        if self.config.reference == "none":
            references = None
        elif references is None:
            raise InputError("difix.reference=nearest (nvidia/difix_ref) needs a reference view for every image, and none "
                             "was given (e.g. a video, which has no training views); set difix.reference=none to use "
                             "nvidia/difix")
        size = (images.shape[1], images.shape[2])
        out = []
        step = int(self.config.batch_size)
        for start in range(0, images.shape[0], step):
            def prep(x: Tensor) -> Tensor:
                x = x[start:start + step].to(self.device, torch.float32).clamp(0, 1).permute(0, 3, 1, 2) * 2 - 1
                return fit_to_multiple(x, self.model.multiple, self.config.fit)

            refs = None if references is None else prep(references)
            fixed = fit_from_multiple(self.model(prep(images), refs, generator=self.generator), size, self.config.fit)
            out.append(((fixed + 1) / 2).permute(0, 2, 3, 1).to(images.device, torch.float32))
        return torch.cat(out) if out else images.new_zeros(images.shape, dtype=torch.float32)
