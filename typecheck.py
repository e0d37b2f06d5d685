"""``make lint``'s type check: mypy over the library and every stage, each under its installed name.

pyproject's ``package-dir`` installs the folder ``export/`` as ``pbrforge.export`` (and likewise the other
stages), but mypy names a module after its folder and cannot follow the editable install's import hook: given
``export/formats.py`` it checks a module ``export.formats`` that nothing imports. So this script builds a
throwaway tree of links in ``build/typecheck/`` laid out as the wheel is (``pbrforge/export/formats.py`` ->
``export/formats.py``), read from ``[tool.setuptools]`` so the layout is stated only there, runs mypy on it
with pyproject's ``[tool.mypy]`` settings, and prints each path as the file in the checkout.

Example:
    python typecheck.py                      # what make lint runs
    python typecheck.py --no-incremental     # any further arguments go to mypy
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from mypy import api

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: mypy itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent
TREE = Path("build", "typecheck")


def package_folders(pyproject: Path) -> dict[str, Path]:
    """Each package setuptools installs and the checkout folder it comes from (relative to ROOT)."""
    setuptools = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools.get("package-dir", {})
    folders = {}
    for package in setuptools["packages"]:
        # setuptools' rule: the nearest enclosing package named in package-dir decides the folder
        parts = package.split(".")
        for cut in range(len(parts), -1, -1):
            base = ".".join(parts[:cut])
            if base in package_dir or cut == 0:
                folders[package] = Path(package_dir.get(base, ""), *parts[cut:])
                break
    return folders


def build_tree(folders: dict[str, Path]) -> dict[str, str]:
    """Link every module of every package into TREE as installed; return tree folder -> checkout folder."""
    shutil.rmtree(TREE, ignore_errors=True)
    prefixes = {}
    for package, folder in folders.items():
        target = TREE.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for module in sorted(folder.glob("*.py")) + sorted(folder.glob("*.pyi")):
            (target / module.name).symlink_to(ROOT / module)
        prefixes[f"{target.as_posix()}/"] = f"{folder.as_posix()}/"
    return prefixes


def main(argv: list[str]) -> int:
    os.chdir(ROOT)
    folders = package_folders(ROOT / "pyproject.toml")
    prefixes = build_tree(folders)
    tops = sorted({str(TREE / package.split(".")[0]) for package in folders})
    stdout, stderr, status = api.run([*argv, *tops])
    # longest first, so pbrforge/export/ is matched before pbrforge/
    pattern = re.compile("|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True)))
    sys.stdout.write(pattern.sub(lambda m: prefixes[m.group()], stdout))
    sys.stderr.write(pattern.sub(lambda m: prefixes[m.group()], stderr))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
