"""Atomic writes and hashing: nothing half-written is ever left under its final name.

Temporary names carry the writer's process id (``.name.tmp-PID.ext``), so a later run can tell the leftovers
of a killed run from the files of a live one and remove them (``remove_stale_temps``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pbrforge.errors import DataError

_TEMP = re.compile(r"^\.(?P<stem>.+)\.(?P<kind>tmp|old|staged)-(?P<pid>\d+)(?P<suffix>\.[^.]*)?$")


def temp_name(path: Path, kind: str = "tmp") -> Path:
    """A hidden sibling of ``path`` owned by this process; the suffix is kept because some writers check it."""
    return path.with_name(f".{path.stem}.{kind}-{os.getpid()}{path.suffix}")


def replace_path(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``; a directory artifact (.mlpackage) replaces the old one whole."""
    if src.is_dir() and dst.exists():
        old = temp_name(dst, "old")
        os.replace(dst, old)
        os.replace(src, dst)
        remove(old)
    else:
        os.replace(src, dst)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        replace_path(tmp, path)
    finally:
        remove(tmp)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files a killed run left in ``folder`` (those whose writing process is gone).

    An ``.old`` copy whose final name is missing was moved aside by a run killed mid-replacement: it is the
    last good artifact, so it is put back rather than deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if not m or _alive(int(m["pid"])):
            continue
        final = p.with_name(m["stem"] + (m["suffix"] or ""))
        if m["kind"] == "old" and not final.exists():
            os.replace(p, final)
            continue
        remove(p)
        gone.append(p)
    return gone


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output_path(path: Path, kind: str = "output") -> None:
    """One sentence when ``path`` cannot be written as asked: a folder where a file goes, or a file on the way."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent == path and path.is_dir():
            raise DataError(f"{kind} {path} is a folder; give a file name")
        if parent != path and parent.exists() and not parent.is_dir():
            raise DataError(f"{kind} {path} cannot be written: {parent} is a file, not a folder")


def check_output_dir(path: Path, kind: str = "output folder") -> None:
    """One sentence when ``path`` cannot be a folder: it, or something on the way to it, is a file."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise DataError(f"{kind} {path} cannot be created: {parent} is a file, not a folder")


def _finite(data: Any) -> Any:
    """NaN and inf become null: JSON has no such numbers, and a figure that is not finite is no figure."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


def read_json(path: Path) -> object:
    """A JSON file's content, or one DataError sentence (missing, a folder, empty, not UTF-8, not JSON, NaN)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:80]})") from e


def read_tensors(path: Path) -> dict[str, Any]:
    """A safetensors file's tensors (torch), or one DataError sentence."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable safetensors file ({e})") from e


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a file or folder about to be written) for the block.

    A second run into the same output is refused in one sentence instead of racing the first. The lock is
    ``flock`` on a hidden ``.NAME.lock`` beside the target, released by the kernel if the process dies.
    """
    import fcntl

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = open(target.parent / f".{target.name}.lock", "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise DataError(
                f"another pbrforge run is writing {target} right now; wait for it to finish or choose another output"
            ) from e
        yield
    finally:
        handle.close()  # closing releases the lock
