"""User-facing errors: one sentence, exit code 2, raised early and never as ``assert``."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

EXIT_USER_ERROR = 2


class PBRForgeError(Exception):
    """Base of every error that is the user's input, not a bug: printed as one line, exit code 2."""


class DataError(PBRForgeError):
    """Bad data on disk: missing or corrupt files, wrong shapes, NaN, unknown metadata."""


class ConfigError(PBRForgeError):
    """An unknown preset, an unknown config key, or a checkpoint of another architecture."""


class UnavailableError(PBRForgeError):
    """A backend or device that this machine cannot provide (TensorRT, Core ML prediction, CUDA)."""


class ParityError(PBRForgeError):
    """An exported artifact disagrees with PyTorch beyond its gate."""


def fail(message: str) -> None:
    """Print one sentence to stderr and exit with code 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USER_ERROR)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command so PBRForgeError becomes one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PBRForgeError as e:
            fail(str(e))

    return wrapper
