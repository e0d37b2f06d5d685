"""The command line: every command's help in one in-process pass, and help that never waits for torch."""

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
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


# Every spelling renamed by issue #24 (one word per concept: --data read, --output written, the checkpoint
# as the first argument), kept for one release: each must still be accepted, and hidden from --help.
OLD_SPELLINGS = {
    "datagen": {"--out"},
    "check-data": {"ROOT"},
    "contact-sheet": {"ROOT", "--out"},
    "teacher-train": {"--input-dir", "--output-dir"},
    "teacher-infer": {"--checkpoint", "--input-dir", "--data-root", "--out-dir"},
    "shards": {"--checkpoint", "--data-root", "--shards-dir"},
    "student-train": {"--shards-dir", "--input-dir", "--output-dir"},
    "package": {"--out"},
    "preview": {"--out"},
    "evaluate-capture": {"--checkpoint"},
}


@pytest.mark.parametrize("name", sorted(OLD_SPELLINGS))
def test_old_spellings_are_known_but_hidden(name):
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    old = {
        p.opts[0] if isinstance(p, click.Option) else p.human_readable_name
        for p in command.params
        if p.name and p.name.startswith("old_")
    }
    assert old == OLD_SPELLINGS[name]
    shown = CliRunner().invoke(cli, [name, "--help"]).output
    for spelling in old:
        assert not re.search(rf"(?<![\w-]){spelling}(?![\w-])", shown), f"{name} --help shows {spelling}"


def test_an_old_spelling_still_works_and_warns_once(tmp_path):
    data = tmp_path / "d"
    r = CliRunner().invoke(
        cli, ["datagen", "--out", str(data), "--count", "1", "--size", "16", "--seed", "3"]
    )
    assert r.exit_code == 0, r.output
    warned = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert warned == [
        "warning: --out is deprecated, use --output (the old spelling goes in the next release)"
    ]
    assert (data / "input" / "render_metadata.json").is_file()
    r = CliRunner().invoke(cli, ["check-data", str(data)])  # the data set as an argument, as it was
    assert r.exit_code == 0 and r.output.rstrip().endswith("ok"), r.output
    assert "warning: ROOT as an argument is deprecated, use --data" in r.output
    new = CliRunner().invoke(cli, ["check-data", "--data", str(data)])
    assert new.exit_code == 0 and "warning" not in new.output, new.output


def test_both_spellings_at_once_are_refused(tmp_path):
    r = CliRunner().invoke(cli, ["check-data", str(tmp_path), "--data", str(tmp_path)])
    assert r.exit_code == 2 and "give --data or its old spelling ROOT as an argument, not both" in r.output
    r = CliRunner().invoke(cli, ["package", str(tmp_path), "--out", str(tmp_path), "--output", str(tmp_path)])
    assert r.exit_code == 2 and "give --output or its old spelling --out, not both" in r.output
