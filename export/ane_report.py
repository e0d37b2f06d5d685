"""A static ANE-readiness report: walk the MIL program of a saved .mlpackage and flag what tends to keep
work off the Apple Neural Engine.

This is a heuristic from public guidance (ml-ane-transformers, the Core ML docs), not a measurement:
Xcode's Core ML performance report on a device is the ground truth.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pbrforge.deploy import ANE_MAX_KERNEL

ANE_MAX_DIM = 16384
MAX_LAYOUT_FRACTION = 0.25  # reshapes + transposes beyond this share of compute ops is flagged
WEIGHTS_LIMIT_BYTES = 1 << 30
GATHER_SCATTER = ("gather", "gather_nd", "gather_along_axis", "scatter", "scatter_nd", "scatter_along_axis")
LAYOUT_OPS = ("reshape", "transpose")
NOT_COMPUTE = ("const",)


def dtype_name(var) -> str:
    """ "fp16", "fp32", "int32", ... for a MIL variable."""
    from coremltools.converters.mil.mil import types

    try:
        return types.builtin_to_string(var.dtype)
    except Exception:
        return str(getattr(var, "dtype", ""))


def _shape(var) -> tuple:
    try:
        return tuple(var.shape)
    except Exception:
        return ()


def ane_report(path: Path) -> dict:
    """Counts and flags for one .mlpackage; ``flags`` maps each check to a list of offending op names."""
    from pbrforge.export.coreml_export import load_program

    program, spec = load_program(path)
    ops = list(program.functions["main"].operations)
    counts = Counter(op.op_type for op in ops)
    compute = [op for op in ops if op.op_type not in NOT_COMPUTE and not op.op_type.startswith("constexpr_")]
    flags: dict[str, list[str]] = {
        k: []
        for k in (
            "fp32_compute",
            "flexible_shapes",
            "kernel_over_13",
            "rank5_tensors",
            "dim_over_16384",
            "gather_scatter",
            "many_reshapes_transposes",
            "weights_over_1gb",
        )
    }
    for op in compute:
        outs = list(op.outputs)
        if op.op_type != "cast" and any(dtype_name(o) == "fp32" for o in outs):
            flags["fp32_compute"].append(op.name)
        if any(len(_shape(o)) >= 5 for o in outs):
            flags["rank5_tensors"].append(op.name)
        if any(isinstance(d, int) and d > ANE_MAX_DIM for o in outs for d in _shape(o)):
            flags["dim_over_16384"].append(op.name)
        if op.op_type in GATHER_SCATTER:
            flags["gather_scatter"].append(op.name)
        if op.op_type == "conv":
            w = op.inputs.get("weight")
            k = _shape(w)[2:] if w is not None else ()
            if any(isinstance(d, int) and d > ANE_MAX_KERNEL for d in k):
                flags["kernel_over_13"].append(f"{op.name} {k}")
        if any(not isinstance(d, int) for o in outs for d in _shape(o)):
            flags["flexible_shapes"].append(op.name)
    for inp in spec.description.input:
        t = inp.type.WhichOneof("Type")
        arr = getattr(inp.type, t)
        if any(
            arr.HasField(f)
            for f in ("enumeratedSizes", "imageSizeRange", "enumeratedShapes", "shapeRange")
            if f in [d.name for d in arr.DESCRIPTOR.fields]
        ):
            flags["flexible_shapes"].append(f"input {inp.name}")
    layout = sum(counts[t] for t in LAYOUT_OPS)
    n_compute = max(1, len(compute))
    if layout / n_compute > MAX_LAYOUT_FRACTION:
        flags["many_reshapes_transposes"].append(f"{layout} of {n_compute} compute ops")
    weights = sum(p.stat().st_size for p in Path(path).rglob("*.bin"))
    if weights > WEIGHTS_LIMIT_BYTES:
        flags["weights_over_1gb"].append(f"{weights / 2**30:.2f} GB")
    return {
        "package": str(path),
        "ops_total": len(ops),
        "compute_ops": len(compute),
        "op_counts": dict(counts.most_common()),
        "weights_bytes": weights,
        "layout_ops": layout,
        "flags": flags,
        "flag_counts": {k: len(v) for k, v in flags.items()},
        "note": "heuristic; Xcode's Core ML performance report on a device is the ground truth",
    }


def report_table(report: dict) -> str:
    lines = [
        f"ANE-readiness (heuristic) for {report['package']}: {report['compute_ops']} compute ops, "
        f"{report['weights_bytes'] / 2**20:.1f} MiB weights",
        f"{'check':<26} {'flagged':>7}  example",
    ]
    for k, v in report["flags"].items():
        lines.append(f"{k:<26} {len(v):>7}  {v[0] if v else ''}")
    top = ", ".join(f"{k} {n}" for k, n in list(report["op_counts"].items())[:8])
    lines.append(f"most common ops: {top}")
    return "\n".join(lines)
