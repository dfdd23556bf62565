"""Coordinate encoders for neural fields: ``fourier``, ``fourier-features``, ``sh``, ``hashgrid``, ``ffb``,
``ffb-stylemod``.

Each is an :class:`recon_core.Encoder` ([..., in_dim] → [..., out_dim]) usable by any neural
representation. ``includes_input`` tells a network whether the raw coordinates are already the first
``in_dim`` outputs.
"""

from __future__ import annotations

from recon_core import Encoder, hookimpl

from .ffb import FFBEncoder, FFBStyleModEncoder
from .fourier import FourierEncoder, GaussianFourierEncoder, SphericalHarmonicsEncoder
from .hashgrid import HashGridEncoder

__all__ = ["FourierEncoder", "GaussianFourierEncoder", "SphericalHarmonicsEncoder", "HashGridEncoder", "FFBEncoder", "FFBStyleModEncoder"]


@hookimpl
def register_encoders() -> list[type[Encoder]]:
    return [FourierEncoder, GaussianFourierEncoder, SphericalHarmonicsEncoder, HashGridEncoder, FFBEncoder, FFBStyleModEncoder]
