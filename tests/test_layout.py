"""The house rules, read from the code: the library under every stage, and the wheel naming nothing generic."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("datagen", "teacher", "student", "export", "runtime")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    # a module named in a string (importlib, entry points) is an import too
    names |= {m for s in ast.walk(tree) if isinstance(s, ast.Constant) and isinstance(s.value, str)
              for m in re.findall(r"pbrforge\.[a-z_]+", s.value)}  # fmt: skip
    return names


def test_library_imports_no_stage():
    offenders = {
        f"{p.relative_to(ROOT)} -> {m}"
        for p in (ROOT / "pbrforge").glob("*.py")
        for m in _imports(p)
        if m.split(".")[:2] in [["pbrforge", s] for s in STAGES]
    }
    assert not offenders, sorted(offenders)


def test_library_names_no_stage_script():
    pattern = re.compile(
        r"\b(?:" + "|".join(STAGES) + r")/[a-z_]+\.py|teacher_infer\.py|(?<![/\w])shards\.py"
    )
    hits = [
        f"{p.name}: {m}" for p in (ROOT / "pbrforge").glob("*.py") for m in pattern.findall(p.read_text())
    ]
    assert not hits, hits


def test_stages_reach_each_other_only_downstream():
    """runtime may use export (it runs exported artifacts); no other stage imports another."""
    allowed = {("runtime", "export")}
    found = {
        (stage, m.split(".")[1])
        for stage in STAGES
        for p in (ROOT / stage).glob("*.py")
        for m in _imports(p)
        if m.startswith("pbrforge.") and m.split(".")[1] in STAGES and m.split(".")[1] != stage
    }
    assert found <= allowed, sorted(found - allowed)
