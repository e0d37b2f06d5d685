"""Each material file judged by its own ecosystem's validator, never by ours.

* glb: the Khronos glTF validator (npm ``gltf-validator``), run by the system Node from ``runtime/web``;
* usdz: every validator registered with USD's validation framework (``pxr.UsdValidation``);
* mtlx: MaterialX's ``Document.validate()`` with the standard node libraries loaded, so every node and
  input is checked against its definition.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pbrforge.errors import UnavailableError

WEB = Path(__file__).resolve().parent / "web"
_logger = logging.getLogger(__name__)


@dataclass
class Verdict:
    format: str
    path: Path
    validator: str
    errors: int
    warnings: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.errors == 0

    def line(self) -> str:
        head = f"{self.format:<6} {self.path.name:<28} {self.validator:<34} {self.errors} errors, {self.warnings} warnings"
        return "\n".join([head] + [f"         {m}" for m in self.messages[:10]])

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "path": str(self.path),
            "validator": self.validator,
            "errors": self.errors,
            "warnings": self.warnings,
            "messages": self.messages,
        }


def gltf_validator() -> list[str]:
    """The command that runs the Khronos validator, or one sentence saying how to install it."""
    node = shutil.which("node")
    if node is None or not (WEB / "node_modules" / "gltf-validator").is_dir():
        raise UnavailableError("the glTF validator needs Node and runtime/web/node_modules: run make install")
    return [node, str(WEB / "validate_gltf.mjs")]


def validate_glb(path: Path) -> Verdict:
    from pbrforge.errors import ToolFailure

    try:
        r = subprocess.run([*gltf_validator(), str(path)], capture_output=True, text=True, timeout=300)
        report = json.loads(r.stdout) if r.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError) as e:
        raise ToolFailure(f"the glTF validator gave no report on {path} ({type(e).__name__})") from e
    if report is None:
        raise ToolFailure(f"the glTF validator failed on {path}: {r.stderr.strip()[-400:]}")
    issues = report["issues"]
    severity = {0: "error", 1: "warning", 2: "info", 3: "hint"}
    messages = [
        f"{severity.get(m['severity'], m['severity'])}: {m['code']} {m.get('pointer', '')} {m['message']}".strip()
        for m in issues["messages"]
        if m["severity"] <= 1
    ]
    return Verdict(
        "gltf",
        Path(path),
        f"gltf-validator {report['validatorVersion']}",
        issues["numErrors"],
        issues["numWarnings"],
        messages,
    )


def validate_usdz(path: Path) -> Verdict:
    from pxr import Usd, UsdValidation

    stage = Usd.Stage.Open(str(path))
    registry = UsdValidation.ValidationRegistry()
    validators = registry.GetOrLoadAllValidators()
    found = UsdValidation.ValidationContext(validators).Validate(stage)
    kinds = UsdValidation.ValidationErrorType
    errors = [e for e in found if e.GetType() == kinds.Error]
    warnings = [e for e in found if e.GetType() == kinds.Warn]
    return Verdict(
        "usdz",
        Path(path),
        f"pxr.UsdValidation ({len(validators)} validators)",
        len(errors),
        len(warnings),
        [f"{e.GetType()}: {e.GetName()}: {e.GetMessage()}" for e in errors + warnings],
    )


def validate_mtlx(path: Path) -> Verdict:
    import MaterialX as mx

    doc = mx.createDocument()
    mx.readFromXmlFile(doc, str(path))
    stdlib = mx.createDocument()
    mx.loadLibraries(mx.getDefaultDataLibraryFolders(), mx.getDefaultDataSearchPath(), stdlib)
    doc.setDataLibrary(stdlib)
    valid, message = doc.validate()
    problems = [m for m in message.splitlines() if m.strip()]
    missing = [
        f"missing file: {f}"
        for node in doc.getNodes("image")
        if not (Path(path).parent / (f := node.getInputValue("file"))).is_file()
    ]
    return Verdict(
        "mtlx",
        Path(path),
        f"MaterialX {mx.getVersionString()} Document.validate",
        (0 if valid else max(1, len(problems))) + len(missing),
        0,
        problems + missing,
    )


VALIDATORS = {".glb": validate_glb, ".usdz": validate_usdz, ".mtlx": validate_mtlx}


def validate(path: Path) -> Verdict:
    """The verdict of the validator that owns ``path``'s format."""
    suffix = Path(path).suffix.lower()
    if suffix not in VALIDATORS:
        raise ValueError(f"no validator for {path}")
    return VALIDATORS[suffix](Path(path))


def check_files(paths: list[Path]) -> list[Verdict]:
    """Validate every file that has a validator, log the verdicts, and fail (exit 1) on any error."""
    from pbrforge.errors import ToolFailure

    verdicts = [validate(p) for p in paths if Path(p).suffix.lower() in VALIDATORS]
    _logger.info("validators:\n" + "\n".join(v.line() for v in verdicts))
    failed = [v for v in verdicts if not v.passed]
    if failed:
        raise ToolFailure(f"{failed[0].validator} found {failed[0].errors} error(s) in {failed[0].path}")
    return verdicts
