"""One logging set-up for every command: the ``pbrforge`` logger writes to stderr, and warnings go through it.

Library modules log with ``logging.getLogger(__name__)``; commands choose the level (``pbrforge -v/-q``).
Every Python warning is shown once as ``warning: Category: message`` instead of being swallowed or dumped
with a source line.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import click

LOGGER = "pbrforge"
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


class _EchoHandler(logging.Handler):
    """click.echo to stderr, looked up at each record so test runners that swap the streams see it."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"{record.levelname.lower()}: {msg}"
        click.echo(msg, err=True)


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    logging.getLogger(LOGGER).warning(f"{category.__name__}: {message}")


def ensure_logging() -> logging.Logger:
    """Install the handler once (level INFO); later calls keep whatever level a command chose."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
        warnings.showwarning = _show_warning
    return logger


def set_verbosity(verbose: int, quiet: bool) -> None:
    """-q: warnings and errors only; default: progress lines; -v (or more): debug detail."""
    ensure_logging().setLevel(LEVELS[-1 if quiet else min(verbose, 1)])
