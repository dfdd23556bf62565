"""Built-in plugin ``gaussians``: the ``3dgs`` representation, the ``3dgs-train`` refiner and
the Gaussian renderers ``torch-3dgs`` (CPU/any device) and ``gsplat`` (CUDA).

Registered through the ``recon.plugins`` entry point exactly as a third-party plugin would be.
Other plugins build a ``3dgs`` representation from tensors with
:meth:`GaussianSplat.from_gaussians` (activated values) or :meth:`GaussianSplat.from_raw`.
"""

from __future__ import annotations

from recon_core.hookspecs import hookimpl

from .ply import SplatPly, read_splat_ply, write_splat_ply
from .renderers import GsplatRenderer, TorchGaussianRenderer
from .representation import GaussianSplat, GaussianSplatConfig
from .trainer import GaussianTrainConfig, GaussianTrainer

__all__ = [
    "GaussianSplat",
    "GaussianSplatConfig",
    "GaussianTrainer",
    "GaussianTrainConfig",
    "GsplatRenderer",
    "TorchGaussianRenderer",
    "SplatPly",
    "read_splat_ply",
    "write_splat_ply",
]


@hookimpl
def register_representations() -> list[type]:
    return [GaussianSplat]


@hookimpl
def register_refiners() -> list[type]:
    return [GaussianTrainer]


@hookimpl
def register_renderers() -> list[type]:
    return [TorchGaussianRenderer, GsplatRenderer]


@hookimpl
def register_commands(cli) -> None:  # noqa: ANN001 - click.Group
    """Add ``recon demo-scene OUT``: a generated scene for a first run without downloads."""
    import click

    @cli.command("demo-scene")
    @click.argument("out", type=click.Path(file_okay=False, path_type=str))
    @click.option("--train-views", default=40, show_default=True, help="Number of training views.")
    @click.option("--test-views", default=8, show_default=True, help="Number of held-out test views.")
    @click.option("--size", default=96, show_default=True, help="Image width and height in pixels.")
    @click.option("--seed", default=0, show_default=True, help="Seed of the generated Gaussians.")
    def demo_scene(out: str, train_views: int, test_views: int, size: int, seed: int) -> None:
        """Render a small synthetic object (nerfstudio layout) into OUT."""
        from rich.console import Console

        from .demo import make_demo_scene

        if train_views < 1 or test_views < 0 or size < 8:
            raise click.BadParameter("need --train-views >= 1, --test-views >= 0 and --size >= 8")
        with Console(stderr=True).status(f"rendering {train_views + test_views} demo views"):
            folder = make_demo_scene(out, n_train=train_views, n_test=test_views, size=size, seed=seed)
        click.echo(f"demo scene written to {folder} ({train_views} train + {test_views} test views, {size}x{size})")
