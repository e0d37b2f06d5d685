"""Export benchmark for the demo student: artifact sizes, conversion times, parity PSNRs, ANE flags.

Goals (PSNR vs PyTorch fp32, every map): FP16 >= 55 dB, 8-bit >= 45 dB, 6-bit >= 35 dB. On Linux the
Core ML numbers are the PyTorch emulation the converter reports (FP16 run, palettized weights read back).

Examples:
    python benchmarks/export.py
    python benchmarks/export.py --checkpoint runs/student/checkpoints/best.pt
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pbrforge.export.converter import export_artifacts
from pbrforge.options import examples_epilog
from pbrforge.provenance import write_result

GOALS = {"coreml fp16": 55.0, "coreml 8-bit": 45.0, "coreml 6-bit": 35.0}
VARIANTS = [  # (label, format, kwargs)
    ("onnx fp32", "onnx", {}),
    ("coreml fp16", "coreml", {}),
    ("coreml 8-bit", "coreml", {"nbits": 8}),
    ("coreml 6-bit", "coreml", {"nbits": 6}),
    ("coreml 4-bit", "coreml", {"nbits": 4, "min_target": "iOS18"}),
]


@click.command(epilog=examples_epilog(__doc__))
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=Path("demo_out/student/checkpoints/best.pt"),
    show_default=True,
    help="A student checkpoint (make demo writes this one).",
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
def main(checkpoint: Path, out: Path) -> None:
    """Convert the student five ways and tabulate size, time, parity and ANE flags."""
    if not checkpoint.exists():
        raise click.ClickException(f"{checkpoint} is missing: run `make demo` first or pass --checkpoint")
    rows = []
    for label, fmt, kw in VARIANTS:
        base = out / "export_work" / label.replace(" ", "_")
        r = export_artifacts(checkpoint, base, (fmt,), **kw).rows[0]
        if r.parity is None:
            raise click.ClickException(f"{label}: {r.status} {r.detail}")
        psnrs = {k: v["psnr_db"] for k, v in r.parity.outputs.items()}
        ane = json.loads(base.with_suffix(".ane.json").read_text())["flag_counts"] if fmt == "coreml" else {}
        goal = GOALS.get(label)
        rows.append(
            {
                "variant": label,
                "bytes": r.bytes,
                "seconds": r.seconds,
                "status": r.status,
                "min_psnr_db": min(psnrs.values()),
                "psnr_db": psnrs,
                "ane_flags": sum(ane.values()) if ane else None,
                "ane_flag_counts": ane,
                "goal_db": goal,
                "goal_met": None if goal is None else min(psnrs.values()) >= goal,
            }
        )
    print(f"\nexport benchmark: {checkpoint}")
    print(
        f"{'variant':<14} {'MiB':>7} {'convert s':>9} {'min PSNR dB':>11} {'goal':>6} {'ANE flags':>9}  per-map PSNR dB"
    )
    for r in rows:
        goal = "" if r["goal_db"] is None else ("met" if r["goal_met"] else "NOT")
        flags = "" if r["ane_flags"] is None else r["ane_flags"]
        maps = " ".join(f"{k} {v:.1f}" for k, v in r["psnr_db"].items())
        print(
            f"{r['variant']:<14} {r['bytes'] / 2**20:7.2f} {r['seconds']:9.1f} {r['min_psnr_db']:11.1f} {goal:>6} "
            f"{flags!s:>9}  {maps}"
        )
    write_result(out / "export.json", {"checkpoint": str(checkpoint), "rows": rows})
    print(f"wrote {out / 'export.json'}")


if __name__ == "__main__":
    main()
