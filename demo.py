"""``make demo``: the whole pipeline end to end on generated data, ending with a parity + latency table.

datagen -> teacher (short) -> shards -> student (short) -> export (Core ML, ONNX, ExecuTorch;
TensorRT skipped with its sentence) -> run_inference with --reference on a held-out sample, emitting the
material as a PNG set, glb, usdz and MaterialX checked by their own validators -> the ExecuTorch .pte run the
same way -> both artifacts' self-check against their test vectors -> handheld photos registered by feature
matching and run -> a flash capture scored with evaluate-capture (held-out photos re-rendered, with
test-time refinement) -> a 3D preview page and its screenshot -> the parity and latency tables of ONNX and
ExecuTorch again. It runs each stage's own command, so it lives here, above every
stage, and not in the library.

The steps are the table STEPS, run in order by one loop that times them.

Example:
    python demo.py --output demo_out
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import click
import torch
from click.testing import CliRunner

from pbrforge.errors import fail
from pbrforge.options import OUTPUT_DIR, Command, examples_epilog, old_spellings

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


def _held_out(state: dict) -> None:
    """The first validation sample the student never trained on, and the flash capture datagen exported."""
    from pbrforge.dataset import PBRDataset
    from pbrforge.models import config_of, load_checkpoint

    ckpt, data = state["student_ckpt"], state["data"]
    val = PBRDataset.for_config(data, "val", config_of(load_checkpoint(ckpt), ckpt))
    sample, source = val.entries[0]
    state.update(sample=sample, source=source, material=val.material_of(sample))
    state["held_out"] = data / "input" / source / sample
    state["capture"] = next((data / "captures").iterdir())
    state["capture_name"] = state["capture"].name


def _handheld(state: dict) -> None:
    state["handheld"] = _handheld_photos(state["data"], state["out"] / "handheld")


def _registration(state: dict) -> None:
    _registration_error(state["handheld"], state["out"] / "inference_handheld" / "registration.json")


# both runtimes on the same held-out views, against the same checkpoint, timed alike
TIMED = ["--input", "{held_out}", "--align", "none", "--reference", "{student_ckpt}", "--runs", "20",
         "--warmup", "3"]  # fmt: skip
# The demo, one row per step: (its key in timings.json or None, title, a pbrforge command or a Python step,
# the command's arguments). Titles and arguments are filled in from the run's state ({data}, {sample}, ...),
# which the Python steps extend as they go.
STEPS: list[tuple[str | None, str, str | Callable[[dict], None], list[str]]] = [
    ("datagen", "datagen (procedural and photo-textured materials, handheld phone-flash captures)", "datagen",
     ["--output", "{data}", "--count", "{count}", "--size", str(TEACHER_SIZE), "--seed", "0", "--dirty-ratio",
      "0.5", "--photo-textures", "--capture", "phone-flash", "--export-capture", "1"]),
    (None, "check-data", "check-data", ["--data", "{data}"]),
    (None, "contact sheet", "contact-sheet", ["--data", "{data}", "--output", "{out}/contact_sheet.png", "--count", "6"]),
    ("teacher", "teacher (quick_test, short)", "teacher-train",
     ["--data", "{data}", "--output", "{out}/teacher", "--config", "quick_test", "--epochs", "2", "--batch-size",
      "4", "--max-steps-per-epoch", "12", "--device", "cpu", "--quiet"]),
    # "teacher_infer": the key earlier timings.json files (benchmarks/results/demo_timings.json) used for shards
    ("teacher_infer", "shards: the teacher once over the data set -> float16 shards", "shards",
     ["{teacher_ckpt}", "--data", "{data}", "--output", "{out}/shards", "--shard-output-size",
      str(STUDENT_SIZE * 2), "--device", "cpu", "--quiet"]),
    ("student", f"student ({STUDENT_PRESET} at {STUDENT_SIZE}px, short)", "student-train",
     ["--config", STUDENT_PRESET, "--image-size", str(STUDENT_SIZE), "--shards", "{out}/shards", "--data", "{data}",
      "--output", "{out}/student", "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--quiet"]),
    ("export", "export (Core ML FP16, ONNX, ExecuTorch XNNPACK; TensorRT where available)", "export",
     ["{student_ckpt}", "--output", "{artifact}", "--format", "all"]),
    (None, "held-out sample", _held_out, []),
    ("run_inference", "run_inference on held-out {sample} ({source}, material {material}), material files out", "run",
     ["{artifact}.onnx", *TIMED, "--output", "{inference}", "--emit", "pngset,gltf,usdz,mtlx", "--name", "{sample}",
      "--validate"]),
    ("run_executorch", "run_inference of the ExecuTorch .pte (XNNPACK) on {sample}", "run",
     ["{artifact}.pte", *TIMED, "--output", "{out}/inference_pte"]),
    ("self_check.onnx", "self-check of {artifact_name}.onnx against {artifact_name}.testvectors (no checkpoint, no photos)",
     "run", ["{artifact}.onnx", "--self-check"]),
    ("self_check.pte", "self-check of {artifact_name}.pte against {artifact_name}.testvectors (no checkpoint, no photos)",
     "run", ["{artifact}.pte", "--self-check"]),
    (None, "handheld photos", _handheld, []),
    ("run_handheld", "handheld photos: three flash shots warped by known homographies, registered (--align features) and run",
     "run", ["{artifact}.onnx", "--input", "{handheld}", "--output", "{out}/inference_handheld"]),
    (None, "registration error", _registration, []),
    ("evaluate_capture", "evaluate-capture: re-render the held-out flash photos of {capture_name} (MaterialGAN layout)",
     "evaluate-capture", ["{capture}", "{student_ckpt}", "--inputs", "00,03,04", "--refine", "60", "--output",
     "{out}/evaluation"]),
    ("preview", "3D preview in headless Chromium", "preview",
     ["{inference}", "--views", "{held_out}", "--output", "{out}/preview_3d.html", "--screenshot",
      "{out}/preview_3d.png", "--name", "{sample} (held out, {material})"]),
]  # fmt: skip


@click.command(cls=Command, epilog=examples_epilog(__doc__))
@old_spellings("--output", "--out")
@click.option("--output", type=OUTPUT_DIR, default=Path("demo_out"), show_default=True)
@click.option(
    "--count", type=click.IntRange(8, 10_000), default=48, show_default=True, help="Generated samples."
)
def main(output: Path, count: int) -> None:
    """Run every stage on a small generated data set (a few minutes on 2 CPU cores)."""
    from pbrforge.cli import main as pbrforge

    out = output
    if out.exists() and any(out.iterdir()):
        if not (
            out / "data" / "input" / "render_metadata.json"
        ).is_file():  # only ever replace a demo's own output
            fail(f"{out} exists and is not the output of an earlier demo; choose another --output")
        shutil.rmtree(out)
    artifact = out / "artifacts" / "student"
    state: dict = {
        "out": out,
        "count": count,
        "data": out / "data",
        "teacher_ckpt": out / "teacher" / "checkpoints" / "best.pt",
        "student_ckpt": out / "student" / "checkpoints" / "best.pt",
        "artifact": artifact,
        "artifact_name": artifact.name,
        "inference": out / "inference",
    }
    t0, times = time.perf_counter(), {}
    for key, title, step, args in STEPS:
        if callable(step):
            step(state)
            continue
        command = pbrforge.get_command(click.Context(pbrforge), step)
        elapsed = _step(title.format(**state), command, [a.format(**state) for a in args])
        if key is not None:
            times[key] = elapsed
    total = time.perf_counter() - t0
    click.echo(
        "\n=== demo timings (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
        + f"; total {total:.0f} s on {torch.get_num_threads()} threads"
    )
    from pbrforge.provenance import write_result

    inference = state["inference"]
    write_result(out / "timings.json", {"seconds": times | {"total": total}})
    for folder in (inference, out / "inference_pte"):
        _final_tables(folder)
    click.echo(
        f"look at: {out / 'contact_sheet.png'}, {out / 'teacher' / 'grids'}, {inference / 'preview.png'},"
        f" {inference / 'latency.png'}, {out / 'preview_3d.png'} (open {out / 'preview_3d.html'} to turn the light)"
    )


HANDHELD_SIDE = 256  # photos of a photo-textured material: enough texture for SIFT to match
# view k = view 1 warped by these (reference pixels -> view k pixels): a few degrees, +-5% scale, ~8 px
HANDHELD_WARPS = ((0.0, 1.0, 0.0, 0.0), (4.0, 1.05, 8.0, -6.0), (-3.0, 0.95, -8.0, 5.0))


def _warp(angle: float, scale: float, tx: float, ty: float):
    import numpy as np

    c = (HANDHELD_SIDE - 1) / 2
    centre = np.array([[1, 0, c], [0, 1, c], [0, 0, 1.0]])
    a = np.deg2rad(angle)
    core = np.array(
        [[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty], [0, 0, 1]]
    )
    return centre @ core @ np.linalg.inv(centre)


def _handheld_photos(data: Path, folder: Path) -> Path:
    """Three flash photos of a photo-textured material, views 2 and 3 moved by known homographies."""
    import cv2
    import numpy as np
    from PIL import Image

    from pbrforge.contract import read_material
    from pbrforge.datagen.export_capture import export_capture
    from pbrforge.views import image_to_float

    material = next(p for p in sorted((data / "output").iterdir()) if p.name.startswith("photo_gr"))
    shots = folder.with_name(folder.name + "_rectified")
    export_capture(read_material(material), shots, n_photos=5, seed=1, size=HANDHELD_SIDE, overwrite=True)
    folder.mkdir(parents=True, exist_ok=True)
    for k, (name, warp) in enumerate(zip(("00", "03", "04"), HANDHELD_WARPS, strict=True)):
        photo = image_to_float(shots / f"{name}.png").permute(1, 2, 0).numpy()
        moved = cv2.warpPerspective(photo, _warp(*warp), (HANDHELD_SIDE,) * 2, borderMode=cv2.BORDER_REFLECT)
        Image.fromarray(np.round(moved * 255).astype(np.uint8)).save(folder / f"{k}.png")
    click.echo(f"{material.name}: flash photos 00, 03, 04 moved by known homographies into {folder}")
    return folder


def _registration_error(folder: Path, record: Path) -> None:
    """How far the recovered homographies put the square's points from where the known warps put them."""
    import numpy as np

    from pbrforge.fileio import read_json

    homs = [np.array(h) for h in read_json(record)["homographies"]]
    size = read_json(record)["size"]
    u = np.linspace(0, size - 1, 9)
    grid = np.c_[np.stack(np.meshgrid(u, u), -1).reshape(-1, 2), np.ones(81)]
    in_ref = grid @ np.linalg.inv(homs[0]).T  # square -> view 1 pixels
    worst = 0.0
    for k in (1, 2):
        in_view = in_ref @ _warp(*HANDHELD_WARPS[k]).T  # view 1 -> view k, as the photos were made
        back = in_view @ homs[k].T
        back = back[:, :2] / back[:, 2:]
        worst = max(worst, float(np.abs(back - grid[:, :2]).max()))
    click.echo(f"registration: worst grid-point error against the known warps {worst:.3f} px ({folder})")


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
