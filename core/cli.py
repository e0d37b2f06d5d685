"""The ``pbrforge`` console script: one click group whose subcommands are the stage scripts' own commands."""

from __future__ import annotations

import importlib

import click

from pbrforge import __version__

# subcommand -> "module:attribute"; imported lazily so `pbrforge --help` stays fast.
COMMANDS = {
    "datagen": "pbrforge.datagen.generate:main",
    "check-data": "pbrforge.datacheck:check_data",
    "contact-sheet": "pbrforge.datacheck:contact_sheet",
    "teacher-train": "pbrforge.teacher.train:main",
    "teacher-infer": "pbrforge.teacher.infer:main",
    "shards": "pbrforge.shards:main",
    "student-train": "pbrforge.student.train:main",
    "export": "pbrforge.export.converter:main",
    "run": "pbrforge.runtime.run_inference:main",
}


def examples_epilog(doc: str) -> str:
    """The "Examples:" block of a module docstring as a click epilog, kept verbatim (``\\b``)."""
    marker = "Examples:" if "Examples:" in doc else "Example:"
    lines = [ln.strip() for ln in doc.split(marker, 1)[1].strip().splitlines()]
    joined = []
    for ln in lines:  # undo backslash continuations so each example is one line
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1].rstrip() + " " + ln
        elif ln:
            joined.append(ln)
    return "\b\nExamples:\n" + "\n".join(f"  {ln}" for ln in joined)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in COMMANDS if _exists(n))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


def _exists(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name].split(":")[0]) is not None


@click.group(cls=LazyGroup)
@click.version_option(__version__)
def main() -> None:
    """pbrforge: three photos of a surface in, PBR maps out.

    \b
    Examples:
      pbrforge datagen --out data/demo --count 64 --size 256
      pbrforge check-data data/demo
      pbrforge contact-sheet data/demo --out sheet.png
    """


if __name__ == "__main__":
    main()
