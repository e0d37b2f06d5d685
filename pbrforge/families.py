"""The model families a checkpoint can name, found through the ``pbrforge.families`` entry points.

A stage declares its family in ``pyproject.toml`` (``NAME = "module:FAMILY"`` under ``pbrforge.families``), so
the library rebuilds any checkpoint without knowing which stages exist. Loading a family also registers its
training presets, because the entry point lives in the module that defines them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pbrforge.errors import ConfigError

GROUP = "pbrforge.families"


@dataclass(frozen=True)
class ModelFamily:
    """What the library needs to build a family's models: the typed config and the module it configures."""

    name: str
    config_cls: type  # a dataclass with at least ``image_size`` and ``output_size``
    model_cls: type  # called with one config_cls instance
    train_command: str  # the `pbrforge` subcommand that trains it, for error sentences


@functools.cache
def families() -> dict[str, ModelFamily]:
    """Every installed family by name (imports each family's module once)."""
    found: dict[str, ModelFamily] = {}
    for ep in entry_points(group=GROUP):
        fam: Any = ep.load()
        if not isinstance(fam, ModelFamily) or fam.name != ep.name:
            raise ConfigError(f"entry point {ep.name} = {ep.value} is not a ModelFamily named {ep.name!r}")
        found[fam.name] = fam
    return found


def get_family(name: str) -> ModelFamily:
    known = families()
    if name not in known:
        raise ConfigError(
            f"unknown model family {name!r}; known: {', '.join(sorted(known)) or 'none installed'}"
        )
    return known[name]
