"""The wheel, as a user gets it: built, installed into a fresh venv (not editable), and run from elsewhere."""

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_answers_help(tmp_path):
    dist, src = tmp_path / "dist", tmp_path / "src"
    # pip builds in the source folder (build/, *.egg-info): build a copy so the checkout stays clean
    skip = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "demo_out", "*.egg-info", "results", "__pycache__"
    )
    shutil.copytree(ROOT, src, ignore=skip)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("pbrforge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"pbrforge", next(t for t in tops if t.endswith(".dist-info"))}, tops  # nothing generic
    assert {"pbrforge/contract.py", "pbrforge/teacher/shards.py", "pbrforge/runtime/inference.py"} <= set(
        names
    )
    assert not any(n.startswith("pbrforge/") and "/tests/" in n for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # Dependencies (torch and the rest) come from the test's own environment rather than the network:
    # a .pth line puts its site-packages after the fresh venv's own, so pbrforge itself is the wheel's copy.
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(py), "-c", "import pbrforge; print(pbrforge.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
    )
    assert where.returncode == 0 and where.stdout.startswith(str(env_dir)), where.stdout + where.stderr
    for args in (["--help"], ["export", "--help"], ["run", "--help"], ["--version"]):
        r = subprocess.run(
            [str(env_dir / "bin" / "pbrforge"), *args],
            capture_output=True,
            text=True,
            cwd=elsewhere,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert ("Usage:" in r.stdout) or ("version" in r.stdout), r.stdout
    assert (
        "teacher-train"
        in subprocess.run(
            [str(env_dir / "bin" / "pbrforge"), "--help"], capture_output=True, text=True, cwd=elsewhere
        ).stdout
    )
