"""Parity of our Difix (``recon_plugins.difix``) with the original code of nv-tlabs/Difix3D.

    python benchmarks/difix_parity.py --reference /tmp/ref-difix3d --python /tmp/venv-difix/bin/python

``--reference`` is a checkout of https://github.com/nv-tlabs/Difix3D (its ``src/model.py`` and
``src/mv_unet.py`` are imported from there, never copied here); ``--python`` is an interpreter
with the versions that repository pins (``diffusers==0.25.1 transformers==4.38.0 peft==0.9.0
huggingface-hub==0.25.1``, e.g. a throwaway ``python -m venv --system-site-packages`` venv).

Two processes:

1. *original side* (``--python``, this file with ``--side original``): writes a tiny random
   "sd-turbo" (UNet widths (32, 64); SD's VAE widths (128, 256, 512, 512), which the original's
   skip convolutions are hard-coded for, with one layer per block; a one-layer CLIP text encoder
   with a 54-token BPE vocabulary; SD's scaled-linear DDPM schedule) and builds the original ``Difix`` class on it, with
   ``mv_unet=False`` (the ``nvidia/difix`` model) and ``mv_unet=True`` (``nvidia/difix_ref``).
   The original's hard-coded ``from_pretrained("stabilityai/sd-turbo")`` is redirected to that
   folder and its ``.cuda()`` / ``device="cuda"`` calls to the CPU; nothing else is changed.
   Every weight is then randomised (its LoRA B factors and skip convolutions start at 0 and 1e-5,
   which would hide them), the model is saved in the published diffusers layout
   (``unet/``, ``vae/`` with peft's ``base_layer`` / ``lora_A.vae_skip`` keys and the skip
   convolutions, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), and its ``forward`` is run
   on fixed inputs: latent = posterior mean (``DiagonalGaussianDistribution.sample`` replaced by
   ``mode`` for that call) and latent = posterior sample (the original code, seeded).
2. *our side* (this interpreter): ``load_difix`` on each saved folder and ``DifixModel`` on the
   same inputs (``latent="mean"`` and ``latent="sample"`` with the same seed), in float32;
   prints the largest absolute difference per case and exits 1 when one exceeds ``--tol``.

It also records what the original's reference model does when called without a reference view.
"""

from __future__ import annotations

import argparse
import json
import os
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SEED_SAMPLE = 1234
HEIGHT, WIDTH = 32, 48


# ------------------------------------------------------------------------------ original side


def _write_tiny_base(base: Path) -> None:
    """A tiny random stand-in for the stabilityai/sd-turbo folder (same classes, small widths)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    # SD-Turbo's scheduler settings that matter here: scaled-linear betas, epsilon, no clipping
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  prediction_type="epsilon", steps_offset=1, timestep_spacing="trailing").save_pretrained(base / "scheduler")
    tok = base / "tokenizer"
    tok.mkdir(parents=True)
    letters = list(string.ascii_lowercase)
    vocab = {c: i for i, c in enumerate(letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"])}
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 16, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                 num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                                 bos_token_id=52, eos_token_id=53, pad_token_id=53)).save_pretrained(base / "text_encoder")
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    ).save_pretrained(base / "unet")
    # the original hard-codes the skip convolutions for SD's VAE widths, so the VAE keeps them
    # (one layer per block instead of two)
    AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        sample_size=32,
    ).save_pretrained(base / "vae")


def _redirect_to(base: Path) -> None:
    """Point the original's hub / CUDA calls at the tiny folder and the CPU (no computation changed)."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers.models.modeling_utils import ModelMixin
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from transformers import AutoTokenizer, PreTrainedModel

    def local(name: Any) -> Any:
        return str(base) if name == "stabilityai/sd-turbo" else name

    for cls in (ModelMixin, SchedulerMixin, PreTrainedModel, AutoTokenizer):
        original = cls.from_pretrained.__func__  # type: ignore[attr-defined]

        def redirected(klass: Any, name: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            return _original(klass, local(name), *args, **kwargs)

        cls.from_pretrained = classmethod(redirected)  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    module_to = torch.nn.Module.to
    torch.nn.Module.to = lambda self, *a, **k: self if a[:1] == ("cuda",) else module_to(self, *a, **k)  # type: ignore[method-assign]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    set_timesteps = DDPMScheduler.set_timesteps
    DDPMScheduler.set_timesteps = lambda self, *a, device=None, **k: set_timesteps(self, *a, device="cpu", **k)  # type: ignore[method-assign]
    tensor = torch.tensor

    def cpu_tensor(*args: Any, device: Any = None, **kwargs: Any) -> Any:
        return tensor(*args, device=None if device == "cuda" else device, **kwargs)

    torch.tensor = cpu_tensor  # type: ignore[assignment]


def _randomise(net: Any, seed: int) -> None:
    """Every UNet/VAE weight random but of sensible size (LoRA B and skip convs included)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (net.unet, net.vae):
            for name, p in module.named_parameters():
                if "lora_B" in name or "skip_conv" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
                elif name.endswith("weight") and p.ndim > 1:
                    p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.add_(0.02 * torch.randn(p.shape, generator=g))


def _save_published_layout(net: Any, base: Path, folder: Path) -> None:
    """The diffusers folder layout of nvidia/difix(_ref) from the original's modules."""
    import shutil

    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DifixPipeline"}))
    for part in ("scheduler", "tokenizer", "text_encoder"):
        shutil.copytree(base / part, folder / part)
    for part, module in (("unet", net.unet), ("vae", net.vae)):
        (folder / part).mkdir()
        state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
        save_file(state, str(folder / part / "diffusion_pytorch_model.safetensors"))
        config = dict(module.config)
        if part == "vae":
            config.update({"lora_rank": int(net.lora_rank_vae), "gamma": 1.0, "ignore_skip": False})
        (folder / part / "config.json").write_text(json.dumps(config, default=list))


def _run_original(net: Any, x: Any) -> dict[str, Any]:
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    out: dict[str, Any] = {}
    net.set_eval()
    sample = DiagonalGaussianDistribution.sample
    with torch.no_grad():
        DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mode()  # type: ignore[method-assign]
        try:
            out["mean"] = net(x, prompt="remove degradation")
        finally:
            DiagonalGaussianDistribution.sample = sample  # type: ignore[method-assign]
        torch.manual_seed(SEED_SAMPLE)
        out["sample"] = net(x, prompt="remove degradation")
    return out


def original_side(reference: Path, work: Path) -> None:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = work / "sd-turbo-tiny"
    _write_tiny_base(base)
    _redirect_to(base)
    sys.path[:0] = [str(reference / "src"), str(reference)]
    import diffusers
    import peft
    import transformers

    import model as original  # nv-tlabs/Difix3D src/model.py

    versions = {"diffusers": diffusers.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "torch": torch.__version__}
    g = torch.Generator().manual_seed(7)
    render = torch.rand(1, 1, 3, HEIGHT, WIDTH, generator=g) * 2 - 1
    ref = torch.rand(1, 1, 3, HEIGHT, WIDTH, generator=g) * 2 - 1
    results: dict[str, Any] = {"versions": versions, "render": render[:, 0], "reference": ref[:, 0]}
    # single-view model first: importing mv_unet replaces BasicTransformerBlock.forward globally
    net = original.Difix(timestep=199, mv_unet=False)
    _randomise(net, 1)
    _save_published_layout(net, base, work / "difix")
    results["none"] = {k: v[:, 0] for k, v in _run_original(net, render).items()}
    net = original.Difix(timestep=199, mv_unet=True)
    _randomise(net, 2)
    _save_published_layout(net, base, work / "difix_ref")
    results["nearest"] = {k: v[:, 0] for k, v in _run_original(net, torch.cat([render, ref], dim=1)).items()}
    try:  # the reference model on the render alone
        net(render, prompt="remove degradation")
        results["ref_model_alone"] = "ran"
    except Exception as e:  # noqa: BLE001 - recorded, not handled
        results["ref_model_alone"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    torch.save(results, work / "original.pt")


# ----------------------------------------------------------------------------------- our side


def our_side(work: Path, tol: float) -> int:
    import torch

    from recon_plugins.difix.weights import load_difix

    theirs = torch.load(work / "original.pt", weights_only=False)
    render, ref = theirs["render"], theirs["reference"]
    import diffusers
    import transformers

    print(f"original side: {theirs['versions']}")
    print(f"our side: {{'diffusers': '{diffusers.__version__}', 'transformers': '{transformers.__version__}', 'torch': '{torch.__version__}'}}")
    worst = 0.0
    rows = []
    for setting, folder in (("none", "difix"), ("nearest", "difix_ref")):
        use_ref = setting == "nearest"
        for latent in ("mean", "sample"):
            model = load_difix(work / folder, reference=use_ref, dtype=torch.float32, latent=latent)
            generator = torch.Generator().manual_seed(SEED_SAMPLE) if latent == "sample" else None
            ours = model(render, ref if use_ref else None, generator=generator)
            expected = theirs[setting][latent]
            diff = float((ours - expected).abs().max())
            spread = float(expected.std())
            worst = max(worst, diff)
            rows.append((setting, latent, diff, spread))
    # control: the comparison can fail (another reference view gives another image)
    model = load_difix(work / "difix_ref", reference=True, dtype=torch.float32)
    control = float((model(render, ref.flip(-1)) - theirs["nearest"]["mean"]).abs().max())
    for setting, latent, diff, spread in rows:
        print(f"reference={setting:<8} latent={latent:<7} max |ours - original| = {diff:.2e}  (output std {spread:.3f})")
    print(f"control: ours with the reference mirrored, against the original: {control:.2e}")
    print(f"original difix_ref on a render without its reference view: {theirs['ref_model_alone']}")
    print(f"worst {worst:.2e} (tolerance {tol:.0e}): {'PASS' if worst <= tol else 'FAIL'}")
    return 0 if worst <= tol else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, required=True, help="checkout of nv-tlabs/Difix3D")
    p.add_argument("--python", default=sys.executable, help="interpreter with the original's pinned packages")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--side", choices=("both", "original"), default="both", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (args.reference / "src" / "model.py").is_file():
        print(f"error: {args.reference} is not a Difix3D checkout (no src/model.py)", file=sys.stderr)
        return 2
    if args.side == "original":
        original_side(args.reference.resolve(), args.work)
        return 0
    with tempfile.TemporaryDirectory(prefix="difix-parity-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HF_HOME=str(work / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH="")
        subprocess.run([args.python, str(Path(__file__).resolve()), "--side", "original", "--reference",
                        str(args.reference.resolve()), "--work", str(work)], check=True, env=env)
        return our_side(work, args.tol)


if __name__ == "__main__":
    sys.exit(main())
