"""What goes wrong, in two kinds: the user's input (exit 2) and a tool we call failing (exit 1).

Both are one sentence on stderr, never a traceback, raised early and never as ``assert``.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

EXIT_USER_ERROR = 2
EXIT_TOOL_FAILURE = 1


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


class ToolFailure(Exception):
    """A converter or runtime we call failed on input we had validated: exit code 1, naming the tool."""


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print one sentence to stderr and exit (code 2 for the user's input, 1 for a tool failure)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command: our errors and a full disk become one stderr line; logging is set up."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pbrforge.logs import ensure_logging

        ensure_logging()
        try:
            return fn(*args, **kwargs)
        except PBRForgeError as e:
            fail(str(e))
        except ToolFailure as e:
            fail(str(e), EXIT_TOOL_FAILURE)
        except OSError as e:  # the file system said no: one sentence, whatever the cause
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                fail(f"the disk is full: could not write {e.filename or 'an output file'}; nothing was kept")
            fail(f"cannot use {e.filename}: {e.strerror}" if e.filename else f"a file operation failed: {e}")

    return wrapper
