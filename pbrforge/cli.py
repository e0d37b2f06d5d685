"""The ``pbrforge`` console script: one click group whose subcommands the stages declare as entry points.

A stage adds a command in ``pyproject.toml`` under ``[project.entry-points."pbrforge.commands"]``; the group
imports it only to run it or show its help, and command modules import torch only inside their work, so
``pbrforge --help`` stays fast.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from pbrforge import __version__
from pbrforge.logs import set_verbosity
from pbrforge.options import OneLineUsageErrors

GROUP = "pbrforge.commands"


class EntryPointGroup(OneLineUsageErrors, click.Group):
    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:  # an unknown subcommand: one line too
            e.ctx = None
            raise

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(ep.name for ep in entry_points(group=GROUP))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        found = entry_points(group=GROUP, name=name)
        return next(iter(found)).load() if found else None


@click.group(cls=EntryPointGroup)
@click.version_option(__version__)
@click.option("-v", "--verbose", count=True, help="More detail in the log (debug lines).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors in the log.")
def main(verbose: int, quiet: bool) -> None:
    """pbrforge: three photos of a surface in, PBR maps out.

    \b
    Examples:
      pbrforge COMMAND --help         what a command does, with its own examples
      pbrforge -q COMMAND ...         warnings and errors only
      pbrforge -v COMMAND ...         debug detail as well
    """
    set_verbosity(verbose, quiet)


if __name__ == "__main__":
    main()
