"""D2GV plugin: videos as deformable 2D Gaussians per group of pictures.

Components: representation ``d2gv``, renderer ``torch-2dgs``, refiner ``d2gv-fit``.
The op ``rasterize.rasterize_sum`` runs a compiled C++/OpenMP kernel on CPU (``_cpp.py``,
``csrc/``) with its PyTorch twin ``_torch_impl._rasterize_sum`` (any device, and the fallback);
``_reference._rasterize_sum_dense`` is a brute-force version for tests. ``decode.Decoder``
decodes frames for inference. ``codec.py`` (encoder, refiner ``d2gv-compress``) and
``bitstream.py`` (the ``.d2gv`` file, decode side) make it a codec; ``recon decode FILE --out DIR``
decodes a file. The fitter and the encoder are imported only when their components are used, so
decoding a bitstream loads no training code.
"""

from __future__ import annotations

from recon_core import hookimpl

from typing import Any

from .renderer import Torch2DGS
from .representation import D2GV

__all__ = ["D2GV", "Torch2DGS", "D2GVFit", "D2GVCompress"]


def __getattr__(name: str) -> Any:
    """``D2GVFit`` / ``D2GVCompress`` on first use (keeps ``import recon_plugins.d2gv`` free of training code)."""
    if name == "D2GVFit":
        from .fit import D2GVFit

        return D2GVFit
    if name == "D2GVCompress":
        from .codec import D2GVCompress

        return D2GVCompress
    raise AttributeError(name)


@hookimpl
def register_representations() -> list[type]:
    return [D2GV]


@hookimpl
def register_renderers() -> list[type]:
    return [Torch2DGS]


@hookimpl
def register_refiners() -> list[type]:
    from .codec import D2GVCompress
    from .fit import D2GVFit

    return [D2GVFit, D2GVCompress]


@hookimpl
def register_commands(cli) -> None:  # noqa: ANN001 - click.Group
    """Add ``recon decode FILE.d2gv --out DIR`` (PNG frames + mp4 from the bitstream alone)."""
    import click

    @cli.command("decode")
    @click.argument("bitstream", type=click.Path(dir_okay=False, path_type=str))
    @click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=str), help="Output folder for frame PNGs and decoded.mp4.")
    @click.option("--no-mp4", is_flag=True, help="Write only the PNG frames.")
    @click.option("--workers", default=1, show_default=True, help="Frames decoded in parallel (threads).")
    def decode(bitstream: str, out: str, no_mp4: bool, workers: int) -> None:
        """Decode a .d2gv bitstream to PNG frames and an mp4 (no checkpoint, no training code)."""
        from .bitstream import decode_to_folder

        written = decode_to_folder(bitstream, out, mp4=not no_mp4, workers=workers)
        click.echo(f"wrote {len(written)} files to {out}")
