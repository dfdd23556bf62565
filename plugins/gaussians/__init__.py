"""Built-in plugin ``gaussians``: the ``3dgs`` representation, the ``3dgs-train`` refiner and
the Gaussian renderers ``torch-3dgs`` (CPU/any device) and ``gsplat`` (CUDA).

Registered through the ``recon.plugins`` entry point exactly as a third-party plugin would be.
Other plugins do not import it: they mix with it through recon_core's Gaussian scene protocol
(:class:`recon_core.GaussianRepresentation`) and optimisation engine (:mod:`recon_core.optim`).
"""

from __future__ import annotations

from recon_core.hookspecs import hookimpl

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
    """Add ``recon demo-scene OUT`` (a generated scene for a first run without downloads) and
    ``recon bench render`` (speed and memory of the Gaussian rasterisers)."""
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

    _add_bench_render(cli)


def _add_bench_render(cli) -> None:  # noqa: ANN001 - click.Group
    """``recon bench render``: speed and memory of the Gaussian rasterisers (see :mod:`.bench`)."""
    import click

    bench_group = cli.commands.get("bench")
    if not isinstance(bench_group, click.Group):  # other plugins may add their benchmarks to the group

        @cli.group("bench")
        def bench_group() -> None:
            """Benchmarks of recon's components."""

    @bench_group.command("render")
    @click.option("--counts", default="10000,100000", show_default=True, help="Comma-separated Gaussian counts.")
    @click.option("--sizes", default="200x200,640x360", show_default=True, help="Comma-separated WIDTHxHEIGHT.")
    @click.option("--repeats", default=5, show_default=True, help="Timed runs per measurement (median; after a warm-up).")
    @click.option("--threads", default=2, show_default=True, help="torch (and OpenMP) threads.")
    @click.option("--renderers", default="cpp-cpu,torch-3dgs", show_default=True,
                  help="Comma-separated: cpp-cpu, torch-3dgs, reference, or peer names.")
    @click.option("--peer", "peers", multiple=True, metavar="NAME=PATH",
                  help="A peer renderer and its checkout (benchmarks/render_peers.py: opensplat, warp, mxbonn).")
    @click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
    def bench_render(counts: str, sizes: str, repeats: int, threads: int, renderers: str, peers: tuple[str, ...], as_json: bool) -> None:
        """Time forward and forward+backward renders of the benchmark scene, one subprocess each.

        Scene: N Gaussians uniform in a unit cube at z = 3, scales U(0.005, 0.03), opacities
        U(0.1, 0.9), SH degree 0, fx = fy = 1.5 H. JSON rows: renderer, n, width, height,
        forward_s, forward_backward_s, peak_rss_mb (and CPU seconds, threads, repeats).
        """
        import json

        from recon_core.errors import InputError
        from recon_core.progress import stderr_console

        from .bench import format_table, parse_sizes, run_render_benchmark

        try:
            count_list = [int(c) for c in counts.split(",")]
        except ValueError:
            raise InputError(f"--counts {counts!r}: expected comma-separated integers") from None
        if min(count_list) < 1 or repeats < 1 or threads < 1:
            raise InputError("--counts, --repeats and --threads must be positive")
        peer_paths = {}
        for item in peers:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise InputError(f"--peer {item!r}: expected NAME=PATH")
            peer_paths[name] = path
        console = stderr_console()

        def log(row: dict) -> None:
            fb = row.get("forward_backward_s")
            console.print(f"{row['renderer']} n={row['n']} {row['width']}x{row['height']}: "
                          f"fwd {row.get('forward_s')} s, fwd+bwd {fb} s" + (f" ({row['error']})" if row.get("error") else ""))

        rows = run_render_benchmark(
            [r for r in renderers.split(",") if r], count_list, parse_sizes(sizes), repeats, threads, peer_paths, log=log
        )
        click.echo(json.dumps(rows, indent=1) if as_json else format_table(rows))
