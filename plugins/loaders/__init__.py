"""Built-in loaders: transforms.json (nerfstudio), COLMAP, IDR/DTU, DGGT driving folders, videos.

Also adds ``recon process-data images`` (structure from motion with pycolmap).
"""

from __future__ import annotations

from recon_core import hookimpl

from .colmap import ColmapLoader
from .dggt import DggtLoader
from .idr import IdrLoader
from .nerfstudio import NerfstudioLoader
from .process_data import register_cli
from .video import VideoLoader

__all__ = ["ColmapLoader", "DggtLoader", "IdrLoader", "NerfstudioLoader", "VideoLoader", "register_loaders", "register_commands"]


@hookimpl
def register_loaders() -> list[type]:
    """The loader classes of this plugin."""
    return [NerfstudioLoader, ColmapLoader, IdrLoader, DggtLoader, VideoLoader]


@hookimpl
def register_commands(cli) -> None:  # noqa: ANN001 - click.Group
    """Add ``recon process-data images``."""
    register_cli(cli)
