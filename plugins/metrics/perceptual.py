"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, without any download.

The network has two parts:

* the backbone (AlexNet by default, VGG16 with ``net=vgg``): torchvision's ImageNet weights,
  read from the torch hub cache, ``$TORCH_HOME/hub/checkpoints`` (default
  ``~/.cache/torch/hub/checkpoints``), under torchvision's own file names;
* the linear layers: ``weights/v0.1/{alex,vgg}.pth`` shipped inside the ``lpips`` package.

``lpips.LPIPS(pretrained=True)`` would call ``torchvision.models.alexnet(pretrained=True)``,
which downloads the backbone when it is missing. So the network is built with
``pnet_rand=True`` (torchvision builds it with ``pretrained=False``: random, no download) and
``pretrained=False`` (random linear layers), then both files are loaded here with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from recon_core import ImageEvaluator, InputError, MissingWeightsError, option
from recon_core.components import WeightFile
from recon_core.imageops import masked_crop

from ._inputs import check_pair, selects_nothing

MIN_SIZE = 32
"""Smallest side AlexNet's five feature stages accept; smaller (masked) crops are padded."""


@dataclass(frozen=True)
class Backbone:
    """One torchvision backbone LPIPS can use."""

    filename: str
    url: str
    description: str


BACKBONES: dict[str, Backbone] = {
    "alex": Backbone(
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "AlexNet ImageNet weights (torchvision), backbone of lpips with net=alex (the default)",
    ),
    "vgg": Backbone(
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "VGG16 ImageNet weights (torchvision), backbone of lpips with net=vgg",
    ),
}


def hub_checkpoints_dir() -> Path:
    """The torch hub cache folder torchvision downloads into (honours $TORCH_HOME, $XDG_CACHE_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def backbone_path(net: str) -> Path:
    return hub_checkpoints_dir() / BACKBONES[net].filename


def linear_weights_path(net: str) -> Path | None:
    """The linear-layer weights inside the installed lpips package, or None without the package."""
    try:
        import lpips
    except ImportError:
        return None
    return Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"


@dataclass
class LPIPSConfig:
    net: str = option("alex", "backbone network", choices=("alex", "vgg"))
    background: float = option(1.0, "grey level both images get outside the mask", min=0, max=1)


class LPIPS(ImageEvaluator):
    """Learned perceptual distance (lower is better); 0 for identical images.

    With a mask, both images are composited onto ``background`` outside it and cropped to the
    mask's bounding box. Images (or crops) under 32 pixels on a side, too small for AlexNet's
    five stages, are padded with ``background`` (the same padding in both). NaN for an empty mask.
    """

    name = "lpips"
    description = "Learned perceptual image patch similarity (AlexNet; VGG with net=vgg)"
    Config = LPIPSConfig
    higher_is_better = False
    needs_packages = ("lpips", "torchvision")
    install_hint = "pip install lpips torchvision"

    _networks: ClassVar[dict[tuple[str, str, int, str], nn.Module]] = {}
    """Loaded networks by (net, backbone file, its mtime, device), shared by instances."""

    @classmethod
    def required_weights(cls) -> list[WeightFile]:
        return [WeightFile(b.description, hub_checkpoints_dir() / b.filename, b.url) for b in BACKBONES.values()]

    def unavailable_reason(self) -> str | None:
        net = self.config.net
        if net not in BACKBONES:
            return f"unknown lpips backbone '{net}' (choose one of {', '.join(BACKBONES)})"
        lin = linear_weights_path(net)
        if lin is None:
            return f"the 'lpips' package is not installed ({self.install_hint})"
        if not lin.exists():
            return f"the lpips package lacks its linear-layer weights {lin}; reinstall it ({self.install_hint})"
        backbone = backbone_path(net)
        if not backbone.exists():
            b = BACKBONES[net]
            return (
                f"lpips (net={net}) needs the backbone weights file '{b.filename}' in the folder "
                f"{backbone.parent} (the torch hub cache: $TORCH_HOME/hub/checkpoints); download it "
                f"from {b.url} and put it there (recon never downloads weights)"
            )
        return None

    def network(self, device: torch.device) -> nn.Module:
        """The LPIPS network with both weight files loaded, on ``device`` (cached)."""
        path = backbone_path(self.config.net)
        key = (self.config.net, str(path), path.stat().st_mtime_ns, str(device))
        if key not in self._networks:
            self._networks[key] = build_network(self.config.net).to(device)
        return self._networks[key]

    def compute(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
        pred, target, mask = check_pair(self.name, pred, target, mask)
        reason = self.unavailable_reason()
        if reason is not None:
            if self.config.net in BACKBONES and not backbone_path(self.config.net).exists():
                b = BACKBONES[self.config.net]
                raise MissingWeightsError("lpips", b.filename, backbone_path(self.config.net), b.url)
            raise InputError(reason)
        if selects_nothing(mask):
            return math.nan
        if mask is None and min(pred.shape[:2]) < MIN_SIZE:
            mask = torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)  # pad with background
        if mask is not None:
            pred, target = masked_crop([pred, target], mask, self.config.background, min_size=MIN_SIZE)
        model = self.network(pred.device)
        to_batch = lambda x: x.to(torch.float32).permute(2, 0, 1)[None]  # noqa: E731
        with torch.no_grad():
            value = model(to_batch(pred), to_batch(target), normalize=True)
        return float(value.flatten()[0])


    def loss_map(self, pred: Tensor, target: Tensor) -> Tensor:
        """The spatial LPIPS map (H, W) of (H, W, 3) images in [0, 1], differentiable w.r.t. both
        (the network's weights stay frozen)."""
        model = self.network(pred.device)
        model.spatial = True
        for p in model.parameters():
            p.requires_grad_(False)
        to_batch = lambda x: x.to(torch.float32).permute(2, 0, 1)[None]  # noqa: E731
        try:
            return model(to_batch(pred), to_batch(target), normalize=True)[0, 0]
        finally:
            model.spatial = False


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a plain state dict
        raise InputError(f"cannot be read as a torch state dict: {type(e).__name__}: {e}", path) from None
    if not isinstance(state, dict):
        raise InputError(f"holds a {type(state).__name__}, expected a state dict", path)
    return state


def build_network(net: str) -> nn.Module:
    """Build ``lpips.LPIPS`` with random weights (no download), then load both weight files.

    The backbone's slices hold torchvision's ``features`` modules under their original indices,
    so ``net.slice{k}.{i}.weight`` comes from ``features.{i}.weight`` of the torchvision file.
    Raises InputError naming the file when a weight file is unreadable or lacks a tensor.
    """
    import lpips

    with warnings.catch_warnings():  # torchvision deprecates `pretrained=False` in favour of weights=None
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)

    backbone_file = backbone_path(net)
    features = _load_state(backbone_file)
    mapped = {}
    for key, param in model.net.state_dict().items():
        _, index, tensor_name = key.split(".")
        source = f"features.{index}.{tensor_name}"
        if source not in features or tuple(features[source].shape) != tuple(param.shape):
            found = tuple(features[source].shape) if source in features else "nothing"
            raise InputError(
                f"is not torchvision's {net} checkpoint: '{source}' should be {tuple(param.shape)}, found {found}",
                backbone_file,
            )
        mapped[key] = features[source]
    model.net.load_state_dict(mapped, strict=True)

    lin_file = linear_weights_path(net)
    assert lin_file is not None  # unavailable_reason() checked the package
    linear = _load_state(lin_file)
    # ``lins.{k}`` is a ModuleList aliasing ``lin{k}``; the file names only the latter
    expected = {k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.")}
    if set(linear) != expected:
        raise InputError(f"linear-layer weights have keys {sorted(linear)}, expected {sorted(expected)}", lin_file)
    model.load_state_dict(linear, strict=False)
    return model.eval()
