"""Results of record: every benchmark JSON says which commit, when, on what machine and by which command.

A figure in the README is only as good as the file behind it; this is what lets a reader check one
against the code that produced it.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from pbrforge.fileio import write_json


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict[str, Any]:
    """Commit (with a flag for uncommitted changes), UTC date, machine and the command line of this process."""
    import torch

    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def write_result(path: Path, data: dict[str, Any]) -> None:
    """Write a benchmark's JSON with its provenance first."""
    write_json(path, {"provenance": provenance(), **data})
