"""ONNX Runtime mobile: the ``.ort`` model its mobile builds load, and which nodes their NPU providers would take.

``OUTPUT.ort`` is the ``.onnx`` rewritten for the phone NPUs' providers (``onnx_rewrite``), converted by ONNX
Runtime's own tool in its Runtime style: basic optimizations only, with the CPU-specific fusions saved to apply
where no NPU provider takes a node, as ORT advises for NNAPI and Core ML. It is gated against PyTorch like the
``.onnx``. The desktop ``.onnx`` keeps the exporter's graph: its fused ops (HardSwish, say) are faster on a CPU.

The usability report is ONNX Runtime's mobile checker (``check_onnx_model_mobile_usability``) on that same
basic-optimized graph: per execution provider (NNAPI on Android, Core ML MLProgram on iOS) the partitions, the
nodes they would take, the ops they would not, and the checker's verdict. Several partitions mean copies
between the NPU and the CPU on every run, which the checker judges worse than the CPU alone.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from pbrforge.export.formats import Built, ExportJob, Format, register
from pbrforge.export.onnx_export import check_fp32, onnx_runner

_logger = logging.getLogger(__name__)

PROVIDERS = {  # the checker's name -> the op list it reads
    "NNAPI": None,
    "CoreML MLProgram": "coreml_supported_mlprogram_ops.md",
}


def write_ort(onnx_path: Path, final: Path) -> tuple[float, dict[str, int], dict[str, Any]]:
    """Write the mobile ``.ort`` of ``onnx_path`` at ``final``: seconds taken, the rewrites, the usability report."""
    import onnx
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from pbrforge.export.onnx_rewrite import mobile_friendly

    # onnxruntime/tools/logger.py sets its loggers to DEBUG: its "Created config" line is not ours to print
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        source = Path(tmp) / "model.onnx"
        model, rewrites = mobile_friendly(onnx.load(str(onnx_path)))
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(source))
        usability = mobile_usability(source)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # the converter prints its progress
            convert_onnx_models_to_ort(
                source, output_dir=Path(tmp) / "out", optimization_styles=[OptimizationStyle.Runtime]
            )
        _logger.debug(printed.getvalue())
        converted = sorted((Path(tmp) / "out").glob("*.ort"))
        if len(converted) != 1:
            raise RuntimeError(f"ONNX Runtime converted {len(converted)} models from {onnx_path}")
        converted[0].replace(final)
    return time.perf_counter() - t0, rewrites, usability


def mobile_usability(onnx_path: Path) -> dict[str, Any]:
    """ONNX Runtime's mobile checker, per provider: partitions, nodes taken, unsupported ops, verdict."""
    from onnxruntime.tools.mobile_helpers.usability_checker import (
        check_coreml_partitions,
        check_nnapi_partitions,
        check_shapes,
    )
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "basic.onnx"
        optimize_model(Path(onnx_path), optimized)  # BASIC: constant folding, BatchNorm into Conv
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
    dynamic_inputs, dynamic_values = check_shapes(model.graph)
    report: dict[str, Any] = {
        "checker": "onnxruntime.tools.mobile_helpers.usability_checker",
        "dynamic_inputs": [i.name for i in dynamic_inputs],
        "dynamic_values": dynamic_values,
        "providers": {},
    }
    for name, ops in PROVIDERS.items():
        info = (
            check_nnapi_partitions(model, True) if ops is None else check_coreml_partitions(model, True, ops)
        )
        report["providers"][name] = {
            "partitions": info.num_partitions,
            "partition_sizes": [len(g) for g in info.supported_groups],
            "nodes": info.num_nodes,
            "nodes_handled": info.num_supported_nodes,
            "unsupported_ops": sorted(info.unsupported_ops),
            "nodes_unsupported_by_op": info.nodes_unsupported_due_to_op,
            "nodes_with_dynamic_input": info.nodes_unsupported_due_to_dynamic_input,
            "ops_with_unsupported_rank": sorted(info.ops_with_unsupported_rank),
            "verdict": info.suitability().name,
            # conditions on the ops taken that the checker lists but does not check (see onnx_rewrite)
            "caveats_not_checked": info.supported_ops_checker.get_caveats(),
        }
    return report


def usability_table(report: dict[str, Any]) -> str:
    lines = [
        "ONNX Runtime mobile usability (its own checker)",
        f"{'execution provider':<18} {'partitions':>10} {'nodes handled':>14} {'verdict':>8}  unsupported ops",
    ]
    for name, p in report["providers"].items():
        lines.append(
            f"{name:<18} {p['partitions']:>10} {p['nodes_handled']:>7}/{p['nodes']:<6} {p['verdict']:>8}  "
            f"{', '.join(p['unsupported_ops']) or 'none'}"
            + (
                f" (+{p['nodes_with_dynamic_input']} nodes with a dynamic input)"
                if p["nodes_with_dynamic_input"]
                else ""
            )
        )
    return "\n".join(lines)


def _build(job: ExportJob, staged: Path) -> Built:
    seconds, rewrites, usability = write_ort(job.paths.artifact(".onnx"), staged)
    _logger.info(usability_table(usability))
    return Built(
        seconds,
        info={"mobile_rewrites": rewrites, "mobile_usability": usability},
        deployment={"onnxruntime_mobile": usability},
    )


register(Format("onnx-ort", "onnx", ".ort", "onnx", _build, check_fp32, onnx_runner, needs=("onnx",)))
