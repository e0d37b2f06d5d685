"""``make demo``: the whole pipeline end to end on generated data, ending with a parity + latency table.

datagen -> teacher (short) -> teacher_infer shards -> student (short) -> export (Core ML, ONNX, ExecuTorch;
TensorRT skipped with its sentence) -> run_inference with --reference on a held-out sample, emitting the
material as a PNG set, glb, usdz and MaterialX checked by their own validators -> the ExecuTorch .pte run the
same way -> both artifacts' self-check against their test vectors -> a 3D preview page and its screenshot
-> the parity and latency tables of ONNX and ExecuTorch again. It runs each stage's own command, so it lives here, above every
stage, and not in the library.

Example:
    python demo.py --out demo_out
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click
import torch
from click.testing import CliRunner

from pbrforge.errors import fail
from pbrforge.options import OUTPUT_DIR, Command, examples_epilog

TEACHER_SIZE = 128
STUDENT_SIZE = 64  # student_mnv3_plk_512 shrunk for the demo: 64 px in, x2 SR, 128 px out
STUDENT_PRESET = "student_mnv3_plk_512"


def _step(title: str, command, args: list[str]) -> float:
    click.echo(f"\n=== {title}\n$ pbrforge {command.name} {' '.join(args)}")
    t0 = time.perf_counter()
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    click.echo(result.output.rstrip())
    if result.exit_code != 0:
        fail(f"demo step '{title}' failed with exit code {result.exit_code}")
    return time.perf_counter() - t0


@click.command(cls=Command, epilog=examples_epilog(__doc__))
@click.option("--out", type=OUTPUT_DIR, default=Path("demo_out"), show_default=True)
@click.option(
    "--count", type=click.IntRange(8, 10_000), default=48, show_default=True, help="Generated samples."
)
def main(out: Path, count: int) -> None:
    """Run every stage on a small generated data set (a few minutes on 2 CPU cores)."""
    from pbrforge.datacheck import check_data, contact_sheet
    from pbrforge.datagen.generate import main as datagen
    from pbrforge.dataset import PBRDataset
    from pbrforge.export.converter import main as export
    from pbrforge.models import config_of, load_checkpoint
    from pbrforge.runtime.preview import main as preview
    from pbrforge.runtime.run_inference import main as run
    from pbrforge.student.train import main as student_train
    from pbrforge.teacher.shards import main as shards
    from pbrforge.teacher.train import main as teacher_train

    if out.exists() and any(out.iterdir()):
        if not (
            out / "data" / "input" / "render_metadata.json"
        ).is_file():  # only ever replace a demo's own output
            fail(f"{out} exists and is not the output of an earlier demo; choose another --out")
        shutil.rmtree(out)
    data, t0, times = out / "data", time.perf_counter(), {}
    times["datagen"] = _step(
        "datagen (procedural and photo-textured materials, handheld phone-flash captures)",
        datagen,
        [
            "--out",
            str(data),
            "--count",
            str(count),
            "--size",
            str(TEACHER_SIZE),
            "--seed",
            "0",
            "--dirty-ratio",
            "0.5",
            "--photo-textures",
            "--capture",
            "phone-flash",
        ],
    )
    _step("check-data", check_data, [str(data)])
    _step(
        "contact sheet", contact_sheet, [str(data), "--out", str(out / "contact_sheet.png"), "--count", "6"]
    )
    teacher_ckpt = out / "teacher" / "checkpoints" / "best.pt"
    times["teacher"] = _step(
        "teacher (quick_test, short)",
        teacher_train,
        [
            "--input-dir",
            str(data),
            "--output-dir",
            str(out / "teacher"),
            "--config",
            "quick_test",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--max-steps-per-epoch",
            "12",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    times["teacher_infer"] = _step(
        "teacher_infer -> float16 shards",
        shards,
        [
            "--checkpoint",
            str(teacher_ckpt),
            "--data-root",
            str(data),
            "--shards-dir",
            str(out / "shards"),
            "--shard-output-size",
            str(STUDENT_SIZE * 2),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    student_ckpt = out / "student" / "checkpoints" / "best.pt"
    times["student"] = _step(
        f"student ({STUDENT_PRESET} at {STUDENT_SIZE}px, short)",
        student_train,
        [
            "--config",
            STUDENT_PRESET,
            "--image-size",
            str(STUDENT_SIZE),
            "--shards-dir",
            str(out / "shards"),
            "--input-dir",
            str(data),
            "--output-dir",
            str(out / "student"),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    artifact = out / "artifacts" / "student"
    times["export"] = _step(
        "export (Core ML FP16, ONNX, ExecuTorch XNNPACK; TensorRT where available)",
        export,
        [str(student_ckpt), "--output", str(artifact), "--format", "all"],
    )
    val = PBRDataset.for_config(data, "val", config_of(load_checkpoint(student_ckpt), student_ckpt))
    sample, source = val.entries[0]
    held_out = data / "input" / source / sample
    inference = out / "inference"
    # both runtimes on the same held-out views, against the same checkpoint, timed alike
    timed = ["--input", str(held_out), "--reference", str(student_ckpt), "--runs", "20", "--warmup", "3"]
    times["run_inference"] = _step(
        f"run_inference on held-out {sample} ({source}, material {val.material_of(sample)}), material files out",
        run,
        [
            str(artifact.with_suffix(".onnx")),
            *timed,
            "--output",
            str(inference),
            "--emit",
            "pngset,gltf,usdz,mtlx",
            "--name",
            sample,
            "--validate",
        ],
    )
    times["run_executorch"] = _step(
        f"run_inference of the ExecuTorch .pte (XNNPACK) on {sample}",
        run,
        [str(artifact.with_suffix(".pte")), *timed, "--output", str(out / "inference_pte")],
    )
    for suffix in (".onnx", ".pte"):
        times[f"self_check{suffix}"] = _step(
            f"self-check of {artifact.name}{suffix} against {artifact.name}.testvectors (no checkpoint, no photos)",
            run,
            [str(artifact.with_suffix(suffix)), "--self-check"],
        )
    times["preview"] = _step(
        "3D preview in headless Chromium",
        preview,
        [
            str(inference),
            "--views",
            str(held_out),
            "--out",
            str(out / "preview_3d.html"),
            "--screenshot",
            str(out / "preview_3d.png"),
            "--name",
            f"{sample} (held out, {val.material_of(sample)})",
        ],
    )
    total = time.perf_counter() - t0
    click.echo(
        "\n=== demo timings (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
        + f"; total {total:.0f} s on {torch.get_num_threads()} threads"
    )
    from pbrforge.provenance import write_result

    write_result(out / "timings.json", {"seconds": times | {"total": total}})
    for folder in (inference, out / "inference_pte"):
        _final_tables(folder)
    click.echo(
        f"look at: {out / 'contact_sheet.png'}, {out / 'teacher' / 'grids'}, {inference / 'preview.png'},"
        f" {inference / 'latency.png'}, {out / 'preview_3d.png'} (open {out / 'preview_3d.html'} to turn the light)"
    )


def _final_tables(inference: Path) -> None:
    """The run's parity and latency tables once more, so the demo ends with them."""
    from pbrforge.export.parity import table
    from pbrforge.export.render_parity import render_table
    from pbrforge.fileio import read_json
    from pbrforge.runtime.inference import latency_table

    parity, latency = read_json(inference / "parity.json"), read_json(inference / "latency.json")
    click.echo(f"\n=== parity and latency of {parity['backend']} against {parity['reference']}")
    click.echo(table(parity["outputs"], "parity"))
    click.echo(render_table(parity["render"], "rendered under 11 lights"))
    click.echo(latency_table(latency["backends"], latency["image_size"], latency["output_size"]))


if __name__ == "__main__":
    main()
