"""Offline loading of the published Difix weights (``nvidia/difix``, ``nvidia/difix_ref``).

Both Hugging Face repositories are diffusers folders built on SD-Turbo::

    model_index.json
    scheduler/scheduler_config.json
    text_encoder/config.json, model.safetensors            (CLIP text encoder, SD-Turbo's)
    tokenizer/vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    unet/config.json, diffusion_pytorch_model.safetensors  (fully fine-tuned SD-Turbo UNet;
                                                             difix_ref adds unet_2d_condition.py)
    vae/config.json, diffusion_pytorch_model.safetensors   (+ autoencoder_kl.py: the VAE with
                                                             skip convs and rank-4 decoder LoRA;
                                                             config keys lora_rank, gamma, ignore_skip)

The repositories' Python files (``trust_remote_code``) are never imported: the model is
assembled here from the configs (:mod:`.model`) and the tensors are read from the safetensors
files. Keys are mapped onto our modules and checked strictly (every key of the file used, every
parameter set). The VAE's LoRA, stored the peft way (``X.base_layer.weight``,
``X.lora_A.<adapter>.weight``, ``X.lora_B.<adapter>.weight``), is merged:
``W = W_base + (lora_alpha / r) · B·A`` with peft's default ``lora_alpha = 8`` unless the
VAE config names ``lora_alpha``. A folder holding pickled ``.bin`` files instead is read with
``torch.load(weights_only=True)`` only.

Where the folder is looked for (first hit wins):

1. the fixer's ``weights_path`` option;
2. ``weights_dir()/difix/<repo name>`` (``$RECON_WEIGHTS_DIR/difix/difix_ref``);
3. the Hugging Face cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``, at ``models--nvidia--difix_ref/snapshots/<refs/main>``.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from recon_core.components import weights_dir
from recon_core.errors import InputError

from .attention import install_reference_attention
from .model import DifixModel, OneStepSchedule, add_skip_convs

__all__ = [
    "REPOSITORIES",
    "PEFT_DEFAULT_LORA_ALPHA",
    "local_folder",
    "hf_cache_folder",
    "find_weights",
    "missing_parts",
    "read_component_state",
    "merge_lora",
    "load_into",
    "load_difix",
]

REPOSITORIES = {"none": "nvidia/difix", "nearest": "nvidia/difix_ref"}
"""Hub repository per ``reference`` setting."""

PEFT_DEFAULT_LORA_ALPHA = 8.0
"""peft ``LoraConfig.lora_alpha`` default; Difix's VAE LoRA (``r=4``) is created without one."""

_REQUIRED_FILES = (
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
)
_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


# ------------------------------------------------------------------------------- locating


def local_folder(repo: str) -> Path:
    """``weights_dir()/difix/<name>`` for hub repository ``nvidia/<name>``."""
    return weights_dir() / "difix" / repo.split("/")[-1]


def hf_cache_folder(repo: str) -> Path | None:
    """The snapshot folder of ``repo`` in the Hugging Face cache (the ``main`` ref, else the only one)."""
    if os.environ.get("HF_HUB_CACHE"):
        hub = Path(os.environ["HF_HUB_CACHE"])
    elif os.environ.get("HF_HOME"):
        hub = Path(os.environ["HF_HOME"]) / "hub"
    else:
        hub = Path.home() / ".cache" / "huggingface" / "hub"
    root = hub.expanduser() / f"models--{repo.replace('/', '--')}"
    ref = root / "refs" / "main"
    if ref.is_file():
        snap = root / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted(p for p in (root / "snapshots").glob("*") if p.is_dir()) if (root / "snapshots").is_dir() else []
    return snaps[0] if len(snaps) == 1 else None


def _weights_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.safetensors.index.json",
                 f"{stem}.fp16.safetensors.index.json", f"{stem}.bin", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def missing_parts(folder: Path) -> list[str]:
    """Files a complete Difix folder needs that ``folder`` lacks (empty: complete)."""
    missing = [f for f in _REQUIRED_FILES if not (folder / f).is_file()]
    missing += [f"{part}/{stem}.safetensors" for part, stem in _STEMS.items() if _weights_file(folder / part, stem) is None]
    return missing


def find_weights(repo: str, explicit: str | Path | None = None) -> Path | None:
    """The folder holding ``repo`` (see the module doc for the order), or None when nowhere complete.

    An explicit folder that is incomplete raises InputError naming what it lacks.
    """
    if explicit:
        folder = Path(explicit).expanduser()
        lacks = missing_parts(folder)
        if lacks:
            raise InputError(f"not a complete Difix weights folder: missing {', '.join(lacks)}", folder)
        return folder
    for folder in (local_folder(repo), hf_cache_folder(repo)):
        if folder is not None and not missing_parts(folder):
            return folder
    return None


# -------------------------------------------------------------------------------- reading


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a corrupt file is a user-fixable input problem
        raise InputError(f"cannot read safetensors file ({type(e).__name__}: {e})", path) from None


def read_component_state(folder: Path, part: str) -> dict[str, Tensor]:
    """The state dict of ``folder/part`` (``unet``, ``vae`` or ``text_encoder``), from single or
    sharded safetensors, or a ``.bin`` pickle read with ``torch.load(weights_only=True)``."""
    sub = folder / part
    path = _weights_file(sub, _STEMS[part])
    if path is None:
        raise InputError(f"no {_STEMS[part]}.safetensors in the {part} folder", sub)
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise InputError(f"bad shard index ({e})", path) from None
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(_read_safetensors(sub / shard))
        return state
    if path.suffix == ".bin":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"cannot read the checkpoint with weights_only=True ({type(e).__name__}: {e})", path) from None
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise InputError("expected a plain state dict of tensors", path)
        return dict(state)
    return _read_safetensors(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read JSON ({e})", path) from None
    if not isinstance(value, dict):
        raise InputError("expected a JSON object", path)
    return value


def merge_lora(state: Mapping[str, Tensor], lora_alpha: float = PEFT_DEFAULT_LORA_ALPHA) -> dict[str, Tensor]:
    """Fold peft LoRA layers into plain weights: ``X.base_layer.*`` → ``X.*``, plus
    ``(lora_alpha / r) · B·A`` added to ``X.weight`` (Linear and Conv2d; B is 1x1 for convs)."""
    out: dict[str, Tensor] = {}
    factors: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            which = "A" if ".lora_A." in key else "B"
            module = key.split(f".lora_{which}.")[0]
            factors.setdefault(module, {})[which] = value
        elif ".base_layer." in key:
            out[key.replace(".base_layer.", ".")] = value
        else:
            out[key] = value
    for module, ab in factors.items():
        if set(ab) != {"A", "B"} or f"{module}.weight" not in out:
            raise KeyError(f"incomplete LoRA layer {module}: has {sorted(ab)} and base weight: {f'{module}.weight' in out}")
        W, A, B = out[f"{module}.weight"], ab["A"].float(), ab["B"].float()
        delta = (B.flatten(1) @ A.flatten(1)).reshape(W.shape) * (float(lora_alpha) / A.shape[0])
        out[f"{module}.weight"] = (W.float() + delta).to(W.dtype)
    return out


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", … (+{len(keys) - n} more)" if len(keys) > n else "")


def load_into(module: nn.Module, state: Mapping[str, Tensor], where: str | Path, ignorable: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` strictly, or raise InputError naming missing / unexpected /
    mis-shaped keys. Unexpected keys ending with one of ``ignorable`` are dropped."""
    expected = module.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not (ignorable and k.endswith(ignorable))}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing key(s): {_few(missing)}"] if missing else []
        parts += [f"{len(unexpected)} unexpected key(s): {_few(unexpected)}"] if unexpected else []
        parts += [f"{len(wrong)} key(s) with the wrong shape: {_few(wrong, 3)}"] if wrong else []
        raise InputError("weights do not fit the model: " + "; ".join(parts), where)
    module.load_state_dict(dict(state), strict=True)


def _from_config(cls: type, config: dict[str, Any]) -> Any:
    """``cls(**config)`` keeping only the arguments ``cls.__init__`` takes (hub configs carry extras)."""
    accepted = set(inspect.signature(cls.__init__).parameters)
    return cls(**{k: v for k, v in config.items() if k in accepted})


# -------------------------------------------------------------------------------- loading


TEXT_MODEL_PREFIX = "text_model."
"""Key prefix of ``CLIPTextModel`` checkpoints written by transformers 4 (SD-Turbo's, hence
Difix's, ``text_encoder/model.safetensors``); transformers 5's module has no such level."""


def _text_encoder_keys(state: Mapping[str, Tensor], expected: Any) -> dict[str, Tensor]:
    """``state`` with the ``text_model.`` level added or dropped to match the installed transformers."""
    expected = set(expected)
    if any(k in expected for k in state):
        return dict(state)
    if any(k.startswith(TEXT_MODEL_PREFIX) for k in state):
        return {k[len(TEXT_MODEL_PREFIX):] if k.startswith(TEXT_MODEL_PREFIX) else k: v for k, v in state.items()}
    return {TEXT_MODEL_PREFIX + k: v for k, v in state.items()}


def encode_prompt(folder: Path, prompt: str) -> Tensor:
    """[1, L, D] CLIP text-encoder hidden states of ``prompt`` (padded to the tokenizer's max length)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    _read_json(folder / "text_encoder" / "config.json")  # InputError naming the file when unreadable
    config = CLIPTextConfig.from_json_file(str(folder / "text_encoder" / "config.json"))
    encoder = CLIPTextModel(config).eval()
    state = _text_encoder_keys(read_component_state(folder, "text_encoder"), encoder.state_dict().keys())
    load_into(encoder, state, folder / "text_encoder", ignorable=("position_ids",))
    max_length = min(int(tokenizer.model_max_length), int(config.max_position_embeddings))
    ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0].float()


def load_difix(
    folder: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    reference: bool = True,
    prompt: str = "remove degradation",
    timestep: int = 199,
    latent: str = "mean",
) -> DifixModel:
    """Assemble :class:`DifixModel` from a Difix folder (published or a tiny test one).

    ``dtype`` applies to the UNet; the VAE stays float32 when its config says ``force_upcast``
    (the SD VAE overflows in float16). With ``reference`` the UNet's self-attention gets the
    joint-view processor. ``latent`` is ``mean`` (the posterior mean) or ``sample`` (a posterior
    sample, as the original).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    lacks = missing_parts(folder)
    if lacks:
        raise InputError(f"not a complete Difix weights folder: missing {', '.join(lacks)}", folder)
    schedule = OneStepSchedule.from_scheduler_config(_read_json(folder / "scheduler" / "scheduler_config.json"), timestep)
    prompt_embeds = encode_prompt(folder, prompt)

    unet = _from_config(UNet2DConditionModel, _read_json(folder / "unet" / "config.json"))
    load_into(unet, read_component_state(folder, "unet"), folder / "unet")

    vae_config = _read_json(folder / "vae" / "config.json")
    vae = _from_config(AutoencoderKL, vae_config)
    add_skip_convs(vae)
    if vae_config.get("ignore_skip", False):
        raise InputError("VAE config has ignore_skip=true; Difix's decoder always uses its skip path", folder / "vae" / "config.json")
    lora_alpha = float(vae_config.get("lora_alpha", PEFT_DEFAULT_LORA_ALPHA))
    try:
        vae_state = merge_lora(read_component_state(folder, "vae"), lora_alpha)
    except KeyError as e:
        raise InputError(f"bad LoRA weights: {e}", folder / "vae") from None
    load_into(vae, vae_state, folder / "vae")

    grouping = install_reference_attention(unet) if reference else None
    vae_dtype = torch.float32 if vae_config.get("force_upcast", False) else dtype
    # nn.Module.to: diffusers' ModelMixin.to warns about casting even when no module needs float32
    nn.Module.to(unet, device=device, dtype=dtype)
    nn.Module.to(vae, device=device, dtype=vae_dtype)
    model = DifixModel(unet.eval(), vae.eval(), prompt_embeds.to(device), schedule,
                       grouping=grouping, gamma=float(vae_config.get("gamma", 1.0)), latent=latent)
    model.requires_grad_(False)
    return model
