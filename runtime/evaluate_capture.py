"""Score a model against a capture: predict maps from three flash photos, re-render every other photo.

The capture folder is in MaterialGAN's layout: NN.png (rectified square photos, row 0 at +y, at least 4),
camera_pos.txt (x,y,z in cm per photo, origin at the sample's centre, flash at the camera) and
image_size.txt (the sample's side in cm); `pbrforge datagen --export-capture N` writes synthetic ones.
The model is an exported artifact or a checkpoint (PyTorch eager), as for ``pbrforge run``. Each method
(the model, a flat material of the inputs' mean colour, and with --refine the refined maps) gets one gain
for exposure and flash power, fitted by least squares in linear RGB on the three input photos only; renders are made at the photos' side (at most 512 px) with the maps resized to it. Prints RMSE and
SSIM (sRGB) per held-out photo and their mean; writes OUTPUT/evaluation.json, compare_NN.png per held-out
photo (photo | model | flat | refined), and the maps.

--refine STEPS optimises the predicted maps against two input photos (Adam on logits and normal slopes,
log-space L1 plus a pull toward the prediction), keeping the step that scores best on the third input;
when no step beats the prediction there, the prediction is kept.

Examples:
    pbrforge evaluate-capture captures/card_blue artifacts/student.onnx --inputs 00,03,04
    pbrforge evaluate-capture captures/card_blue runs/student/best.pt --inputs 00,03,04
    pbrforge evaluate-capture data/demo/captures/bricks_000 best.pt --inputs 0,4,8 \\
        --refine 200 --output eval/bricks_000
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pbrforge.errors import user_errors
from pbrforge.options import OUTPUT_DIR, Command, examples_epilog, old_spellings

if TYPE_CHECKING:
    import torch

    from pbrforge.capture_eval import Predictor
    from pbrforge.runtime.backends import Runner


def runner_predictor(runner: Runner, name: str) -> Predictor:
    """A backend's runner as the evaluation's predictor: photos in [0, 1] -> 8-bit values -> checked maps."""
    from pbrforge.capture_eval import Predictor
    from pbrforge.runtime.inference import to_maps

    def run(views: torch.Tensor) -> torch.Tensor:  # (3, 3, s, s) in [0, 1] -> (8, S, S)
        return to_maps(runner.run(tuple((v * 255).round()[None].contiguous() for v in views)))

    return Predictor(f"{name} ({runner.backend})", runner.contract.image_size, run)


def load_predictor(
    artifact: Path | None = None, checkpoint: Path | None = None, threads: int = 0
) -> Predictor:
    """An exported artifact through its backend, or a checkpoint in PyTorch eager."""
    import torch

    from pbrforge.errors import DataError
    from pbrforge.runtime.backends import load_runner, torch_runner

    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise DataError(f"checkpoint {checkpoint} does not exist")
        return runner_predictor(
            torch_runner(checkpoint, threads or torch.get_num_threads()), Path(checkpoint).name
        )
    if artifact is None:
        raise DataError("give an artifact or a checkpoint")
    return runner_predictor(load_runner(artifact, threads=threads), Path(artifact).name)


@click.command("evaluate-capture", cls=Command, epilog=examples_epilog(__doc__))
@click.argument("capture_dir", type=click.Path(path_type=Path, file_okay=False))
@old_spellings("artifact", "--checkpoint")
@click.argument("artifact", type=click.Path(path_type=Path), required=True)
@click.option("--inputs", required=True, help="The three photos the model sees, by number, e.g. 00,03,04.")
@click.option(
    "--output",
    type=OUTPUT_DIR,
    default=None,
    help="Folder for evaluation.json, the comparisons and the maps [default: CAPTURE_DIR/evaluation].",
)
@click.option(
    "--refine",
    "refine_steps",
    type=click.IntRange(0, 100_000),
    default=0,
    show_default=True,
    help="Test-time refinement: at most this many steps, early-stopped on the third input.",
)
@click.option("--threads", type=click.IntRange(0, 1024), default=0, help="CPU threads; 0 means torch's.")
@user_errors
def main(
    capture_dir: Path,
    artifact: Path,
    inputs: str,
    output: Path | None,
    refine_steps: int,
    threads: int,
) -> None:
    """Score a model (ARTIFACT: an exported artifact or a checkpoint) by re-rendering held-out flash photos."""
    from pbrforge.capture_eval import evaluate_capture, parse_inputs, read_capture

    numbers = parse_inputs(inputs)
    output = output or Path(capture_dir) / "evaluation"
    capture = read_capture(capture_dir)  # every refusal about the folder comes before a model is loaded
    for n in numbers:
        capture.index(n)
    predictor = load_predictor(artifact, threads=threads)
    result = evaluate_capture(
        capture=capture, inputs=numbers, predictor=predictor, output=output, refine_steps=refine_steps
    )
    click.echo(result.table())
    click.echo(f"wrote {output / 'evaluation.json'}")


if __name__ == "__main__":
    main()
