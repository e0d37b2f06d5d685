"""pbrforge's rebuild of NeuroPBR's student against NeuroPBR's own code, from a checkpoint its format writes.

Needs a NeuroPBR checkout (github.com/josephHelfenbein/NeuroPBR; its ``training/`` folder) and its one
dependency pbrforge lacks, ``einops``. NeuroPBR's ``StudentGenerator`` is built from its own source with a
config file of its own (default ``configs/mobilenetv3_512.py``), its BatchNorm statistics randomised so eval
mode is no identity, and saved as its ``student/train.py`` saves one (``student_state_dict`` and the
``TrainConfig`` object). ``pbrforge.export.neuropbr.load_student`` then reads that file with no NeuroPBR code,
and both models run the same views. Per size: keys loaded, the largest difference per map, and the side of
the maps for the side of the views.

Its torchvision encoder asks for ImageNet weights by default; they are not downloaded here (the comparison
is of architectures and loading, with the same random weights on both sides). ``torch.utils.tensorboard``,
imported by NeuroPBR's training script but not used by the model, is stubbed when it is not installed.

Examples:
    pip install einops
    python benchmarks/neuropbr_parity.py --source ~/src/NeuroPBR
    python benchmarks/neuropbr_parity.py --source ~/src/NeuroPBR --sizes 128 --sizes 512
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import click

from pbrforge.options import examples_epilog
from pbrforge.provenance import write_result


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise click.UsageError(f"{path} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def neuropbr_student(training: Path, config_file: Path, size: int):
    """NeuroPBR's StudentGenerator and its TrainConfig, built by its own code at ``size`` px."""
    import torchvision

    sys.path[:0] = [str(training)]
    if (
        importlib.util.find_spec("torch.utils.tensorboard") is None
        or importlib.util.find_spec("tensorboard") is None
    ):
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = object  # type: ignore[attr-defined]
        sys.modules["torch.utils.tensorboard"] = stub
    for name in ("mobilenet_v3_large", "mobilenet_v3_small"):  # random weights, no download
        build = getattr(torchvision.models, name)
        setattr(torchvision.models, name, lambda weights=None, _b=build, **kw: _b(weights=None, **kw))
    train = _load(training / "student" / "train.py", "neuropbr_student_train")
    config = _load(config_file, "neuropbr_config").get_config()
    stated = (config.data.image_size[0], config.data.output_size[0])
    config.data.image_size = (size, size)
    return train.StudentGenerator(config).eval(), config, stated


def compare(training: Path, config_file: Path, size: int) -> dict:
    import torch

    from pbrforge.export.neuropbr import load_student

    torch.manual_seed(size)
    theirs, config, stated = neuropbr_student(training, config_file, size)
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "best_student.pth"
        torch.save({"epoch": 0, "student_state_dict": theirs.state_dict(), "config": config}, path)
        ours = load_student(path)
    views = torch.rand(1, 3, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want, got = theirs(views), ours(views)
    return {
        "size": size,
        "keys": len(theirs.state_dict()),
        "max_abs": {k: float((want[k] - got[k]).abs().max()) for k in want},
        "output_side": int(got["albedo"].shape[-1]),
        "config_states": {"image_size": stated[0], "output_size": stated[1]},
    }


@click.command(epilog=examples_epilog(__doc__))
@click.option(
    "--source",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="A NeuroPBR checkout (the folder holding training/).",
)
@click.option(
    "--config",
    "config_name",
    default="mobilenetv3_512.py",
    show_default=True,
    help="A config file in NeuroPBR's training/configs/.",
)
@click.option("--sizes", type=click.IntRange(64, 1024), multiple=True, default=(128, 512), show_default=True)
@click.option(
    "--output", "out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True
)
def main(source: Path, config_name: str, sizes: tuple[int, ...], out: Path) -> None:
    """Rebuilt NeuroPBR student against NeuroPBR's own: table and JSON."""
    training = source / "training"
    config_file = training / "configs" / config_name
    if not (training / "student" / "train.py").is_file() or not config_file.is_file():
        raise click.UsageError(f"{source} is not a NeuroPBR checkout with training/configs/{config_name}")
    if importlib.util.find_spec("einops") is None:
        raise click.UsageError("NeuroPBR's model code needs einops: pip install einops")
    rows = [compare(training, config_file, s) for s in sizes]
    print(f"\nNeuroPBR student ({config_name}) against pbrforge's rebuild, same weights and views")
    print(
        f"{'size':>6} {'keys':>5} {'albedo':>9} {'roughness':>9} {'metallic':>9} {'normal':>9} {'maps side':>9}"
    )
    for r in rows:
        m = r["max_abs"]
        print(
            f"{r['size']:>6} {r['keys']:>5} {m['albedo']:9.2e} {m['roughness']:9.2e} {m['metallic']:9.2e} "
            f"{m['normal']:9.2e} {r['output_side']:>9}"
        )
    stated = rows[0]["config_states"]
    print(f"{config_name} states {stated['image_size']} px views give {stated['output_size']} px maps")
    write_result(out / "neuropbr_parity.json", {"config": config_name, "source": str(source), "rows": rows})
    print(f"wrote {out / 'neuropbr_parity.json'}")


if __name__ == "__main__":
    main()
