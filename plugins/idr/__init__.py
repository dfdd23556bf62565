"""HashModFFB-IDR: IDR neural implicit surfaces with pluggable encoders.

Components: representation ``idr``, renderer ``sphere-tracing``, refiner ``idr-fit`` and geometry
evaluators ``chamfer`` and ``dtu-chamfer`` (the DTU protocol, in mm).
"""

from __future__ import annotations

from recon_core import Evaluator, Refiner, Renderer, Representation, hookimpl

from .chamfer import ChamferEvaluator
from .conf import read_idr_conf
from .dtu import DTUChamferEvaluator
from .fit import IDRFit
from .renderer import SphereTracingRenderer
from .representation import IDRRepresentation

__all__ = ["IDRRepresentation", "SphereTracingRenderer", "IDRFit", "ChamferEvaluator", "DTUChamferEvaluator"]


@hookimpl
def register_representations() -> list[type[Representation]]:
    return [IDRRepresentation]


@hookimpl
def register_renderers() -> list[type[Renderer]]:
    return [SphereTracingRenderer]


@hookimpl
def register_refiners() -> list[type[Refiner]]:
    return [IDRFit]


@hookimpl
def register_evaluators() -> list[type[Evaluator]]:
    return [ChamferEvaluator, DTUChamferEvaluator]


class IDRConfReader:
    """``recon run --config FILE.conf``: IDR / HashModNFFBanks-IDR pyhocon files (see :mod:`.conf`)."""

    suffixes = (".conf",)

    @staticmethod
    def read(path):  # noqa: ANN001, ANN205 - the hook's reader protocol
        return read_idr_conf(path)


@hookimpl
def register_config_readers() -> list[IDRConfReader]:
    return [IDRConfReader()]
