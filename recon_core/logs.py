"""Console messages through :mod:`logging`: the ``recon`` logger, its verbosity (``recon -q`` /
``-v``), each warning shown once, and known noise of other libraries filtered.

Components and the pipeline log to ``logging.getLogger("recon")`` (the pipeline also writes every
message to the run's log.txt). :func:`setup_logging`, called by the CLI, sends the records to the
stderr console: INFO and DEBUG dimmed, warnings in yellow, each distinct warning text once per
process (Python ``warnings`` included, through :func:`logging.captureWarnings`). Without it (recon
used as a library) the application's own logging configuration applies.
"""

from __future__ import annotations

import logging
import re

__all__ = ["LOGGER_NAME", "NOISE", "logger", "setup_logging", "verbose_enough"]

LOGGER_NAME = "recon"

NOISE: tuple[tuple[str, str], ...] = (
    # torch.utils.cpp_extension warns at import on a machine with a CUDA toolkit but no GPU; recon
    # picks the CPU renderers itself, and the line would break into the progress bar.
    ("torch.utils.cpp_extension", r"No CUDA runtime is found"),
    # TypedStorage deprecation inside third-party checkpoint loaders: nothing a user can act on.
    ("py.warnings", r"TypedStorage is deprecated"),
)
"""``(logger name, message regex)`` of known, harmless messages of other libraries: dropped."""


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def verbose_enough(level: int = logging.INFO) -> bool:
    """Whether messages of ``level`` are shown (e.g. progress bars are drawn only at INFO)."""
    return logger().isEnabledFor(level)


class _NoiseFilter(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


class _ConsoleHandler(logging.Handler):
    """Records to recon's stderr console; each distinct warning text only once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        from .progress import stderr_console

        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                key = re.sub(r"\s+", " ", message).strip()
                if key in self.seen:
                    return
                self.seen.add(key)
                if record.name == "py.warnings":  # "file:line: Category: text\n  source line"
                    message = message.strip().splitlines()[0]
                text = Text(f"warning: {message}", style="yellow")
            else:
                text = Text(message, style="dim")  # a Text: brackets in messages are not markup
            stderr_console().print(text, highlight=False)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


_HANDLER: _ConsoleHandler | None = None


def setup_logging(verbosity: int = 0) -> None:
    """Show recon's messages on stderr: ``verbosity`` -1 warnings only (``-q``), 0 information
    (default), 1 debug details (``-v``). Idempotent; safe to call once per CLI invocation."""
    global _HANDLER
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    log = logger()
    log.setLevel(level)
    if _HANDLER is None:
        _HANDLER = _ConsoleHandler()
        log.addHandler(_HANDLER)
        log.propagate = False
        logging.captureWarnings(True)
        warnings_log = logging.getLogger("py.warnings")
        warnings_log.addHandler(_HANDLER)
        warnings_log.propagate = False
        for name, pattern in NOISE:
            logging.getLogger(name).addFilter(_NoiseFilter(pattern))
    _HANDLER.setLevel(level)
