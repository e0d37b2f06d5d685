"""The command line: every command's help in one in-process pass, and help that never waits for torch."""

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from click.testing import CliRunner

from pbrforge.cli import main as cli

COMMANDS = sorted(ep.name for ep in entry_points(group="pbrforge.commands"))
SCRIPTS = {  # stage scripts run as files, and the commands they define
    "datagen/generate.py": "datagen",
    "teacher/train.py": "teacher-train",
    "teacher/infer.py": "teacher-infer",
    "teacher_infer.py": "shards",
    "student/train.py": "student-train",
    "export/converter.py": "export",
    "runtime/run_inference.py": "run",
    "runtime/package.py": "package",
    "runtime/preview.py": "preview",
}


def test_every_command_has_help_with_examples():
    assert set(SCRIPTS.values()) <= set(COMMANDS) and {"check-data", "contact-sheet"} <= set(COMMANDS)
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0 and all(name in top.output for name in COMMANDS)
    for name in COMMANDS:
        r = runner.invoke(cli, [name, "--help"])
        assert r.exit_code == 0, r.output
        assert "Example" in r.output, name


def test_help_never_imports_torch():
    """Every command's help, and every stage script run as a file with --help (its own folder first on
    sys.path, as `python teacher/train.py` has it), loads no torch: what keeps help under a second."""
    code = (
        "import contextlib, io, runpy, sys\n"
        "from click.testing import CliRunner\n"
        "from pbrforge.cli import main\n"
        f"for name in {COMMANDS!r}:\n"
        "    assert CliRunner().invoke(main, [name, '--help']).exit_code == 0, name\n"
        f"for script in {sorted(SCRIPTS)!r}:\n"
        "    sys.argv, path0 = [script, '--help'], sys.path[0]\n"
        "    sys.path[0] = str(__import__('pathlib').Path(script).parent.resolve())\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        runpy.run_path(script, run_name='__main__')\n"
        "    sys.path[0] = path0\n"
        "    assert 'Usage:' in out.getvalue(), script\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'numpy', 'onnx', 'coremltools') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", f"--help imported {r.stdout.strip()}"
