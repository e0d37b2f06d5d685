import pytest
from click.testing import CliRunner
from helpers import run_script

from pbrforge.cli import COMMANDS
from pbrforge.cli import main as cli

SCRIPTS = [
    "datagen/generate.py",
    "teacher/train.py",
    "teacher/infer.py",
    "teacher_infer.py",
    "student/train.py",
    "export/converter.py",
    "runtime/run_inference.py",
]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help_with_examples(name):
    r = CliRunner().invoke(cli, [name, "--help"])
    assert r.exit_code == 0, r.output
    assert "Example" in r.output


@pytest.mark.parametrize("script", SCRIPTS)
def test_stage_scripts_run_as_files(script):
    """`python <stage>/<script>.py --help` works (absolute imports, no shadowed libraries)."""
    r = run_script(script, "--help", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Usage:" in r.stdout
