"""Run any pbrforge artifact on three photos; with --reference, check parity and latency against PyTorch.

Input folder rules: png/jpg, the first three by sorted name (more is a warning, fewer an error); any
mode is converted to RGB (alpha dropped, gray replicated, 16-bit scaled). Handheld photos are registered
onto the first one before the model sees them (--align features: SIFT matches and a RANSAC homography,
refined by ECC, cropped to the square all three cover; corners FILE: the sample's four corners per photo;
markers: four printed ArUco markers; none: already rectified, resized as they are with a warning when not
square). A photo that cannot be registered is refused naming it; registration.json and registration.png
(red/cyan overlays) show how the views lined up. Outputs are upscaled to --final-size with Lanczos, normals
renormalised, and written as albedo/roughness/metallic/normal.png plus preview.png.

With no ARTIFACT the default model runs: a student trained on phone captures, shipped inside the package
(pbrforge/weights/student_phone.safetensors; `make pretrained` rebuilds it).

A ``--model`` export's manifest (OUTPUT.model.json) runs one graph on the files in --input, read as its spec
says: NAME.png/.jpg for an image input, NAME.safetensors for any, NAME.json for a number (see
pbrforge.runtime.model_run); outputs.safetensors, a 16-bit PNG per image output and run.json are written.

Examples:
    pbrforge run --input photos/ --output out/
    python runtime/run_inference.py artifacts/student.onnx --input photos/ --output out/
    python runtime/run_inference.py artifacts/student.onnx --input rectified/ --output out/ --align none
    python runtime/run_inference.py artifacts/student.onnx --input photos/ --output out/ --align corners --corners corners.json
    python runtime/run_inference.py artifacts/student.onnx --input photos/ --output out/ \\
        --reference runs/student/checkpoints/best.pt --runs 20 --warmup 3 --render-psnr-min 35
    python runtime/run_inference.py runs/student/checkpoints/best.pt --input photos/ --output out/ --final-size 1024
    python runtime/run_inference.py runs/student/checkpoints/best.pt --input photos/ --output out/ --retain-heap
    python runtime/run_inference.py artifacts/student.onnx --input photos/ --output out/ --emit gltf,usdz --name Slate --validate
    python runtime/run_inference.py artifacts/student.pte --self-check
    pbrforge run artifacts/invisp.model.json --self-check
    pbrforge run artifacts/invisp.model.json --graph reverse --input srgb_in/ --output raw_out/ --backend onnx

"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from pbrforge.errors import user_errors
from pbrforge.export.gates import render_gate, render_gate_options
from pbrforge.options import MAX_SIDE, OUTPUT_DIR, Command, align_options, check_run, examples_epilog
from pbrforge.runtime.backends import BACKENDS
from pbrforge.runtime.emit import emit_options


@click.command("run", cls=Command, epilog=examples_epilog(__doc__))
@click.argument("artifact", type=click.Path(path_type=Path), required=False, default=None)
@click.option(
    "--input",
    "input_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with 3 photos (required unless --self-check).",
)
@click.option(
    "--output",
    type=OUTPUT_DIR,
    default=None,
    help="Folder for maps, preview and reports (required unless --self-check).",
)
@click.option(
    "--self-check",
    is_flag=True,
    help="Check the artifact against the test vectors its contract lists (inputs and PyTorch's outputs, "
    "written by the exporter): no checkpoint or photos needed; exit 2 naming the worst output.",
)
@click.option(
    "--graph",
    default=None,
    help="With a --model manifest: the graph to run (needed when it holds more than one).",
)
@align_options
@click.option("--backend", type=click.Choice(("auto",) + BACKENDS), default="auto", show_default=True)
@click.option(
    "--reference",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Checkpoint for parity and latency.",
)
@click.option("--runs", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option("--warmup", type=click.IntRange(0, 100_000), default=3, show_default=True)
@click.option(
    "--final-size",
    type=click.IntRange(8, MAX_SIDE),
    default=None,
    help="Upscale maps to this side [default: the contract's, 2048].",
)
@click.option(
    "--threads",
    type=click.IntRange(0, 1024),
    default=0,
    help="CPU threads for every backend; 0 means torch's.",
)
@click.option(
    "--retain-heap",
    is_flag=True,
    help="Keep freed memory in the process (glibc) so large activations are not page-faulted on every "
    "call: faster at high resolution, more resident memory (benchmarks/scaling.py measures both).",
)
@emit_options(default=None)
@render_gate_options
@user_errors
def main(
    artifact: Path | None,
    input_dir: Path | None,
    output: Path | None,
    self_check: bool,
    graph: str | None,
    align: str,
    corners: Path | None,
    backend: str,
    reference: Path | None,
    runs: int,
    warmup: int,
    final_size: int | None,
    threads: int,
    retain_heap: bool,
    formats: tuple[str, ...],
    material: str | None,
    bits: str,
    normal: str,
    run_validators: bool,
    render_psnr_min: float | None,
    normal_p99_max: float | None,
) -> None:
    """Predict PBR maps with an artifact (optionally against PyTorch), or run a --model export's graph."""
    from pbrforge.allocator import retain_freed_memory
    from pbrforge.runtime.emit import AssetRequest
    from pbrforge.runtime.inference import run_inference

    if retain_heap and not retain_freed_memory():
        logging.getLogger(__name__).warning("--retain-heap does nothing here: the C library is not glibc")
    from pbrforge.runtime.model_check import MANIFEST_SUFFIX

    ctx = click.get_current_context()
    explicit = click.core.ParameterSource.COMMANDLINE
    given = {  # each option as spelled on the command line -> whether it was given there
        p.opts[0]: ctx.get_parameter_source(p.name) == explicit
        for p in ctx.command.params
        if isinstance(p, click.Option) and p.name
    }
    if artifact is not None and artifact.name.endswith(MANIFEST_SUFFIX):  # a --model export's manifest
        run_manifest(artifact, given, self_check, input_dir, output, graph, backend, threads)
        return
    if given["--graph"]:
        from pbrforge.errors import ConfigError

        raise ConfigError("--graph is for a --model export's manifest (OUTPUT.model.json)")
    if artifact is None:
        from pbrforge.errors import DataError
        from pbrforge.models import DEFAULT_MODEL

        if not DEFAULT_MODEL.is_file():
            raise DataError(
                f"no model was given and the default model {DEFAULT_MODEL} is not installed; "
                "give an artifact or checkpoint (make pretrained builds the default)"
            )
        artifact = DEFAULT_MODEL
    checked = check_run(self_check, given, input_dir, output)
    if checked is None:
        from pbrforge.runtime.inference import self_check as check_vectors

        check_vectors(artifact, backend, threads)
        return
    input_dir, output = checked
    from pbrforge.views import check_align

    check_align(align, corners)
    assets = AssetRequest(formats, material, int(bits), normal, run_validators) if formats else None
    gate = render_gate(render_psnr_min, normal_p99_max)
    run_inference(
        artifact,
        input_dir,
        output,
        backend,
        reference,
        runs,
        warmup,
        final_size,
        threads,
        assets,
        gate,
        align=align,
        corners=corners,
    )


MANIFEST_ONLY = ("--input", "--output", "--graph", "--backend", "--threads", "--self-check")


def run_manifest(
    manifest: Path,
    given: dict[str, bool],
    self_check: bool,
    input_dir: Path | None,
    output: Path | None,
    graph: str | None,
    backend: str,
    threads: int,
) -> None:
    """A --model export: its self-check, or one graph on the files in ``input_dir``."""
    from pbrforge.errors import ConfigError

    extra = [flag for flag, on in given.items() if on and flag not in MANIFEST_ONLY]
    if extra:
        raise ConfigError(
            f"{extra[0]} is about PBR artifacts; a --model manifest takes {', '.join(MANIFEST_ONLY)}"
        )
    if self_check:
        from pbrforge.runtime.model_check import self_check as check_model

        if input_dir is not None or output is not None or graph is not None:
            raise ConfigError("--self-check needs no --input, --output or --graph: it runs every artifact")
        for line in check_model(manifest, threads or 2):
            click.echo(line)
        return
    if input_dir is None or output is None:
        raise ConfigError(
            f"Missing option '{'--input' if input_dir is None else '--output'}' (or give --self-check)."
        )
    from pbrforge.runtime.model_run import RUNS_HERE, run_model

    if backend != "auto" and backend not in RUNS_HERE:
        raise ConfigError(
            f"--backend {backend} cannot run a --model export here; choose {' or '.join(RUNS_HERE)}"
        )
    report = run_model(
        manifest, input_dir, output, graph, None if backend == "auto" else backend, threads or 2
    )
    click.echo(
        f"{report['graph']} ({report['format']}) ran in {report['seconds'] * 1000:.1f} ms; wrote "
        f"{', '.join(['outputs.safetensors', *(o['png'] for o in report['outputs'].values() if 'png' in o)])} "
        f"and run.json to {output}"
    )


if __name__ == "__main__":
    main()
