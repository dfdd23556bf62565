"""Rich progress bars for long stages, on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["progress_bar", "stderr_console"]

_CONSOLE: Console | None = None


def stderr_console() -> Console:
    """The console progress bars and status lines go to (stdout stays for results/JSON)."""
    global _CONSOLE
    if _CONSOLE is None:
        _CONSOLE = Console(stderr=True, soft_wrap=True)
    return _CONSOLE


@contextlib.contextmanager
def progress_bar(description: str, total: int, completed: int = 0) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``; ``fields`` (e.g. loss=0.1) are shown after the bar."""
    from .logs import verbose_enough

    console = stderr_console()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, disable=not (console.is_terminal and verbose_enough()), transient=False) as bar:
        task = bar.add_task(description, total=total, completed=completed, info="")

        def advance(n: int = 1, **fields: float) -> None:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            bar.update(task, advance=n, info=info)

        yield advance
